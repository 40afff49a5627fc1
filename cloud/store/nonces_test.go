// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity/attest"
)

// TestNonceStore: the store's attestation nonces behave as
// attest.MemoryNonceStore's (per-device eviction, wrong device leaves the
// nonce, expiry, no double issue), and of many concurrent consumers in
// two processes' worth of handles exactly one wins.
func TestNonceStore(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		s := openStore(t, url)
		ctx := t.Context()
		t0 := time.UnixMilli(1_700_000_000_000)
		exp := t0.Add(time.Minute)
		for i := range 5 {
			if err := s.Issue(ctx, "a", fmt.Sprintf("n%d", i), t0.Add(time.Duration(i)*time.Millisecond), exp); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Consume(ctx, "a", "n0", t0); !errors.Is(err, attest.ErrReplay) {
			t.Fatalf("the oldest of five (evicted): %v, want ErrReplay", err)
		}
		if _, err := s.Consume(ctx, "b", "n1", t0); !errors.Is(err, attest.ErrWrongDevice) {
			t.Fatalf("wrong device: %v, want ErrWrongDevice", err)
		}
		if issued, err := s.Consume(ctx, "a", "n1", t0); err != nil || !issued.Equal(t0.Add(time.Millisecond)) {
			t.Fatalf("right device after a wrong one: %v, %v", issued, err)
		}
		if _, err := s.Consume(ctx, "a", "n1", t0); !errors.Is(err, attest.ErrReplay) {
			t.Fatalf("consumed twice: %v, want ErrReplay", err)
		}
		if _, err := s.Consume(ctx, "a", "n2", exp); !errors.Is(err, attest.ErrExpired) || !errors.Is(err, attest.ErrReplay) {
			t.Fatalf("expired: %v, want ErrReplay and ErrExpired", err)
		}
		if _, err := s.Consume(ctx, "a", "n2", t0); !errors.Is(err, attest.ErrReplay) {
			t.Fatalf("an expired nonce is removed: %v, want ErrReplay", err)
		}
		if err := s.Issue(ctx, "c", "n3", t0, exp); err == nil {
			t.Fatal("a nonce issued twice")
		}

		other := openStore(t, url)
		if err := s.Issue(ctx, "race", "once", t0, exp); err != nil {
			t.Fatal(err)
		}
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h := s
				if i%2 == 1 {
					h = other
				}
				_, err := h.Consume(ctx, "race", "once", t0)
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, attest.ErrReplay):
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d consumers won the same nonce, want 1", wins.Load())
		}
	})
}
