// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package procstat reads the CPU time of processes and of the machine
// from /proc, for the bench programs' "CPU per message" columns. Off
// Linux every figure is 0 (and the load average "unknown").
package procstat

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// fields returns the fields of /proc/<pid>/stat after the command name.
func fields(pid string) []string {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return nil
	}
	// The command name is in parentheses and may hold spaces: fields count
	// from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// Process returns the CPU time, in seconds, that process pid ("self" for
// this one) has used (utime + stime), and with children also that of the
// children it has reaped (cutime + cstime).
func Process(pid string, children bool) float64 {
	f := fields(pid)
	if len(f) < 15 {
		return 0
	}
	last := 12
	if children {
		last = 14
	}
	var sum float64
	for _, v := range f[11 : last+1] {
		n, _ := strconv.ParseFloat(v, 64)
		sum += n
	}
	return sum / clockTicks
}

// Tree returns the CPU time, in seconds, of process pid, of its live
// children and of those it has reaped (a PostgreSQL server, whose
// backends are the postmaster's children). 0 for pid <= 0.
func Tree(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	sum := Process(strconv.Itoa(pid), true)
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	ppid := strconv.Itoa(pid)
	for _, d := range dirs {
		child := filepath.Base(d)
		if f := fields(child); len(f) > 1 && f[1] == ppid {
			sum += Process(child, false)
		}
	}
	return sum
}

// MachineBusy returns the busy time of all cores, in seconds, from
// /proc/stat (idle and iowait left out).
func MachineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0
	}
	var busy float64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseFloat(v, 64)
		busy += n
	}
	return busy / clockTicks
}

// LoadAverage returns the 1-, 5- and 15-minute load averages.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
