// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package benchutil holds what the side-by-side benchmark programs under
// bench/ share: running a measurement and describing the machine.
package benchutil

import (
	"bufio"
	"errors"
	"os"
	"strings"
	"testing"
)

// Measure runs fn under testing.Benchmark, reporting allocations, and
// returns its result, or the error that stopped it.
func Measure(fn func(b *testing.B) error) (testing.BenchmarkResult, error) {
	var ferr error
	r := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		if err := fn(b); err != nil {
			ferr = err
			b.FailNow()
		}
	})
	if ferr == nil && r.N == 0 {
		ferr = errors.New("benchmark did not run")
	}
	return r, ferr
}

// CPUModel returns the CPU model name from /proc/cpuinfo, where there is
// one.
func CPUModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
