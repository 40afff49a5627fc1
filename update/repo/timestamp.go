// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package repo

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/update"
)

// SignTimestamp re-signs the repository's timestamp: under the lock
// ([Lock], waiting until ctx ends), it signs with keys a timestamp naming
// the current DIR/release.json, one version above the timestamp in place,
// valid for validity from now; checks it and the release as a new device
// would at the trusted time now ([NextTimestamp]); and only then writes
// DIR/timestamp.json atomically. It also writes DIR/<V>.release.json, which
// devices fetch by the version the timestamp names, if it is missing, and
// refuses if it holds other bytes than DIR/release.json.
//
// The new timestamp keeps the cohort rule ([update.Timestamp.Rollout]) of
// the one in place, as [NextTimestamp] does: re-signing never widens a
// campaign. A [Refresher] with a Rollout function signs the campaign's
// current rule instead.
//
// Devices refuse a timestamp once it has expired (a freeze attack looks
// exactly like a repository nobody re-signs): call it well within
// validity, or run a [Refresher]. A repository without a release is
// [ErrNoRelease]; an expired release is [ErrReleaseExpired], which a fresh
// timestamp cannot revive.
func SignTimestamp(ctx context.Context, dir string, keys []crypto.Signer, validity time.Duration, now time.Time) (*update.Timestamp, error) {
	return signTimestamp(ctx, dir, keys, validity, now, nil)
}

// RolloutFunc returns the cohort rule to sign into the timestamp naming
// version release of hardwareClass: nil offers the release to every
// device of the class. An error signs nothing.
type RolloutFunc func(ctx context.Context, hardwareClass string, release uint64) (*update.Rollout, error)

// signTimestamp is SignTimestamp, with the rule from rule when it is not
// nil (else the rule of the timestamp in place, carried).
func signTimestamp(ctx context.Context, dir string, keys []crypto.Signer, validity time.Duration, now time.Time, rule RolloutFunc) (*update.Timestamp, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("repo: timestamp validity %v: want a positive duration", validity)
	}
	unlock, err := Lock(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	relPath := filepath.Join(dir, releaseFile)
	rel, err := readMeta(relPath, limits.UpdateRelease)
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := NewTrusted(dir, now, anyHardwareClass); err != nil {
			return nil, err // no repository at all, rather
		}
		return nil, fmt.Errorf("%w in %s yet (no %s)", ErrNoRelease, dir, releaseFile)
	}
	if err != nil {
		return nil, fmt.Errorf("repo: %w", err)
	}
	p, err := peek(relPath, rel)
	if err == nil && p.HardwareClass == "" {
		err = fmt.Errorf("%w: %s: no hardware_class", update.ErrMalformed, relPath)
	}
	if err != nil {
		return nil, fmt.Errorf("repo: %w", err)
	}
	// Devices fetch the release by the version the timestamp names: that
	// file must hold these bytes.
	versioned := filepath.Join(dir, releaseFileName(p.Version))
	cur, err := readMeta(versioned, limits.UpdateRelease)
	missing := errors.Is(err, fs.ErrNotExist)
	switch {
	case missing:
	case err != nil:
		return nil, fmt.Errorf("repo: %w", err)
	case !bytes.Equal(cur, rel):
		return nil, fmt.Errorf("repo: %s differs from %s: a published release version is never replaced; "+
			"restore %s from %s, or sign a new release version", relPath, versioned, releaseFile, releaseFileName(p.Version))
	}
	t, err := NewTrusted(dir, now, p.HardwareClass)
	if err != nil {
		return nil, err
	}
	carry := true
	var rollout *update.Rollout
	if rule != nil {
		if rollout, err = rule(ctx, p.HardwareClass, p.Version); err != nil {
			return nil, fmt.Errorf("repo: cohort rule of release %d: %w", p.Version, err)
		}
		carry = false
	}
	ts, signed, err := nextTimestamp(dir, t, rel, keys, now.Add(validity), rollout, carry)
	if err != nil {
		return nil, err
	}
	if ts.Release.Version != p.Version { // the strict decoding read another version than peek
		return nil, fmt.Errorf("repo: %w: %s: version %d or %d", update.ErrMalformed, relPath, p.Version, ts.Release.Version)
	}
	if missing {
		if err := writeFile(versioned, rel); err != nil {
			return nil, fmt.Errorf("repo: %w", err)
		}
	}
	if err := writeFile(filepath.Join(dir, timestampFile), signed); err != nil {
		return nil, fmt.Errorf("repo: %w", err)
	}
	return ts, nil
}

// NextTimestamp signs with keys the repository's next timestamp, naming
// signedRelease, one version above DIR/timestamp.json (1 if there is
// none), valid until expires, and returns it with its signed bytes. It
// first refuses keys that are not timestamp keys of t's root or too few
// to reach its threshold ([update.ErrUnknownKey], [update.ErrThreshold]),
// and afterwards verifies the timestamp and then signedRelease with t,
// as a new device would ([ErrReleaseExpired] for an expired release), so
// that nothing devices refuse is published. t, from [NewTrusted] for the
// release's hardware class, is left past the release.
//
// The cohort rule ([update.Timestamp.Rollout]) of the timestamp in place
// carries over (use [NextTimestampHeld] to sign a halted one instead), if
// that timestamp verifies with a root of the repository's chain: the same
// rule for the same release, and
// for a new release a halted rule (no device offered) until the service
// running the campaign signs the campaign's rule (docs/update-format.md,
// "Campaigns"), so that a release published under a campaign never
// reaches the whole fleet at once.
//
// It writes nothing: the caller holds the lock ([Lock]) and publishes
// the artifacts, then DIR/<V>.release.json, then the timestamp. Most
// callers want [SignTimestamp], which does all of it for the current
// release.
func NextTimestamp(dir string, t *update.Trusted, signedRelease []byte, keys []crypto.Signer, expires time.Time) (*update.Timestamp, []byte, error) {
	return nextTimestamp(dir, t, signedRelease, keys, expires, nil, true)
}

// NextTimestampHeld is [NextTimestamp] with a halted cohort rule (share 0,
// no group) instead of the one in place: the release it names is offered
// to no device until the service running its campaign signs the first
// phase (d2c update release sign --held).
func NextTimestampHeld(dir string, t *update.Trusted, signedRelease []byte, keys []crypto.Signer, expires time.Time) (*update.Timestamp, []byte, error) {
	return nextTimestamp(dir, t, signedRelease, keys, expires, &update.Rollout{}, false)
}

// nextTimestamp is NextTimestamp with the rule rollout, or, if carry, the
// rule carried from the timestamp in place.
func nextTimestamp(dir string, t *update.Trusted, signedRelease []byte, keys []crypto.Signer, expires time.Time,
	rollout *update.Rollout, carry bool) (*update.Timestamp, []byte, error) {
	root := t.Root()
	if err := checkKeys(root, keys); err != nil {
		return nil, nil, err
	}
	version := uint64(1)
	path := filepath.Join(dir, timestampFile)
	switch prev, err := readMeta(path, limits.UpdateTimestamp); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, nil, fmt.Errorf("repo: %w", err)
	default:
		p, err := peek(path, prev)
		if err != nil {
			return nil, nil, fmt.Errorf("repo: %w", err)
		}
		if p.Version == ^uint64(0) {
			return nil, nil, fmt.Errorf("repo: %w: timestamp version %d cannot grow", update.ErrTooLarge, p.Version)
		}
		version = p.Version + 1
		if carry {
			if rollout, err = carriedRollout(dir, prev, p, signedRelease); err != nil {
				return nil, nil, err
			}
		}
	}
	ts, err := update.NewTimestamp(version, expires, signedRelease)
	if err != nil {
		return nil, nil, fmt.Errorf("repo: %w", err)
	}
	ts.Rollout = rollout
	signed, err := ts.Sign(keys...)
	if err != nil {
		return nil, nil, fmt.Errorf("repo: %w", err)
	}
	if _, err := t.UpdateTimestamp(signed); err != nil {
		return nil, nil, fmt.Errorf("repo: the timestamp just signed would be refused by devices: %w", err)
	}
	if _, err := t.UpdateRelease(signedRelease); err != nil {
		if errors.Is(err, update.ErrExpired) {
			return nil, nil, fmt.Errorf("%w: %w", ErrReleaseExpired, err)
		}
		return nil, nil, fmt.Errorf("repo: the release would be refused by devices: %w", err)
	}
	return ts, signed, nil
}

// carriedRollout returns the cohort rule a timestamp following prev
// carries: prev's rule when it names the same release as signedRelease,
// a halted rule (share 0, no group) for another release, none when prev
// has none. prev must verify with a root of the repository's chain (the
// newest first, each at a time just before prev expired, so that an
// expired timestamp or one signed before a key rotation still counts):
// a rule edited into the file without the timestamp key is never signed,
// and a timestamp that verifies with no root is [ErrUnverifiedTimestamp],
// never taken for one without a rule.
func carriedRollout(dir string, prev []byte, p peeked, signedRelease []byte) (*update.Rollout, error) {
	exp, err := time.Parse(time.RFC3339, p.Expires)
	if err != nil {
		return nil, fmt.Errorf("%w: expires %q: %v", ErrUnverifiedTimestamp, p.Expires, err)
	}
	rel, err := peek(releaseFile, signedRelease)
	if err != nil {
		return nil, err
	}
	vs, err := rootVersions(dir)
	if err != nil {
		return nil, err
	}
	var last error
	for i := len(vs) - 1; i >= 0; i-- {
		t, err := newTrustedUpTo(dir, exp.Add(-time.Second), rel.HardwareClass, vs[i])
		if err != nil {
			return nil, err
		}
		ts, err := t.UpdateTimestamp(prev)
		if err != nil {
			last = err
			continue
		}
		switch {
		case ts.Rollout == nil:
			return nil, nil
		case ts.Release.Version != rel.Version:
			return &update.Rollout{}, nil
		}
		return ts.Rollout, nil
	}
	return nil, fmt.Errorf("%w with any of the %d roots (%w): whether a campaign's cohort rule is in force cannot be known; "+
		"let the service running the campaign sign, or, with no campaign running, remove %s and sign again",
		ErrUnverifiedTimestamp, len(vs), last, filepath.Join(dir, timestampFile))
}

// checkKeys refuses, before anything is signed, keys that are not
// timestamp keys of root, or too few to reach the role's threshold:
// devices would refuse what they sign, and a hardware key is not asked to
// sign for nothing.
func checkKeys(root *update.Root, keys []crypto.Signer) error {
	trusted := root.Roles[update.RoleTimestamp]
	distinct := map[string]bool{}
	for _, k := range keys {
		id, err := identity.KeyID(k.Public())
		if err != nil {
			return fmt.Errorf("repo: timestamp key: %w", err)
		}
		if !slices.Contains(trusted.KeyIDs, id) {
			return fmt.Errorf("repo: %w: key %s is not a timestamp key of root version %d",
				update.ErrUnknownKey, id, root.Version)
		}
		distinct[id] = true
	}
	if len(distinct) < trusted.Threshold {
		return fmt.Errorf("repo: %w: %d timestamp keys given, root version %d needs %d",
			update.ErrThreshold, len(distinct), root.Version, trusted.Threshold)
	}
	return nil
}
