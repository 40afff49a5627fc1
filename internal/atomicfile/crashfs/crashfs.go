// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package crashfs is an [atomicfile.FS] for tests that simulates a power cut
// after a chosen number of file-system operations.
//
// Run the code under test once with a large FailAt to count its operations
// ([FS.Ops]), then once per i in 1..count with FailAt = i. At operation i the
// "power fails": that operation and every later one return [ErrCrash], and
// data written to a file since its last fsync is discarded (the file is
// truncated to its size at that fsync, or at open), which is what a real
// power cut may do. The test then
// reopens the state from disk as a restarted process would and checks its
// invariants.
package crashfs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// ErrCrash is returned by every operation from the crash point on.
var ErrCrash = errors.New("crashfs: simulated power loss")

// FS counts operations and fails from operation FailAt on (1-based). A zero
// FailAt never fails.
type FS struct {
	FailAt int

	mu      sync.Mutex
	ops     int
	crashed bool
	dirty   map[*file]bool // written since their last fsync
}

var _ atomicfile.FS = (*FS)(nil)

// Ops reports how many operations were attempted.
func (c *FS) Ops() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ops
}

// Crashed reports whether the crash point was reached.
func (c *FS) Crashed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.crashed
}

// step counts one operation and reports whether it may proceed.
func (c *FS) step() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return ErrCrash
	}
	c.ops++
	if c.FailAt > 0 && c.ops >= c.FailAt {
		c.crashed = true
		for f := range c.dirty {
			_ = os.Truncate(f.f.Name(), f.durable) // unsynced data is lost
		}
		return ErrCrash
	}
	return nil
}

// synced records that f's first size bytes are durable. It takes the lock
// that step holds when a crash truncates files to their durable size.
func (c *FS) synced(f *file, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f.durable = size
	delete(c.dirty, f)
}

// markDirty records that f holds data written since its last fsync.
func (c *FS) markDirty(f *file) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dirty == nil {
		c.dirty = make(map[*file]bool)
	}
	c.dirty[f] = true
}

// CreateTemp implements [atomicfile.FS].
func (c *FS) CreateTemp(dir, pattern string) (atomicfile.File, error) {
	if err := c.step(); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &file{f: f, c: c}, nil
}

// OpenFile implements [atomicfile.FS]. What the file holds at open counts
// as durable.
func (c *FS) OpenFile(name string, flag int, perm fs.FileMode) (atomicfile.File, error) {
	if err := c.step(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &file{f: f, c: c, durable: st.Size()}, nil
}

// Rename implements [atomicfile.FS].
func (c *FS) Rename(oldpath, newpath string) error {
	if err := c.step(); err != nil {
		return err
	}
	return os.Rename(oldpath, newpath)
}

// Remove implements [atomicfile.FS].
func (c *FS) Remove(name string) error {
	if err := c.step(); err != nil {
		return err
	}
	return os.Remove(name)
}

// SyncDir implements [atomicfile.FS].
func (c *FS) SyncDir(dir string) error {
	if err := c.step(); err != nil {
		return err
	}
	return atomicfile.OS{}.SyncDir(dir)
}

// MkdirAll implements [atomicfile.FS].
func (c *FS) MkdirAll(dir string, perm fs.FileMode) error {
	if err := c.step(); err != nil {
		return err
	}
	return os.MkdirAll(dir, perm)
}

// Symlink implements [atomicfile.FS]; it counts as one operation, like
// Rename.
func (c *FS) Symlink(oldname, newname string) error {
	if err := c.step(); err != nil {
		return err
	}
	return os.Symlink(oldname, newname)
}

type file struct {
	f       *os.File
	c       *FS
	durable int64 // size at the last fsync
}

func (f *file) Name() string { return f.f.Name() }

func (f *file) Write(p []byte) (int, error) {
	if err := f.c.step(); err != nil {
		return 0, err
	}
	f.c.markDirty(f)
	return f.f.Write(p)
}

func (f *file) Chmod(mode fs.FileMode) error {
	if err := f.c.step(); err != nil {
		return err
	}
	return f.f.Chmod(mode)
}

func (f *file) Sync() error {
	if err := f.c.step(); err != nil {
		return err
	}
	if err := f.f.Sync(); err != nil {
		return err
	}
	st, err := f.f.Stat()
	if err != nil {
		return err
	}
	f.c.synced(f, st.Size())
	return nil
}

func (f *file) Close() error {
	// Closing releases the descriptor even after a crash, so tests do not
	// leak files; it counts as an operation like the others.
	err := f.c.step()
	cerr := f.f.Close()
	if err != nil {
		return err
	}
	return cerr
}

// CopyDir copies the files of the flat directory src into dst (created
// 0700), keeping their modes: each crash point of a test starts from the
// same state.
func CopyDir(t testing.TB, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}
