// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package atomicfile_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/atomicfile/crashfs"
)

func TestWriteFileMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := atomicfile.WriteFile(nil, p, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.WriteFile(nil, p, []byte("two")); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	if b, _ := os.ReadFile(p); string(b) != "two" {
		t.Fatalf("content %q", b)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".*")); len(m) != 0 {
		t.Fatalf("temporary files left: %v", m)
	}
}

// TestWriteFileCrashAtEveryStep: a power cut at any operation leaves the old
// content or the new content, never a mix or an empty file.
func TestWriteFileCrashAtEveryStep(t *testing.T) {
	old, neu := []byte("old content"), bytes.Repeat([]byte("new "), 1000)
	count := &crashfs.FS{}
	p0 := filepath.Join(t.TempDir(), "f")
	if err := atomicfile.WriteFile(count, p0, neu); err != nil {
		t.Fatal(err)
	}
	total := count.Ops()
	if total != 6 { // create, write, fsync, close, rename, fsync dir
		t.Fatalf("WriteFile took %d operations, want 6", total)
	}
	sawOld, sawNew := false, false
	for i := 1; i <= total; i++ {
		p := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(p, old, 0o600); err != nil {
			t.Fatal(err)
		}
		err := atomicfile.WriteFile(&crashfs.FS{FailAt: i}, p, neu)
		if !errors.Is(err, crashfs.ErrCrash) {
			t.Fatalf("crash at %d: err %v", i, err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("crash at %d: %v", i, err)
		}
		switch {
		case bytes.Equal(got, old):
			sawOld = true
		case bytes.Equal(got, neu):
			sawNew = true
		default:
			t.Fatalf("crash at %d: content is neither old nor new (%d bytes)", i, len(got))
		}
	}
	if !sawOld || !sawNew {
		t.Errorf("outcomes old=%v new=%v: a crash after the rename must keep the new content", sawOld, sawNew)
	}
}

func TestReadFileLimit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(strings.Repeat("x", 11)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := atomicfile.ReadFile(p, 10); !errors.Is(err, atomicfile.ErrTooLarge) {
		t.Fatalf("11 bytes with limit 10: %v, want ErrTooLarge", err)
	}
	if b, err := atomicfile.ReadFile(p, 11); err != nil || len(b) != 11 {
		t.Fatalf("11 bytes with limit 11: %d %v", len(b), err)
	}
}

func TestMkdirPrivate(t *testing.T) {
	d := filepath.Join(t.TempDir(), "a", "b")
	if err := atomicfile.MkdirPrivate(nil, d); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("mode %v (%v), want 0700", st.Mode().Perm(), err)
	}
}

func TestWriteFileModePublic(t *testing.T) {
	p := filepath.Join(t.TempDir(), "crl.pem")
	if err := atomicfile.WriteFileMode(nil, p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v (%v), want 0644", st.Mode().Perm(), err)
	}
}

func TestSwitchSymlink(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "current")
	for _, target := range []string{"a", "b", "a"} {
		if err := atomicfile.SwitchSymlink(nil, target, link); err != nil {
			t.Fatal(err)
		}
		if got, err := os.Readlink(link); err != nil || got != target {
			t.Fatalf("link -> %q (%v), want %q", got, err, target)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".*")); len(m) != 0 {
		t.Fatalf("temporary links left: %v", m)
	}
}

// TestSwitchSymlinkCrashAtEveryStep: a power cut at any operation leaves the
// link pointing at the old target or the new one, never missing.
func TestSwitchSymlinkCrashAtEveryStep(t *testing.T) {
	count := &crashfs.FS{}
	if err := atomicfile.SwitchSymlink(count, "b", filepath.Join(t.TempDir(), "current")); err != nil {
		t.Fatal(err)
	}
	total := count.Ops()
	if total != 3 { // symlink, rename, fsync dir
		t.Fatalf("SwitchSymlink took %d operations, want 3", total)
	}
	seen := map[string]bool{}
	for i := 1; i <= total; i++ {
		dir := t.TempDir()
		link := filepath.Join(dir, "current")
		if err := os.Symlink("a", link); err != nil {
			t.Fatal(err)
		}
		err := atomicfile.SwitchSymlink(&crashfs.FS{FailAt: i}, "b", link)
		if !errors.Is(err, crashfs.ErrCrash) {
			t.Fatalf("crash at %d: err %v", i, err)
		}
		got, err := os.Readlink(link)
		if err != nil {
			t.Fatalf("crash at %d: %v", i, err)
		}
		seen[got] = true
		if err := atomicfile.RemoveTemps(nil, link); err != nil {
			t.Fatalf("crash at %d: %v", i, err)
		}
		if m, _ := filepath.Glob(filepath.Join(dir, ".*")); len(m) != 0 {
			t.Fatalf("crash at %d: temporaries left after RemoveTemps: %v", i, m)
		}
	}
	if !seen["a"] || !seen["b"] || len(seen) != 2 {
		t.Errorf("outcomes %v, want both a and b", seen)
	}
}

func TestRemoveTempsKeepsOthers(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{".state.tmp-1", ".state.tmp-2", ".other.tmp-1", "state"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := atomicfile.RemoveTemps(nil, filepath.Join(dir, "state")); err != nil {
		t.Fatal(err)
	}
	var names []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != ".other.tmp-1 state" {
		t.Fatalf("left %v", names)
	}
}

// TestScrubTreeThroughLink: a directory given as a symbolic link is
// scrubbed and removed where it really is, and the link goes too.
func TestScrubTreeThroughLink(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "data", "state")
	if err := os.MkdirAll(filepath.Join(real, "outbox"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(real, "outbox", "seg.log"), []byte("personal data"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "state")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.ScrubTree(link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{real, link} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after ScrubTree: %v", p, err)
		}
	}
}

// TestLockContext: a held lock makes LockContext give up when its context
// ends, with ErrLocked; once released, it is taken.
func TestLockContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	unlock, err := atomicfile.Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := atomicfile.LockContext(ctx, path); !errors.Is(err, atomicfile.ErrLocked) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LockContext on a held lock: %v", err)
	}
	unlock()
	u, err := atomicfile.LockContext(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	u()
}
