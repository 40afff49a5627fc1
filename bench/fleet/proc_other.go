// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build !linux

package main

import (
	"os"
	"os/exec"
)

// Off Linux the program runs, but children are not tied to its life and
// peak memory is not measured.

func dieWithParent(*exec.Cmd) {}

func terminateWithParent(*exec.Cmd) {}

func ownProcessGroup(*exec.Cmd) {}

func inheritFileLimit() uint64 { return 0 }

func exitedUsage(ps *os.ProcessState) (cpu float64, peak int64) {
	return (ps.UserTime() + ps.SystemTime()).Seconds(), 0
}

func peakRSS(int) int64 { return 0 }
