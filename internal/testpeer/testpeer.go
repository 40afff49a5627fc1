// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package testpeer locates and starts the real peers that d2c's interop
// tests run against: openssl, curl, mosquitto, softhsm2, swtpm.
//
// A missing peer fails the test with the Debian package to install; it never
// skips, because a skipped interop test reads as a pass. Everything a peer
// needs lives in the test's temporary directory, listens on 127.0.0.1 only,
// and is stopped by a t.Cleanup.
package testpeer

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/hwpeer"
)

// debianPackages names the Debian package that installs each peer.
var debianPackages = map[string]string{
	"openssl":       "openssl",
	"curl":          "curl",
	"mosquitto":     "mosquitto",
	"softhsm2-util": "softhsm2",
	"swtpm":         "swtpm",
	"zstd":          "zstd",
}

// sbinDirs are searched after $PATH: Debian installs daemons such as
// mosquitto in /usr/sbin, which is not on every user's PATH.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// Require returns the absolute path of the executable tool, searching $PATH
// and then /usr/sbin, /sbin and /usr/local/sbin. If it is missing, the test
// fails (never skips) with a message naming the Debian package to install.
func Require(t testing.TB, tool string) string {
	t.Helper()
	if p, err := exec.LookPath(tool); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
	}
	if !strings.ContainsRune(tool, '/') {
		for _, dir := range sbinDirs {
			p := filepath.Join(dir, tool)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
				return p
			}
		}
	}
	t.Fatalf("%s", missingMessage(tool))
	return ""
}

func missingMessage(tool string) string {
	install := "install the Debian package " + debianPackages[tool] + " (apt-get install " + debianPackages[tool] + ")"
	if debianPackages[tool] == "" {
		install = "install it (and add its Debian package to testpeer's table)"
	}
	return fmt.Sprintf("testpeer: %q not found in $PATH, %s. d2c's interop tests run against real peers and never skip: %s, then run the test command given in README.md.",
		tool, strings.Join(sbinDirs, ", "), install)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago (the
// kernel picked it for a listener that was then closed). Another process
// may take it before the caller binds it; [Mosquitto] retries in that case.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testpeer: free port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatalf("testpeer: free port: %v", err)
	}
	return port
}

// Broker is a mosquitto process started by [Mosquitto] for one test.
type Broker struct {
	// Addr is the listener's address, "127.0.0.1:<port>".
	Addr string
	// Port is the listener's TCP port.
	Port int
	// ConfigPath is the configuration file the broker runs with.
	ConfigPath string

	out  *hwpeer.Output
	bin  string
	mu   sync.Mutex
	stop func(graceful bool) // stops the running process and waits for it; nil when none
	pid  int                 // of the running process; 0 when none
}

// PID returns the process ID of the running broker, 0 after Kill.
func (b *Broker) PID() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pid
}

// fileLimitOnce raises the soft RLIMIT_NOFILE once per process.
var fileLimitOnce sync.Once

// inheritFileLimit lets child processes inherit a soft RLIMIT_NOFILE equal
// to the hard limit. The Go runtime raises its own soft limit to the hard
// limit at start but gives children the original soft limit back (often
// 1024), which caps a mosquitto serving a simulated fleet at about 1000
// connections. Setting the limit explicitly (syscall.Setrlimit) tells
// os/exec to leave it as it is in children. It only raises the soft limit
// up to the existing hard limit, never above.
func inheritFileLimit() {
	fileLimitOnce.Do(func() {
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return
		}
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	})
}

// FileLimit returns the soft RLIMIT_NOFILE of the process pid (0: this
// process), read from /proc/<pid>/limits, or an error.
func FileLimit(pid int) (uint64, error) {
	path := "/proc/self/limits"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/limits", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			if f[0] == "unlimited" {
				return 1<<63 - 1, nil
			}
			return strconv.ParseUint(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("testpeer: no \"Max open files\" line in %s", path)
}

// Kill stops the broker with SIGKILL, as a crash would, and waits for it.
func (b *Broker) Kill() { b.halt(false) }

// Stop stops the broker with SIGTERM, as an orderly restart would (with
// persistence on, mosquitto saves its sessions and queued messages), and
// waits for it; it falls back to SIGKILL after 10 s.
func (b *Broker) Stop() { b.halt(true) }

func (b *Broker) halt(graceful bool) {
	b.mu.Lock()
	stop := b.stop
	b.stop = nil
	b.pid = 0
	b.mu.Unlock()
	if stop != nil {
		stop(graceful)
	}
}

// Restart starts the broker again on the same port with the same
// configuration, after Kill or Stop (or kills it first), and waits until it
// accepts connections.
func (b *Broker) Restart(t testing.TB) {
	t.Helper()
	b.Kill()
	if err := b.start(t, b.bin); err != nil {
		t.Fatalf("testpeer: restart mosquitto: %v\n%s", err, b.Output())
	}
}

// Output returns everything mosquitto has written to stdout and stderr so
// far (its log, with the default log_dest).
func (b *Broker) Output() string { return b.out.String() }

// mosquittoStartTimeout bounds the wait for the listener to accept.
const mosquittoStartTimeout = 10 * time.Second

// Mosquitto starts a mosquitto broker for the test and returns once its
// listener accepts TCP connections (within 10 s, else the test fails with
// the broker's output).
//
// conf is a mosquitto.conf text with exactly one listener, written as
//
//	listener {{port}} 127.0.0.1
//
// {{port}} is replaced by a free port. A listener bound elsewhere, or the
// old global "port" option, fails the test: test brokers listen on the
// loopback only. Files the configuration names (cafile, certfile, keyfile,
// crlfile, acl_file...) should live in the caller's t.TempDir().
//
// When the test runs as root, "user root" is appended unless conf sets
// "user": as root, mosquitto 2.0 drops privileges to the user "mosquitto"
// before it loads the TLS files, and then cannot read them in a private
// temporary directory (it fails with "Unable to load CA certificates ...
// Permission denied").
//
// Readiness is probed with a bare TCP connection, so a TLS listener logs one
// "Client connection from 127.0.0.1 failed: ... unexpected eof while
// reading" line at start. The broker is killed and waited for by t.Cleanup;
// if the test failed, its output is logged then.
//
// The broker inherits a soft RLIMIT_NOFILE equal to the hard limit (see
// [FileLimit] to check it), so that it can serve thousands of connections.
func Mosquitto(t testing.TB, conf string) *Broker {
	t.Helper()
	bin := Require(t, "mosquitto")
	inheritFileLimit()
	dir := t.TempDir()
	const attempts = 3
	for attempt := 1; ; attempt++ {
		port := FreePort(t)
		text, err := renderConfig(conf, port, os.Geteuid() == 0)
		if err != nil {
			t.Fatalf("testpeer: mosquitto config: %v", err)
		}
		path := filepath.Join(dir, fmt.Sprintf("mosquitto-%d.conf", attempt))
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatalf("testpeer: %v", err)
		}
		b := &Broker{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Port: port, ConfigPath: path, out: new(hwpeer.Output), bin: bin}
		err = b.start(t, bin)
		if err == nil {
			return b
		}
		if errors.Is(err, errPortTaken) && attempt < attempts {
			t.Logf("testpeer: mosquitto port %d was taken, retrying", port)
			continue
		}
		t.Fatalf("testpeer: mosquitto (%s): %v\nconfig %s:\n%s\noutput:\n%s", bin, err, path, text, b.Output())
	}
}

var errPortTaken = errors.New("listener port already in use")

// start runs the broker and waits for its listener. On error the process
// has exited or been killed.
func (b *Broker) start(t testing.TB, bin string) error {
	cmd := exec.Command(bin, "-c", b.ConfigPath)
	cmd.Stdout, cmd.Stderr = b.out, b.out
	cmd.Dir = filepath.Dir(b.ConfigPath)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	var once sync.Once
	stop := func(graceful bool) {
		once.Do(func() {
			if graceful {
				_ = cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-done:
					return
				case <-time.After(10 * time.Second):
				}
			}
			_ = cmd.Process.Kill()
			<-done
		})
	}
	if err := hwpeer.AwaitAccept(b.Addr, done, func() error { return waitErr }, mosquittoStartTimeout); err != nil {
		if errors.Is(err, hwpeer.ErrExited) && strings.Contains(b.Output(), "Address already in use") {
			return errPortTaken
		}
		stop(false)
		return fmt.Errorf("listener: %w", err)
	}
	// Cleanups run last-in first-out: kill first, then log on failure.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mosquitto %s output:\n%s", b.Addr, b.Output())
		}
	})
	t.Cleanup(func() { stop(false) })
	b.mu.Lock()
	b.stop = stop
	b.pid = cmd.Process.Pid
	b.mu.Unlock()
	return nil
}

// renderConfig substitutes the port into conf and checks that it binds the
// loopback only.
func renderConfig(conf string, port int, root bool) (string, error) {
	if strings.Count(conf, "{{port}}") != 1 {
		return "", errors.New(`want exactly one "listener {{port}} 127.0.0.1" line`)
	}
	text := strings.ReplaceAll(conf, "{{port}}", strconv.Itoa(port))
	hasUser := false
	for i, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch f[0] {
		case "listener":
			if len(f) != 3 || f[1] != strconv.Itoa(port) || f[2] != "127.0.0.1" {
				return "", fmt.Errorf("line %d %q: want \"listener {{port}} 127.0.0.1\"", i+1, line)
			}
		case "port", "bind_address", "bind_interface":
			return "", fmt.Errorf("line %d %q: use \"listener {{port}} 127.0.0.1\" instead", i+1, line)
		case "user":
			hasUser = true
		}
	}
	if root && !hasUser {
		if !strings.HasSuffix(text, "\n") {
			text += "\n"
		}
		text += "# added by testpeer: keep root so that the broker can read the test's private files\nuser root\n"
	}
	return text, nil
}

// MQTTConnect sends a minimal MQTT v5 CONNECT (clean start, keep alive
// 60 s, no properties, no credentials) on rw and reads the CONNACK. It
// returns the CONNACK reason code (0 is success). It is a smoke test for a
// broker connection, not an MQTT client.
func MQTTConnect(rw io.ReadWriter, clientID string) (reason byte, err error) {
	if len(clientID) > 23 {
		return 0, fmt.Errorf("testpeer: client ID %q over 23 bytes", clientID)
	}
	varHeader := []byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0}
	payload := append([]byte{0, byte(len(clientID))}, clientID...)
	pkt := append([]byte{0x10, byte(len(varHeader) + len(payload))}, varHeader...)
	pkt = append(pkt, payload...)
	if _, err := rw.Write(pkt); err != nil {
		return 0, fmt.Errorf("testpeer: write CONNECT: %w", err)
	}
	var first [1]byte
	if _, err := io.ReadFull(rw, first[:]); err != nil {
		return 0, fmt.Errorf("testpeer: read CONNACK: %w", err)
	}
	if first[0] != 0x20 {
		return 0, fmt.Errorf("testpeer: got packet type 0x%02x, want CONNACK 0x20", first[0])
	}
	n, err := readVarint(rw)
	if err != nil {
		return 0, fmt.Errorf("testpeer: read CONNACK: %w", err)
	}
	if n < 2 || n > 4096 {
		return 0, fmt.Errorf("testpeer: CONNACK remaining length %d", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(rw, body); err != nil {
		return 0, fmt.Errorf("testpeer: read CONNACK: %w", err)
	}
	return body[1], nil
}

// readVarint reads an MQTT variable byte integer.
func readVarint(r io.Reader) (int, error) {
	var v, shift int
	var b [1]byte
	for i := 0; i < 4; i++ {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, err
		}
		v |= int(b[0]&0x7f) << shift
		if b[0]&0x80 == 0 {
			return v, nil
		}
		shift += 7
	}
	return 0, errors.New("malformed variable byte integer")
}
