// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestReplay runs the attack and checks that a duplicate is dropped quietly and a replay past the window is refused. run returns an error
// (and the test fails) if the attack got through.
func TestReplay(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"(wire.ErrDuplicate) and dropped it",
		"not reported (accepted 1, duplicates 1)",
		"transport: replayed message: door-1 boot 1 seq 0 is 300 behind the newest",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
