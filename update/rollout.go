// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
)

// Rollout is the cohort rule of a campaign: which devices a timestamp
// offers its release to. It travels in the timestamp ([Timestamp.Rollout]),
// so the online timestamp key signs it: a repository, a mirror or a CDN
// that changes it breaks the signature, and a device evaluates it on its
// own ID, from the static files, with no request to any server.
//
// A device is in the cohort when its bucket, [RolloutBucket] of the
// campaign's salt and its device ID, is below Share, or when it belongs
// to one of Groups. A campaign widens the rule phase by phase (a larger
// share, more groups) and halts by setting Share to 0 and Groups to none:
// from then on no device starts the release (docs/update-format.md,
// "Campaigns").
type Rollout struct {
	// Salt orders the devices for this campaign: 16 random bytes, new for
	// every campaign, so that no device is always among the first.
	Salt [16]byte
	// Share is the share of devices offered the release, in basis points
	// of the fleet: 0 to [RolloutAll] (10,000, every device).
	Share int
	// Groups names device groups offered the release whatever their
	// bucket ([AgentConfig.Groups]): at most [MaxRolloutGroups] names of 1
	// to 64 bytes of A-Z a-z 0-9 . _ -, distinct, in increasing order.
	Groups []string
}

// Bounds of a [Rollout].
const (
	// RolloutAll is the Share that offers a release to every device.
	RolloutAll = 10_000
	// MaxRolloutGroups bounds [Rollout.Groups].
	MaxRolloutGroups = 16
	// maxGroupName bounds a group name, in bytes.
	maxGroupName = 64
)

// rolloutDomain separates the bucket hash from every other use of SHA-256.
const rolloutDomain = "d2c rollout bucket v1\x00"

// RolloutBucket returns the device's bucket in a campaign, 0 to
// [RolloutAll]-1: the first 8 bytes of SHA-256("d2c rollout bucket
// v1\x00" || salt || device ID), as a big-endian integer, modulo 10,000.
// The cloud computes the same to know which phase offered a release to
// which device.
func RolloutBucket(salt [16]byte, device string) int {
	h := sha256.New()
	h.Write([]byte(rolloutDomain))
	h.Write(salt[:])
	h.Write([]byte(device))
	return int(binary.BigEndian.Uint64(h.Sum(nil)) % RolloutAll)
}

// Eligible reports whether the device with this ID and these groups is in
// the cohort. A nil rule offers the release to every device.
func (r *Rollout) Eligible(device string, groups []string) bool {
	if r == nil || r.Share >= RolloutAll {
		return true
	}
	for _, g := range groups {
		if _, found := slices.BinarySearch(r.Groups, g); found {
			return true
		}
	}
	return device != "" && RolloutBucket(r.Salt, device) < r.Share
}

// Halted reports whether the rule offers the release to no device.
func (r *Rollout) Halted() bool { return r != nil && r.Share == 0 && len(r.Groups) == 0 }

// validate checks the rule's field rules.
func (r *Rollout) validate() error {
	if r.Share < 0 || r.Share > RolloutAll {
		return fmt.Errorf("%w: rollout share %d (want 0 to %d basis points)", ErrMalformed, r.Share, RolloutAll)
	}
	if len(r.Groups) > MaxRolloutGroups {
		return fmt.Errorf("%w: rollout names %d groups (at most %d)", ErrMalformed, len(r.Groups), MaxRolloutGroups)
	}
	for i, g := range r.Groups {
		if len(g) > maxGroupName {
			return fmt.Errorf("%w: rollout group of %d bytes (at most %d)", ErrMalformed, len(g), maxGroupName)
		}
		if err := validateName("rollout group", g); err != nil {
			return err
		}
		if i > 0 && r.Groups[i-1] >= g {
			return fmt.Errorf("%w: rollout groups not distinct and in increasing order", ErrMalformed)
		}
	}
	return nil
}

// rolloutJSON is the wire form of a Rollout.
type rolloutJSON struct {
	Salt   string   `json:"salt"`
	Share  int      `json:"share"`
	Groups []string `json:"groups,omitempty"`
}

func (r *Rollout) wire() *rolloutJSON {
	if r == nil {
		return nil
	}
	return &rolloutJSON{Salt: hex.EncodeToString(r.Salt[:]), Share: r.Share, Groups: r.Groups}
}

func (w *rolloutJSON) rollout() (*Rollout, error) {
	if w == nil {
		return nil, nil
	}
	r := &Rollout{Share: w.Share, Groups: w.Groups}
	if len(w.Salt) != 2*len(r.Salt) {
		return nil, fmt.Errorf("%w: rollout salt of %d hex digits (want %d)", ErrMalformed, len(w.Salt), 2*len(r.Salt))
	}
	if _, err := hex.Decode(r.Salt[:], []byte(w.Salt)); err != nil || hex.EncodeToString(r.Salt[:]) != w.Salt {
		return nil, fmt.Errorf("%w: rollout salt is not lowercase hexadecimal", ErrMalformed)
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// clone returns a deep copy of t (nil for nil).
func (t *Timestamp) clone() *Timestamp {
	if t == nil {
		return nil
	}
	c := *t
	if t.Rollout != nil {
		r := *t.Rollout
		r.Groups = slices.Clone(r.Groups)
		c.Rollout = &r
	}
	return &c
}
