// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// dieWithParent makes the child receive SIGKILL when this process dies,
// however it dies: no broker, replica or simulator outlives a crashed
// orchestrator.
func dieWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}

// terminateWithParent makes the child receive SIGTERM when this process
// dies (the fleet test's hold on the orchestrator, which then cleans up).
func terminateWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
}

// ownProcessGroup puts the child in a process group of its own, out of
// reach of the terminal's signals to this one.
func ownProcessGroup(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
}

// inheritFileLimit sets the soft RLIMIT_NOFILE to the hard limit and
// returns it. Setting it explicitly makes os/exec pass it on to children
// (the Go runtime raises its own soft limit but gives children the
// original one, often 1024), so that mosquitto and the simulators can
// open thousands of connections.
func inheritFileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	lim.Cur = lim.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	return lim.Cur
}

// exitedUsage returns the CPU seconds (user and system) and the peak
// resident set size, in bytes, of a child that has exited.
func exitedUsage(ps *os.ProcessState) (cpu float64, peak int64) {
	cpu = (ps.UserTime() + ps.SystemTime()).Seconds()
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		peak = ru.Maxrss << 10 // KiB on Linux
	}
	return cpu, peak
}

// peakRSS returns the peak resident set size of a running process, in
// bytes (VmHWM of /proc/<pid>/status), or 0.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kib, _ := strconv.ParseInt(f[0], 10, 64)
				return kib << 10
			}
		}
	}
	return 0
}
