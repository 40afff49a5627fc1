// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package testpeer

import (
	"testing"

	"github.com/d2c-iot/d2c/internal/hwpeer"
)

// TPM is a swtpm TPM 2.0 simulator started by [SWTPM] for one test.
type TPM struct {
	// Addr is the command socket, "127.0.0.1:<port>", for identity/tpm's
	// Config.Addr. swtpm serves one connection at a time.
	Addr string

	sw *hwpeer.SWTPM
}

// Kill stops the simulator with SIGKILL, as a TPM that stops answering
// would, and waits for it.
func (s *TPM) Kill() { s.sw.Kill() }

// Output returns what swtpm wrote so far.
func (s *TPM) Output() string { return s.sw.Output() }

// SWTPM starts a fresh TPM 2.0 simulator for the test (new state, so new
// seeds; manufactured and started up) and returns once its command socket
// on 127.0.0.1 accepts connections. It is killed, and its state removed,
// when the test ends; if the test failed, its output is logged. A missing
// swtpm fails the test (never skips it).
func SWTPM(t testing.TB) *TPM {
	t.Helper()
	Require(t, "swtpm")
	sw, stop, err := hwpeer.StartSWTPM()
	if err != nil {
		t.Fatalf("testpeer: %v", err)
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("swtpm %s output:\n%s", sw.Addr, sw.Output())
		}
	})
	return &TPM{Addr: sw.Addr, sw: sw}
}
