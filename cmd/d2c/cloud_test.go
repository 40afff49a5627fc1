package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCloudServe runs "cloud serve" from a configuration file with the
// registrar, CRL and ops sections on the default SQLite store: it
// becomes ready, a device enrolls through it with "device enroll", the
// enrollment is counted in /metrics, the CRL is written, and it stops
// cleanly. A bad configuration is refused with a hint.
func TestCloudServe(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	d2cRun(t, "ca", "init", "--dir", ca, "--fleet", "cloud serve test")
	fp, err := os.ReadFile(filepath.Join(ca, rootFingerprintFile))
	if err != nil {
		t.Fatal(err)
	}
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
	tok := strings.TrimSpace(d2cRun(t, "token", "issue", "--ca", ca, "--device", "cam-7"))
	d2cRun(t, "device", "enroll", "--dir", filepath.Join(dir, "cam-7"), "--url", "https://"+addrs.Registrar, "--device", "cam-7",
		"--token", tok, "--fingerprint", strings.TrimSpace(string(fp)))
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
