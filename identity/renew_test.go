// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// instantAfter replaces time.After: it moves the fake clock forward by d and
// fires at once, so a renewer's months pass in milliseconds.
func instantAfter(c *fakeClock, waits *[]time.Duration) func(time.Duration) <-chan time.Time {
	return func(d time.Duration) <-chan time.Time {
		*waits = append(*waits, d)
		c.Advance(d)
		ch := make(chan time.Time, 1)
		ch <- c.Now()
		return ch
	}
}

func TestRenewerRenewsInWindow(t *testing.T) {
	f := newFleet(t, nil)
	s, id := f.enroll("dev-r")
	leaf := id.Certificate()
	life := leaf.NotAfter.Sub(leaf.NotBefore)

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var waits []time.Duration
	var renewedAt time.Time
	r := &Renewer{Store: s, Client: f.client(), after: instantAfter(f.clock, &waits),
		OnRenew: func(n *Identity) { renewedAt = f.clock.Now(); cancel() }}
	if err := r.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	lo := leaf.NotBefore.Add(life * 2 / 3)
	hi := lo.Add(life/10 + time.Second)
	if renewedAt.Before(lo) || renewedAt.After(hi) {
		t.Fatalf("renewed at %v, want within [%v, %v]", renewedAt, lo, hi)
	}
	for _, w := range waits {
		if w > time.Hour {
			t.Errorf("waited %v at once; the renewer must re-check the clock at least hourly", w)
		}
	}
	cur, err := s.Current()
	if err != nil || cur.Generation == id.Generation {
		t.Fatalf("identity not renewed: %v", err)
	}
}

func TestRenewerBacksOffAndKeepsIdentity(t *testing.T) {
	f := newFleet(t, nil)
	s, id := f.enroll("dev-b")
	var failing atomic.Int32
	failing.Store(4)
	reg := f.registrar
	f.server.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Add(-1) >= 0 {
			// While the registrar is down the device keeps its identity.
			if cur, err := s.Current(); err != nil || cur.Generation != id.Generation {
				t.Errorf("identity changed during failures: %v", err)
			}
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return
		}
		reg.ServeHTTP(w, r)
	})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var waits []time.Duration
	r := &Renewer{Store: s, Client: f.client(), RetryMin: time.Minute, RetryMax: time.Hour,
		after: instantAfter(f.clock, &waits), OnRenew: func(*Identity) { cancel() }}
	if err := r.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if failing.Load() >= 0 {
		t.Fatal("renewer stopped before the registrar recovered")
	}
	// After the scheduling waits, the retry waits are bounded by RetryMax.
	for _, w := range waits[len(waits)-4:] {
		if w <= 0 || w > time.Hour {
			t.Errorf("retry wait %v outside (0, 1h]", w)
		}
	}
}

func TestRenewerStopsWhenExpired(t *testing.T) {
	f := newFleet(t, nil)
	s, _ := f.enroll("dev-x")
	f.server.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var waits []time.Duration
	r := &Renewer{Store: s, Client: f.client(), RetryMax: 24 * time.Hour, after: instantAfter(f.clock, &waits)}
	if err := r.Run(ctx); !errors.Is(err, ErrCertExpired) {
		t.Fatalf("Run with the registrar down until expiry: %v, want ErrCertExpired", err)
	}
}
