// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"context"
	"crypto"
	"path/filepath"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/audit"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/consent"
)

// TestClientAudit: a command injected through the broker (signed by a key
// that is not the fleet's) is refused and recorded in the device's audit
// log, as is a consent change; the log verifies.
func TestClientAudit(t *testing.T) {
	f := newE2EFleet(t)
	store := f.enroll("audited-1")
	commander := f.cloud(newCollector(), nil, "commander")
	dir := filepath.Join(t.TempDir(), "audit")
	log, err := audit.Open(audit.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	dev, err := transport.Dial(t.Context(), transport.ClientConfig{Broker: f.broker.Addr(), Store: store,
		CommandKeys: []crypto.PublicKey{f.cmdKey.Public()}, OnCommand: func(context.Context, transport.Command) {},
		Streams: []consent.Policy{{Stream: "location", Purpose: "find my device", Personal: true}},
		Audit:   log})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close(context.Background())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := dev.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}
	rogue, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	env, err := (&transport.CommandSigner{Key: rogue, TTL: time.Minute}).Sign(transport.Command{Device: "audited-1", Name: "unlock"})
	if err != nil {
		t.Fatal(err)
	}
	if err := commander.SendCommand(ctx, "audited-1", env); err != nil {
		t.Fatal(err)
	}
	for dev.Stats().CommandsRefused == 0 && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	if err := dev.GrantConsent(ctx, "location", "find my device"); err != nil {
		t.Fatal(err)
	}
	recs, _, err := audit.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []audit.Kind
	for _, r := range recs {
		got = append(got, r.Kind)
	}
	if len(got) != 3 || got[1] != audit.KindCommandRefused || got[2] != audit.KindConsent {
		t.Fatalf("audit records %v, want checkpoint, command refused, consent", got)
	}
}
