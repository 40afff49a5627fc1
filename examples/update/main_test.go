// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestUpdateExample runs the example end to end and checks that each step
// printed what it shows: the install, the confirm, the revert, and the
// three attacks refused with the attack named.
func TestUpdateExample(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), nil, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"[4] The device checks", "installed in slot b, phase trial",
		"health check passed → Confirm: running v1, security-counter floor now 1",
		"reverted: running v1 again",
		"refused: update: rollback:",
		"refused: update: arbitrary software: artifact digest mismatch",
		"refused: update: freeze: metadata expired",
		"done: one release installed and confirmed, one reverted, three attacks refused",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
