// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import "github.com/d2c-iot/d2c/bench/internal/procstat"

// cpuSample is the CPU time used so far by this process (SQLite runs in
// it), by the PostgreSQL server (the postmaster and its backends, those
// that exited included) and by the whole machine (all cores, busy time
// only), in seconds.
type cpuSample struct{ self, postgres, machine float64 }

func sampleCPU(postmaster int) cpuSample {
	return cpuSample{self: procstat.Process("self", false), postgres: procstat.Tree(postmaster), machine: procstat.MachineBusy()}
}

// loadAverage returns the 1-, 5- and 15-minute load averages.
func loadAverage() string { return procstat.LoadAverage() }
