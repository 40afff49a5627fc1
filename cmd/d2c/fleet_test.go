// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
	"github.com/d2c-iot/d2c/transport"
)

// testFleet is a fleet made with the CLI: a CA, devices enrolled over EST
// from a registrar run in process, and a service certificate for tail.
type testFleet struct {
	dir     string
	ca      string            // CA directory
	devices string            // --devices directory: certificates of the registered devices
	stores  map[string]string // device ID -> store directory
	svcCert string            // tail's service certificate and key
	svcKey  string
}

// newTestFleet enrolls each of registered (their certificates copied into
// fleet.devices) and unregistered (certificates kept elsewhere) through
// "registrar serve" and "device enroll", and issues the service
// certificate svc:tail.
// enrollWithCLI issues a token from the CA in caDir and enrolls device
// into store through the registrar at url with "device enroll", trusting
// the CA's root fingerprint; extra are more flags of "device enroll".
func enrollWithCLI(t *testing.T, caDir, url, device, store string, extra ...string) {
	t.Helper()
	fp, err := os.ReadFile(filepath.Join(caDir, rootFingerprintFile))
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(d2cRun(t, "token", "issue", "--ca", caDir, "--device", device))
	d2cRun(t, append([]string{"device", "enroll", "--store", store, "--url", url, "--device", device, "--token", tok,
		"--fingerprint", strings.TrimSpace(string(fp))}, extra...)...)
}

func newTestFleet(t *testing.T, registered, unregistered []string) *testFleet {
	t.Helper()
	dir := t.TempDir()
	f := &testFleet{dir: dir, ca: filepath.Join(dir, "ca"), devices: filepath.Join(dir, "devices"), stores: map[string]string{},
		svcCert: filepath.Join(dir, "tail.crt"), svcKey: filepath.Join(dir, "tail.key")}
	d2cRun(t, "ca", "init", "--ca", f.ca, "--fleet", "cli test")
	if err := os.Mkdir(f.devices, 0o755); err != nil {
		t.Fatal(err)
	}
	urlFile := filepath.Join(dir, "registrar.url")
	stop := runInBackground(t, "registrar", "serve", "--ca", f.ca, "--state", filepath.Join(dir, "registrar"),
		"--listen", "127.0.0.1:0", "--url-file", urlFile)
	url := waitFile(t, urlFile)
	enroll := func(id, certOut string) {
		f.stores[id] = filepath.Join(dir, "dev-"+id)
		enrollWithCLI(t, f.ca, url, id, f.stores[id], "--cert-out", certOut)
	}
	for _, id := range registered {
		enroll(id, filepath.Join(f.devices, id+".pem"))
	}
	for _, id := range unregistered {
		enroll(id, filepath.Join(dir, id+".pem"))
	}
	stop()
	d2cRun(t, "ca", "service-cert", "--ca", f.ca, "--service", "tail", "--cert", f.svcCert, "--key", f.svcKey)
	return f
}

// runInBackground runs a long-running command in process until the
// returned stop function (also called by t.Cleanup) cancels it; stop
// fails the test unless the command exited 0.
func runInBackground(t *testing.T, args ...string) (stop func() (stdout, stderr string)) {
	t.Helper()
	stdout, stderr := &lockedBuffer{}, &lockedBuffer{}
	return runInBackgroundTo(t, stdout, stderr, args...)
}

func runInBackgroundTo(t *testing.T, stdout, stderr *lockedBuffer, args ...string) (stop func() (string, string)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, stdout, stderr) }()
	stopped := false
	stop = func() (string, string) {
		if stopped {
			return stdout.String(), stderr.String()
		}
		stopped = true
		cancel()
		select {
		case code := <-done:
			if code != exitOK {
				t.Errorf("d2c %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("d2c %s did not stop within 15s", strings.Join(args, " "))
		}
		return stdout.String(), stderr.String()
	}
	t.Cleanup(func() { stop() })
	return stop
}

// waitFile waits up to 10 seconds for a file written by a background
// command, and returns its trimmed content.
func waitFile(t *testing.T, path string) string {
	t.Helper()
	return waitFor(t, 10*time.Second, path, func() (string, bool) {
		b, err := os.ReadFile(path)
		return strings.TrimSpace(string(b)), err == nil && len(b) > 0
	})
}

// waitFor polls cond every 20 ms until it holds, failing the test after
// timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (string, bool)) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if v, ok := cond(); ok {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialDevice connects an enrolled device to the broker at addr.
func (f *testFleet) dialDevice(t *testing.T, id, addr string) *transport.Client {
	t.Helper()
	store, err := identity.OpenStore(f.stores[id], identity.StoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := transport.Dial(t.Context(), transport.ClientConfig{Broker: addr, Store: store, RetryMin: 50 * time.Millisecond,
		RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// startTail runs "d2c tail" against the broker at addr and waits until
// it is connected.
func (f *testFleet) startTail(t *testing.T, addr string, extra ...string) (stdout, stderr *lockedBuffer, stop func() (string, string)) {
	t.Helper()
	stdout, stderr = &lockedBuffer{}, &lockedBuffer{}
	args := append([]string{"tail", "--broker", addr, "--ca", f.ca, "--cert", f.svcCert, "--key", f.svcKey,
		"--devices", f.devices}, extra...)
	stop = runInBackgroundTo(t, stdout, stderr, args...)
	waitFor(t, 10*time.Second, "tail to connect", func() (string, bool) {
		return "", strings.Contains(stderr.String(), "connected; waiting for telemetry")
	})
	return stdout, stderr, stop
}

// publishUntil publishes body on stream from c every 100 ms until out
// matches want: the first messages may come before the broker has
// granted tail's subscription.
func publishUntil(t *testing.T, c *transport.Client, stream string, body []byte, out *lockedBuffer, want *regexp.Regexp) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !want.MatchString(out.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("no line matching %q within 10s; output:\n%s", want, out)
		}
		if err := c.Publish(t.Context(), stream, transport.Reading{Time: time.Now(), Body: body}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tailLine matches a line of tail for a device, stream and body.
func tailLine(device, stream, body string) *regexp.Regexp {
	return regexp.MustCompile(`(?m)^20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ` + regexp.QuoteMeta(device) + " " +
		regexp.QuoteMeta(stream) + ` \d+/\d+ ` + regexp.QuoteMeta(body) + `$`)
}

// TestDevBrokerAndTail runs "dev broker" and "tail" in process, a
// registered device publishing text and binary readings, and an
// unregistered one whose messages tail refuses with the reason.
func TestDevBrokerAndTail(t *testing.T) {
	f := newTestFleet(t, []string{"sensor-1"}, []string{"sensor-2"})
	addrFile := filepath.Join(f.dir, "broker.addr")
	stopBroker := runInBackground(t, "dev", "broker", "--ca", f.ca, "--listen", "127.0.0.1:0", "--service", "tail",
		"--addr-file", addrFile)
	addr := waitFile(t, addrFile)

	stdout, stderr, stopTail := f.startTail(t, addr)
	dev1 := f.dialDevice(t, "sensor-1", addr)
	publishUntil(t, dev1, "temperature", []byte(`{"celsius":21.5}`), stdout, tailLine("sensor-1", "temperature", `{"celsius":21.5}`))
	publishUntil(t, dev1, "raw", []byte{0, 1, 0xfe}, stdout, tailLine("sensor-1", "raw", "hex:0001fe"))

	dev2 := f.dialDevice(t, "sensor-2", addr)
	publishUntil(t, dev2, "temperature", []byte("19"), stderr,
		regexp.MustCompile(`(?m)^refused d2c/v1/dev/sensor-2/up/tele/temperature: transport: unknown device: .*\(its certificate is not in --devices`))
	if strings.Contains(stdout.String(), "sensor-2") {
		t.Errorf("tail printed a reading of the unregistered device:\n%s", stdout)
	}

	// Registering sensor-2 while tail runs: its next messages are accepted.
	cert, err := os.ReadFile(filepath.Join(f.dir, "sensor-2.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.devices, "sensor-2.pem"), cert, 0o644); err != nil {
		t.Fatal(err)
	}
	publishUntil(t, dev2, "temperature", []byte("19"), stdout, tailLine("sensor-2", "temperature", "19"))

	_, errOut := stopTail()
	if !regexp.MustCompile(`(?m)^stopped: [1-9]\d* accepted, [1-9]\d* refused`).MatchString(errOut) {
		t.Errorf("tail's summary:\n%s", errOut)
	}
	out, errOut := stopBroker()
	for _, want := range []string{"broker listening on 127.0.0.1:", "service:   svc:tail: read d2c/v1/dev/+/up/#"} {
		if !strings.Contains(out, want) {
			t.Errorf("dev broker stdout lacks %q:\n%s", want, out)
		}
	}
	for _, want := range []string{"warning: development broker", "broker stopped"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("dev broker stderr lacks %q:\n%s", want, errOut)
		}
	}
	if _, err := os.Stat(addrFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the address file was left behind: %v", err)
	}
}

// TestTailFilters checks --device and --stream.
func TestTailFilters(t *testing.T) {
	f := newTestFleet(t, []string{"sensor-1", "sensor-2"}, nil)
	addrFile := filepath.Join(f.dir, "broker.addr")
	runInBackground(t, "dev", "broker", "--ca", f.ca, "--listen", "127.0.0.1:0", "--service", "tail", "--addr-file", addrFile)
	addr := waitFile(t, addrFile)
	stdout, _, _ := f.startTail(t, addr, "--device", "sensor-2", "--stream", "humidity")
	dev1, dev2 := f.dialDevice(t, "sensor-1", addr), f.dialDevice(t, "sensor-2", addr)
	for _, c := range []*transport.Client{dev1, dev2} {
		if err := c.Publish(t.Context(), "temperature", transport.Reading{Time: time.Now(), Body: []byte("20")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := dev1.Publish(t.Context(), "humidity", transport.Reading{Time: time.Now(), Body: []byte("40")}); err != nil {
		t.Fatal(err)
	}
	publishUntil(t, dev2, "humidity", []byte("41"), stdout, tailLine("sensor-2", "humidity", "41"))
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		if !tailLine("sensor-2", "humidity", "41").MatchString(line) {
			t.Errorf("filtered tail printed %q", line)
		}
	}
}

// TestBrokerConfigMosquitto generates the broker configuration with
// "broker config", runs a real mosquitto with it, and checks that a
// device connects and publishes, that tail (a service given read rights)
// receives and verifies it, and that a revoked device is refused by the
// CRL.
func TestBrokerConfigMosquitto(t *testing.T) {
	f := newTestFleet(t, []string{"sensor-1"}, []string{"sensor-2"})
	crt, key := filepath.Join(f.dir, "broker.crt"), filepath.Join(f.dir, "broker.key")
	d2cRun(t, "ca", "server-cert", "--ca", f.ca, "--host", "127.0.0.1", "--cert", crt, "--key", key)
	d2cRun(t, "ca", "revoke", "--ca", f.ca, "--cert", filepath.Join(f.dir, "sensor-2.pem"))
	crl := filepath.Join(f.dir, "crl.pem")
	d2cRun(t, "ca", "crl", "--ca", f.ca, "--out", crl)
	out := filepath.Join(f.dir, "mosquitto")
	stdout := d2cRun(t, "broker", "config", "--ca", f.ca, "--listen", "127.0.0.1:1883", "--cert", crt, "--key", key,
		"--crl", crl, "--service", "tail", "--service", "commander:write=d2c/v1/dev/+/down/cmd", "--out", out,
		"--max-queued-bytes", "67108864", "--memory-limit", "268435456")
	for _, want := range []string{"run:       mosquitto -c " + filepath.Join(out, brokerConfFile),
		"service:   svc:commander: write d2c/v1/dev/+/down/cmd"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("broker config output lacks %q:\n%s", want, stdout)
		}
	}
	acl, err := os.ReadFile(filepath.Join(out, brokerACLFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"user svc:tail\n", "topic read d2c/v1/dev/+/up/#\n", "user svc:commander\n", "topic write d2c/v1/dev/+/down/cmd\n"} {
		if !bytes.Contains(acl, []byte(want)) {
			t.Errorf("acl lacks %q:\n%s", want, acl)
		}
	}
	conf, err := os.ReadFile(filepath.Join(out, brokerConfFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nretain_available false\n", "\nmax_queued_bytes 67108864\n", "\nmemory_limit 268435456\n"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("mosquitto.conf lacks %q", want)
		}
	}
	// testpeer picks the port.
	text := strings.Replace(string(conf), "\nlistener 1883 127.0.0.1\n", "\nlistener {{port}} 127.0.0.1\n", 1)
	if text == string(conf) {
		t.Fatalf("no listener line in the generated configuration:\n%s", conf)
	}
	broker := testpeer.Mosquitto(t, text)

	stdoutTail, _, _ := f.startTail(t, broker.Addr)
	dev1 := f.dialDevice(t, "sensor-1", broker.Addr)
	publishUntil(t, dev1, "temperature", []byte("21.5"), stdoutTail, tailLine("sensor-1", "temperature", "21.5"))

	dev2 := f.dialDevice(t, "sensor-2", broker.Addr)
	waitFor(t, 10*time.Second, "the revoked device to be refused", func() (string, bool) {
		return "", errors.Is(dev2.LastConnectError(), transport.ErrCertificateRejected)
	})
}

// TestBrokerConfigRefusals checks the usage errors and the checks made
// before anything is written.
func TestBrokerConfigRefusals(t *testing.T) {
	dir := t.TempDir()
	ca, other := filepath.Join(dir, "ca"), filepath.Join(dir, "other")
	d2cRun(t, "ca", "init", "--ca", ca)
	d2cRun(t, "ca", "init", "--ca", other)
	crt, key := filepath.Join(dir, "b.crt"), filepath.Join(dir, "b.key")
	d2cRun(t, "ca", "server-cert", "--ca", other, "--host", "127.0.0.1", "--cert", crt, "--key", key)
	out := filepath.Join(dir, "out")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--ca", ca, "--cert", crt, "--key", key}, exitUsage, "--ca, --cert, --key and --out are required"},
		{[]string{"--ca", ca, "--cert", crt, "--key", key, "--out", out, "--service", "bad name"}, exitUsage, "a service name follows the device ID format"},
		{[]string{"--ca", ca, "--cert", crt, "--key", key, "--out", out, "--service", "x:read=#;read=#"}, exitUsage, "want NAME or NAME:read="},
		{[]string{"--ca", ca, "--cert", crt, "--key", key, "--out", out, "--service", "x:write=$SYS/#"}, exitUsage, "filters starting with '$'"},
		{[]string{"--ca", ca, "--cert", crt, "--key", key, "--out", out, "--service", "x", "--service", "x:write=a"}, exitUsage, "--service x given twice"},
		{[]string{"--ca", ca, "--cert", crt, "--key", key, "--out", out, "--listen", "8883"}, exitUsage, "--listen \"8883\": want host:port"},
		{[]string{"--ca", ca, "--cert", crt, "--key", key, "--out", out, "--listen", "127.0.0.1:99999"}, exitUsage, "port must be 1 to 65535"},
		{[]string{"--ca", ca, "--cert", crt, "--key", key, "--out", out}, exitError, "hint: devices trust only the fleet root"},
		{[]string{"--ca", filepath.Join(dir, "nope"), "--cert", crt, "--key", key, "--out", out}, exitError, "hint: no fleet CA in"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), append([]string{"broker", "config"}, tc.args...), &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("broker config %q: exit %d, stderr:\n%s\nwant exit %d and %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused configuration wrote %s", out)
	}
}

// TestTailWithoutRights runs tail against a broker that lists no rights
// for its service: it says so, and what to do.
func TestTailWithoutRights(t *testing.T) {
	f := newTestFleet(t, nil, nil)
	addrFile := filepath.Join(f.dir, "broker.addr")
	runInBackground(t, "dev", "broker", "--ca", f.ca, "--listen", "127.0.0.1:0", "--addr-file", addrFile)
	addr := waitFile(t, addrFile)
	stdout, stderr := &lockedBuffer{}, &lockedBuffer{}
	runInBackgroundTo(t, stdout, stderr, "tail", "--broker", addr, "--ca", f.ca, "--cert", f.svcCert, "--key", f.svcKey, "--devices", f.devices)
	waitFor(t, 10*time.Second, "tail's warning", func() (string, bool) {
		return "", strings.Contains(stderr.String(), "(the broker lists no rights for this service: give it read access")
	})
	if !strings.Contains(stderr.String(), "warning: no device certificates in ") {
		t.Errorf("tail did not warn of an empty --devices:\n%s", stderr)
	}
}

// TestDevBrokerRefusesNonLoopback checks the address guard of "dev
// broker", and that a service certificate is required of tail.
func TestDevBrokerRefusesNonLoopback(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	d2cRun(t, "ca", "init", "--ca", ca)
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"dev", "broker", "--ca", ca, "--listen", "0.0.0.0:0"}, &stdout, &stderr); code != exitError ||
		!strings.Contains(stderr.String(), "hint: use --listen 127.0.0.1:PORT, or add --dev-any-address") {
		t.Errorf("dev broker on 0.0.0.0: exit %d\n%s", code, stderr.String())
	}
	crt, key := filepath.Join(dir, "s.crt"), filepath.Join(dir, "s.key")
	d2cRun(t, "ca", "server-cert", "--ca", ca, "--host", "127.0.0.1", "--cert", crt, "--key", key)
	if err := os.Mkdir(filepath.Join(dir, "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"tail", "--broker", "127.0.0.1:1", "--ca", ca, "--cert", crt, "--key", key,
		"--devices", filepath.Join(dir, "devices")}, &stdout, &stderr); code != exitError ||
		!strings.Contains(stderr.String(), "not a cloud service") || !strings.Contains(stderr.String(), "hint: issue a service certificate") {
		t.Errorf("tail with a server certificate: exit %d\n%s", code, stderr.String())
	}
}
