// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"errors"
	"testing"

	"github.com/d2c-iot/d2c/transport"
)

// TestDialCloudRefusesGuessableGroup: a shared-subscription group name a
// device could guess is refused before anything connects (on mosquitto, a
// device in the group makes the broker drop its share of the messages).
func TestDialCloudRefusesGuessableGroup(t *testing.T) {
	f := newE2EFleet(t)
	for _, group := range []string{"verifiers", "g", "0123456789abcde", "verifiers/with/slash-123456789", "has+plus-1234567890"} {
		_, err := transport.DialCloud(t.Context(), transport.CloudConfig{Broker: f.broker.Addr(), Certificate: f.serviceCert("verifier"),
			Roots: f.roots, Verifier: f.verifier(), Group: group})
		if !errors.Is(err, transport.ErrInsecureGroup) {
			t.Errorf("group %q: %v, want ErrInsecureGroup", group, err)
		}
	}
}
