// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package repo_test

import (
	"bytes"
	"crypto"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/testrepo"
	"github.com/d2c-iot/d2c/update"
)

// testRepo is an update repository in a temporary directory
// (internal/testrepo): root version 1 (one key per role), release
// version 3 for the hardware class "hw" with one 64 KiB image at
// v3/fw.bin, published as 3.release.json and release.json. It has no
// timestamp yet.
type testRepo struct {
	*testrepo.Repo
	image []byte
}

const testHardware = "hw"

func newTestRepo(t testing.TB) *testRepo {
	t.Helper()
	r := &testRepo{Repo: testrepo.New(t, filepath.Join(t.TempDir(), "repo"), testHardware),
		image: bytes.Repeat([]byte("0123456789abcdef"), 4096)}
	r.Write(t, "v3/fw.bin", r.image)
	r.publishRelease(t, 3, time.Now().AddDate(0, 1, 0))
	return r
}

// publishRelease signs release version of the image, valid until
// expires, and writes it as <version>.release.json and release.json, as
// the release signer does (without a timestamp).
func (r *testRepo) publishRelease(t testing.TB, version uint64, expires time.Time) []byte {
	t.Helper()
	return r.Release(t, version, "v3/fw.bin", r.image, expires)
}

// deviceCheck verifies the repository's timestamp, then the release it
// names, as a device pinned at root version 1 does at now, with floors
// from its previous cycle, and returns the device's trust state.
func (r *testRepo) deviceCheck(now time.Time, floors update.Floors) (*update.Trusted, error) {
	tr, err := update.NewTrusted(r.Root, floors, now, testHardware)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(r.Dir, "timestamp.json"))
	if err != nil {
		return nil, err
	}
	ts, err := tr.UpdateTimestamp(b)
	if err != nil {
		return nil, err
	}
	if b, err = os.ReadFile(filepath.Join(r.Dir, strconv.FormatUint(ts.Release.Version, 10)+".release.json")); err != nil {
		return nil, err
	}
	if _, err := tr.UpdateRelease(b); err != nil {
		return nil, err
	}
	return tr, nil
}

// failingSigner is a timestamp key whose every signature fails, as a
// PKCS#11 token unplugged would.
type failingSigner struct{ crypto.Signer }

func (failingSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("token removed")
}

// newLog returns a logger writing text lines to a file, and a function
// that reads what it wrote so far (an *os.File takes concurrent writes).
func newLog(t testing.TB) (*slog.Logger, func() string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return slog.New(slog.NewTextHandler(f, nil)), func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Error(err)
		}
		return string(b)
	}
}
