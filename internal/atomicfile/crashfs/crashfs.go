// Package crashfs is an [atomicfile.FS] for tests that simulates a power cut
// after a chosen number of file-system operations.
//
// Run the code under test once with a large FailAt to count its operations
// ([FS.Ops]), then once per i in 1..count with FailAt = i. At operation i the
// "power fails": that operation and every later one return [ErrCrash], and
// data written to files that were never fsynced is discarded (the file is
// truncated to zero), which is what a real power cut may do. The test then
// reopens the state from disk as a restarted process would and checks its
// invariants.
package crashfs

import (
	"errors"
	"io/fs"
	"os"
	"sync"

	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// ErrCrash is returned by every operation from the crash point on.
var ErrCrash = errors.New("crashfs: simulated power loss")

// FS counts operations and fails from operation FailAt on (1-based). A zero
// FailAt never fails.
type FS struct {
	FailAt int

	mu       sync.Mutex
	ops      int
	crashed  bool
	unsynced map[string]bool
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
		for name := range c.unsynced {
			_ = os.Truncate(name, 0) // unsynced data is lost
		}
		return ErrCrash
	}
	return nil
}

func (c *FS) markUnsynced(name string, dirty bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unsynced == nil {
		c.unsynced = make(map[string]bool)
	}
	if dirty {
		c.unsynced[name] = true
	} else {
		delete(c.unsynced, name)
	}
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

type file struct {
	f *os.File
	c *FS
}

func (f *file) Name() string { return f.f.Name() }

func (f *file) Write(p []byte) (int, error) {
	if err := f.c.step(); err != nil {
		return 0, err
	}
	f.c.markUnsynced(f.f.Name(), true)
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
	f.c.markUnsynced(f.f.Name(), false)
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
