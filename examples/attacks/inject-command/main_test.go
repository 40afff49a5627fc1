// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestInjectCommand runs the attack and checks that unsigned, foreign-signed, replayed and misdirected commands are refused. run returns an error
// (and the test fails) if the attack got through.
func TestInjectCommand(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"transport: malformed envelope: unexpected signature algorithm \"none\"",
		"transport: bad signature: command signed by unknown key",
		"transport: command replayed",
		"transport: device mismatch: command for \"lock-2\" received by \"lock-1\"",
		"the 4 injected ones were refused and reported",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
