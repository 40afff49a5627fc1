// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
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

// NewRenewalCSR creates the PKCS#10 request that renews cert for key: its
// subject and subjectAltName are those of cert, byte for byte, as RFC 7030
// section 4.2.2 requires of a simplereenroll request ("the Subject field
// and SubjectAltName extension MUST be identical to the corresponding
// fields in the certificate being renewed/rekeyed"). It returns DER.
func NewRenewalCSR(key crypto.Signer, cert *x509.Certificate) ([]byte, error) {
	if _, err := keyTypeOf(key.Public()); err != nil {
		return nil, err
	}
	tmpl := &x509.CertificateRequest{RawSubject: cert.RawSubject}
	for _, e := range cert.Extensions {
		if e.Id.Equal(oidSubjectAltName) {
			tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: e.Id, Critical: e.Critical, Value: e.Value})
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("identity: create renewal CSR: %w", err)
	}
	return der, nil
}

// oidSubjectAltName is the subjectAltName extension (RFC 5280 4.2.1.6).
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// checkRenewalCSR checks that csr renews cert as RFC 7030 section 4.2.2
// requires: the same subject and subjectAltName, byte for byte.
func checkRenewalCSR(csr *x509.CertificateRequest, cert *x509.Certificate) error {
	if !bytes.Equal(csr.RawSubject, cert.RawSubject) {
		return fmt.Errorf("%w: the renewal request's subject differs from the certificate's (RFC 7030 4.2.2)", ErrNotAuthorized)
	}
	if !bytes.Equal(extensionValue(csr.Extensions, oidSubjectAltName), extensionValue(cert.Extensions, oidSubjectAltName)) {
		return fmt.Errorf("%w: the renewal request's subjectAltName differs from the certificate's (RFC 7030 4.2.2)", ErrNotAuthorized)
	}
	return nil
}

func extensionValue(exts []pkix.Extension, id asn1.ObjectIdentifier) []byte {
	for _, e := range exts {
		if e.Id.Equal(id) {
			return e.Value
		}
	}
	return nil
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
