// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package testpeer

import (
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestFreePort(t *testing.T) {
	port := FreePort(t)
	if port <= 0 || port > 65535 {
		t.Fatalf("port %d", port)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("free port %d not usable: %v", port, err)
	}
	l.Close()
}

// fatalRecorder records Fatalf instead of stopping the test, to check the
// message a missing peer produces.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Fatalf(format string, args ...any) { r.msg = fmt.Sprintf(format, args...) }

func TestRequire(t *testing.T) {
	if p := Require(t, "sh"); !strings.HasPrefix(p, "/") {
		t.Errorf("Require(sh) = %q, want an absolute path", p)
	}
	if p := Require(t, "mosquitto"); !strings.HasSuffix(p, "/mosquitto") {
		t.Errorf("Require(mosquitto) = %q", p)
	}
	r := &fatalRecorder{TB: t}
	if p := Require(r, "d2c-no-such-peer"); p != "" || !strings.Contains(r.msg, "never skip") {
		t.Errorf("missing tool: path %q, message %q", p, r.msg)
	}
	for tool, pkg := range map[string]string{"softhsm2-util": "softhsm2", "mosquitto": "mosquitto", "swtpm": "swtpm"} {
		if msg := missingMessage(tool); !strings.Contains(msg, "apt-get install "+pkg+")") || !strings.Contains(msg, "README") {
			t.Errorf("message for %s: %q", tool, msg)
		}
	}
}

func TestRenderConfig(t *testing.T) {
	good := "listener {{port}} 127.0.0.1\nallow_anonymous true\n"
	got, err := renderConfig(good, 1883, true)
	if err != nil || !strings.Contains(got, "listener 1883 127.0.0.1\n") || !strings.HasSuffix(got, "user root\n") {
		t.Fatalf("render as root: %q %v", got, err)
	}
	if got, _ := renderConfig(good, 1883, false); strings.Contains(got, "user root") {
		t.Errorf("user root added when not root: %q", got)
	}
	if got, _ := renderConfig(good+"user nobody\n", 1883, true); strings.Count(got, "user ") != 1 {
		t.Errorf("caller's user option not kept alone: %q", got)
	}
	for _, bad := range []string{
		"allow_anonymous true\n",
		"listener {{port}}\n",
		"listener {{port}} 0.0.0.0\n",
		"listener {{port}} 127.0.0.1\nlistener {{port}} 127.0.0.1\n",
		"listener {{port}} 127.0.0.1\nlistener 1884 127.0.0.1\n",
		"port {{port}}\n",
	} {
		if _, err := renderConfig(bad, 1883, true); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

// TestMosquitto starts a plaintext loopback broker and checks that it
// answers an MQTT v5 CONNECT with a successful CONNACK.
func TestMosquitto(t *testing.T) {
	b := Mosquitto(t, "listener {{port}} 127.0.0.1\nallow_anonymous true\n")
	c, err := net.DialTimeout("tcp", b.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	reason, err := MQTTConnect(c, "testpeer-smoke")
	if err != nil || reason != 0 {
		t.Fatalf("CONNACK reason %d, %v\n%s", reason, err, b.Output())
	}
	if !strings.Contains(b.Output(), "mosquitto version") {
		t.Errorf("output does not look like mosquitto's log: %q", b.Output())
	}
}

// TestMosquittoFileLimit checks that the broker runs with the hard
// RLIMIT_NOFILE as its soft limit (not the 1024 the Go runtime would give
// back to a child), and that Kill and Restart track its process.
func TestMosquittoFileLimit(t *testing.T) {
	b := Mosquitto(t, "listener {{port}} 127.0.0.1\nallow_anonymous true\n")
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	pid := b.PID()
	if pid <= 0 {
		t.Fatalf("PID() = %d for a running broker", pid)
	}
	got, err := FileLimit(pid)
	if err != nil {
		t.Fatal(err)
	}
	if got != lim.Max {
		t.Errorf("mosquitto soft RLIMIT_NOFILE %d, want the hard limit %d", got, lim.Max)
	}
	b.Kill()
	if b.PID() != 0 {
		t.Errorf("PID() = %d after Kill", b.PID())
	}
	b.Restart(t)
	if p := b.PID(); p <= 0 || p == pid {
		t.Errorf("PID() = %d after Restart (was %d)", p, pid)
	}
	c, err := net.DialTimeout("tcp", b.Addr, 5*time.Second)
	if err != nil {
		t.Fatalf("restarted broker: %v", err)
	}
	c.Close()
}
