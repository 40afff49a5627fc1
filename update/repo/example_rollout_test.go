// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package repo_test

import (
	"context"
	"crypto"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/repo"
)

// A campaign's cohort rule in the timestamp: the Refresher asks for the
// rule at every check and signs a change at once; here the campaign
// widens from 1% to 10% of the devices. In a cloud service the rule comes
// from the campaign in the store (cloud.UpdateRole does this).
func ExampleRefresher_rollout() {
	dir, timestampKey, cleanup := exampleRepository()
	defer cleanup()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var share atomic.Int64
	share.Store(100) // basis points: 1%
	rule := func(ctx context.Context, hardwareClass string, release uint64) (*update.Rollout, error) {
		return &update.Rollout{Salt: [16]byte{7}, Share: int(share.Load())}, nil
	}
	done := make(chan error, 1)
	go func() {
		done <- repo.Refresher{Dir: dir, Keys: []crypto.Signer{timestampKey}, Validity: time.Hour,
			Every: 50 * time.Millisecond, Rollout: rule}.Run(ctx)
	}()
	signed := func(want int) *update.Timestamp {
		for {
			t, err := repo.NewTrusted(dir, time.Now(), "sensor-v2")
			if err != nil {
				log.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(dir, "timestamp.json"))
			if err == nil {
				if ts, err := t.UpdateTimestamp(b); err == nil && ts.Rollout != nil && ts.Rollout.Share == want {
					return ts
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	ts := signed(100)
	fmt.Printf("timestamp version %d offers release %d to %d basis points\n", ts.Version, ts.Release.Version, ts.Rollout.Share)
	share.Store(1000) // the campaign advances: 10%
	ts = signed(1000)
	fmt.Printf("timestamp version %d offers release %d to %d basis points\n", ts.Version, ts.Release.Version, ts.Rollout.Share)
	cancel()
	fmt.Println("refresher stopped:", <-done)
	// Output:
	// timestamp version 1 offers release 7 to 100 basis points
	// timestamp version 2 offers release 7 to 1000 basis points
	// refresher stopped: <nil>
}
