// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package fstype names the file system holding a directory, for the
// machine facts the bench programs print beside their figures (an fsync's
// cost depends on it).
package fstype

import (
	"fmt"
	"syscall"
)

// Of names the file system that holds dir.
func Of(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "unknown file system"
	}
	switch uint32(st.Type) { // int32 on some 32-bit GOARCHes
	case 0xef53:
		return "ext2/3/4"
	case 0x01021994:
		return "tmpfs"
	case 0x58465342:
		return "xfs"
	case 0x9123683e:
		return "btrfs"
	case 0x794c7630:
		return "overlayfs"
	}
	return fmt.Sprintf("file system 0x%x", st.Type)
}
