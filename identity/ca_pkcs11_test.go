// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build cgo

package identity_test

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"path/filepath"
	"testing"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/pkcs11"
	"github.com/d2c-iot/d2c/internal/testpeer"
	"github.com/d2c-iot/d2c/internal/testpki"
)

// TestCAIssuingKeyInToken: a fleet CA whose issuing key is generated in a
// PKCS#11 token (softhsm2) and never leaves it: no issuing.key on disk, a
// device enrolls over EST through a registrar on that CA and its
// certificate chains to the root, the CRL the token signs verifies and
// lists the revoked device, another token key is refused, and a closed
// token makes signing fail (identity.ErrKeystore) without consuming a CRL
// number.
func TestCAIssuingKeyInToken(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	ks, err := pkcs11.Open(pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ks.Close() })
	ctx := t.Context()
	issuingKey, err := ks.CreateNew(ctx, "fleet-issuing", identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	ca, err := identity.InitCA(caDir, identity.CAConfig{Fleet: "token fleet", IssuingKey: issuingKey})
	if err != nil {
		t.Fatal(err)
	}
	testpki.NoIssuingKeyOnDisk(t, caDir, issuingKey.Public())

	// A registrar on the CA, over HTTPS on 127.0.0.1.
	tokenKey, err := identity.ReadKeyFile(filepath.Join(caDir, identity.CATokenKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	srv := testpki.Registrar(t, ca, tokenKey.Public(), filepath.Join(dir, "used-tokens.state"))

	// A device enrolls with a one-time token.
	enrollToken, err := identity.TokenIssuer{Key: tokenKey}.Issue("sensor-1")
	if err != nil {
		t.Fatal(err)
	}
	store, err := identity.OpenStore(filepath.Join(dir, "device"), identity.StoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	fp := sha256.Sum256(ca.Root().Raw)
	id, err := store.Enroll(ctx, identity.ESTClient{URL: srv.URL, BootstrapFingerprint: fp[:]}, identity.EnrollRequest{
		DeviceID: "sensor-1", Auth: identity.EnrollAuth{Token: enrollToken},
	})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	inter := x509.NewCertPool()
	inter.AddCert(ca.Issuing())
	if _, err := id.Certificate().Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the device certificate does not chain to the root: %v", err)
	}

	// Revocation: the CRL, signed in the token, verifies and lists it.
	if err := ca.Revoke(id.Certificate(), 1); err != nil {
		t.Fatal(err)
	}
	der, err := ca.CRL()
	if err != nil {
		t.Fatal(err)
	}
	crl, err := identity.ParseCRL(der, ca.Issuing())
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckRevoked(id.Certificate()); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("CRL check of the revoked device: %v", err)
	}

	// Loading: with the token key only; not with another token key.
	reloaded, err := identity.LoadCA(caDir, identity.CAConfig{IssuingKey: issuingKey})
	if err != nil {
		t.Fatal(err)
	}
	other, err := ks.CreateNew(ctx, "other", identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.LoadCA(caDir, identity.CAConfig{IssuingKey: other}); !errors.Is(err, identity.ErrMalformed) {
		t.Fatalf("LoadCA with another token key: %v, want ErrMalformed", err)
	}

	// The token goes away: signing fails as a keystore failure, and the
	// CRL number is not spent.
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := reloaded.CRL(); !errors.Is(err, identity.ErrKeystore) {
		t.Fatalf("CRL with the token closed: %v, want ErrKeystore", err)
	}
	if _, err := reloaded.IssueServer(testpki.Key(t).Public(), "127.0.0.1"); !errors.Is(err, identity.ErrKeystore) {
		t.Fatalf("IssueServer with the token closed: %v, want ErrKeystore", err)
	}
	ks2, err := pkcs11.Open(pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ks2.Close() })
	again, err := ks2.Open(ctx, "fleet-issuing")
	if err != nil {
		t.Fatal(err)
	}
	back, err := identity.LoadCA(caDir, identity.CAConfig{IssuingKey: again})
	if err != nil {
		t.Fatal(err)
	}
	if der, err = back.CRL(); err != nil {
		t.Fatal(err)
	}
	if crl, err = identity.ParseCRL(der, back.Issuing()); err != nil {
		t.Fatal(err)
	}
	if n := crl.Number(); n == nil || n.Int64() != 2 {
		t.Fatalf("CRL number %v after a failed signature, want 2", n)
	}
}
