// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"strconv"

	"github.com/d2c-iot/d2c/bench/internal/procstat"
)

// cpuSample is the CPU time used so far by this process, by the broker and
// by the whole machine (all cores, busy time only), in seconds.
type cpuSample struct{ self, broker, machine float64 }

func sampleCPU(brokerPID int) cpuSample {
	return cpuSample{self: procstat.Process("self", false), broker: procstat.Process(strconv.Itoa(brokerPID), false),
		machine: procstat.MachineBusy()}
}
