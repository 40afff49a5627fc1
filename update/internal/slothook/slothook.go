// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package slothook lets d2c's own tests create and open directory slots
// (update/slot.DirSlots) through a fault-injecting file system, such as
// internal/atomicfile/crashfs, without a file-system parameter in slot's
// exported API; and lets the update agent keep a download (a delta) in a
// file written the way a directory slot's image is. Package slot sets the
// hooks when it is initialised; nothing else may.
package slothook

import (
	"io"

	"github.com/d2c-iot/d2c/internal/atomicfile"
)

var (
	// InitDirSlots is slot.InitDirSlots on fsys.
	InitDirSlots func(fsys atomicfile.FS, dir string, image io.Reader) error
	// OpenDirSlots is slot.OpenDirSlots on fsys; the value is a
	// *slot.DirSlots (this package cannot name the type: slot imports it).
	OpenDirSlots func(fsys atomicfile.FS, dir string) (any, error)
	// OpenImageFile opens the file at path (created 0600) as a directory
	// slot's image is opened: append-only through fsys, keeping what an
	// interrupted write left, Reset truncating it durably.
	// The value is a slot.Image.
	OpenImageFile func(fsys atomicfile.FS, path string) (any, error)
)
