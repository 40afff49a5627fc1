// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import "testing"

// TestUpdateResultRunning: the agent's "running" report, made at each
// start, is no update step: UpdateResult records nothing for it (and
// never an update.failed).
func TestUpdateResultRunning(t *testing.T) {
	l := openTest(t, t.TempDir(), nil)
	before, _ := l.Head()
	if err := l.UpdateResult(t.Context(), "running", 3, 3, ""); err != nil {
		t.Fatal(err)
	}
	if after, _ := l.Head(); after != before {
		t.Fatalf("head moved from %d to %d: a running report was recorded", before, after)
	}
	if err := l.UpdateResult(t.Context(), "confirmed", 3, 2, ""); err != nil {
		t.Fatal(err)
	}
	if after, _ := l.Head(); after != before+1 {
		t.Fatalf("head at %d after a confirm, want %d", after, before+1)
	}
}
