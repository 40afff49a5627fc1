// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build !linux

// Package procstat reads the CPU time of processes and of the machine
// from /proc, for the bench programs' "CPU per message" columns. Off
// Linux every figure is 0 (and the load average "unknown").
package procstat

// Process returns 0: CPU time is read from /proc on Linux only.
func Process(string, bool) float64 { return 0 }

// Tree returns 0: CPU time is read from /proc on Linux only.
func Tree(int) float64 { return 0 }

// MachineBusy returns 0: CPU time is read from /proc on Linux only.
func MachineBusy() float64 { return 0 }

// LoadAverage returns "unknown" off Linux.
func LoadAverage() string { return "unknown" }
