// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package repo_test

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/repo"
)

// TestSignTimestamp signs two timestamps in turn: each one version higher,
// each accepted by a device with the floors of the one before, the
// versioned release restored where it was missing.
func TestSignTimestamp(t *testing.T) {
	r := newTestRepo(t)
	if err := os.Remove(filepath.Join(r.Dir, "3.release.json")); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var floors update.Floors
	for want := uint64(1); want <= 2; want++ {
		ts, err := repo.SignTimestamp(t.Context(), r.Dir, []crypto.Signer{r.TimestampKey}, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		if ts.Version != want || ts.Release.Version != 3 || !ts.Expires.After(now.Add(59*time.Minute)) {
			t.Errorf("timestamp %d: version %d, release %d, expires %v", want, ts.Version, ts.Release.Version, ts.Expires)
		}
		tr, err := r.deviceCheck(now, floors)
		if err != nil {
			t.Fatalf("timestamp %d: a device refuses it: %v", want, err)
		}
		if got := tr.Timestamp().Version; got != want {
			t.Errorf("the device sees timestamp version %d, want %d", got, want)
		}
		floors = tr.Floors()
	}
	if !bytes.Equal(r.Read(t, "3.release.json"), r.Read(t, "release.json")) {
		t.Error("3.release.json not restored from release.json")
	}
	// Still valid in 50 minutes, expired in 70.
	if _, err := r.deviceCheck(now.Add(50*time.Minute), floors); err != nil {
		t.Error(err)
	}
	if _, err := r.deviceCheck(now.Add(70*time.Minute), floors); !errors.Is(err, update.ErrExpired) {
		t.Errorf("in 70 minutes: %v, want ErrExpired", err)
	}
}

// TestSignTimestampRefusals: every refusal names its cause, wraps the
// sentinel a caller branches on, and leaves the repository as it was.
func TestSignTimestampRefusals(t *testing.T) {
	r := newTestRepo(t)
	now := time.Now()
	key := []crypto.Signer{r.TimestampKey}
	if _, err := repo.SignTimestamp(t.Context(), r.Dir, key, time.Hour, now); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		keys     []crypto.Signer
		now      time.Time
		validity time.Duration
		prepare  func(t *testing.T)
		want     []error
		msg      string
	}{
		{name: "release key", keys: []crypto.Signer{r.ReleaseKey},
			want: []error{update.ErrUnknownKey}, msg: "is not a timestamp key of root version 1"},
		{name: "unknown key", keys: []crypto.Signer{r.TimestampKey, testpki.Key(t)},
			want: []error{update.ErrUnknownKey}, msg: "is not a timestamp key of root version 1"},
		{name: "no key", keys: nil, want: []error{update.ErrThreshold}, msg: "0 timestamp keys given, root version 1 needs 1"},
		{name: "failing signer", keys: []crypto.Signer{failingSigner{r.TimestampKey}}, msg: "token removed"},
		{name: "bad signature", keys: []crypto.Signer{wrongSigner{r.TimestampKey, r.ReleaseKey}},
			msg: "a signer produced an invalid signature"},
		{name: "expired release", now: now.AddDate(0, 2, 0),
			want: []error{repo.ErrReleaseExpired, update.ErrExpired}, msg: "release version 3 expired"},
		{name: "expired root", now: now.AddDate(2, 0, 0),
			want: []error{update.ErrExpired}, msg: "root version 1 expired"},
		{name: "no validity", validity: -time.Second, msg: "want a positive duration"},
		{name: "release edited", prepare: func(t *testing.T) {
			r.Write(t, "release.json", append(r.Read(t, "release.json"), '\n'))
		}, msg: "release.json differs from"},
		{name: "no release", prepare: func(t *testing.T) {
			if err := os.Remove(filepath.Join(r.Dir, "release.json")); err != nil {
				t.Fatal(err)
			}
		}, want: []error{repo.ErrNoRelease}},
		{name: "no root", prepare: func(t *testing.T) {
			if err := os.Remove(filepath.Join(r.Dir, "1.root.json")); err != nil {
				t.Fatal(err)
			}
		}, want: []error{repo.ErrNoRepository}, msg: "no root in"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.keys == nil && c.name != "no key" {
				c.keys = key
			}
			if c.now.IsZero() {
				c.now = now
			}
			if c.validity == 0 {
				c.validity = time.Hour
			}
			if c.prepare != nil {
				c.prepare(t)
			}
			before := listDir(t, r.Dir)
			ts, err := repo.SignTimestamp(t.Context(), r.Dir, c.keys, c.validity, c.now)
			if err == nil {
				t.Fatalf("signed timestamp version %d", ts.Version)
			}
			for _, w := range c.want {
				if !errors.Is(err, w) {
					t.Errorf("error %q does not wrap %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q does not say %q", err, c.msg)
			}
			if after := listDir(t, r.Dir); after != before {
				t.Errorf("written although refused:\n%s\nwas\n%s", after, before)
			}
		})
	}
	if _, err := repo.SignTimestamp(t.Context(), filepath.Join(r.Dir, "nowhere"), key, time.Hour, now); !errors.Is(err, repo.ErrNoRepository) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no directory: %v, want ErrNoRepository and fs.ErrNotExist", err)
	}
}

// TestSignTimestampConcurrent: callers at the same time take turns under
// the lock, so each signs its own version.
func TestSignTimestampConcurrent(t *testing.T) {
	r := newTestRepo(t)
	const n = 6
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		versions []uint64
	)
	for range n {
		wg.Go(func() {
			ts, err := repo.SignTimestamp(t.Context(), r.Dir, []crypto.Signer{r.TimestampKey}, time.Hour, time.Now())
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			versions = append(versions, ts.Version)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(versions)
	if want := []uint64{1, 2, 3, 4, 5, 6}; !slices.Equal(versions, want) {
		t.Errorf("versions signed %v, want %v", versions, want)
	}
	tr, err := r.deviceCheck(time.Now(), update.Floors{})
	if err != nil {
		t.Fatal(err)
	}
	if v := tr.Timestamp().Version; v != n {
		t.Errorf("timestamp in place: version %d, want %d", v, n)
	}
}

// TestLock: a writer holding the lock makes another wait until its
// context ends, then fail with ErrLocked; once released, the lock is
// taken.
func TestLock(t *testing.T) {
	r := newTestRepo(t)
	unlock, err := repo.Lock(t.Context(), r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := repo.SignTimestamp(ctx, r.Dir, []crypto.Signer{r.TimestampKey}, time.Hour, time.Now()); !errors.Is(err, repo.ErrLocked) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("while locked: %v, want ErrLocked and DeadlineExceeded", err)
	}
	if b := r.Read(t, "timestamp.json"); b != nil {
		t.Error("timestamp written while locked")
	}
	unlock()
	unlock, err = repo.Lock(t.Context(), r.Dir)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	unlock()
	if _, err := repo.Lock(t.Context(), filepath.Join(r.Dir, "nowhere")); !errors.Is(err, repo.ErrNoRepository) {
		t.Errorf("no directory: %v, want ErrNoRepository", err)
	}
}

// TestNewTrustedRootGap: a missing root version in the middle is refused.
func TestNewTrustedRootGap(t *testing.T) {
	r := newTestRepo(t)
	r.Write(t, "3.root.json", r.Root)
	if _, err := repo.NewTrusted(r.Dir, time.Now(), testHardware); !errors.Is(err, update.ErrRootVersionSkip) ||
		!strings.Contains(err.Error(), "has 3.root.json but no 2.root.json") {
		t.Errorf("gap: %v", err)
	}
}

// wrongSigner claims one key and signs with another, as a misconfigured
// token would.
type wrongSigner struct{ claimed, signing crypto.Signer }

func (w wrongSigner) Public() crypto.PublicKey { return w.claimed.Public() }
func (w wrongSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return w.signing.Sign(rand, digest, opts)
}

// listDir lists the names, sizes, modes and modification times of the
// files below dir, to tell whether anything was written.
func listDir(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		b.WriteString(path + " " + info.Mode().String() + " " + strconv.FormatInt(info.Size(), 10) + " " +
			info.ModTime().Format(time.RFC3339Nano) + "\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
