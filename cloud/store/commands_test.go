package store

import (
	"sync"
	"testing"
	"time"
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
