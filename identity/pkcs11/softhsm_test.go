// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build cgo

package pkcs11_test

import (
	"os"
	"testing"

	"github.com/d2c-iot/d2c/identity/pkcs11"
	"github.com/d2c-iot/d2c/internal/testpeer"
)

// The tests run against softhsm2, the software PKCS#11 token packaged by
// Debian, through testpeer.SoftHSM: one softhsm2 configuration for the
// test process, and a fresh token for each test. A token is listed when
// the module is loaded, so each test makes its token before opening a
// keystore, and closes its keystores before it ends (t.Cleanup), which
// unloads the module.

func TestMain(m *testing.M) {
	code := m.Run()
	testpeer.RemoveSoftHSM()
	os.Exit(code)
}

// config is the keystore configuration for tok.
func config(tok testpeer.SoftHSMToken) pkcs11.Config {
	return pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN}
}

// openKeystore opens the token tok and closes it when the test ends.
func openKeystore(t testing.TB, tok testpeer.SoftHSMToken) *pkcs11.Keystore {
	t.Helper()
	ks, err := pkcs11.Open(config(tok))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ks.Close(); err != nil {
			t.Error(err)
		}
	})
	return ks
}
