// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/update"
)

// TestUpdateReports: the update reports of every device, in each device's
// order, strictly decoded; other streams, bodies that do not decode and
// readings before since are left out, and what does not decode is
// counted in the log.
func TestUpdateReports(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		var logged bytes.Buffer
		s, err := Open(t.Context(), Config{URL: url, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		t0 := time.UnixMilli(1_800_000_000_000)
		body := func(r update.Result) []byte {
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		rec := func(dev, stream string, boot, seq uint64, at time.Time, bodies ...[]byte) transport.Record {
			r := transport.Record{Device: dev, Stream: stream, Boot: boot, Seq: seq, Time: at}
			for i, b := range bodies {
				r.Readings = append(r.Readings, transport.Reading{Time: at.Add(time.Duration(i) * time.Millisecond), Body: b})
			}
			return r
		}
		running := update.Result{Event: "running", Version: 2, From: 2, Time: t0.UnixMilli(), SBOM: strings.Repeat("ab", 32),
			SupportUntil: t0.Add(24 * time.Hour).UnixMilli(), HardwareClass: "gw-1"}
		confirmed := update.Result{Event: "confirmed", Version: 3, From: 2, Time: t0.Add(time.Minute).UnixMilli(), HardwareClass: "gw-1"}
		verdicts, err := s.Accept(t.Context(), []transport.Record{
			rec("dev-b", update.ReportStream, 1, 1, t0, body(running)),
			rec("dev-a", update.ReportStream, 1, 7, t0, body(running), []byte(`{"event":"running","version":1,"from":0,"time":1,"extra":true}`),
				[]byte(`{"event":"running","version":1,"from":0,"time":1} {}`), []byte(`not json`), []byte(`{}`)),
			rec("dev-a", "temperature", 1, 8, t0, []byte(`{"event":"running","version":9,"from":0,"time":1}`)),
			rec("dev-a", update.ReportStream, 2, 1, t0.Add(time.Minute), body(confirmed)),
			rec("dev-c", update.ReportStream, 1, 1, t0.Add(-time.Hour), body(running)),
		})
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range verdicts {
			if v != nil {
				t.Fatalf("record %d refused: %v", i, v)
			}
		}
		got, err := s.UpdateReports(t.Context(), t0.Add(-time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		want := []UpdateReport{
			{Device: "dev-a", Boot: 1, Seq: 7, Time: t0, Result: running},
			{Device: "dev-a", Boot: 2, Seq: 1, Time: t0.Add(time.Minute), Result: confirmed},
			{Device: "dev-b", Boot: 1, Seq: 1, Time: t0, Result: running},
		}
		if len(got) != len(want) {
			t.Fatalf("%d reports %+v, want %d", len(got), got, len(want))
		}
		for i := range want {
			if got[i].Device != want[i].Device || got[i].Boot != want[i].Boot || got[i].Seq != want[i].Seq ||
				!got[i].Time.Equal(want[i].Time) || got[i].Result != want[i].Result {
				t.Errorf("report %d: %+v, want %+v", i, got[i], want[i])
			}
		}
		if !strings.Contains(logged.String(), "skipped=4") {
			t.Errorf("log %q: want the 4 bodies that do not decode counted", logged.String())
		}
		all, err := s.UpdateReports(t.Context(), time.Time{})
		if err != nil || len(all) != 4 || all[3].Device != "dev-c" {
			t.Fatalf("every report: %+v, %v", all, err)
		}
		// Decoded records are cached by ID: a later call sees the same,
		// and the records stored since.
		later := update.Result{Event: "reverted", Version: 3, From: 3, Time: t0.Add(2 * time.Minute).UnixMilli(), Reason: "health"}
		if _, err := s.Accept(t.Context(), []transport.Record{rec("dev-b", update.ReportStream, 1, 2, t0.Add(2*time.Minute), body(later))}); err != nil {
			t.Fatal(err)
		}
		again, err := s.UpdateReports(t.Context(), time.Time{})
		if err != nil || len(again) != 5 || again[2].Result != running || again[3].Result != later || again[3].Seq != 2 {
			t.Fatalf("after one more report: %+v, %v", again, err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := s.UpdateReports(ctx, time.Time{}); err == nil {
			t.Error("UpdateReports with a cancelled context succeeded")
		}
	})
}

// TestUpdateReportsIndexed: SQLite reads the update reports through the
// records_by_stream index (migration 0004), in the order the query asks,
// not by scanning the fleet's telemetry.
func TestUpdateReportsIndexed(t *testing.T) {
	s := openStore(t, "sqlite:"+filepath.Join(t.TempDir(), "fleet.db"))
	rows, err := s.db.Query("EXPLAIN QUERY PLAN SELECT device, boot, seq, readings FROM records WHERE stream = ? ORDER BY device, boot, seq", "update")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	got := strings.Join(plan, "; ")
	if !strings.Contains(got, "USING INDEX records_by_stream") || strings.Contains(got, "TEMP B-TREE") {
		t.Fatalf("query plan %q: want the records_by_stream index, no sort", got)
	}
}
