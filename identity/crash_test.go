package identity

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile/crashfs"
)

// copyDir copies a flat store directory, keeping file modes.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		info, _ := e.Info()
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

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
	copyDir(t, tmpl.Dir(), clean)
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
		copyDir(t, tmpl.Dir(), dir)
		cfs, _, err := renewWith(dir, i)
		if !cfs.Crashed() || !errors.Is(err, crashfs.ErrCrash) {
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

// TestUsedTokensCrash cuts the power at every step of recording a token use:
// after a restart the token is either unused (and the enrollment was not
// answered) or used; it is never usable twice.
func TestUsedTokensCrash(t *testing.T) {
	clock := newFakeClock()
	exp := clock.Now().Add(time.Hour)
	count := &crashfs.FS{}
	path := filepath.Join(t.TempDir(), "used.state")
	u, err := openUsedTokens(count, path, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Consume(t.Context(), "jti-0", exp); err != nil {
		t.Fatal(err)
	}
	total := count.Ops()
	for i := 1; i <= total; i++ {
		path := filepath.Join(t.TempDir(), "used.state")
		pre, _ := OpenUsedTokens(path, clock.Now)
		if err := pre.Consume(t.Context(), "jti-earlier", exp); err != nil {
			t.Fatal(err)
		}
		u, err := openUsedTokens(&crashfs.FS{FailAt: i}, path, clock.Now)
		if err != nil {
			t.Fatal(err)
		}
		crashErr := u.Consume(t.Context(), "jti-1", exp)
		after, err := OpenUsedTokens(path, clock.Now)
		if err != nil {
			t.Fatalf("crash at %d/%d: reopen: %v", i, total, err)
		}
		if err := after.Consume(t.Context(), "jti-earlier", exp); !errors.Is(err, ErrTokenReused) {
			t.Fatalf("crash at %d/%d: an earlier use was forgotten: %v", i, total, err)
		}
		err = after.Consume(t.Context(), "jti-1", exp)
		if crashErr != nil && err != nil && !errors.Is(err, ErrTokenReused) {
			t.Fatalf("crash at %d/%d: %v", i, total, err)
		}
		if err := after.Consume(t.Context(), "jti-1", exp); !errors.Is(err, ErrTokenReused) {
			t.Fatalf("crash at %d/%d: token usable twice: %v", i, total, err)
		}
	}
	t.Logf("used-token store: %d crash points covered", total)
}
