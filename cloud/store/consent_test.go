// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/consent"
	"github.com/d2c-iot/d2c/transport/wire"
)

func consentRec(device string, seq uint64, granted bool, change uint64) transport.Record {
	body := fmt.Sprintf(`{"v":1,"stream":"location","purpose":"find a lost bike","granted":%v,"change":%d,"time":1700000000000}`, granted, change)
	return transport.Record{Device: device, Stream: wire.ConsentStream, Boot: 1, Seq: seq, Time: time.UnixMilli(1_700_000_000_000),
		Readings: []transport.Reading{{Time: time.UnixMilli(1_700_000_000_000), Body: []byte(body)}}}
}

func locRec(device string, seq uint64) transport.Record {
	r := rec(device, 1, seq)
	r.Stream = "location"
	return r
}

// TestAcceptAppliesConsent: consent events are kept in the same
// transaction that accepts them, and every verifier sharing the store
// drops a personal record sealed before a withdrawal, even one that
// arrives after it through another replica, and one sealed after it with
// no new grant; the ledger survives a restart (LoadConsentLedger).
func TestAcceptAppliesConsent(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		a, b := openStore(t, url), openStore(t, url)
		accept := func(s *Store, recs ...transport.Record) []error {
			t.Helper()
			v, err := s.Accept(t.Context(), recs)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		// Granted at seq 1; readings at 2 and 3; withdrawn at 5 (through
		// replica a); reading 4, sealed before the withdrawal but arriving
		// after it through replica b, is dropped; so is 6, sealed after
		// it; granted again at 7, reading 8 passes.
		for i, v := range accept(a, consentRec("bike-1", 1, true, 1), locRec("bike-1", 2), locRec("bike-1", 3)) {
			if v != nil {
				t.Fatalf("record %d: %v", i, v)
			}
		}
		if v := accept(a, consentRec("bike-1", 5, false, 2)); v[0] != nil {
			t.Fatal(v[0])
		}
		for _, seq := range []uint64{4, 6} {
			if v := accept(b, locRec("bike-1", seq)); !errors.Is(v[0], consent.ErrNoConsent) {
				t.Fatalf("reading %d: %v, want ErrNoConsent", seq, v[0])
			}
		}
		if v := accept(b, consentRec("bike-1", 7, true, 3), locRec("bike-1", 8)); v[0] != nil || v[1] != nil {
			t.Fatalf("grant and reading after it: %v", v)
		}
		// Another device, with no consent events, is not governed.
		if v := accept(a, locRec("bike-2", 1)); v[0] != nil {
			t.Fatal(v[0])
		}
		var n int
		if err := a.db.QueryRow("SELECT COUNT(*) FROM records WHERE stream = 'location'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 4 { // bike-1 2, 3, 8; bike-2 1
			t.Fatalf("%d location records kept, want 4", n)
		}
		// The withdrawal superseded the first grant: only it and the
		// grant after it are kept.
		if err := a.db.QueryRow("SELECT COUNT(*) FROM consent").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("%d consent events kept, want 2 (the latest withdrawal and the grant after it)", n)
		}
		l := &consent.Ledger{}
		if err := openStore(t, url).LoadConsentLedger(t.Context(), l); err != nil {
			t.Fatal(err)
		}
		if l.Allowed(locRec("bike-1", 6)) || !l.Allowed(locRec("bike-1", 9)) {
			t.Fatal("the ledger loaded from the store disagrees with the events")
		}
	})
}
