package main

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

// cpuSample is the CPU time used so far by this process (SQLite runs in
// it), by the PostgreSQL server (the postmaster and its backends, those
// that exited included) and by the whole machine (all cores, busy time
// only), in seconds.
type cpuSample struct{ self, postgres, machine float64 }

func sampleCPU(postmaster int) cpuSample {
	return cpuSample{self: procCPU("self", false), postgres: treeCPU(postmaster), machine: machineBusy()}
}

// procStat returns the fields of /proc/<pid>/stat after the command name.
func procStat(pid string) []string {
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

// procCPU reads utime + stime of /proc/<pid>/stat, and with children the
// CPU time of the children it has reaped (cutime + cstime).
func procCPU(pid string, children bool) float64 {
	f := procStat(pid)
	if len(f) < 15 {
		return 0
	}
	var sum float64
	last := 12
	if children {
		last = 14
	}
	for _, v := range f[11 : last+1] {
		n, _ := strconv.ParseFloat(v, 64)
		sum += n
	}
	return sum / clockTicks
}

// treeCPU is the CPU time of process pid, of its live children and of
// those it has reaped: a PostgreSQL server, whose backends are the
// postmaster's children.
func treeCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	sum := procCPU(strconv.Itoa(pid), true)
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	ppid := strconv.Itoa(pid)
	for _, d := range dirs {
		child := filepath.Base(d)
		if f := procStat(child); len(f) > 1 && f[1] == ppid {
			sum += procCPU(child, false)
		}
	}
	return sum
}

// machineBusy reads the busy time of all cores from /proc/stat.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
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

// loadAverage returns the 1-, 5- and 15-minute load averages.
func loadAverage() string {
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
