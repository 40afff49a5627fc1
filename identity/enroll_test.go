// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

func TestEnrollRenewRevoke(t *testing.T) {
	f := newFleet(t, nil)
	store, id := f.enroll("sensor-1")

	leaf := id.Certificate()
	if leaf.Subject.CommonName != "sensor-1" || len(leaf.URIs) != 1 || leaf.URIs[0].String() != "urn:d2c:device:sensor-1" {
		t.Fatalf("certificate names %q %v", leaf.Subject.CommonName, leaf.URIs)
	}
	if got := leaf.SerialNumber.BitLen(); got < 100 {
		t.Errorf("serial has %d bits, want about 128 random bits", got)
	}
	if !publicKeysEqual(id.Key.Public(), leaf.PublicKey) {
		t.Fatal("certificate is not for the device key")
	}
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Root())
	policy := DeviceCertPolicy{Roots: roots, Revocations: f.ca}
	if dev, err := policy.Verify(id.Chain, f.clock.Now()); err != nil || dev != "sensor-1" {
		t.Fatalf("cloud verify: %q %v", dev, err)
	}
	if got := store.Clock().Floor(); !got.Equal(leaf.NotBefore) {
		t.Errorf("time floor %v, want the certificate's start %v", got, leaf.NotBefore)
	}

	// Renewal: a new key and certificate, the old generation removed.
	f.clock.Advance(70 * 24 * time.Hour)
	renewed, err := store.Renew(t.Context(), f.client(), RenewOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Generation != id.Generation+1 || publicKeysEqual(renewed.Key.Public(), id.Key.Public()) {
		t.Fatalf("renewal kept generation %d or the old key", renewed.Generation)
	}
	cur, err := store.Current()
	if err != nil || cur.Certificate().SerialNumber.Cmp(renewed.Certificate().SerialNumber) != 0 {
		t.Fatalf("current after renewal: %v", err)
	}
	all, _, _ := store.generations()
	if len(all) != 1 {
		t.Errorf("generations on disk %v, want only the new one", all)
	}

	// Revocation: the CRL lists it, the check refuses it, and renewal with
	// it is refused.
	if err := f.ca.Revoke(renewed.Certificate(), 1); err != nil {
		t.Fatal(err)
	}
	der, err := f.ca.CRL()
	if err != nil {
		t.Fatal(err)
	}
	crl, err := ParseCRL(der, f.ca.Issuing())
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckRevoked(renewed.Certificate()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("CRL check: %v, want ErrRevoked", err)
	}
	if _, err := policy.Verify(renewed.Chain, f.clock.Now()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("policy verify: %v, want ErrRevoked", err)
	}
	if _, err := store.Renew(t.Context(), f.client(), RenewOptions{}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("renew while revoked: %v, want ErrRevoked", err)
	}
	if cur, err := store.Current(); err != nil || cur.Generation != renewed.Generation {
		t.Fatalf("refused renewal changed the identity: %v", err)
	}
}
