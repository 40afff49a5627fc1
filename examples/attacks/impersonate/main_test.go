// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestImpersonate runs the attack and checks that device A can neither publish nor subscribe as B, and A's envelope on B's topic is refused. run returns an error
// (and the test fails) if the attack got through.
func TestImpersonate(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"PUBACK reason 0x87",
		"transport: broker refused the message",
		"SUBACK reason 0x87",
		"transport: device mismatch: signed by \"meter-a\", topic is \"meter-b\"'s",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
