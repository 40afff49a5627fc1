// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package testpeer

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/d2c-iot/d2c/internal/hwpeer"
)

// SoftHSMToken is a softhsm2 token initialized by [SoftHSM] for one test.
type SoftHSMToken struct {
	// Module is the absolute path of libsofthsm2.so, for
	// identity/pkcs11's Config.Module.
	Module string
	// Label is the token's label, unique in the process.
	Label string
	// PIN is the user PIN (random).
	PIN string
	// Dir is the token's storage directory; removing it destroys the
	// token, as unplugging would.
	Dir string
}

// The process's softhsm2 (see SoftHSM).
var softhsm struct {
	once   sync.Once
	s      *hwpeer.SoftHSM
	stop   func()
	err    error
	tokens atomic.Int64
}

// SoftHSM initializes a fresh softhsm2 token for the test and returns it;
// the token's storage is removed when the test ends. A missing softhsm2
// fails the test (never skips it).
//
// softhsm2 reads its configuration from SOFTHSM2_CONF, a process-wide
// variable, once, when the PKCS#11 module is loaded; it lists its tokens
// at that moment too. So there is one softhsm2 configuration per test
// process: a token directory in a temporary directory, made and put in
// SOFTHSM2_CONF by the first call (sync.Once), before any module is
// loaded. Every call adds a token with its own label ("d2c-test-N") to
// it. A token made while the module is loaded in the process (a PKCS#11
// keystore is open) is not seen until the module is loaded again, which
// identity/pkcs11 does when its last keystore has been closed: call
// SoftHSM at the start of the test, and close keystores before the test
// ends (t.Cleanup). For the same reason, tests using SoftHSM must not run
// in parallel with tests that hold a keystore open.
//
// A package's TestMain should call [RemoveSoftHSM] after m.Run, to remove
// the configuration directory.
func SoftHSM(t testing.TB) SoftHSMToken {
	t.Helper()
	Require(t, "softhsm2-util")
	softhsm.once.Do(func() { softhsm.s, softhsm.stop, softhsm.err = hwpeer.StartSoftHSM() })
	if softhsm.err != nil {
		t.Fatalf("testpeer: %v", softhsm.err)
	}
	tok, err := softhsm.s.InitToken(fmt.Sprintf("d2c-test-%d", softhsm.tokens.Add(1)))
	if err != nil {
		t.Fatalf("testpeer: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(tok.Dir) })
	return SoftHSMToken{Module: tok.Module, Label: tok.Label, PIN: tok.PIN, Dir: tok.Dir}
}

// RemoveSoftHSM removes the process's softhsm2 configuration directory,
// if [SoftHSM] made one, and restores SOFTHSM2_CONF. Call it from TestMain
// after m.Run, when no keystore is open any more.
func RemoveSoftHSM() {
	if softhsm.stop != nil {
		softhsm.stop()
	}
}
