// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build !linux

// Package fstype names the file system holding a directory, for the
// machine facts the bench programs print beside their figures.
package fstype

// Of names the file system that holds dir, where it can tell.
func Of(string) string { return "unknown file system" }
