// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build !unix

package atomicfile

import (
	"context"
	"errors"
)

// ErrLocked is returned by [LockContext] when another holder keeps the
// lock; never where locks are not available.
var ErrLocked = errors.New("atomicfile: locked by another process")

// LockContext is a no-op where flock is not available.
func LockContext(context.Context, string) (unlock func(), err error) { return func() {}, nil }

// Lock is a no-op where flock is not available: there, run one writer at a
// time.
func Lock(path string) (unlock func(), err error) { return func() {}, nil }
