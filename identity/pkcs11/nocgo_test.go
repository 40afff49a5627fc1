// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build !cgo

package pkcs11_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/identity/pkcs11"
)

// TestOpenWithoutCgo: a program built without cgo gets a clear error.
func TestOpenWithoutCgo(t *testing.T) {
	_, err := pkcs11.Open(pkcs11.Config{Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "device", PIN: "1234"})
	if err == nil || !strings.Contains(err.Error(), "built without cgo: PKCS#11 needs cgo") {
		t.Fatalf("Open without cgo: %v", err)
	}
}

// TestOpenURIWithoutCgo: without cgo a URI still parses, so a bad one is
// refused for what it is, and opening a good one fails as Open does.
func TestOpenURIWithoutCgo(t *testing.T) {
	const uri = "pkcs11:token=fleet-ca;object=issuing?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/d2c/ca.pin"
	if _, _, err := pkcs11.ParseURI(uri); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pkcs11.OpenURI(t.Context(), uri); err == nil || !strings.Contains(err.Error(), "built without cgo: PKCS#11 needs cgo") {
		t.Fatalf("OpenURI without cgo: %v", err)
	}
	if _, _, err := pkcs11.OpenURI(t.Context(), uri+"&pin-value=1"); !errors.Is(err, pkcs11.ErrUnsupportedURI) {
		t.Fatalf("OpenURI of a bad URI without cgo: %v", err)
	}
}
