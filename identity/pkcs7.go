// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

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
// signers), DER, then base64 in lines of 64 characters ending in CRLF
// (RFC 2045 section 6.8), which stock tools such as `openssl base64 -d`
// decode as they are.
func EncodeCertsOnly(certs ...*x509.Certificate) ([]byte, error) {
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.Raw...)
	}
	der, err := pkcs7.DegenerateCertificate(raw)
	if err != nil {
		return nil, fmt.Errorf("identity: encode certs-only: %w", err)
	}
	return base64Lines(der), nil
}

// base64Lines encodes b as standard base64 in CRLF-terminated lines of 64
// characters.
func base64Lines(b []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(b)
	out := make([]byte, 0, len(enc)+len(enc)/64*2+2)
	for len(enc) > 64 {
		out = append(out, enc[:64]...)
		out = append(out, '\r', '\n')
		enc = enc[64:]
	}
	out = append(out, enc...)
	return append(out, '\r', '\n')
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
