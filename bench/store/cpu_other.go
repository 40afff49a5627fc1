//go:build !linux

package main

// cpuSample is the CPU time used so far; not measured off Linux.
type cpuSample struct{ self, postgres, machine float64 }

func sampleCPU(int) cpuSample { return cpuSample{} }

// loadAverage returns the 1-, 5- and 15-minute load averages, where known.
func loadAverage() string { return "unknown" }
