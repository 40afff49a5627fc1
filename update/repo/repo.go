// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package repo

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/update"
)

// Sentinel errors, for errors.Is.
var (
	// ErrNoRepository: the directory does not exist or holds no root
	// (no DIR/1.root.json). When the directory is missing the error wraps
	// fs.ErrNotExist too.
	ErrNoRepository = errors.New("repo: no update repository")
	// ErrNoRelease: the repository has no release yet (no
	// DIR/release.json), so there is nothing for a timestamp to name.
	ErrNoRelease = errors.New("repo: no release")
	// ErrReleaseExpired: the repository's current release has expired. A
	// fresh timestamp cannot revive it: the release must be signed again
	// with the release keys. The error wraps [update.ErrExpired] too.
	ErrReleaseExpired = errors.New("repo: the release has expired")
	// ErrUnverifiedTimestamp: the timestamp in place does not verify with
	// any root of the repository (altered, or corrupt), so whether it
	// carries a campaign's cohort rule cannot be known, and a timestamp
	// signed without one could widen a campaign to the whole fleet. Let
	// the service running the campaign sign (it takes the rule from the
	// store), or, with no campaign running (d2c rollout status), remove
	// DIR/timestamp.json and sign again.
	ErrUnverifiedTimestamp = errors.New("repo: the timestamp in place does not verify")
	// ErrLocked: another writer held the repository's lock until the
	// context ended. The error wraps the context's error too.
	ErrLocked = errors.New("repo: locked by another writer")
)

// File names of the layout (see the package comment).
const (
	rootCopyFile  = "root.json"
	releaseFile   = "release.json"
	timestampFile = "timestamp.json"
	lockFile      = ".lock"
	rootSuffix    = ".root.json"
	releaseSuffix = ".release.json"
)

// fileMode is the mode of every file written into a repository: the web
// server serving it usually runs as another user.
const fileMode = 0o644

// anyHardwareClass stands for the device's hardware class where only
// roots and timestamps are checked, which do not depend on it.
const anyHardwareClass = "any"

func rootFileName(version uint64) string { return strconv.FormatUint(version, 10) + rootSuffix }

func releaseFileName(version uint64) string {
	return strconv.FormatUint(version, 10) + releaseSuffix
}

// Lock takes the repository's write lock, an advisory lock (flock) on
// DIR/.lock, waiting until it gets it or ctx ends; unlock releases it.
// Every writer of the repository holds it from its first read to its last
// write: this package's own, and the d2c CLI's signing commands. If ctx
// ends first, the error wraps [ErrLocked] and ctx's error. A directory
// that does not exist is [ErrNoRepository]; one without a root yet can be
// locked (to write its first root).
func Lock(ctx context.Context, dir string) (unlock func(), err error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, noRepository(err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a directory", ErrNoRepository, dir)
	}
	path := filepath.Join(dir, lockFile)
	unlock, err = atomicfile.LockContext(ctx, path)
	if errors.Is(err, atomicfile.ErrLocked) {
		return nil, fmt.Errorf("%w (%s): %w", ErrLocked, path, ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("repo: %w", err)
	}
	return unlock, nil
}

// noRepository wraps an error about the repository directory with
// ErrNoRepository when it says that the directory does not exist.
func noRepository(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", ErrNoRepository, err)
	}
	return fmt.Errorf("repo: %w", err)
}

// NewTrusted verifies the roots of the repository in dir from the first
// to the newest, each signed by a threshold of its predecessor's root keys
// and of its own, exactly as a new device pinned at version 1 walks them,
// and returns that device's [update.Trusted] at the newest root, at the
// trusted time now, for devices of hardwareClass. A repository without a
// root is [ErrNoRepository]; a gap in the root versions is
// [update.ErrRootVersionSkip]. The expiry of the roots does not matter
// yet: the timestamp's check refuses an expired newest root.
func NewTrusted(dir string, now time.Time, hardwareClass string) (*update.Trusted, error) {
	return newTrustedUpTo(dir, now, hardwareClass, ^uint64(0))
}

// newTrustedUpTo is NewTrusted with the root chain walked up to version
// last only.
func newTrustedUpTo(dir string, now time.Time, hardwareClass string, last uint64) (*update.Trusted, error) {
	vs, err := rootVersions(dir)
	if err != nil {
		return nil, err
	}
	if len(vs) == 0 {
		return nil, fmt.Errorf("%w: no root in %s (no N%s file)", ErrNoRepository, dir, rootSuffix)
	}
	var t *update.Trusted
	for _, v := range vs {
		if v > last {
			break
		}
		path := filepath.Join(dir, rootFileName(v))
		b, err := readMeta(path, limits.UpdateRoot)
		if err != nil {
			return nil, fmt.Errorf("repo: %w", err)
		}
		if t == nil {
			t, err = update.NewTrusted(b, update.Floors{}, now, hardwareClass)
		} else {
			_, err = t.UpdateRoot(b)
		}
		if err != nil {
			return nil, fmt.Errorf("repo: %s: %w", path, err)
		}
	}
	return t, nil
}

// rootVersions returns the versions of the N.root.json files in dir,
// ascending. They must follow each other without a gap: a device walks
// them one by one from the version it pinned.
func rootVersions(dir string) ([]uint64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, noRepository(err)
	}
	var vs []uint64
	for _, e := range entries {
		num, ok := strings.CutSuffix(e.Name(), rootSuffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(num, 10, 64)
		if err != nil || v == 0 || strconv.FormatUint(v, 10) != num {
			continue // not one of ours: "x.root.json", "01.root.json"
		}
		vs = append(vs, v)
	}
	slices.Sort(vs)
	for i := 1; i < len(vs); i++ {
		if vs[i] != vs[i-1]+1 {
			return nil, fmt.Errorf("%w: %s has %s but no %s: devices pinned before it could not walk the roots",
				update.ErrRootVersionSkip, dir, rootFileName(vs[i]), rootFileName(vs[i-1]+1))
		}
	}
	return vs, nil
}

// readMeta reads a metadata file of the repository, bounded by max.
func readMeta(path string, max int64) ([]byte, error) {
	b, err := atomicfile.ReadFile(path, max)
	if errors.Is(err, atomicfile.ErrTooLarge) {
		return nil, fmt.Errorf("%w: %s is over %d bytes", update.ErrTooLarge, path, max)
	}
	return b, err
}

// writeFile writes one file of the repository atomically.
func writeFile(path string, b []byte) error {
	return atomicfile.WriteFileMode(nil, path, b, fileMode)
}

// peeked is the part of a metadata payload that signing continues from.
type peeked struct {
	Version       uint64 `json:"version"`
	HardwareClass string `json:"hardware_class"`
	Expires       string `json:"expires"`
}

// peek decodes, without verifying its signatures, the payload of a signed
// document: the numbers a new document follows (a timestamp version one
// higher) or the hardware class to verify a release for. Nothing is
// trusted from it: every document written is verified first.
func peek(path string, signed []byte) (peeked, error) {
	var p peeked
	var jws struct {
		Payload string `json:"payload"`
	}
	if err := json.Unmarshal(signed, &jws); err != nil {
		return p, fmt.Errorf("%w: %s: %v", update.ErrMalformed, path, err)
	}
	payload, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil {
		return p, fmt.Errorf("%w: %s: payload: %v", update.ErrMalformed, path, err)
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		return p, fmt.Errorf("%w: %s: payload: %v", update.ErrMalformed, path, err)
	}
	return p, nil
}
