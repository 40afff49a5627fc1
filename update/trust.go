// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/d2c-iot/d2c/internal/limits"
)

// Floors are the version floors a device persists between update cycles
// (with the last trusted root). Metadata below a floor is refused as a
// rollback. The zero value is a device that has verified nothing yet.
type Floors struct {
	// TimestampVersion is the version of the last verified timestamp.
	// [Trusted.UpdateTimestamp] raises it; a rotation that removes a
	// timestamp key resets it to 0 (fast-forward recovery).
	TimestampVersion uint64
	// ReleaseVersion is the highest release metadata version named by a
	// verified timestamp. [Trusted.UpdateTimestamp] raises it; a rotation
	// that removes a release key resets it to 0 (fast-forward recovery).
	ReleaseVersion uint64
	// SecurityCounter is the security counter of the release the device
	// confirmed last. Only the caller raises it, when the device confirms
	// a release after its health check; nothing here lowers it, not even a
	// key rotation.
	SecurityCounter uint64
}

// Trusted is the device's trust state for one update cycle: the trusted
// root and floors it starts from, and the metadata verified since, in
// order: [Trusted.UpdateRoot] for each newer root (version N+1, N+2, ...),
// then [Trusted.UpdateTimestamp], then [Trusted.UpdateRelease].
//
// Trusted does no I/O and keeps no clock: the caller fetches the bytes,
// supplies the trusted time, and persists [Trusted.RootBytes] and
// [Trusted.Floors] afterwards. Every method either succeeds or returns an
// error and leaves the state exactly as it was. A Trusted is not safe for
// concurrent use.
type Trusted struct {
	root      *Root
	rootBytes []byte
	floors    Floors
	now       time.Time
	hardware  string
	walked    int // roots accepted by UpdateRoot
	timestamp *Timestamp
	release   *Release
}

// NewTrusted starts an update cycle from the last trusted root (the root
// pinned at manufacture, or the newest one the device persisted), the
// persisted floors, the trusted time now (for example
// identity.TrustedClock.Now, so that a device whose clock reads 1970 still
// refuses expired metadata) and the device's hardware class.
//
// The root must be signed by a threshold of its own root keys. Its expiry
// does not matter yet (TUF 5.2): newer roots may follow; it is checked
// before the timestamp.
func NewTrusted(root []byte, floors Floors, now time.Time, hardwareClass string) (*Trusted, error) {
	if err := validateName("hardware class", hardwareClass); err != nil {
		return nil, within("new trusted", err)
	}
	if now.IsZero() {
		// Fail closed: a missing time would pass every expiry check.
		return nil, errors.New("update: new trusted: no trusted time given")
	}
	e, err := parseEnvelope(root, RoleRoot, limits.UpdateRoot)
	if err != nil {
		return nil, err
	}
	r, err := decodeRoot(e.payload)
	if err != nil {
		return nil, err
	}
	keys := r.roleKeys(RoleRoot)
	if err := e.requireKnown(keys); err != nil {
		return nil, err
	}
	good, err := e.verify(keys)
	if err != nil {
		return nil, err
	}
	if err := threshold(RoleRoot, r.Roles[RoleRoot], good, fmt.Sprintf("root version %d itself", r.Version)); err != nil {
		return nil, err
	}
	return &Trusted{root: r, rootBytes: slices.Clone(root), floors: floors, now: now, hardware: hardwareClass}, nil
}

// UpdateRoot verifies b as the next root, version N+1 of the trusted
// version N, and makes it the trusted root (TUF 5.3.3 to 5.3.7): it must be
// signed by a threshold of the trusted root's root keys and by a threshold
// of its own, every signature by one of those keys. A root of another
// version is refused ([ErrRollback] or [ErrRootVersionSkip]).
//
// A rotation that removes a timestamp or release key resets that role's
// version floor to 0, so that the repository can recover from a
// fast-forward attack by rotating the stolen key (TUF 5.3.11). The
// security-counter floor is never reset.
//
// The caller persists [Trusted.RootBytes] after each accepted root
// (TUF 5.3.8) and calls UpdateRoot until no version N+1 exists.
func (t *Trusted) UpdateRoot(b []byte) (*Root, error) {
	if t.timestamp != nil {
		return nil, fmt.Errorf("%w: root after the timestamp (TUF 5.3 precedes 5.4)", ErrOutOfOrder)
	}
	if t.walked >= limits.UpdateRootChain {
		return nil, fmt.Errorf("%w: more than %d roots in one update cycle", ErrTooLarge, limits.UpdateRootChain)
	}
	old := t.root
	e, err := parseEnvelope(b, RoleRoot, limits.UpdateRoot)
	if err != nil {
		return nil, err
	}
	// 5.3.4 (1): a threshold of the trusted root's root keys.
	oldKeys := old.roleKeys(RoleRoot)
	good, err := e.verify(oldKeys)
	if err != nil {
		return nil, err
	}
	if err := threshold(RoleRoot, old.Roles[RoleRoot], good, fmt.Sprintf("trusted root version %d", old.Version)); err != nil {
		return nil, err
	}
	next, err := decodeRoot(e.payload)
	if err != nil {
		return nil, err
	}
	// 5.3.4 (2): a threshold of the new root's own root keys; every
	// signature by a root key of either version.
	newKeys := next.roleKeys(RoleRoot)
	if err := e.requireKnown(oldKeys, newKeys); err != nil {
		return nil, err
	}
	good, err = e.verify(newKeys)
	if err != nil {
		return nil, err
	}
	if err := threshold(RoleRoot, next.Roles[RoleRoot], good, fmt.Sprintf("new root version %d", next.Version)); err != nil {
		return nil, err
	}
	// 5.3.5: exactly N+1.
	switch {
	case next.Version <= old.Version:
		return nil, fmt.Errorf("%w: root version %d is not newer than the trusted version %d", ErrRollback, next.Version, old.Version)
	case next.Version != old.Version+1:
		return nil, fmt.Errorf("%w: root version %d offered, trusted version is %d: want %d", ErrRootVersionSkip, next.Version, old.Version, old.Version+1)
	}
	// 5.3.11: fast-forward recovery.
	floors := t.floors
	if removesKey(old, next, RoleTimestamp) {
		floors.TimestampVersion = 0
	}
	if removesKey(old, next, RoleRelease) {
		floors.ReleaseVersion = 0
	}
	t.root, t.rootBytes, t.floors = next, slices.Clone(b), floors
	t.walked++
	return next.clone(), nil
}

// removesKey reports whether next no longer trusts, for role, a key that
// old trusted: the rotation that revokes a (possibly stolen) key.
func removesKey(old, next *Root, role Role) bool {
	for _, id := range old.Roles[role].KeyIDs {
		if !slices.Contains(next.Roles[role].KeyIDs, id) {
			return true
		}
	}
	return false
}

// UpdateTimestamp verifies b as timestamp metadata and makes it the
// trusted timestamp. It refuses, in the order of TUF 5.3.10 and 5.4: an
// expired trusted root ([ErrExpired]); a document over its size bound; a
// signature that is not by a timestamp key or does not verify, or fewer
// than the threshold; a version below the timestamp floor, or naming a
// release below the release floor ([ErrRollback]; the same version again
// is accepted, as a re-fetch of the same document); an expired timestamp
// ([ErrExpired]). It then raises the timestamp and release floors.
func (t *Trusted) UpdateTimestamp(b []byte) (*Timestamp, error) {
	if t.release != nil {
		return nil, fmt.Errorf("%w: timestamp after the release", ErrOutOfOrder)
	}
	// 5.3.10: the final root must not have expired.
	if !t.now.Before(t.root.Expires) {
		return nil, fmt.Errorf("%w: root version %d expired at %s (trusted time %s)", ErrExpired, t.root.Version, formatTime(t.root.Expires), formatTime(t.now))
	}
	// 5.4.1, 5.4.2.
	payload, err := verifyRole(b, RoleTimestamp, limits.UpdateTimestamp, t.root)
	if err != nil {
		return nil, err
	}
	ts, err := decodeTimestamp(payload)
	if err != nil {
		return nil, err
	}
	// 5.4.3.1, 5.4.3.2.
	if ts.Version < t.floors.TimestampVersion {
		return nil, fmt.Errorf("%w: timestamp version %d is below the floor %d", ErrRollback, ts.Version, t.floors.TimestampVersion)
	}
	if ts.Release.Version < t.floors.ReleaseVersion {
		return nil, fmt.Errorf("%w: timestamp names release version %d, below the floor %d", ErrRollback, ts.Release.Version, t.floors.ReleaseVersion)
	}
	// 5.4.4.
	if !t.now.Before(ts.Expires) {
		return nil, fmt.Errorf("%w: timestamp version %d expired at %s (trusted time %s)", ErrExpired, ts.Version, formatTime(ts.Expires), formatTime(t.now))
	}
	t.timestamp = ts
	t.floors.TimestampVersion = ts.Version
	t.floors.ReleaseVersion = max(t.floors.ReleaseVersion, ts.Release.Version)
	return ts.clone(), nil
}

// UpdateRelease verifies b as the release metadata the trusted timestamp
// names, and makes it the trusted release. It refuses, in the order of
// TUF 5.5 and Uptane's image checks: bytes whose length or SHA-256 differ
// from the timestamp's ([ErrMixAndMatch], checked before any parsing); a
// signature that is not by a release key or does not verify, or fewer
// than the threshold; a version other than the timestamp's
// ([ErrMixAndMatch]) or below the release floor ([ErrRollback]); an
// expired release ([ErrExpired]); another hardware class
// ([ErrWrongHardware]); a security counter below the floor
// ([ErrSecurityCounter]).
//
// Whether the release is newer than the installed one is the caller's
// decision ([Release.Newer]).
func (t *Trusted) UpdateRelease(b []byte) (*Release, error) {
	if t.timestamp == nil {
		return nil, fmt.Errorf("%w: release before a timestamp", ErrOutOfOrder)
	}
	ref := t.timestamp.Release
	// 5.5.1: at most the length the timestamp gives.
	if len(b) > limits.UpdateRelease {
		return nil, fmt.Errorf("%w: release metadata of %d bytes (at most %d)", ErrTooLarge, len(b), limits.UpdateRelease)
	}
	// 5.5.2.
	if int64(len(b)) != ref.Length {
		return nil, fmt.Errorf("%w: release metadata of %d bytes, timestamp version %d names %d", ErrMixAndMatch, len(b), t.timestamp.Version, ref.Length)
	}
	if sum := sha256.Sum256(b); !bytes.Equal(sum[:], ref.SHA256[:]) {
		return nil, fmt.Errorf("%w: release metadata SHA-256 %x, timestamp version %d names %x", ErrMixAndMatch, sum, t.timestamp.Version, ref.SHA256)
	}
	rel, err := t.verifyRelease(b)
	if err != nil {
		return nil, err
	}
	// 5.5.4.
	if rel.Version != ref.Version {
		return nil, fmt.Errorf("%w: release version %d, timestamp version %d names %d", ErrMixAndMatch, rel.Version, t.timestamp.Version, ref.Version)
	}
	// 5.5.5.
	if rel.Version < t.floors.ReleaseVersion {
		return nil, fmt.Errorf("%w: release version %d is below the floor %d", ErrRollback, rel.Version, t.floors.ReleaseVersion)
	}
	if err := t.checkRelease(rel); err != nil {
		return nil, err
	}
	t.release = rel
	t.floors.ReleaseVersion = max(t.floors.ReleaseVersion, rel.Version)
	return rel.clone(), nil
}

// verifyRelease checks the signatures of release metadata against the
// trusted root (5.5.3) and decodes it.
func (t *Trusted) verifyRelease(b []byte) (*Release, error) {
	payload, err := verifyRole(b, RoleRelease, limits.UpdateRelease, t.root)
	if err != nil {
		return nil, err
	}
	return decodeRelease(payload)
}

// checkRelease applies the checks on a verified release's content.
func (t *Trusted) checkRelease(rel *Release) error {
	// 5.5.6 / 5.6.5.
	if !t.now.Before(rel.Expires) {
		return fmt.Errorf("%w: release version %d expired at %s (trusted time %s)", ErrExpired, rel.Version, formatTime(rel.Expires), formatTime(t.now))
	}
	// Uptane "Verify image" step 3.
	if rel.HardwareClass != t.hardware {
		return fmt.Errorf("%w: release version %d is for %q, this device is %q", ErrWrongHardware, rel.Version, rel.HardwareClass, t.hardware)
	}
	// Uptane "Verify image" step 5 (release counter).
	if rel.SecurityCounter < t.floors.SecurityCounter {
		return fmt.Errorf("%w: release version %d has security counter %d, the floor is %d", ErrSecurityCounter, rel.Version, rel.SecurityCounter, t.floors.SecurityCounter)
	}
	return nil
}

// Root returns a copy of the trusted root.
func (t *Trusted) Root() *Root { return t.root.clone() }

// RootBytes returns the trusted root as signed, for the caller to persist
// and pass to the next [NewTrusted].
func (t *Trusted) RootBytes() []byte { return slices.Clone(t.rootBytes) }

// Floors returns the floors as raised (or reset) by this cycle, for the
// caller to persist.
func (t *Trusted) Floors() Floors { return t.floors }

// Timestamp returns a copy of the trusted timestamp, or nil before
// [Trusted.UpdateTimestamp] succeeds.
func (t *Trusted) Timestamp() *Timestamp {
	return t.timestamp.clone()
}

// Release returns a copy of the trusted release, or nil before
// [Trusted.UpdateRelease] succeeds.
func (t *Trusted) Release() *Release {
	if t.release == nil {
		return nil
	}
	return t.release.clone()
}
