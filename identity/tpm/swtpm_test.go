// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package tpm

import (
	"testing"

	"github.com/d2c-iot/d2c/internal/testpeer"
)

// The tests run against swtpm, a TPM 2.0 simulator started for each test
// by testpeer.SWTPM (state in a temporary directory, listening on
// 127.0.0.1 only, killed when the test ends).

// openTest opens a keystore on sw with its key files in a fresh directory,
// closed by a t.Cleanup.
func openTest(t testing.TB, sw *testpeer.TPM) *Keystore {
	t.Helper()
	ks, err := Open(Config{Addr: sw.Addr, Dir: t.TempDir() + "/keys"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ks.Close() })
	return ks
}
