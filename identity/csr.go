package identity

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/url"
)

// NewCSR creates a PKCS#10 certificate signing request for device id, signed
// by key: subject CN = id, URI SAN urn:d2c:device:<id>. It returns DER.
func NewCSR(key crypto.Signer, id string) ([]byte, error) {
	if err := ValidateDeviceID(id); err != nil {
		return nil, err
	}
	if _, err := keyTypeOf(key.Public()); err != nil {
		return nil, err
	}
	u, err := url.Parse(DeviceURI(id))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidDeviceID, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: id},
		URIs:    []*url.URL{u},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("identity: create CSR: %w", err)
	}
	return der, nil
}

// ParseCSR parses a DER PKCS#10 request and checks its self-signature
// (proof of possession of the key).
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: PKCS#10: %v", ErrMalformed, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: CSR signature: %v", ErrMalformed, err)
	}
	return csr, nil
}

// checkCSRFor checks that csr asks for nothing but device id: its CN must be
// id, its only SAN the device URI (or none), and no DNS, IP or e-mail names.
// The certificate itself takes its names from id, never from the CSR; this
// check refuses a request that asks for more so that the refusal is visible.
func checkCSRFor(csr *x509.CertificateRequest, id string) error {
	if csr.Subject.CommonName != id {
		return fmt.Errorf("%w: CSR common name %q, credential authorizes %q", ErrNotAuthorized, truncate(csr.Subject.CommonName), id)
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
		return fmt.Errorf("%w: CSR asks for DNS, IP or e-mail names", ErrNotAuthorized)
	}
	for _, u := range csr.URIs {
		if u.String() != DeviceURI(id) {
			return fmt.Errorf("%w: CSR asks for URI %q", ErrNotAuthorized, truncate(u.String()))
		}
	}
	return nil
}
