// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/testpeer"
)

// TestCloudServe runs "cloud serve" from a configuration file with the
// registrar, CRL and ops sections on the default SQLite store: it
// becomes ready, a device enrolls through it with "device enroll", the
// enrollment is counted in /metrics, the CRL is written, and it stops
// cleanly. A bad configuration is refused with a hint.
func TestCloudServe(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	d2cRun(t, "ca", "init", "--ca", ca, "--fleet", "cloud serve test")
	config := filepath.Join(dir, "cloud.json")
	if err := os.WriteFile(config, []byte(`{
		"ca": "ca",
		"ops": "127.0.0.1:0",
		"registrar": {"listen": "127.0.0.1:0", "hosts": ["127.0.0.1"]},
		"crl": {"out": "crl.pem"}
	}`), 0o600); err != nil {
		t.Fatal(err)
	}
	readyFile := filepath.Join(dir, "ready.json")
	stop := runInBackground(t, "cloud", "serve", "--config", config, "--ready-file", readyFile)
	var addrs struct{ Registrar, Ops string }
	if err := json.Unmarshal([]byte(waitFile(t, readyFile)), &addrs); err != nil {
		t.Fatal(err)
	}
	enrollWithCLI(t, ca, "https://"+addrs.Registrar, "cam-7", filepath.Join(dir, "cam-7"))
	resp, err := http.Get("http://" + addrs.Ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "\nd2c_enrollments_total 1\n") {
		t.Errorf("/metrics does not count the enrollment:\n%s", body)
	}
	if _, err := os.Stat(filepath.Join(dir, "fleet.db")); err != nil {
		t.Errorf("the default store: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "crl.pem")); err != nil || !strings.Contains(string(b), "X509 CRL") {
		t.Errorf("the CRL: %v", err)
	}
	_, stderr := stop()
	if !strings.Contains(stderr, `"msg":"cloud service stopped"`) {
		t.Errorf("no JSON log of the stop:\n%s", stderr)
	}

	if err := os.WriteFile(config, []byte(`{"ca": "ca", "registar": {}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := run(t.Context(), []string{"cloud", "serve", "--config", config}, &out, &errOut)
	if code == exitOK || !strings.Contains(errOut.String(), `unknown field "registar"`) || !strings.Contains(errOut.String(), "d2c cloud serve --help") {
		t.Errorf("a misspelt section: exit %d\n%s", code, errOut.String())
	}
}

// TestCloudServeCommandsAndUpdate runs "cloud serve" with every role on
// "dev broker": curl, as the application with its service certificate,
// sends a command to an enrolled device and reads it back; curl fetches
// the update repository's timestamp, which the service signed with the
// online key and "update verify" accepts; a certificate not among the
// clients is refused.
func TestCloudServeCommandsAndUpdate(t *testing.T) {
	curl := testpeer.Require(t, "curl")
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	d2cRun(t, "ca", "init", "--ca", ca, "--fleet", "cloud serve test")
	brokerAddr := filepath.Join(dir, "broker.addr")
	runInBackground(t, "dev", "broker", "--ca", ca, "--listen", "127.0.0.1:0", "--addr-file", brokerAddr,
		"--service", "cloud:read=d2c/v1/dev/+/up/#;write=d2c/v1/dev/+/down/cmd")
	addr := waitFile(t, brokerAddr)
	for _, name := range []string{"cloud", "app", "other"} {
		d2cRun(t, "ca", "service-cert", "--ca", ca, "--service", name, "--cert", filepath.Join(dir, name+".crt"),
			"--key", filepath.Join(dir, name+".key"))
	}
	keys, repo := filepath.Join(dir, "keys"), filepath.Join(dir, "repo")
	for _, role := range []string{"root", "release", "timestamp"} {
		d2cRun(t, "update", "keys", "gen", "--role", role, "--out", keys)
	}
	d2cRun(t, "update", "root", "init", "--repo", repo, "--root-key", filepath.Join(keys, "root.key"),
		"--release-pub", filepath.Join(keys, "release.pub"), "--timestamp-pub", filepath.Join(keys, "timestamp.pub"))
	image := filepath.Join(dir, "fw.bin")
	if err := os.WriteFile(image, []byte("firmware 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2cRun(t, "update", "release", "sign", "--repo", repo, "--key", filepath.Join(keys, "release.key"), "--version", "1",
		"--security-counter", "1", "--hardware-class", "hw", "--image", image, "--timestamp-key", filepath.Join(keys, "timestamp.key"),
		"--timestamp-expires", "10s")

	config := filepath.Join(dir, "cloud.json")
	if err := os.WriteFile(config, fmt.Appendf(nil, `{
		"ca": "ca",
		"registrar": {"listen": "127.0.0.1:0", "hosts": ["127.0.0.1"]},
		"verifier": {"broker": %q, "cert": "cloud.crt", "key": "cloud.key"},
		"commands": {"listen": "127.0.0.1:0", "hosts": ["127.0.0.1"], "clients": ["app"], "ttl": "2m"},
		"update": {"dir": "repo", "listen": "127.0.0.1:0", "hosts": ["127.0.0.1"], "timestamp_key": "keys/timestamp.key",
		           "timestamp_validity": "1h"}
	}`, addr), 0o600); err != nil {
		t.Fatal(err)
	}
	readyFile := filepath.Join(dir, "ready.json")
	runInBackground(t, "cloud", "serve", "--config", config, "--ready-file", readyFile)
	var addrs struct{ Registrar, Commands, Update string }
	if err := json.Unmarshal([]byte(waitFile(t, readyFile)), &addrs); err != nil {
		t.Fatal(err)
	}
	enrollWithCLI(t, ca, "https://"+addrs.Registrar, "valve-3", filepath.Join(dir, "valve-3"))

	root := filepath.Join(ca, "root.crt")
	curlAs := func(name string, args ...string) (string, error) {
		t.Helper()
		args = append([]string{"-sS", "--fail-with-body", "--cacert", root, "--cert", filepath.Join(dir, name+".crt"),
			"--key", filepath.Join(dir, name+".key")}, args...)
		out, err := exec.CommandContext(t.Context(), curl, args...).CombinedOutput()
		return string(out), err
	}
	out, err := curlAs("app", "-d", `{"name":"open","body":"NTAl"}`, "https://"+addrs.Commands+"/v1/devices/valve-3/commands")
	if err != nil {
		t.Fatalf("curl POST: %v\n%s", err, out)
	}
	var cmd struct{ ID, State, Client, Expires string }
	if err := json.Unmarshal([]byte(out), &cmd); err != nil || cmd.State != "sent" || cmd.Client != "app" {
		t.Fatalf("POST answered %s (%v)", out, err)
	}
	out, err = curlAs("app", "https://"+addrs.Commands+"/v1/devices/valve-3/commands/"+cmd.ID)
	if err != nil || !strings.Contains(out, `"state":"sent"`) || !strings.Contains(out, `"name":"open"`) {
		t.Fatalf("GET: %v\n%s", err, out)
	}
	if out, err := curlAs("other", "-d", `{"name":"open"}`, "https://"+addrs.Commands+"/v1/devices/valve-3/commands"); err == nil ||
		!strings.Contains(out, "not one of the API's clients") {
		t.Errorf("a service not among the clients: %v\n%s", err, out)
	}

	// The service re-signs the timestamp (10 s left of its 1 h validity):
	// a fresh one, valid for an hour, which a device accepts.
	waitFor(t, 10*time.Second, "a timestamp re-signed by the service", func() (string, bool) {
		out := d2cRun(t, "update", "verify", "--repo", repo, "--root", filepath.Join(repo, "1.root.json"), "--hardware-class", "hw")
		return out, strings.Contains(out, "timestamp: version 2,")
	})
	served, err := exec.CommandContext(t.Context(), curl, "-sS", "--fail", "--cacert", root, "https://"+addrs.Update+"/timestamp.json").Output()
	onDisk, rerr := os.ReadFile(filepath.Join(repo, "timestamp.json"))
	if err != nil || rerr != nil || !bytes.Equal(served, onDisk) {
		t.Fatalf("timestamp.json over HTTPS: %v %v", err, rerr)
	}
}
