package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestQuickstart runs the quickstart end to end and checks each narrated step.
func TestQuickstart(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), nil, &out); err != nil {
		t.Fatalf("quickstart failed: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"[1] Cloud: created the fleet CA",
		"root fingerprint (SHA-256):",
		"[2] Cloud: EST registrar (RFC 7030) listening on https://127.0.0.1:",
		"[3] Operator: issued a one-time enrollment token for \"sensor-0001\"",
		"[4] Device: generated its own key and enrolled over EST",
		"certificate: CN=sensor-0001, urn:d2c:device:sensor-0001",
		"[5] Attacker: replayed the same token",
		"refused: identity: EST server refused (HTTP 401)",
		"[6] Device: renewed its certificate with a new key",
		"[7] Cloud: MQTT v5 broker on 127.0.0.1:",
		"[8] Device: published readings",
		"[9] Cloud: verified each reading",
		"sensor-0001/temperature boot 1 seq 0: {\"celsius\":21.5}",
		"accepted 3, refused 0",
		"[10] Device: obeyed a command signed by the fleet's command key: set-interval 60s",
		"the same command replayed: refused",
		"[11] Vendor: signed release 2",
		"[12] Device: verified root → timestamp → release 2, downloaded it into slot b while hashing, switched on trial",
		"restarted into slot b: on trial, start 1 of 3",
		"health check passed → Confirm: running release 2; the anti-rollback floor rose to 2",
		"cloud, verified from the device: update installed, release 2",
		"cloud, verified from the device: update confirmed, release 2",
		"[13] Attacker: served the older, validly signed release 1",
		"refused: update: rollback:",
		"cloud, verified from the device: update refused: update: rollback:",
		"[14] Cloud: revoked the device",
		"renewal is refused",
		"Done in",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q\n%s", want, out.String())
		}
	}
}
