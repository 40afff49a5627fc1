// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestTamperedImage runs the attack and checks that a tampered image is refused, its slot cleared, the running slot untouched. run returns an error
// (and the test fails) if the attack got through.
func TestTamperedImage(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"update: arbitrary software: artifact digest mismatch",
		"slot b, where the download went, was cleared (0 bytes)",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
