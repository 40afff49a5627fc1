// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package security

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/transport/wire"
)

func securityRecord(device string, seq uint64, body string) wire.Record {
	return wire.Record{Device: device, Stream: wire.SecurityStream, Boot: 1, Seq: seq, Time: time.UnixMilli(1795000300000),
		Readings: []wire.Reading{{Time: time.UnixMilli(1795000300000), Body: []byte(body)}}}
}

func TestParseSecurityReport(t *testing.T) {
	rep, err := ParseReport(securityRecord("dev-1", 7,
		`{"v":1,"since":1795000000000,"counts":{"auth_failures":2,"update_failures":1,"reconnects":0},"totals":{"auth_failures":5,"update_failures":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Device != "dev-1" || rep.Seq != 7 || !rep.Since.Equal(time.UnixMilli(1795000000000)) || !rep.Time.Equal(time.UnixMilli(1795000300000)) ||
		!maps.Equal(rep.Counts, map[string]uint64{"auth_failures": 2, "update_failures": 1}) ||
		!maps.Equal(rep.Totals, map[string]uint64{"auth_failures": 5, "update_failures": 1}) {
		t.Fatalf("report %+v", rep)
	}
	many := make([]string, maxReportCounters+1)
	for i := range many {
		many[i] = fmt.Sprintf(`"c%d":1`, i)
	}
	for name, body := range map[string]string{
		"unknown field": `{"v":1,"since":0,"counts":{},"totals":{},"extra":1}`,
		"version":       `{"v":2,"since":0,"counts":{},"totals":{}}`,
		"bad name":      `{"v":1,"since":0,"counts":{"Auth-Failures":1},"totals":{}}`,
		"long name":     `{"v":1,"since":0,"counts":{"` + strings.Repeat("a", MaxMetricName+1) + `":1},"totals":{}}`,
		"negative":      `{"v":1,"since":0,"counts":{"auth_failures":-1},"totals":{}}`,
		"fraction":      `{"v":1,"since":0,"counts":{"auth_failures":1.5},"totals":{}}`,
		"too many":      `{"v":1,"since":0,"counts":{` + strings.Join(many, ",") + `},"totals":{}}`,
		"trailing":      `{"v":1,"since":0,"counts":{},"totals":{}} 1`,
	} {
		if _, err := ParseReport(securityRecord("dev-1", 1, body)); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	rec := securityRecord("dev-1", 1, `{"v":1,"since":0,"counts":{},"totals":{}}`)
	rec.Stream = "temp"
	if _, err := ParseReport(rec); !errors.Is(err, wire.ErrMalformed) {
		t.Errorf("other stream: %v", err)
	}
}

func report(counts map[string]uint64) string {
	var parts []string
	for k, v := range counts {
		parts = append(parts, fmt.Sprintf("%q:%d", k, v))
	}
	return `{"v":1,"since":0,"counts":{` + strings.Join(parts, ",") + `},"totals":{}}`
}

// TestSecurityMonitorOneAlertPerWindow: a counter summed over reports
// raises one alert when it goes above Max, none for the rest of the
// window, and one again in the next window; other counters and devices
// are counted apart.
func TestSecurityMonitorOneAlertPerWindow(t *testing.T) {
	now := time.Unix(1795000000, 0)
	var alerts []Alert
	m := &Monitor{
		Thresholds: map[string]Threshold{
			MetricAuthFailures:    {Max: 5, Window: 10 * time.Minute},
			MetricCommandsRefused: {Max: 0}, // any event, default window
		},
		OnAlert: func(a Alert) { alerts = append(alerts, a) },
		Now:     func() time.Time { return now },
	}
	seq := uint64(0)
	feed := func(device string, counts map[string]uint64) {
		t.Helper()
		seq++
		if _, err := m.Observe(securityRecord(device, seq, report(counts))); err != nil {
			t.Fatal(err)
		}
	}
	feed("dev-1", map[string]uint64{MetricAuthFailures: 3, MetricReconnects: 100}) // 3; reconnects have no threshold
	feed("dev-1", map[string]uint64{MetricAuthFailures: 2})                        // 5: at Max, no alert
	if len(alerts) != 0 {
		t.Fatalf("alerts at the threshold: %+v", alerts)
	}
	now = now.Add(time.Minute)
	feed("dev-1", map[string]uint64{MetricAuthFailures: 1}) // 6: alert
	feed("dev-2", map[string]uint64{MetricAuthFailures: 5}) // another device: 5
	now = now.Add(time.Minute)
	feed("dev-1", map[string]uint64{MetricAuthFailures: 50}) // same window: no second alert
	if len(alerts) != 1 {
		t.Fatalf("alerts %+v, want one", alerts)
	}
	a := alerts[0]
	want := Alert{Device: "dev-1", Counter: MetricAuthFailures, Count: 6, Threshold: Threshold{Max: 5, Window: 10 * time.Minute},
		WindowStart: time.Unix(1795000000, 0), Time: time.Unix(1795000060, 0), Boot: 1, Seq: 3}
	if a != want {
		t.Fatalf("alert\n got %+v\nwant %+v", a, want)
	}
	// The next window: counting starts again.
	now = time.Unix(1795000000, 0).Add(10 * time.Minute)
	feed("dev-1", map[string]uint64{MetricAuthFailures: 5})
	if len(alerts) != 1 {
		t.Fatalf("alert at 5 in a new window: %+v", alerts[1:])
	}
	feed("dev-1", map[string]uint64{MetricAuthFailures: 1})
	if len(alerts) != 2 || alerts[1].Count != 6 || !alerts[1].WindowStart.Equal(now) {
		t.Fatalf("new window: %+v", alerts)
	}
	// Max 0: the first event alerts.
	feed("dev-3", map[string]uint64{MetricCommandsRefused: 1})
	if len(alerts) != 3 || alerts[2].Threshold.Window != DefaultAlertWindow || m.Alerts() != 3 {
		t.Fatalf("Max 0: %+v", alerts)
	}
	// A malformed report changes nothing.
	if _, err := m.Observe(securityRecord("dev-4", 1, `{"v":1}{}`)); err == nil || m.Len() != 3 {
		t.Fatalf("malformed report: %v, %d devices", err, m.Len())
	}
	m.Forget("dev-3")
	if m.Len() != 2 {
		t.Fatalf("after Forget: %d devices", m.Len())
	}
}

// TestSecurityMonitorBounded: memory stays within MaxDevices whatever the
// fleet sends, least recently reporting devices forgotten first; devices
// without thresholded events take no memory.
func TestSecurityMonitorBounded(t *testing.T) {
	var alerts int
	m := &Monitor{Thresholds: map[string]Threshold{MetricAuthFailures: {Max: 1}}, MaxDevices: 100,
		OnAlert: func(Alert) { alerts++ }}
	for i := range 1000 {
		if _, err := m.Observe(securityRecord(fmt.Sprintf("dev-%d", i), 1, report(map[string]uint64{MetricReconnects: 3}))); err != nil {
			t.Fatal(err)
		}
	}
	if m.Len() != 0 {
		t.Fatalf("%d devices tracked for counters without a threshold", m.Len())
	}
	for i := range 1000 {
		if _, err := m.Observe(securityRecord(fmt.Sprintf("dev-%d", i), 2, report(map[string]uint64{MetricAuthFailures: 1}))); err != nil {
			t.Fatal(err)
		}
		if m.Len() > 100 {
			t.Fatalf("%d devices tracked, MaxDevices 100", m.Len())
		}
	}
	// dev-999 is tracked (one more event alerts); dev-0 was forgotten (one
	// event is below Max again).
	m.Observe(securityRecord("dev-999", 3, report(map[string]uint64{MetricAuthFailures: 1})))
	m.Observe(securityRecord("dev-0", 3, report(map[string]uint64{MetricAuthFailures: 1})))
	if alerts != 1 {
		t.Fatalf("%d alerts, want 1 (dev-999)", alerts)
	}
}
