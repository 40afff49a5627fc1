// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	"github.com/d2c-iot/d2c/internal/limits"
)

// ParseCertificatesPEM decodes one or more PEM CERTIFICATE blocks. Other
// block types, trailing garbage, more than the bundle limit, or no
// certificate at all are refused.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	if len(data) > limits.PEMFile {
		return nil, fmt.Errorf("%w: certificate PEM over %d bytes", ErrTooLarge, limits.PEMFile)
	}
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: PEM block %q, want CERTIFICATE", ErrMalformed, truncate(b.Type))
		}
		if len(certs) == limits.CertsPerBundle {
			return nil, fmt.Errorf("%w: more than %d certificates", ErrTooLarge, limits.CertsPerBundle)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate: %v", ErrMalformed, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: data after the last PEM block", ErrMalformed)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no CERTIFICATE PEM block", ErrMalformed)
	}
	return certs, nil
}

// EncodeCertificatesPEM encodes certificates as concatenated PEM blocks.
func EncodeCertificatesPEM(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}
