// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/d2c-iot/d2c/internal/pgpeer"
)

// janitorFlag, as the first argument, runs the program as the run's
// janitor (not a flag users pass: the orchestrator does).
//
// The orchestrator cleans up after itself when it returns, even on
// SIGINT or SIGTERM, and its children die with it (PR_SET_PDEATHSIG).
// Two things would survive a SIGKILL of the orchestrator: the PostgreSQL
// server, which pg_ctl detaches, and the temporary directories. The
// janitor, a child in its own process group that does not die with its
// parent, takes care of them: the orchestrator tells it, one line each on
// its stdin, what to remove ("dir PATH") and which cluster to stop ("pg
// PATH"); if its stdin ends without "done", the orchestrator died, and the
// janitor stops the cluster (pg_ctl -m immediate) and removes the
// directories.
const janitorFlag = "-fleet-janitor"

// runJanitor waits for the orchestrator to say "done" or to die.
func runJanitor() int {
	var (
		dirs []string
		pg   string
	)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		op, arg, _ := strings.Cut(sc.Text(), " ")
		switch op {
		case "dir":
			dirs = append(dirs, arg)
		case "pg":
			pg = arg
		case "done":
			return 0
		}
	}
	if pg != "" {
		if err := stopCluster(pg); err != nil {
			fmt.Fprintln(os.Stderr, "bench/fleet janitor:", err)
		}
	}
	for _, d := range dirs {
		os.RemoveAll(d)
	}
	return 0
}

// stopCluster stops the PostgreSQL cluster in dir as pgpeer runs it (as
// the postgres user when root).
func stopCluster(dir string) error {
	bin, err := pgpeer.BinDir()
	if err != nil {
		return err
	}
	args := []string{filepath.Join(bin, "pg_ctl"), "-D", filepath.Join(dir, "data"), "-m", "immediate", "-w", "stop"}
	if os.Geteuid() == 0 {
		args = append([]string{"runuser", "-u", "postgres", "--"}, args...)
	}
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return nil
}

// janitor is the orchestrator's end of the janitor.
type janitor struct {
	cmd *exec.Cmd
	in  io.WriteCloser
}

// startJanitor starts the janitor; nil if it could not start (the run
// goes on without it).
func startJanitor() *janitor {
	self, err := os.Executable()
	if err != nil {
		return nil
	}
	cmd := exec.Command(self, janitorFlag)
	ownProcessGroup(cmd)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil
	}
	return &janitor{cmd: cmd, in: in}
}

// tell gives the janitor one more thing to clean up should the
// orchestrator die.
func (j *janitor) tell(op, path string) {
	if j != nil {
		fmt.Fprintf(j.in, "%s %s\n", op, path)
	}
}

// done tells the janitor that the orchestrator has cleaned up, and waits
// for it to exit.
func (j *janitor) done() {
	if j != nil {
		fmt.Fprintln(j.in, "done")
		j.in.Close()
		_ = j.cmd.Wait()
	}
}
