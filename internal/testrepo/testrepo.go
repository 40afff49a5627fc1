// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package testrepo writes update repositories for tests with package
// update alone: a root, releases and the files they name, no timestamp,
// the way d2c update root init and release sign lay them out, so that
// what update/repo and the cloud service then do to them can be checked.
package testrepo

import (
	"bytes"
	"crypto"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/update"
)

// Repo is an update repository in Dir for devices of one hardware class.
type Repo struct {
	// Dir is the repository directory.
	Dir string
	// Hardware is the hardware class of its releases.
	Hardware string
	// Root is root version 1, signed: what devices pin.
	Root []byte
	// RootKey, ReleaseKey and TimestampKey are the one key of each role.
	RootKey, ReleaseKey, TimestampKey crypto.Signer
}

// New writes root version 1 (one fresh P-256 key per role, threshold 1,
// valid a year) to dir as 1.root.json and root.json.
func New(t testing.TB, dir, hardware string) *Repo {
	t.Helper()
	r := &Repo{Dir: dir, Hardware: hardware, RootKey: testpki.Key(t), ReleaseKey: testpki.Key(t), TimestampKey: testpki.Key(t)}
	root := &update.Root{Version: 1, Expires: time.Now().AddDate(1, 0, 0)}
	for _, err := range []error{
		root.SetRole(update.RoleRoot, 1, r.RootKey.Public()),
		root.SetRole(update.RoleRelease, 1, r.ReleaseKey.Public()),
		root.SetRole(update.RoleTimestamp, 1, r.TimestampKey.Public()),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if r.Root, err = root.Sign(r.RootKey); err != nil {
		t.Fatal(err)
	}
	r.Write(t, "1.root.json", r.Root)
	r.Write(t, "root.json", r.Root)
	return r
}

// Release signs release version (security counter 1) of one artifact
// "image" holding image at uri, valid until expires, with ReleaseKey, and
// writes it as <version>.release.json and release.json, as the release
// signer does (without a timestamp, and without the image: write it at
// uri if devices are to fetch it). It returns the signed release.
func (r *Repo) Release(t testing.TB, version uint64, uri string, image []byte, expires time.Time) []byte {
	t.Helper()
	art, err := update.NewArtifact("image", uri, bytes.NewReader(image), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := (&update.Release{Version: version, SecurityCounter: 1, HardwareClass: r.Hardware,
		Artifacts: []update.Artifact{art}, Expires: expires}).Sign(r.ReleaseKey)
	if err != nil {
		t.Fatal(err)
	}
	r.Write(t, strconv.FormatUint(version, 10)+".release.json", b)
	r.Write(t, "release.json", b)
	return b
}

// Write writes b to the repository file name (slash-separated), creating
// its directories.
func (r *Repo) Write(t testing.TB, name string, b []byte) {
	t.Helper()
	path := filepath.Join(r.Dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Read returns the repository file name, or nil if it does not exist.
func (r *Repo) Read(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.Dir, filepath.FromSlash(name)))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return b
}
