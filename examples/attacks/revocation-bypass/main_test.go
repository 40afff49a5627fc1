// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestRevocationBypass runs the attack and checks that the first
// certificate, superseded by a renewal, cannot renew after the two newest
// were revoked, that the revoked ones cannot either, and that revoking the
// device leaves no certificate of it. run returns an error (and the test
// fails) if the attack gets through.
func TestRevocationBypass(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"identity: certificate superseded by a renewal",
		"(errors.Is(err, identity.ErrSuperseded))",
		"identity: certificate revoked",
		"a renewal supersedes the certificate that authenticated it",
		"1 more certificate revoked",
		"the registry lists no certificate of pump-3 any more",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
