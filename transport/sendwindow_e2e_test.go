// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/consent"
)

// TestPriorityBacklogReachesCloud reproduces the loss of issue 11 finding
// 2 through a real mosquitto: 400 readings queued while offline at
// priority 0, a consent event (priority 255) in the middle, then one
// reading at priority 10. Every message the device stored is accepted by
// the cloud exactly once: none is refused as a replay because a later one
// overtook it by more than the replay window.
func TestPriorityBacklogReachesCloud(t *testing.T) {
	f := newE2EFleet(t)
	broker := f.startMosquitto()
	store := f.enroll("sensor-p")
	col := newCollector()
	v := f.verifier()
	f.cloudAt(broker.Addr, col, v, "verifier")
	broker.Kill() // the device starts offline

	dev, err := transport.Dial(t.Context(), transport.ClientConfig{Broker: broker.Addr, Store: store,
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond,
		Streams: []consent.Policy{{Stream: "location", Purpose: "find a lost bike", Personal: true}}})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close(context.Background())
	const backlog = 400
	for i := range backlog {
		if i == backlog/2 {
			if err := dev.GrantConsent(t.Context(), "location", "find a lost bike"); err != nil {
				t.Fatal(err)
			}
		}
		if err := dev.Publish(t.Context(), "temp", transport.Reading{Time: time.Now(), Body: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := dev.PublishWith(t.Context(), transport.PublishOptions{Stream: "temp", Priority: 10},
		transport.Reading{Time: time.Now(), Body: []byte("urgent")}); err != nil {
		t.Fatal(err)
	}
	stored := dev.Stats().Stored

	broker.Restart(t)
	col.wait(t, backlog+1, 60*time.Second)
	for deadline := time.Now().Add(10 * time.Second); dev.Stats().Acked < stored && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let any redelivery arrive

	st, vs := dev.Stats(), v.Stats()
	t.Logf("device %+v; verifier %+v", st, vs)
	if st.Acked != stored || st.QueueDepth != 0 {
		t.Fatalf("device stored %d, acknowledged %d, %d still queued", stored, st.Acked, st.QueueDepth)
	}
	if vs.Replays != 0 || vs.Accepted != stored {
		t.Fatalf("cloud accepted %d of the %d messages the device stored, refused %d as replays", vs.Accepted, stored, vs.Replays)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	seen := map[string]int{}
	for _, r := range col.recs {
		if r.Stream == "temp" {
			seen[string(r.Readings[0].Body)]++
		}
	}
	for i := range backlog {
		if c := seen[fmt.Sprint(i)]; c != 1 {
			t.Fatalf("reading %d reached the application %d times", i, c)
		}
	}
	if seen["urgent"] != 1 {
		t.Fatalf("the priority reading reached the application %d times", seen["urgent"])
	}
	if len(col.refused) != 0 {
		t.Fatalf("refusals: %v", col.refused)
	}
}
