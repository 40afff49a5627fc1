// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestDefaultPassword runs the attack and checks that a password login is refused at TLS and no plaintext listener exists. run returns an error
// (and the test fails) if the attack got through.
func TestDefaultPassword(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"remote error: tls: certificate required",
		"no CONNACK",
		"listener 8883 0.0.0.0",
		"require_certificate true",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
