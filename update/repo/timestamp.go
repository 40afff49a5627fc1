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
// Devices refuse a timestamp once it has expired (a freeze attack looks
// exactly like a repository nobody re-signs): call it well within
// validity, or run a [Refresher]. A repository without a release is
// [ErrNoRelease]; an expired release is [ErrReleaseExpired], which a fresh
// timestamp cannot revive.
func SignTimestamp(ctx context.Context, dir string, keys []crypto.Signer, validity time.Duration, now time.Time) (*update.Timestamp, error) {
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
	ts, signed, err := NextTimestamp(dir, t, rel, keys, now.Add(validity))
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
// It writes nothing: the caller holds the lock ([Lock]) and publishes
// the artifacts, then DIR/<V>.release.json, then the timestamp. Most
// callers want [SignTimestamp], which does all of it for the current
// release.
func NextTimestamp(dir string, t *update.Trusted, signedRelease []byte, keys []crypto.Signer, expires time.Time) (*update.Timestamp, []byte, error) {
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
	}
	ts, err := update.NewTimestamp(version, expires, signedRelease)
	if err != nil {
		return nil, nil, fmt.Errorf("repo: %w", err)
	}
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
