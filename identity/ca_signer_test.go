// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity_test

import (
	"crypto"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpki"
)

// TestCAIssuingKeySigner: a CA whose issuing key is a crypto.Signer given
// in CAConfig (here a software key; ca_pkcs11_test.go has one in a token)
// certifies that key, writes no issuing.key, signs with it, and is loaded
// only with it.
func TestCAIssuingKeySigner(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.InitCA(dir, identity.CAConfig{Fleet: "signer fleet", IssuingKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(ca.Issuing().PublicKey) {
		t.Fatal("the issuing certificate certifies another key")
	}
	testpki.NoIssuingKeyOnDisk(t, dir, key.Public())
	serverKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServer(serverKey.Public(), "broker.example")
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(ca.Issuing()); err != nil {
		t.Fatal(err)
	}

	// Without the signer there is no issuing key.
	if _, err := identity.LoadCA(dir, identity.CAConfig{}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadCA without the signer: %v, want fs.ErrNotExist", err)
	}
	loaded, err := identity.LoadCA(dir, identity.CAConfig{IssuingKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Root().Subject.Organization[0] != "signer fleet" {
		t.Errorf("fleet %v", loaded.Root().Subject.Organization)
	}
	der, err := loaded.SignCRL(1, []x509.RevocationListEntry{{SerialNumber: cert.SerialNumber, RevocationTime: loaded.Now()}})
	if err != nil {
		t.Fatal(err)
	}
	crl, err := identity.ParseCRL(der, loaded.Issuing())
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckRevoked(cert); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("the CRL signed by the given key does not list the certificate: %v", err)
	}

	// Another key than the one issuing.crt certifies.
	other, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.LoadCA(dir, identity.CAConfig{IssuingKey: other}); !errors.Is(err, identity.ErrMalformed) {
		t.Fatalf("LoadCA with another key: %v, want ErrMalformed", err)
	}

	// An issuing.key beside the signer, even the right key's, is refused.
	if err := identity.WriteKeyFile(filepath.Join(dir, identity.CAIssuingKeyFile), key); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.LoadCA(dir, identity.CAConfig{IssuingKey: key}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("LoadCA with a signer and an issuing.key: %v, want fs.ErrExist", err)
	}
	if _, err := identity.LoadCA(dir, identity.CAConfig{}); err != nil {
		t.Fatalf("LoadCA from the file alone: %v", err)
	}
}

// TestInitCAIssuingKeyRefusals: InitCA refuses an issuing key that is not
// ECDSA P-256, and a directory already holding an issuing.key, before it
// writes anything.
func TestInitCAIssuingKeyRefusals(t *testing.T) {
	ed, err := identity.GenerateKey(identity.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := identity.InitCA(dir, identity.CAConfig{IssuingKey: ed}); !errors.Is(err, identity.ErrUnsupportedKey) {
		t.Fatalf("Ed25519 issuing key: %v, want ErrUnsupportedKey", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused InitCA made the directory: %v", err)
	}

	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteKeyFile(filepath.Join(dir, identity.CAIssuingKeyFile), key); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.InitCA(dir, identity.CAConfig{IssuingKey: key}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("InitCA with a signer over an issuing.key: %v, want fs.ErrExist", err)
	}
	if _, err := os.Stat(filepath.Join(dir, identity.CARootKeyFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused InitCA wrote the root key: %v", err)
	}
}
