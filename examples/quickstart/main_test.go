// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
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
		"[2] Cloud: MQTT v5 broker on 127.0.0.1:",
		"[3] Cloud: the cloud service, one cloud.Run on the store sqlite:",
		"EST registrar (RFC 7030) listening on https://127.0.0.1:",
		"/healthz, /readyz, /metrics (Prometheus) on http://127.0.0.1:",
		"[4] Operator: issued a one-time enrollment token for \"sensor-0001\"",
		"[5] Device: generated its own key and enrolled over EST",
		"certificate: CN=sensor-0001, urn:d2c:device:sensor-0001",
		"[6] Attacker: replayed the same token",
		"refused: identity: EST server refused (HTTP 401): identity: enrollment token already used",
		"[7] Device: renewed its certificate with a new key",
		"[8] Device: published readings",
		"[9] Cloud: the service verified each reading",
		"sensor-0001/temperature boot 1 seq 0: {\"celsius\":21.5}",
		"/metrics: accepted 3, refused 0",
		"[10] Application: POST https://127.0.0.1:",
		"authenticated by its client certificate (svc:app)",
		"[11] Device: obeyed the command, signed by the fleet's command key in the service: set-interval 60s",
		"succeeded, \"interval 60s\" (the device's signed result, verified by the service)",
		"the same command replayed through the broker: refused",
		"[13] Vendor: signed release 2",
		"[14] Device: verified root → timestamp → release 2, downloaded it into slot b while hashing, switched on trial",
		"restarted into slot b: on trial, start 1 of 3",
		"health check passed → Confirm: running release 2; the anti-rollback floor rose to 2",
		"cloud, verified from the device: update installed, release 2",
		"cloud, verified from the device: update confirmed, release 2",
		"[15] Attacker: served the older, validly signed release 1",
		"refused: update: rollback:",
		"cloud, verified from the device: update refused: update: rollback:",
		"[16] Cloud: revoked the device (say it was stolen) in the store: its 2 certificates",
		"the service's next CRL for the broker lists it",
		"renewal is refused: identity: EST server refused (HTTP 401): identity: certificate revoked",
		"Done in",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q\n%s", want, out.String())
		}
	}
}

// TestQuickstartKeep: by default the quickstart leaves nothing behind;
// with --keep its directory stays, with the cloud store that "d2c tail
// --db" reads.
func TestQuickstartKeep(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	if err := run(t.Context(), nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("the quickstart left %v in %s", left, tmp)
	}
	var out bytes.Buffer
	if err := run(t.Context(), []string{"--keep"}, &out); err != nil {
		t.Fatalf("quickstart --keep failed: %v\n%s", err, out.String())
	}
	left, _ := filepath.Glob(filepath.Join(tmp, "d2c-quickstart-*", "cloud", "fleet.db"))
	if len(left) != 1 {
		t.Fatalf("no cloud store kept in %s", tmp)
	}
	if want := "d2c tail --db sqlite:" + left[0]; !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q\n%s", want, out.String())
	}
}
