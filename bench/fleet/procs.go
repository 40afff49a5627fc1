// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/bench/internal/procstat"
)

// proc is one child process of the run: a broker, a service replica or a
// simulator. Its output goes to a log file in the work directory.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // the file holding its stdout and stderr (stderr only when stdout is piped)
	done chan struct{}
	err  error // of Wait, once done is closed
}

// procs are every child the run started, to be killed on the way out.
type procs struct {
	mu  sync.Mutex
	all []*proc
}

// start starts cmd as a child named name, its output appended to logPath
// (stdout too unless the caller set cmd.Stdout).
func (ps *procs) start(name, logPath string, cmd *exec.Cmd) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if cmd.Stdout == nil {
		cmd.Stdout = f
	}
	cmd.Stderr = f
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	ps.mu.Lock()
	ps.all = append(ps.all, p)
	ps.mu.Unlock()
	return p, nil
}

// killAll kills every child still running and waits for them.
func (ps *procs) killAll() {
	ps.mu.Lock()
	all := ps.all
	ps.mu.Unlock()
	for _, p := range all {
		p.kill()
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop asks the process to end (SIGTERM) and waits for it, killing it
// after grace.
func (p *proc) stop(grace time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// usage returns the CPU seconds the process used so far and its peak
// resident set size in bytes.
func (p *proc) usage() (cpu float64, peak int64) {
	if p.exited() {
		return exitedUsage(p.cmd.ProcessState)
	}
	return procstat.Process(strconv.Itoa(p.pid()), false), peakRSS(p.pid())
}

// logTail returns the end of the process's log, for an error message.
func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	const keep = 4 << 10
	if len(b) > keep {
		b = append([]byte("…"), b[len(b)-keep:]...)
	}
	return string(bytes.TrimSpace(b))
}

// role is one part of the system under measurement, played by one or more
// processes over the run (a restarted broker, a replica killed and started
// again): its CPU time is the sum over all of them, its peak memory the
// sum over the processes running side by side of each one's largest
// incarnation.
type role struct {
	name  string
	slots [][]*proc // slot: one process at a time (its incarnations)
}

func (r *role) add(slot int, p *proc) {
	for len(r.slots) <= slot {
		r.slots = append(r.slots, nil)
	}
	r.slots[slot] = append(r.slots[slot], p)
}

// usage returns the role's CPU seconds so far and its peak memory.
func (r *role) usage() (cpu float64, peak int64) {
	for _, slot := range r.slots {
		var most int64
		for _, p := range slot {
			c, m := p.usage()
			cpu += c
			most = max(most, m)
		}
		peak += most
	}
	return cpu, peak
}

func (r *role) processes() int {
	n := 0
	for _, slot := range r.slots {
		n += len(slot)
	}
	return n
}

// awaitAccept waits until addr accepts TCP connections, the process
// exits, or within passes.
func awaitAccept(ctx context.Context, addr string, p *proc, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited (%v) before accepting on %s: %s", p.name, p.err, addr, p.logTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting on %s after %v: %s", p.name, addr, within, p.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var errPortTaken = errors.New("port taken")
