package identity

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"fmt"

	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/smallstep/pkcs7"
)

// EncodeCertsOnly encodes certificates as an RFC 7030 section 4.1.3
// response body: a degenerate CMS SignedData ("certs-only", RFC 5652 with no
// signers), DER, then base64.
func EncodeCertsOnly(certs ...*x509.Certificate) ([]byte, error) {
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.Raw...)
	}
	der, err := pkcs7.DegenerateCertificate(raw)
	if err != nil {
		return nil, fmt.Errorf("identity: encode certs-only: %w", err)
	}
	out := make([]byte, base64.StdEncoding.EncodedLen(len(der)))
	base64.StdEncoding.Encode(out, der)
	return out, nil
}

// DecodeCertsOnly decodes an RFC 7030 certs-only body (base64 of a DER or BER
// CMS SignedData) into its certificates. Bodies over the limit, bad base64,
// signed content, no certificate or more than the bundle limit are refused
// with [ErrMalformed] or [ErrTooLarge].
func DecodeCertsOnly(body []byte) ([]*x509.Certificate, error) {
	if len(body) > limits.ESTResponseBody {
		return nil, fmt.Errorf("%w: certs-only body over %d bytes", ErrTooLarge, limits.ESTResponseBody)
	}
	der, err := decodeBase64(body)
	if err != nil {
		return nil, err
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		return nil, fmt.Errorf("%w: PKCS#7: %v", ErrMalformed, err)
	}
	if len(p7.Signers) != 0 || len(p7.Content) != 0 {
		return nil, fmt.Errorf("%w: PKCS#7 is not certs-only", ErrMalformed)
	}
	if len(p7.Certificates) == 0 {
		return nil, fmt.Errorf("%w: PKCS#7 holds no certificate", ErrMalformed)
	}
	if len(p7.Certificates) > limits.CertsPerBundle {
		return nil, fmt.Errorf("%w: more than %d certificates", ErrTooLarge, limits.CertsPerBundle)
	}
	return p7.Certificates, nil
}

// decodeBase64 decodes standard base64, ignoring the line breaks and spaces
// that RFC 7030 senders may insert (RFC 2045 folding).
func decodeBase64(body []byte) ([]byte, error) {
	clean := bytes.Map(func(r rune) rune {
		switch r {
		case '\r', '\n', ' ', '\t':
			return -1
		}
		return r
	}, body)
	out := make([]byte, base64.StdEncoding.DecodedLen(len(clean)))
	n, err := base64.StdEncoding.Decode(out, clean)
	if err != nil {
		return nil, fmt.Errorf("%w: base64: %v", ErrMalformed, err)
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: empty body", ErrMalformed)
	}
	return out[:n], nil
}
