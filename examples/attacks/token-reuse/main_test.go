// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestTokenReuse runs the attack and checks that a used token is refused, also after a restart and under another ID, and nothing is recorded. run returns an error
// (and the test fails) if the attack got through.
func TestTokenReuse(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"identity: enrollment token already used",
		"identity: not authorized: token is for device \"cam-7\", presented by \"cam-8\"",
		"tokens recorded as used: still 1",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
