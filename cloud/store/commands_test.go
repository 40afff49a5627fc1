// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

// TestReserveCommandID: replicas reserving IDs for one device at once get
// distinct IDs, each above the ones reserved before, even with a clock
// that does not move.
func TestReserveCommandID(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		frozen := func() time.Time { return time.UnixMilli(1_700_000_000_000) }
		var handles []*Store
		for range 2 {
			s, err := Open(t.Context(), Config{URL: url, Now: frozen})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			handles = append(handles, s)
		}
		var mu sync.Mutex
		seen := map[uint64]bool{}
		var wg sync.WaitGroup
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id, err := handles[i%2].ReserveCommandID(t.Context(), "dev-c", "blink")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if seen[id] {
					t.Errorf("ID %d reserved twice", id)
				}
				seen[id] = true
			}()
		}
		wg.Wait()
		next, err := handles[0].ReserveCommandID(t.Context(), "dev-c", "blink")
		if err != nil {
			t.Fatal(err)
		}
		for id := range seen {
			if id >= next {
				t.Fatalf("ID %d reserved after %d is not above it", next, id)
			}
		}
		if len(seen) != 10 || next != uint64(frozen().UnixMicro())+10 {
			t.Fatalf("%d distinct IDs, next %d", len(seen), next)
		}
	})
}

// cmdResultRec is a verified record of the command-result stream.
func cmdResultRec(device string, seq uint64, body string) transport.Record {
	return transport.Record{Device: device, Stream: wire.CommandResultStream, Boot: 1, Seq: seq, Time: time.UnixMilli(1_700_000_000_000),
		Readings: []transport.Reading{{Time: time.UnixMilli(1_700_000_000_500), Body: []byte(body)}}}
}

// TestCommandLifecycle: a command reserved through one replica, sent, and
// answered by a result another replica accepts is read back with its
// state; a second result does not replace the first; a malformed result
// is refused; a result for a command never reserved stays a record only.
func TestCommandLifecycle(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		a, b := openStore(t, url), openStore(t, url)
		now := time.Now()
		c, err := a.ReserveCommand(t.Context(), Command{Device: "dev-c", Name: "blink", Body: []byte("3"), Client: "app", Expires: now.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		got, err := b.Command(t.Context(), "dev-c", c.ID)
		if err != nil || got.State(now) != CommandUnsent || got.Name != "blink" || string(got.Body) != "3" || got.Client != "app" {
			t.Fatalf("reserved: %+v %v", got, err)
		}
		if got.State(now.Add(time.Hour)) != CommandExpired {
			t.Fatalf("state past expiry: %s", got.State(now.Add(time.Hour)))
		}
		sent, err := b.CommandSent(t.Context(), "dev-c", c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if again, err := a.CommandSent(t.Context(), "dev-c", c.ID); err != nil || !again.Equal(sent) {
			t.Fatalf("sent twice: %v then %v (%v), want the first kept", sent, again, err)
		}
		if _, err := b.CommandSent(t.Context(), "dev-c", c.ID+1); !errors.Is(err, ErrNoSuchCommand) {
			t.Fatalf("sent of an unknown command: %v", err)
		}
		if _, err := a.Command(t.Context(), "dev-x", c.ID); !errors.Is(err, ErrNoSuchCommand) {
			t.Fatalf("another device's command: %v", err)
		}
		ok := fmt.Sprintf(`{"v":1,"id":%d,"failed":false,"output":"b24="}`, c.ID)
		again := fmt.Sprintf(`{"v":1,"id":%d,"failed":true}`, c.ID)
		v, err := b.Accept(t.Context(), []transport.Record{
			cmdResultRec("dev-c", 1, ok), cmdResultRec("dev-c", 2, again),
			cmdResultRec("dev-c", 3, `{"v":1,"id":0}`), cmdResultRec("dev-c", 4, `{"v":1,"id":99,"failed":false}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		if v[0] != nil || v[1] != nil || !errors.Is(v[2], wire.ErrMalformed) || v[3] != nil {
			t.Fatalf("verdicts %v", v)
		}
		got, err = a.Command(t.Context(), "dev-c", c.ID)
		if err != nil || got.State(now) != CommandSucceeded || string(got.Result.Output) != "on" || !got.Sent.Equal(sent) ||
			!got.Result.Time.Equal(time.UnixMilli(1_700_000_000_500)) {
			t.Fatalf("answered: %+v %v", got, err)
		}
		// Even past its expiry, an answered command keeps its result.
		if got.State(now.Add(time.Hour)) != CommandSucceeded {
			t.Fatal("answered command shown expired")
		}
		var n int
		if err := a.db.QueryRow("SELECT COUNT(*) FROM records WHERE stream = 'd2c.cmdres'").Scan(&n); err != nil || n != 3 {
			t.Fatalf("%d result records kept (%v), want 3", n, err)
		}
		if seen, err := a.DevicesSeen(t.Context(), now.Add(-time.Minute)); err != nil || seen != 1 {
			t.Fatalf("devices seen %d, %v", seen, err)
		}
		if seen, err := a.DevicesSeen(t.Context(), time.Now().Add(time.Minute)); err != nil || seen != 0 {
			t.Fatalf("devices seen in the future %d, %v", seen, err)
		}
	})
}
