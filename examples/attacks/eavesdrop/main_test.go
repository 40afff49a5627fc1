// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestEavesdrop runs the attack and checks that the broker reads signed-only telemetry but not encrypted telemetry. run returns an error
// (and the test fails) if the attack got through.
func TestEavesdrop(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"JWS, signed only",
		"readable text: \"gsleep-1\" \"fvitals\" \"{\\\"heart_rate\\\":52",
		"JWE, encrypted",
		"found \"heart_rate\":52 in none of sleep-2's messages",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
