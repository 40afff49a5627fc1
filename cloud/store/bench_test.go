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
