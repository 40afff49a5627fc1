// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"crypto/x509"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
)

// TestCRLFromStore: CRLs are generated from the registry with strictly
// increasing numbers, also when replicas issue them at once; they list
// the revoked certificates; a consumer refuses an older CRL than the one
// in force and fails closed once it is past its nextUpdate.
func TestCRLFromStore(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		f := newRegFleet(t, url)
		a, b := current(t, f.enroll("crl-a")), current(t, f.enroll("crl-b"))
		if err := f.store.Revoke(t.Context(), a.SerialNumber, ReasonKeyCompromise); err != nil {
			t.Fatal(err)
		}
		if err := f.store.Revoke(t.Context(), a.SerialNumber, ReasonKeyCompromise); err != nil {
			t.Fatalf("revoking twice: %v", err)
		}
		first, err := f.store.CRL(t.Context(), f.ca)
		if err != nil {
			t.Fatal(err)
		}
		// Replicas issuing CRLs at once never share a number.
		replica := openStore(t, url)
		var mu sync.Mutex
		var numbers []uint64
		var wg sync.WaitGroup
		for i := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := f.store
				if i%2 == 1 {
					s = replica
				}
				der, err := s.CRL(t.Context(), f.ca)
				if err != nil {
					t.Error(err)
					return
				}
				crl, err := x509.ParseRevocationList(der)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				numbers = append(numbers, crl.Number.Uint64())
				mu.Unlock()
			}()
		}
		wg.Wait()
		slices.Sort(numbers)
		if want := []uint64{2, 3, 4, 5, 6, 7}; !slices.Equal(numbers, want) {
			t.Fatalf("concurrent CRL numbers %v, want %v", numbers, want)
		}
		latest, err := f.store.CRL(t.Context(), f.ca)
		if err != nil {
			t.Fatal(err)
		}

		cache := identity.NewCRLCache(f.ca.Issuing(), func() time.Time { return f.now })
		if err := cache.CheckRevoked(b); !errors.Is(err, identity.ErrCRLStale) {
			t.Fatalf("before any CRL: %v, want to fail closed with ErrCRLStale", err)
		}
		if err := cache.Update(latest); err != nil {
			t.Fatal(err)
		}
		if err := cache.CheckRevoked(a); !errors.Is(err, identity.ErrRevoked) {
			t.Fatalf("revoked certificate: %v, want ErrRevoked", err)
		}
		if err := cache.CheckRevoked(b); err != nil {
			t.Fatalf("valid certificate: %v", err)
		}
		// An older CRL (before a's revocation would be listed or not, it
		// is older) is refused and changes nothing.
		if err := cache.Update(first); !errors.Is(err, identity.ErrCRLRollback) {
			t.Fatalf("older CRL: %v, want ErrCRLRollback", err)
		}
		if err := cache.Update(latest); !errors.Is(err, identity.ErrCRLRollback) {
			t.Fatalf("the same CRL again: %v, want ErrCRLRollback", err)
		}
		if err := cache.CheckRevoked(a); !errors.Is(err, identity.ErrRevoked) {
			t.Fatalf("after a refused rollback: %v, want ErrRevoked", err)
		}
		// Past nextUpdate, with no fresh CRL: everything is refused.
		f.now = f.now.Add(8 * 24 * time.Hour)
		if err := cache.CheckRevoked(b); !errors.Is(err, identity.ErrCRLStale) || !errors.Is(err, identity.ErrRevoked) {
			t.Fatalf("stale CRL: %v, want ErrRevoked and ErrCRLStale", err)
		}
		st := cache.Stats()
		if st.RollbacksRefused != 2 || st.StaleRefusals != 2 || st.Number != 8 {
			t.Fatalf("stats %+v, want 2 rollbacks, 2 stale refusals, CRL 8 in force", st)
		}
		fresh, err := f.store.CRL(t.Context(), f.ca)
		if err != nil {
			t.Fatal(err)
		}
		if err := cache.Update(fresh); err != nil {
			t.Fatal(err)
		}
		if err := cache.CheckRevoked(b); err != nil {
			t.Fatalf("after a fresh CRL: %v", err)
		}

		// A certificate superseded by a renewal is listed (reason
		// superseded) once the lost-answer window has passed, so a kept
		// copy of an old key cannot connect to a broker.
		devB := f.enroll("crl-c")
		old := current(t, devB)
		if _, err := f.renew(devB); err != nil {
			t.Fatal(err)
		}
		listed := func() map[string]int {
			der, err := f.store.CRL(t.Context(), f.ca)
			if err != nil {
				t.Fatal(err)
			}
			crl, err := x509.ParseRevocationList(der)
			if err != nil {
				t.Fatal(err)
			}
			m := map[string]int{}
			for _, e := range crl.RevokedCertificateEntries {
				m[e.SerialNumber.Text(16)] = e.ReasonCode
			}
			return m
		}
		if _, ok := listed()[serial(old)]; ok {
			t.Fatal("a certificate superseded a moment ago is already listed")
		}
		f.now = f.now.Add(renewalRetryWindow + time.Minute)
		got := listed()
		if reason, ok := got[serial(old)]; !ok || reason != ReasonSuperseded {
			t.Fatalf("the superseded certificate: listed %v, reason %d; want reason superseded (4)", ok, reason)
		}
		if _, ok := got[serial(current(t, devB))]; ok {
			t.Fatal("the renewed certificate is listed")
		}
		if reason := got[serial(a)]; reason != ReasonKeyCompromise {
			t.Fatalf("the revoked certificate's reason %d, want keyCompromise", reason)
		}
	})
}
