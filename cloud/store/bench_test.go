// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/transport"
)

// BenchmarkAccept measures [Store.Accept] alone (no cryptography): one
// transaction that reads and locks the replay windows of the batch's
// devices, classifies each record, inserts the fresh ones into the
// records table, writes the windows back and commits (a flush to disk:
// SQLite's WAL with synchronous=FULL, PostgreSQL's WAL with
// synchronous_commit on). 256 devices take turns, as in a fleet, each
// record holding one 150-byte reading, every one fresh. batch=32 is what
// transport.DialCloud passes to one VerifyBatch; batch=1 is one
// transaction per message; batch=128 shows what a larger Receive Maximum
// would buy. bench/store measures the whole verifier on the store.
func BenchmarkAccept(b *testing.B) {
	const devices = 256
	body := make([]byte, 150)
	for _, backend := range []string{"sqlite", "postgres"} {
		for _, batch := range []int{1, 32, 128} {
			b.Run(fmt.Sprintf("%s/batch=%d", backend, batch), func(b *testing.B) {
				url := "sqlite:" + filepath.Join(b.TempDir(), "d2c.db")
				if backend == "postgres" {
					url = newPostgresDB(b)
				}
				s := openStore(b, url)
				ctx := b.Context()
				recs := make([]transport.Record, batch)
				next, accepted := 0, 0
				b.ReportAllocs()
				for b.Loop() {
					now := time.Now()
					for i := range recs {
						recs[i] = transport.Record{Device: fmt.Sprintf("bench-%04d", next%devices), Stream: "temp", Boot: 1,
							Seq: uint64(next/devices) + 1, Time: now, Readings: []transport.Reading{{Time: now, Body: body}}}
						next++
					}
					verdicts, err := s.Accept(ctx, recs)
					if err != nil {
						b.Fatal(err)
					}
					for i, v := range verdicts {
						if v != nil {
							b.Fatalf("record %d: %v", i, v)
						}
					}
					accepted += batch
				}
				b.ReportMetric(float64(accepted)/b.Elapsed().Seconds(), "records/s")
			})
		}
	}
}

// BenchmarkCampaignProgress measures what the campaign controller does on
// each tick: [Store.CampaignProgress] reads every device's update reports
// (records of stream "update", through the records_by_stream index) and
// counts them per phase. The fleet: devices devices, each with a
// "running" report for release 6 and an "installed" and a "confirmed" one
// for release 7 (3 reports a device), among 20 telemetry records a device
// the query must not read.
func BenchmarkCampaignProgress(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		for _, devices := range []int{1_000, 10_000} {
			b.Run(fmt.Sprintf("%s/devices=%d", backend, devices), func(b *testing.B) {
				url := "sqlite:" + filepath.Join(b.TempDir(), "d2c.db")
				if backend == "postgres" {
					url = newPostgresDB(b)
				}
				s := openStore(b, url)
				ctx := b.Context()
				now := time.Now()
				report := func(event string, version uint64) []byte {
					return fmt.Appendf(nil, `{"event":%q,"version":%d,"from":6,"time":%d,"hardware_class":"hw"}`, event, version, now.UnixMilli())
				}
				var batch []transport.Record
				flush := func() {
					if _, err := s.Accept(ctx, batch); err != nil {
						b.Fatal(err)
					}
					batch = batch[:0]
				}
				for d := range devices {
					dev := fmt.Sprintf("gw-%05d", d)
					seq := uint64(0)
					add := func(stream string, body []byte) {
						seq++
						batch = append(batch, transport.Record{Device: dev, Stream: stream, Boot: 1, Seq: seq, Time: now,
							Readings: []transport.Reading{{Time: now, Body: body}}})
						if len(batch) == 128 {
							flush()
						}
					}
					add("update", report("running", 6))
					for range 10 {
						add("temp", []byte(`{"c":21.5}`))
					}
					add("update", report("installed", 7))
					for range 10 {
						add("temp", []byte(`{"c":21.5}`))
					}
					add("update", report("confirmed", 7))
				}
				flush()
				plan := testPlan("hw")
				plan.MinFinished = 1
				c, err := s.StartCampaign(ctx, plan)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				for b.Loop() {
					p, err := s.CampaignProgress(ctx, c)
					if err != nil {
						b.Fatal(err)
					}
					if p.Total.Confirmed != devices {
						b.Fatalf("%d confirmed, want %d", p.Total.Confirmed, devices)
					}
				}
			})
		}
	}
}
