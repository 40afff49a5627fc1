// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build cgo

package identity_test

import (
	"os"
	"testing"

	"github.com/d2c-iot/d2c/internal/testpeer"
)

// TestMain removes the process's softhsm2 configuration, which
// testpeer.SoftHSM makes for the tests with a CA key in a token
// (ca_pkcs11_test.go), once every test has run.
func TestMain(m *testing.M) {
	code := m.Run()
	testpeer.RemoveSoftHSM()
	os.Exit(code)
}
