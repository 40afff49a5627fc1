// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package hwpeer starts the software stand-ins for device key hardware that
// d2c is tested and measured against: a softhsm2 PKCS#11 token
// ([StartSoftHSM]) and a swtpm TPM 2.0 simulator ([StartSWTPM]).
//
// It does not import testing, so that programs (bench/keys, examples)
// can use it; tests use it through internal/testpeer, which fails the
// test when a tool is missing. Everything a peer needs lives in a fresh
// temporary directory and listens on 127.0.0.1 only. Each Start function
// returns the peer and a stop function that the caller must call (it is
// idempotent): it kills the process or removes the directory.
//
// softhsm2 and swtpm are software: they run on the host CPU and keep their
// secrets in ordinary files. They show that the code works with a real
// PKCS#11 module and a real TPM 2.0 command interface, not what real
// hardware costs (a smart card or discrete TPM signs in tens to hundreds
// of milliseconds) nor what it protects.
package hwpeer

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// debianPackages names the Debian package that installs each tool.
var debianPackages = map[string]string{
	"softhsm2-util":  "softhsm2",
	"libsofthsm2.so": "softhsm2",
	"swtpm":          "swtpm",
}

// sbinDirs are searched after $PATH.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// LookTool returns the absolute path of the executable tool, searching
// $PATH and then /usr/sbin, /sbin and /usr/local/sbin, or an error naming
// the Debian package that installs it.
func LookTool(tool string) (string, error) {
	if p, err := exec.LookPath(tool); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs, nil
		}
	}
	if !strings.ContainsRune(tool, '/') {
		for _, dir := range sbinDirs {
			p := filepath.Join(dir, tool)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("hwpeer: %q not found in $PATH nor %s: %s", tool, strings.Join(sbinDirs, ", "), installHint(tool))
}

func installHint(tool string) string {
	if pkg := debianPackages[tool]; pkg != "" {
		return fmt.Sprintf("install the Debian package %s (apt-get install %s)", pkg, pkg)
	}
	return "install it"
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before the caller binds it; callers retry.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("hwpeer: free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// Output collects a process's output; String may read it while the
// process writes.
type Output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (b *Output) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what the process wrote so far.
func (b *Output) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ErrExited is returned by AwaitAccept when the process ended first.
var ErrExited = errors.New("exited before accepting connections")

// AwaitAccept waits until a TCP connection to addr succeeds (the probe is
// closed at once), the process ends (done closed; exitErr says how: an
// error wrapping ErrExited), or timeout passes.
func AwaitAccept(addr string, done <-chan struct{}, exitErr func() error, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-done:
			return fmt.Errorf("%w: %v", ErrExited, exitErr())
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting after %v: %v", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
