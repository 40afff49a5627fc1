// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/replay"
	"github.com/d2c-iot/d2c/transport/wire"
)

func rec(device string, boot, seq uint64) transport.Record {
	return transport.Record{Device: device, Stream: "temp", Boot: boot, Seq: seq, Time: time.UnixMilli(1_700_000_000_000),
		Readings: []transport.Reading{{Time: time.UnixMilli(1_700_000_000_000), Body: fmt.Appendf(nil, "%d/%d", boot, seq)}}}
}

func verdict(err error) string {
	switch {
	case err == nil:
		return "fresh"
	case errors.Is(err, wire.ErrDuplicate):
		return "duplicate"
	case errors.Is(err, wire.ErrReplay):
		return "replay"
	}
	return "error: " + err.Error()
}

// TestAcceptMatchesReplayWindow: the store classifies random arrivals
// (reordered, duplicated, replayed, across reboots) exactly as the
// in-memory replay.Window does, batch after batch, and keeps one
// record per fresh arrival.
func TestAcceptMatchesReplayWindow(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		s := openStore(t, url)
		model := replay.New(0)
		r := rand.New(rand.NewPCG(1, 2))
		devices := []string{"a", "b", "c"}
		top := map[string]uint64{}
		boot := map[string]uint64{"a": 1, "b": 1, "c": 1}
		fresh := 0
		for batch := range 60 {
			var recs []transport.Record
			for range 1 + r.IntN(40) {
				d := devices[r.IntN(len(devices))]
				switch x := r.IntN(100); {
				case x < 3:
					boot[d]++ // a reboot
					top[d] = 0
				case x < 5 && boot[d] > 1:
					recs = append(recs, rec(d, boot[d]-1-uint64(r.IntN(int(boot[d]-1))), uint64(r.IntN(600))))
					continue
				}
				top[d] += uint64(r.IntN(4))
				seq := top[d]
				if r.IntN(4) == 0 && seq > 0 {
					seq -= uint64(r.IntN(int(min(seq, 400))))
				}
				recs = append(recs, rec(d, boot[d], seq))
			}
			got, err := s.Accept(t.Context(), recs)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := model.Accept(t.Context(), recs)
			for i := range recs {
				if verdict(got[i]) != verdict(want[i]) {
					t.Fatalf("batch %d, %s boot %d seq %d: store says %s, ReplayWindow %s", batch, recs[i].Device, recs[i].Boot, recs[i].Seq, verdict(got[i]), verdict(want[i]))
				}
				if got[i] == nil {
					fresh++
				}
			}
		}
		var n int
		if err := s.db.QueryRow("SELECT COUNT(*) FROM records").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != fresh || fresh == 0 {
			t.Fatalf("%d records kept for %d fresh arrivals", n, fresh)
		}
		var windows int
		if err := s.db.QueryRow("SELECT COUNT(*) FROM replay").Scan(&windows); err != nil {
			t.Fatal(err)
		}
		if windows > keptBoots*len(devices) {
			t.Fatalf("%d replay windows kept for %d devices, want at most %d", windows, len(devices), keptBoots*len(devices))
		}
	})
}

// TestAcceptReplicas: several processes' worth of store handles accept
// overlapping streams of the same records at once (a shared subscription
// redelivering, a replayed copy reaching another replica): each
// (device, boot, seq) is accepted exactly once.
func TestAcceptReplicas(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		const replicas, devices, perDevice = 3, 5, 120
		var stores []*Store
		for range replicas {
			stores = append(stores, openStore(t, url))
		}
		var mu sync.Mutex
		accepted := map[string]int{}
		var wg sync.WaitGroup
		errs := make(chan error, replicas)
		for i, s := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(i), 7))
				for start := uint64(0); start < perDevice; start += 10 {
					var recs []transport.Record
					for d := range devices {
						for seq := start; seq < start+10; seq++ {
							if r.IntN(3) > 0 { // each replica gets two thirds, overlapping
								recs = append(recs, rec(fmt.Sprintf("dev-%d", d), 1, seq))
							}
						}
					}
					r.Shuffle(len(recs), func(a, b int) { recs[a], recs[b] = recs[b], recs[a] })
					got, err := s.Accept(context.Background(), recs)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					for k, v := range got {
						if v == nil {
							accepted[fmt.Sprintf("%s/%d", recs[k].Device, recs[k].Seq)]++
						} else if !errors.Is(v, wire.ErrDuplicate) {
							errs <- fmt.Errorf("%s seq %d: %v", recs[k].Device, recs[k].Seq, v)
						}
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for k, n := range accepted {
			if n != 1 {
				t.Fatalf("%s accepted %d times", k, n)
			}
		}
		var rows int
		if err := stores[0].db.QueryRow("SELECT COUNT(*) FROM records").Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows != len(accepted) {
			t.Fatalf("%d records kept, %d accepted", rows, len(accepted))
		}
		t.Logf("%d distinct readings accepted once each by %d replicas", len(accepted), replicas)
	})
}
