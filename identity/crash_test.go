// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile/crashfs"
)

// TestRenewalCrashAtEveryStep cuts the power at every file-system operation
// of a renewal, restarts, and checks that the device still has a usable
// identity (the old or the new one, never neither) and can renew again.
func TestRenewalCrashAtEveryStep(t *testing.T) {
	f := newFleet(t, nil)
	tmpl, old := f.enroll("dev-crash")
	f.clock.Advance(61 * 24 * time.Hour)
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Root())
	policy := DeviceCertPolicy{Roots: roots}

	renewWith := func(dir string, failAt int) (*crashfs.FS, *Identity, error) {
		cfs := &crashfs.FS{FailAt: failAt}
		s, err := openStore(cfs, dir, StoreConfig{Time: f.clock.Now})
		if err != nil {
			return cfs, nil, err
		}
		id, err := s.Renew(t.Context(), f.client(), RenewOptions{})
		return cfs, id, err
	}

	// A clean run counts the operations.
	clean := filepath.Join(t.TempDir(), "clean")
	crashfs.CopyDir(t, tmpl.Dir(), clean)
	cfs, newID, err := renewWith(clean, 0)
	if err != nil {
		t.Fatal(err)
	}
	total := cfs.Ops()
	if total < 10 {
		t.Fatalf("a renewal took only %d file operations; the count is wrong", total)
	}

	sawOld, sawNew := 0, 0
	for i := 1; i <= total; i++ {
		dir := filepath.Join(t.TempDir(), "crash")
		crashfs.CopyDir(t, tmpl.Dir(), dir)
		cfs, _, err := renewWith(dir, i)
		// A cut after the commit (while old generations are removed)
		// leaves the renewal done: Renew reports success.
		if !cfs.Crashed() || err != nil && !errors.Is(err, crashfs.ErrCrash) {
			t.Fatalf("crash at %d/%d: did not crash (err %v)", i, total, err)
		}
		// Power back: a fresh process opens the store from disk.
		s, err := OpenStore(dir, StoreConfig{Time: f.clock.Now})
		if err != nil {
			t.Fatalf("crash at %d/%d: reopen: %v", i, total, err)
		}
		cur, err := s.Current()
		if err != nil {
			t.Fatalf("crash at %d/%d: no usable identity: %v", i, total, err)
		}
		if _, err := policy.Verify(cur.Chain, f.clock.Now()); err != nil {
			t.Fatalf("crash at %d/%d: identity does not verify: %v", i, total, err)
		}
		switch {
		case cur.Certificate().Equal(old.Certificate()):
			sawOld++
		case cur.Generation == newID.Generation:
			sawNew++
		default:
			t.Fatalf("crash at %d/%d: identity is neither old nor new (generation %d)", i, total, cur.Generation)
		}
		// No stuck state: the next renewal works and tidies up.
		again, err := s.Renew(t.Context(), f.client(), RenewOptions{})
		if err != nil {
			t.Fatalf("crash at %d/%d: renewal after restart: %v", i, total, err)
		}
		if all, _, _ := s.generations(); len(all) != 1 || all[0] != again.Generation {
			t.Fatalf("crash at %d/%d: generations left after the next renewal: %v", i, total, all)
		}
		if tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*")); len(tmps) != 0 {
			t.Fatalf("crash at %d/%d: temporary files left: %v", i, total, tmps)
		}
	}
	if sawOld == 0 || sawNew == 0 {
		t.Errorf("crash points ended on old %d times, new %d times: both outcomes should occur", sawOld, sawNew)
	}
	t.Logf("renewal: %d crash points covered (old identity kept at %d, new identity at %d)", total, sawOld, sawNew)
}

// TestUsedTokensCrash cuts the power at every step of recording token uses
// (journal creation, appends, a compaction): after a restart every
// acknowledged use is remembered, and no token is ever usable twice.
func TestUsedTokensCrash(t *testing.T) {
	clock := newFakeClock()
	exp := clock.Now().Add(time.Hour)
	// Enough uses to cross two compactions.
	const compactEvery = 5
	uses := 2*compactEvery + 2
	consumeAll := func(u *FileUsedTokens) (acked []string, err error) {
		for n := range uses {
			jti := fmt.Sprintf("jti-%d", n)
			if err := u.Consume(t.Context(), jti, exp); err != nil {
				return acked, err
			}
			acked = append(acked, jti)
		}
		return acked, nil
	}
	prepare := func() string {
		path := filepath.Join(t.TempDir(), "used.state")
		pre, err := OpenUsedTokens(path, clock.Now)
		if err != nil {
			t.Fatal(err)
		}
		if err := pre.Consume(t.Context(), "jti-earlier", exp); err != nil {
			t.Fatal(err)
		}
		pre.Close()
		return path
	}
	open := func(path string, cfs *crashfs.FS) *FileUsedTokens {
		u, err := openUsedTokens(cfs, path, clock.Now)
		if err != nil {
			t.Fatal(err)
		}
		u.compactEvery = compactEvery
		return u
	}

	count := &crashfs.FS{}
	u := open(prepare(), count)
	opened := count.Ops()
	if _, err := consumeAll(u); err != nil {
		t.Fatal(err)
	}
	total := count.Ops() - opened
	for i := 1; i <= total; i++ {
		path := prepare()
		cfs := &crashfs.FS{}
		u := open(path, cfs)
		cfs.FailAt = cfs.Ops() + i
		acked, err := consumeAll(u)
		if !errors.Is(err, crashfs.ErrCrash) {
			t.Fatalf("crash at %d/%d: %v", i, total, err)
		}
		after, err := OpenUsedTokens(path, clock.Now)
		if err != nil {
			t.Fatalf("crash at %d/%d: reopen: %v", i, total, err)
		}
		for _, jti := range append(acked, "jti-earlier") {
			if err := after.Consume(t.Context(), jti, exp); !errors.Is(err, ErrTokenReused) {
				t.Fatalf("crash at %d/%d: acknowledged use of %s forgotten: %v", i, total, jti, err)
			}
		}
		// The use in flight at the crash was not acknowledged: it may be
		// remembered or not, but once used now it is used for good.
		inflight := fmt.Sprintf("jti-%d", len(acked))
		_ = after.Consume(t.Context(), inflight, exp)
		if err := after.Consume(t.Context(), inflight, exp); !errors.Is(err, ErrTokenReused) {
			t.Fatalf("crash at %d/%d: token usable twice: %v", i, total, err)
		}
		after.Close()
	}
	t.Logf("used-token store: %d crash points covered (%d uses, 2 compactions)", total, uses)
}

// TestUsedTokensTornJournal: garbage after the last whole record (a torn
// append) is dropped, and every whole record is kept.
func TestUsedTokensTornJournal(t *testing.T) {
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), "used.state")
	u, err := OpenUsedTokens(path, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range []string{"a", "b", "c"} {
		if err := u.Consume(t.Context(), j, clock.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	u.Close()
	f, err := os.OpenFile(path+".journal", os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0, 0, 0, 40, 0x83, 0x6f})
	f.Close()
	u, err = OpenUsedTokens(path, clock.Now)
	if err != nil {
		t.Fatalf("torn journal: %v", err)
	}
	for _, j := range []string{"a", "b", "c"} {
		if err := u.Consume(t.Context(), j, clock.Now().Add(time.Hour)); !errors.Is(err, ErrTokenReused) {
			t.Fatalf("%s forgotten: %v", j, err)
		}
	}
	if err := u.Consume(t.Context(), "d", clock.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
}

// TestUsedTokensForgetExpired: expired tokens leave the store at the next
// open, which keeps it small; they are refused as expired anyway.
func TestUsedTokensForgetExpired(t *testing.T) {
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), "used.state")
	u, _ := OpenUsedTokens(path, clock.Now)
	u.Consume(t.Context(), "old", clock.Now().Add(time.Minute))
	u.Consume(t.Context(), "new", clock.Now().Add(48*time.Hour))
	u.Close()
	clock.Advance(24 * time.Hour)
	u, err := OpenUsedTokens(path, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := u.used["old"]; ok || len(u.used) != 1 {
		t.Fatalf("after expiry the store holds %v", u.used)
	}
}
