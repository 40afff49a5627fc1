// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package testpki

import (
	"bytes"
	"crypto"
	"errors"
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/d2c-iot/d2c/identity"
)

// Registrar serves an EST registrar on ca over HTTPS on 127.0.0.1 (its
// server certificate issued from ca), taking enrollment tokens signed by
// tokenKey and recording used ones in usedTokens; it stops when the test
// ends.
func Registrar(t testing.TB, ca *identity.CA, tokenKey crypto.PublicKey, usedTokens string) *httptest.Server {
	t.Helper()
	used, err := identity.OpenUsedTokens(usedTokens, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { used.Close() })
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: ca, TokenKeys: []crypto.PublicKey{tokenKey}, UsedTokens: used})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(reg)
	srv.TLS = reg.TLSConfig(Server(t, ca, "127.0.0.1"))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// NoIssuingKeyOnDisk fails the test if the CA directory dir holds an
// issuing.key, or any private key file holding issuing (the key
// issuing.crt certifies), or lacks root.key, which ca init leaves for the
// operator to move offline.
func NoIssuingKeyOnDisk(t testing.TB, dir string, issuing crypto.PublicKey) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, identity.CAIssuingKeyFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s: %v, want none", identity.CAIssuingKeyFile, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("PRIVATE KEY")) {
			continue
		}
		keys = append(keys, e.Name())
		k, err := identity.ReadKeyFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(issuing) {
			t.Fatalf("%s holds the issuing key", e.Name())
		}
	}
	if !slices.Contains(keys, identity.CARootKeyFile) {
		t.Fatalf("private key files %v, without %s", keys, identity.CARootKeyFile)
	}
}
