// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// DeviceCertPolicy verifies device certificates on the cloud side.
type DeviceCertPolicy struct {
	// Roots are the fleet trust anchors. Required.
	Roots *x509.CertPool
	// Revocations, if set, refuses revoked certificates.
	Revocations RevocationChecker
}

// Verify checks that chain[0] is a device certificate that chains to the
// roots (through the other certificates of chain) at time at, allows client
// authentication, is not revoked, and names a valid device ID as its CN with
// the matching URI SAN. It returns the device ID.
func (p DeviceCertPolicy) Verify(chain []*x509.Certificate, at time.Time) (string, error) {
	if p.Roots == nil {
		return "", ErrNoTrustAnchor
	}
	if len(chain) == 0 {
		return "", fmt.Errorf("%w: no certificate", ErrUntrusted)
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         p.Roots,
		Intermediates: inter,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return "", fmt.Errorf("%w: %s valid %s to %s, now %s", ErrCertExpired, truncate(leaf.Subject.CommonName),
				leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
		}
		return "", fmt.Errorf("%w: %v", ErrUntrusted, err)
	}
	id, err := deviceIDOf(leaf)
	if err != nil {
		return "", err
	}
	if p.Revocations != nil {
		if err := p.Revocations.CheckRevoked(leaf); err != nil {
			return "", err
		}
	}
	return id, nil
}

// deviceIDOf returns the device ID a certificate names: its CN, which must be
// a valid device ID and match its one URI SAN.
func deviceIDOf(c *x509.Certificate) (string, error) {
	id := c.Subject.CommonName
	if err := ValidateDeviceID(id); err != nil {
		return "", err
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != DeviceURI(id) {
		return "", fmt.Errorf("%w: certificate for %q lacks URI SAN %s", ErrUntrusted, id, DeviceURI(id))
	}
	return id, nil
}
