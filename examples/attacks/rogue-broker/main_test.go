// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestRogueBroker runs the attack and checks that the 256 MiB packet is
// refused at its length with little memory, that the device backs off,
// and that the unsigned and foreign-signed commands are refused while the
// readings are delivered. run returns an error (and the test fails) if the
// attack got through.
func TestRogueBroker(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"30 ff ff ff 7f 00 05 64",
		"transport: broker sent a packet over the client's Maximum Packet Size: a 268435460-byte packet, limit 327680",
		"reconnection gaps:",
		"QueueDepth 5",
		"transport: malformed envelope: unexpected signature algorithm \"none\"",
		"transport: bad signature: command signed by unknown key",
		"the 5 readings went out",
		"STOPPED:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
