// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"context"
	"crypto"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/security"
	"github.com/d2c-iot/d2c/transport/wire"
)

// TestSecurityReportsEndToEnd: the device counts a forged command and
// application events, reports them as signed telemetry on the security
// stream, and a SecurityMonitor on the cloud side decodes the reports and
// raises one alert per counter that crosses its threshold in the window.
// Reports stop while nothing changes.
func TestSecurityReportsEndToEnd(t *testing.T) {
	f := newE2EFleet(t)
	store := f.enroll("gateway-1")
	col := newCollector()
	f.dialCloud(f.broker.Addr(), col, f.verifier())
	commander := f.cloud(newCollector(), nil, "commander")
	dev := dialDevice(t, transport.ClientConfig{Broker: f.broker.Addr(), Store: store,
		CommandKeys: []crypto.PublicKey{f.cmdKey.Public()}, OnCommand: func(context.Context, transport.Command) {},
		SecurityReportInterval: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := dev.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var alerts []security.Alert
	mon := &security.Monitor{
		Thresholds: map[string]security.Threshold{
			"update_failures":                {Max: 2, Window: time.Hour},
			security.MetricCommandsRefused:   {Max: 0, Window: time.Hour},
			security.MetricConnectFailures:   {Max: 0, Window: time.Hour}, // none happen
			security.MetricOutboxQuarantined: {Max: 0, Window: time.Hour},
		},
		OnAlert: func(a security.Alert) { mu.Lock(); alerts = append(alerts, a); mu.Unlock() },
	}
	seen := 0
	var last security.Report
	observe := func() int {
		recs := col.snapshot()
		for _, r := range recs[seen:] {
			if r.Stream != wire.SecurityStream {
				t.Fatalf("record on stream %q", r.Stream)
			}
			rep, err := mon.Observe(r)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Device != "gateway-1" || !rep.Since.Before(rep.Time) && !rep.Since.Equal(rep.Time) {
				t.Fatalf("report %+v", rep)
			}
			last = rep
		}
		seen = len(recs)
		return seen
	}
	waitTotals := func(want map[string]uint64) {
		t.Helper()
		ok := waitFor(10*time.Second, func() bool {
			observe()
			for k, v := range want {
				if last.Totals[k] != v {
					return false
				}
			}
			return true
		})
		if !ok {
			t.Fatalf("latest report %+v, want totals %v", last, want)
		}
	}

	// A command signed with a key the device does not trust.
	forger, _ := identity.GenerateKey(identity.ECDSAP256)
	env, err := (&transport.CommandSigner{Key: forger}).Sign(transport.Command{Device: "gateway-1", Name: "unlock"})
	if err != nil {
		t.Fatal(err)
	}
	if err := commander.SendCommand(t.Context(), "gateway-1", env); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := dev.RecordSecurityEvent("update_failures"); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []string{"", "Update", "auth_failures", "x/y"} {
		if dev.RecordSecurityEvent(bad) == nil {
			t.Errorf("RecordSecurityEvent(%q) accepted", bad)
		}
	}
	waitTotals(map[string]uint64{"update_failures": 3, security.MetricCommandsRefused: 1})
	mu.Lock()
	if len(alerts) != 2 {
		t.Fatalf("alerts %+v, want one for update_failures and one for commands_refused", alerts)
	}
	mu.Unlock()

	// More of the same within the window: counted, no second alert.
	for range 2 {
		dev.RecordSecurityEvent("update_failures")
	}
	waitTotals(map[string]uint64{"update_failures": 5, security.MetricCommandsRefused: 1})
	if last.Counts["update_failures"] == 0 || last.Counts[security.MetricCommandsRefused] != 0 {
		t.Errorf("latest report counts %v: want the new update failures only", last.Counts)
	}
	// Nothing new: no more reports.
	n := observe()
	time.Sleep(500 * time.Millisecond)
	if m := observe(); m != n {
		t.Errorf("%d reports while nothing changed", m-n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(alerts) != 2 || mon.Alerts() != 2 {
		t.Fatalf("alerts %+v, want 2", alerts)
	}
	for _, a := range alerts {
		if a.Device != "gateway-1" || a.Count <= a.Threshold.Max {
			t.Errorf("alert %+v", a)
		}
	}
}
