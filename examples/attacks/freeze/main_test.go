// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestFreeze runs the attack and checks that an expired timestamp is refused, also by a device whose clock reads 1970. run returns an error
// (and the test fails) if the attack got through.
func TestFreeze(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"update: freeze: metadata expired",
		"now its wall clock reads 1970-01-01T00:00:00Z",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
