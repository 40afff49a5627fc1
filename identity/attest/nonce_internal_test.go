// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package attest

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// TestMemoryNonceStoreQueueBounded checks that answered and evicted
// nonces do not pile up in the expiry queue behind live ones.
func TestMemoryNonceStoreQueueBounded(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	s := NewMemoryNonceStore(2, 100)
	// A live nonce at the front that never expires during the run.
	if err := s.Issue(ctx, "pinned", "first", t0, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for i := range 20_000 {
		n := strconv.Itoa(i)
		at := t0.Add(time.Duration(i) * time.Millisecond)
		if err := s.Issue(ctx, "dev", n, at, at.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if q := len(s.queue) - s.head; q > 2*s.Len()+64 {
			t.Fatalf("after %d issues: %d queued for %d live nonces", i+1, q, s.Len())
		}
		if i%3 == 0 {
			if _, err := s.Consume(ctx, "dev", n, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	if s.Len() > 3 {
		t.Fatalf("Len %d, want at most 3", s.Len())
	}
}

func TestVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"1", "1", 0}, {"1.2", "1.2.0", 0}, {"1.2", "1.10", -1}, {"42", "9.99", 1},
		{"18446744073709551615", "1", 1}, {"0.0.1", "0.0.0.9", 1},
	} {
		a, err := parseVersion(tc.a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := parseVersion(tc.b)
		if err != nil {
			t.Fatal(err)
		}
		if got := compareVersions(a, b); got != tc.want {
			t.Errorf("compare(%s, %s) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
	for _, bad := range []string{"", "v1", "1.", ".1", "01", "1.-2", "1 .2", "18446744073709551616",
		"1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17", "１"} {
		if _, err := parseVersion(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
