// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build unix

package atomicfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// Lock takes an exclusive advisory lock (flock) on the file at path,
// creating it with mode 0600, and waits until it gets it. Processes that
// read, modify and write the same state hold it around the whole cycle. The
// returned function releases it.
func Lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("atomicfile: lock %s: %w", path, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("atomicfile: lock %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// ErrLocked is returned by [LockContext] when another holder keeps the
// lock until the context ends.
var ErrLocked = errors.New("atomicfile: locked by another process")

// LockContext is [Lock] that gives up when ctx ends: it tries the lock
// without blocking, every few milliseconds, and returns an error wrapping
// ErrLocked and ctx's error if it never gets it. Nothing is left waiting
// behind it.
func LockContext(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("atomicfile: lock %s: %w", path, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			f.Close()
			return nil, fmt.Errorf("atomicfile: lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("%w: %s: %w", ErrLocked, path, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
