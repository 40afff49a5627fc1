// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package pgpeer starts a throwaway PostgreSQL cluster on 127.0.0.1, for
// the cloud store's tests and benchmarks.
//
// It does not import testing, so that programs (bench/store) can use it;
// tests use it through internal/testpeer, which fails the test when
// PostgreSQL is missing. The cluster lives in a fresh temporary directory
// (data, socket and log), listens on 127.0.0.1 only, on a free port, and
// trusts its one user: it is for tests on this machine, never a model of
// a production setup (docs/operations.md).
//
// PostgreSQL refuses to run as root. Run as root (as CI is), [Start] gives
// the directory to the "postgres" user of Debian's package and runs
// initdb and pg_ctl through runuser; as another user it runs them
// directly.
package pgpeer

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Cluster is a running PostgreSQL cluster.
type Cluster struct {
	// URL connects to the cluster's "postgres" database as its superuser
	// "d2c" over TCP on 127.0.0.1 (no TLS: loopback only).
	URL string
	// Port is the TCP port on 127.0.0.1.
	Port int
	// Dir is the temporary directory holding data, socket and log.
	Dir string

	bin   string
	owner *user.User // nil: run as the current user
	mu    sync.Mutex
	up    bool
}

// Start initialises a new cluster and starts it; stop (idempotent) stops
// it at once and removes its directory.
func Start() (c *Cluster, stop func(), err error) {
	bin, err := BinDir()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "d2c-pg-")
	if err != nil {
		return nil, nil, err
	}
	c = &Cluster{Dir: dir, bin: bin}
	stop = func() {
		c.halt("immediate")
		os.RemoveAll(dir)
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	if os.Geteuid() == 0 {
		if c.owner, err = user.Lookup("postgres"); err != nil {
			return nil, nil, fmt.Errorf("pgpeer: running as root needs the \"postgres\" user of Debian's postgresql package: %w", err)
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, nil, err
		}
		uid, _ := strconv.Atoi(c.owner.Uid)
		gid, _ := strconv.Atoi(c.owner.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, nil, err
		}
	}
	if out, err := c.run("initdb", "-D", c.data(), "-U", "d2c", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, nil, fmt.Errorf("pgpeer: initdb: %w\n%s", err, out)
	}
	if err := c.start(); err != nil {
		return nil, nil, err
	}
	return c, stop, nil
}

// BinDir returns the directory of PostgreSQL's server programs (Debian
// keeps them in /usr/lib/postgresql/<version>/bin, off $PATH), or an error
// naming the package to install.
func BinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("pgpeer: PostgreSQL's server programs (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or $PATH: install the Debian package postgresql (apt-get install postgresql)")
}

func (c *Cluster) data() string { return filepath.Join(c.Dir, "data") }

// run runs a PostgreSQL program as the cluster's owner.
func (c *Cluster) run(prog string, args ...string) ([]byte, error) {
	path := filepath.Join(c.bin, prog)
	var cmd *exec.Cmd
	if c.owner != nil {
		cmd = exec.Command("runuser", append([]string{"-u", c.owner.Username, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = c.Dir
	return cmd.CombinedOutput()
}

// start starts the server on a free port, retrying if another process
// took the port first.
func (c *Cluster) start() error {
	var last error
	for range 5 {
		port, err := freePort()
		if err != nil {
			return err
		}
		opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=200", port, c.Dir)
		out, err := c.run("pg_ctl", "-D", c.data(), "-l", filepath.Join(c.Dir, "log"), "-o", opts, "-w", "-t", "60", "start")
		if err == nil {
			c.mu.Lock()
			c.Port, c.up = port, true
			c.URL = fmt.Sprintf("postgres://d2c@127.0.0.1:%d/postgres?sslmode=disable", port)
			c.mu.Unlock()
			return nil
		}
		last = fmt.Errorf("pgpeer: pg_ctl start: %w\n%s\n%s", err, out, c.Log())
	}
	return last
}

// Log returns the server's log so far.
func (c *Cluster) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "log"))
	return string(b)
}

// Kill stops the server as a power cut would (pg_ctl -m immediate: no
// checkpoint; the next start recovers from the write-ahead log).
func (c *Cluster) Kill() { c.halt("immediate") }

// Restart starts a stopped or killed server again on the same port.
func (c *Cluster) Restart() error {
	c.mu.Lock()
	port := c.Port
	c.mu.Unlock()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=200", port, c.Dir)
	out, err := c.run("pg_ctl", "-D", c.data(), "-l", filepath.Join(c.Dir, "log"), "-o", opts, "-w", "-t", "60", "start")
	if err != nil {
		return fmt.Errorf("pgpeer: pg_ctl restart: %w\n%s", err, out)
	}
	c.mu.Lock()
	c.up = true
	c.mu.Unlock()
	return nil
}

// CreateDatabase creates an empty database and returns its URL.
func (c *Cluster) CreateDatabase(name string) (string, error) {
	if strings.ContainsFunc(name, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') }) {
		return "", fmt.Errorf("pgpeer: database name %q: use a-z, 0-9 and _", name)
	}
	out, err := c.run("psql", "-h", c.Dir, "-p", strconv.Itoa(c.Port), "-U", "d2c", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", "CREATE DATABASE "+name)
	if err != nil {
		return "", fmt.Errorf("pgpeer: create database %s: %w\n%s", name, err, out)
	}
	return strings.Replace(c.URL, "/postgres?", "/"+name+"?", 1), nil
}

func (c *Cluster) halt(mode string) {
	c.mu.Lock()
	up := c.up
	c.up = false
	c.mu.Unlock()
	if up {
		c.run("pg_ctl", "-D", c.data(), "-m", mode, "-w", "stop")
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgpeer: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
