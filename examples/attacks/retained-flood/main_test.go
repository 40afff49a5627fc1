// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestRetainedFlood runs the attack and checks that every retained
// PUBLISH is refused with DISCONNECT 0x9A, that a later subscriber receives
// none of them, and that the honest meter is served. run returns an error
// (and the test fails) if the attack got through.
func TestRetainedFlood(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"every one was answered DISCONNECT reason 0x9a",
		"nothing of meter-r's",
		"the verifier accepted all 9 readings",
		"retain_available false",
		"memory_limit 1073741824",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
