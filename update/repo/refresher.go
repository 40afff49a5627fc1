// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package repo

import (
	"context"
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/update"
)

// Refresher defaults and bounds.
const (
	defaultValidity = 24 * time.Hour
	defaultEvery    = time.Minute
	// minValidity leaves room for the whole seconds of "expires".
	minValidity = 2 * time.Second
	// maxLockWait bounds one attempt's wait for the lock (a release being
	// published holds it while it copies the image); the attempt is then
	// retried at the next check.
	maxLockWait = time.Minute
)

// Refresher keeps a repository's timestamp fresh: run beside the
// repository's server ([Handler]), it re-signs DIR/timestamp.json with the
// online timestamp keys long before it expires, so that devices never find
// it stale while the Refresher runs. The zero value is not usable: Dir and
// Keys are required.
type Refresher struct {
	// Dir is the repository directory. Required.
	Dir string
	// Keys are the online timestamp keys, at least the threshold of the
	// repository's newest root. Required.
	Keys []crypto.Signer
	// Validity is how long each timestamp is valid; a timestamp is
	// re-signed once less than half of it is left. Zero means 24 hours;
	// at least 2 seconds.
	Validity time.Duration
	// Every is how often the timestamp in place is checked, and a failed
	// signing retried. Zero means one minute, or Validity/8 when that is
	// shorter; at most Validity/2.
	Every time.Duration
	// Logger receives a line for every timestamp signed and every
	// failure. Nil means no logging.
	Logger *slog.Logger
	// Rollout, if set, gives the cohort rule of the current release's
	// campaign ([update.Timestamp.Rollout]): it is asked at every check,
	// and a timestamp whose rule differs is re-signed at once, with the
	// rule it returns. An error signs nothing (the timestamp in place
	// stays, and is retried at the next check). Nil keeps the rule of the
	// timestamp in place ([SignTimestamp]).
	Rollout RolloutFunc
}

// Validate reports the first setting of r that [Refresher.Run] refuses.
func (r Refresher) Validate() error {
	switch {
	case r.Dir == "":
		return errors.New("repo: Refresher.Dir is required")
	case len(r.Keys) == 0:
		return errors.New("repo: Refresher.Keys is required")
	case r.Validity < 0 || r.Validity > 0 && r.Validity < minValidity:
		return fmt.Errorf("repo: Refresher.Validity %v: want at least %v (or zero for %v)", r.Validity, minValidity, defaultValidity)
	case r.Every < 0:
		return fmt.Errorf("repo: Refresher.Every %v: want a positive duration (or zero for the default)", r.Every)
	}
	if c := r.withDefaults(); c.Every > c.Validity/2 {
		return fmt.Errorf("repo: Refresher.Every %v: want at most half of Validity (%v), so that a failure is retried before the timestamp expires",
			c.Every, c.Validity)
	}
	return nil
}

// withDefaults returns a copy of r with its defaults filled in.
func (r Refresher) withDefaults() Refresher {
	r.Keys = slices.Clone(r.Keys)
	if r.Validity == 0 {
		r.Validity = defaultValidity
	}
	if r.Every == 0 {
		r.Every = min(defaultEvery, r.Validity/8)
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	return r
}

// Run checks the repository's timestamp at once and then every r.Every
// until ctx ends, and re-signs it ([SignTimestamp]) whenever a device
// would not accept it for half of r.Validity more: it expires within that
// time, does not verify against the newest root (its key was rotated
// out), or does not name the current DIR/release.json; or, with
// r.Rollout, whenever its cohort rule is not the one r.Rollout gives. A failure (a
// signer that fails, the lock held, an expired release) is logged and
// retried at the next check: the timestamp in place stays, and half of
// the validity is left to fix the cause before devices see it expire.
//
// Run returns nil once ctx ends, or at once the error of
// [Refresher.Validate]. r is not modified. A service that should not
// start on a repository it cannot sign for calls [SignTimestamp] once
// before Run.
func (r Refresher) Run(ctx context.Context) error {
	if err := r.Validate(); err != nil {
		return err
	}
	c := r.withDefaults()
	c.Logger.Info("timestamp refresher started", "dir", c.Dir, "validity", c.Validity.String(), "every", c.Every.String())
	tick := time.NewTicker(c.Every)
	defer tick.Stop()
	for {
		c.refresh(ctx, time.Now())
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// refresh re-signs the timestamp unless the one in place is fresh.
func (r Refresher) refresh(ctx context.Context, now time.Time) {
	if r.fresh(ctx, now) {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, min(maxLockWait, max(r.Every, 10*time.Second)))
	defer cancel()
	ts, err := signTimestamp(sctx, r.Dir, r.Keys, r.Validity, now, r.Rollout)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return
	case errors.Is(err, ErrNoRelease):
		// A new repository: nothing to name yet, nothing wrong.
		r.Logger.Debug("no release to sign a timestamp for yet", "dir", r.Dir, "retry_in", r.Every.String())
		return
	default:
		r.Logger.Error("timestamp not signed; the one in place, if any, stays", "dir", r.Dir, "err", err, "retry_in", r.Every.String())
		return
	}
	args := []any{"dir", r.Dir, "version", ts.Version, "release", ts.Release.Version, "expires", ts.Expires.UTC().Format(time.RFC3339)}
	if ro := ts.Rollout; ro != nil {
		args = append(args, "rollout_share", ro.Share, "rollout_groups", ro.Groups)
	}
	r.Logger.Info("timestamp signed", args...)
}

// fresh reports whether a new device would accept the timestamp in place
// at now and for half of the validity more, and whether it names the
// current DIR/release.json and carries the cohort rule r.Rollout gives.
// Any doubt is false: signing again settles it, or says why not.
func (r Refresher) fresh(ctx context.Context, now time.Time) bool {
	t, err := NewTrusted(r.Dir, now, anyHardwareClass)
	if err != nil {
		return false
	}
	b, err := readMeta(filepath.Join(r.Dir, timestampFile), limits.UpdateTimestamp)
	if err != nil {
		return false
	}
	ts, err := t.UpdateTimestamp(b)
	if err != nil {
		return false
	}
	rel, err := readMeta(filepath.Join(r.Dir, releaseFile), limits.UpdateRelease)
	if err != nil {
		return false
	}
	if ts.Release.Length != int64(len(rel)) || ts.Release.SHA256 != sha256.Sum256(rel) || !ts.Expires.After(now.Add(r.Validity/2)) {
		return false
	}
	if r.Rollout == nil {
		return true
	}
	p, err := peek(releaseFile, rel)
	if err != nil {
		return false
	}
	want, err := r.Rollout(ctx, p.HardwareClass, ts.Release.Version)
	if err != nil {
		// The rule in place stays until the timestamp needs signing
		// anyway; signing then needs the rule, and fails without it.
		r.Logger.Warn("cohort rule not read; the timestamp in place stays", "dir", r.Dir, "err", err)
		return true
	}
	return sameRollout(ts.Rollout, want)
}

// sameRollout reports whether a and b are the same cohort rule.
func sameRollout(a, b *update.Rollout) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Salt == b.Salt && a.Share == b.Share && slices.Equal(a.Groups, b.Groups)
}
