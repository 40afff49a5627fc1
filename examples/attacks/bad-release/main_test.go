// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestBadRelease runs the lab and checks that the campaign halts the bad
// release at its threshold and that a widened timestamp is refused. run
// returns an error (and the test fails) if the campaign never halted, or
// the release reached a gateway after the phase where it halted.
func TestBadRelease(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"aborted in phase",
		"at or above the abort threshold of 20%",
		"halted (timestamp version",
		"bad signature",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
