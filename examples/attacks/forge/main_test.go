// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestForge runs the attack and checks that a certificate from the attacker's CA and telemetry signed by the attacker's key are refused. run returns an error
// (and the test fails) if the attack got through.
func TestForge(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"the broker refused the TLS handshake: remote error: tls:",
		"transport: bad signature",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
