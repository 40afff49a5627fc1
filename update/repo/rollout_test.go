// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package repo_test

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/jwsedit"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/repo"
)

// TestRefresherRollout: with a Rollout function, a change of the rule is
// signed at the next check, long before half the validity, and every
// timestamp signed carries the rule a device then evaluates; a failing
// rule leaves the timestamp in place.
func TestRefresherRollout(t *testing.T) {
	r := newTestRepo(t)
	var (
		mu   sync.Mutex
		rule = &update.Rollout{Salt: [16]byte{1}, Share: 100}
		fail error
	)
	set := func(ro *update.Rollout, err error) {
		mu.Lock()
		defer mu.Unlock()
		rule, fail = ro, err
	}
	asked := func(ctx context.Context, class string, release uint64) (*update.Rollout, error) {
		if class != testHardware || release != 3 {
			t.Errorf("rule asked for %s release %d, want %s release 3", class, release, testHardware)
		}
		mu.Lock()
		defer mu.Unlock()
		if rule == nil {
			return nil, fail
		}
		c := *rule
		return &c, fail
	}
	logger, logs := newLog(t)
	stop := runRefresher(t, repo.Refresher{Dir: r.Dir, Keys: []crypto.Signer{r.TimestampKey}, Validity: time.Hour,
		Every: 50 * time.Millisecond, Logger: logger, Rollout: asked})
	defer stop()
	await := func(want func(*update.Rollout) bool) *update.Timestamp {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			tr, err := r.deviceCheck(time.Now(), update.Floors{})
			if err == nil && want(tr.Timestamp().Rollout) {
				return tr.Timestamp()
			}
			if time.Now().After(deadline) {
				t.Fatalf("no timestamp with the rule wanted (last: %v)\n%s", err, logs())
			}
		}
	}
	first := await(func(ro *update.Rollout) bool { return ro != nil && ro.Share == 100 })
	set(&update.Rollout{Salt: [16]byte{1}, Share: 1000, Groups: []string{"beta"}}, nil)
	wider := await(func(ro *update.Rollout) bool { return ro != nil && ro.Share == 1000 && len(ro.Groups) == 1 })
	if wider.Version <= first.Version {
		t.Fatalf("timestamp version %d after %d", wider.Version, first.Version)
	}
	set(&update.Rollout{Salt: [16]byte{1}}, errors.New("store down"))
	time.Sleep(300 * time.Millisecond)
	if tr, err := r.deviceCheck(time.Now(), update.Floors{}); err != nil || tr.Timestamp().Version != wider.Version {
		t.Fatalf("a failing rule changed the timestamp: %v", err)
	}
	set(&update.Rollout{Salt: [16]byte{1}}, nil)
	halted := await(func(ro *update.Rollout) bool { return ro.Halted() })
	if !halted.Rollout.Halted() || halted.Rollout.Eligible("any-device", []string{"beta"}) {
		t.Fatalf("halted rule %+v", halted.Rollout)
	}
	set(nil, nil)
	await(func(ro *update.Rollout) bool { return ro == nil })
}

// TestSignTimestampKeepsRollout: re-signing without a rule (d2c update
// timestamp) keeps the rule in place for the same release, holds a new
// release (share 0) under a repository that runs campaigns, and never
// signs a rule edited into the file without the timestamp key.
func TestSignTimestampKeepsRollout(t *testing.T) {
	r := newTestRepo(t)
	ctx, keys := t.Context(), []crypto.Signer{r.TimestampKey}
	rule := func(ro *update.Rollout) repo.RolloutFunc {
		return func(context.Context, string, uint64) (*update.Rollout, error) { return ro, nil }
	}
	// A Refresher signs the campaign's rule once.
	stop := runRefresher(t, repo.Refresher{Dir: r.Dir, Keys: keys, Validity: time.Hour, Every: 50 * time.Millisecond,
		Rollout: rule(&update.Rollout{Salt: [16]byte{2}, Share: 500})})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if tr, err := r.deviceCheck(time.Now(), update.Floors{}); err == nil && tr.Timestamp().Rollout != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the Refresher signed no rule")
		}
	}
	stop()
	ts, err := repo.SignTimestamp(ctx, r.Dir, keys, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if ts.Rollout == nil || ts.Rollout.Share != 500 || ts.Rollout.Salt != [16]byte{2} {
		t.Fatalf("re-signed rule %+v, want the one in place", ts.Rollout)
	}

	// Widened in the file, signature kept: devices refuse it, and
	// re-signing neither launders it nor takes it for a timestamp without
	// a rule (which would offer the release to the whole fleet): it
	// refuses until the service signs or the file is removed.
	inPlace := r.Read(t, "timestamp.json")
	widened, err := jwsedit.EditPayload(inPlace, func(p map[string]any) {
		p["rollout"].(map[string]any)["share"] = update.RolloutAll
	})
	if err != nil {
		t.Fatal(err)
	}
	r.Write(t, "timestamp.json", widened)
	if _, err := r.deviceCheck(time.Now(), update.Floors{}); !errors.Is(err, update.ErrBadSignature) && !errors.Is(err, update.ErrMalformed) {
		t.Fatalf("a device checks the widened timestamp: %v, want a refusal", err)
	}
	if ts, err = repo.SignTimestamp(ctx, r.Dir, keys, time.Hour, time.Now()); !errors.Is(err, repo.ErrUnverifiedTimestamp) {
		t.Fatalf("re-signing over the widened timestamp: %+v, %v, want ErrUnverifiedTimestamp", ts, err)
	}
	if !bytes.Equal(r.Read(t, "timestamp.json"), widened) {
		t.Fatal("the refused re-signing wrote the timestamp")
	}
	r.Write(t, "timestamp.json", inPlace)

	// A new release after a campaign's timestamp starts held.
	if _, err := repo.SignTimestamp(ctx, r.Dir, keys, time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	stop = runRefresher(t, repo.Refresher{Dir: r.Dir, Keys: keys, Validity: time.Hour, Every: 50 * time.Millisecond,
		Rollout: rule(&update.Rollout{Salt: [16]byte{2}, Share: 500})})
	time.Sleep(200 * time.Millisecond)
	stop()
	r.publishRelease(t, 4, time.Now().AddDate(0, 1, 0))
	if ts, err = repo.SignTimestamp(ctx, r.Dir, keys, time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	if ts.Release.Version != 4 || !ts.Rollout.Halted() {
		t.Fatalf("new release 4 under a campaign: rule %+v, want halted", ts.Rollout)
	}
}

// TestCarryAcrossKeyRotation: a timestamp signed before a rotation of the
// timestamp key still verifies with the root it was signed under, so its
// cohort rule carries over to the first timestamp the new key signs.
func TestCarryAcrossKeyRotation(t *testing.T) {
	r := newTestRepo(t)
	ctx := t.Context()
	ts, err := update.NewTimestamp(1, time.Now().Add(time.Hour), r.Read(t, "3.release.json"))
	if err != nil {
		t.Fatal(err)
	}
	ts.Rollout = &update.Rollout{Salt: [16]byte{9}, Share: 250}
	b, err := ts.Sign(r.TimestampKey)
	if err != nil {
		t.Fatal(err)
	}
	r.Write(t, "timestamp.json", b)

	// Root 2 replaces the timestamp key.
	root1, err := repo.NewTrusted(r.Dir, time.Now(), testHardware)
	if err != nil {
		t.Fatal(err)
	}
	next := root1.Root().Next(time.Now().AddDate(1, 0, 0))
	newTS := testpki.Key(t)
	if err := next.SetRole(update.RoleTimestamp, 1, newTS.Public()); err != nil {
		t.Fatal(err)
	}
	signed, err := next.Sign(r.RootKey)
	if err != nil {
		t.Fatal(err)
	}
	r.Write(t, "2.root.json", signed)
	r.Write(t, "root.json", signed)

	got, err := repo.SignTimestamp(ctx, r.Dir, []crypto.Signer{newTS}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 || got.Rollout == nil || got.Rollout.Share != 250 || got.Rollout.Salt != [16]byte{9} {
		t.Fatalf("after the rotation: %+v rule %+v, want version 2 with the rule in place", got, got.Rollout)
	}
}
