// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package repo_test

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/repo"
)

// runRefresher runs rf in the background; stop cancels it and fails the
// test unless Run returns nil promptly.
func runRefresher(t *testing.T, rf repo.Refresher) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- rf.Run(ctx) }()
	return func() {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return after its context ended")
		}
	}
}

// TestRefresherKeepsFresh watches a repository whose timestamps live 3
// seconds: at every instant a device accepts the timestamp in place, and
// the Refresher renews it, one version higher each time, before it
// expires.
func TestRefresherKeepsFresh(t *testing.T) {
	r := newTestRepo(t)
	logger, logs := newLog(t)
	stop := runRefresher(t, repo.Refresher{Dir: r.Dir, Keys: []crypto.Signer{r.TimestampKey},
		Validity: 3 * time.Second, Every: 100 * time.Millisecond, Logger: logger})
	var (
		floors update.Floors
		last   uint64
	)
	for deadline := time.Now().Add(6 * time.Second); last < 3; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timestamp version %d after 6 s, want 3 by then\n%s", last, logs())
		}
		tr, err := r.deviceCheck(time.Now(), floors)
		if last == 0 && errors.Is(err, fs.ErrNotExist) {
			continue // not signed yet
		}
		if err != nil {
			t.Fatalf("after timestamp version %d: a device refuses the repository: %v\n%s", last, err, logs())
		}
		floors, last = tr.Floors(), tr.Timestamp().Version
	}
	stop()
	if !strings.Contains(logs(), "msg=\"timestamp signed\"") || strings.Contains(logs(), "level=ERROR") {
		t.Errorf("log:\n%s", logs())
	}
}

// TestRefresherFailingSigner: a key that fails to sign is logged and
// retried, and leaves the timestamp in place untouched, no temporary file
// behind.
func TestRefresherFailingSigner(t *testing.T) {
	r := newTestRepo(t)
	if _, err := repo.SignTimestamp(t.Context(), r.Dir, []crypto.Signer{r.TimestampKey}, 3*time.Second, time.Now()); err != nil {
		t.Fatal(err)
	}
	before := listDir(t, r.Dir)
	logger, logs := newLog(t)
	stop := runRefresher(t, repo.Refresher{Dir: r.Dir, Keys: []crypto.Signer{failingSigner{r.TimestampKey}},
		Validity: 3 * time.Second, Every: 100 * time.Millisecond, Logger: logger})
	for deadline := time.Now().Add(5 * time.Second); strings.Count(logs(), "token removed") < 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no two failures logged within 5 s:\n%s", logs())
		}
	}
	stop()
	if after := listDir(t, r.Dir); after != before {
		t.Errorf("the repository changed:\n%s\nwas\n%s", after, before)
	}
	if !strings.Contains(logs(), `level=ERROR msg="timestamp not signed; the one in place, if any, stays"`) {
		t.Errorf("log:\n%s", logs())
	}
}

// TestRefresherResigns: a fresh timestamp naming the current release is
// left alone; one naming an older release is re-signed at the first
// check.
func TestRefresherResigns(t *testing.T) {
	r := newTestRepo(t)
	key := []crypto.Signer{r.TimestampKey}
	if _, err := repo.SignTimestamp(t.Context(), r.Dir, key, 24*time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	ts := r.Read(t, "timestamp.json")
	stop := runRefresher(t, repo.Refresher{Dir: r.Dir, Keys: key})
	time.Sleep(200 * time.Millisecond)
	stop()
	if !bytes.Equal(r.Read(t, "timestamp.json"), ts) {
		t.Error("a fresh timestamp was re-signed")
	}

	r.publishRelease(t, 4, time.Now().AddDate(0, 1, 0))
	stop = runRefresher(t, repo.Refresher{Dir: r.Dir, Keys: key})
	defer stop()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		tr, err := r.deviceCheck(time.Now(), update.Floors{})
		if err == nil && tr.Release().Version == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("release 4 not named within 5 s: %v", err)
		}
	}
}

// TestRefresherValidate: settings Run refuses at once.
func TestRefresherValidate(t *testing.T) {
	key := []crypto.Signer{testpki.Key(t)}
	for _, c := range []struct {
		rf   repo.Refresher
		want string
	}{
		{repo.Refresher{Keys: key}, "Dir is required"},
		{repo.Refresher{Dir: "d"}, "Keys is required"},
		{repo.Refresher{Dir: "d", Keys: key, Validity: time.Second}, "Validity 1s: want at least 2s"},
		{repo.Refresher{Dir: "d", Keys: key, Validity: -time.Hour}, "Validity -1h0m0s"},
		{repo.Refresher{Dir: "d", Keys: key, Every: -time.Second}, "Every -1s"},
		{repo.Refresher{Dir: "d", Keys: key, Validity: time.Hour, Every: 31 * time.Minute}, "want at most half of Validity"},
	} {
		if err := c.rf.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: Validate() = %v, want %q", c.rf, err, c.want)
		}
		if err := c.rf.Run(t.Context()); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: Run = %v, want %q", c.rf, err, c.want)
		}
	}
	if err := (repo.Refresher{Dir: "d", Keys: key}).Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}
