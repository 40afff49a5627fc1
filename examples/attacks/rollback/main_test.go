// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestRollback runs the attack and checks that an older signed release is refused as a rollback and the device stays on v2. run returns an error
// (and the test fails) if the attack got through.
func TestRollback(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"update: rollback: timestamp names release version 1, below the floor 2",
		"the gateway still runs v2",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
