// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package cloud_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/cloud"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/wire"
)

// TestServiceCommands: an application sends a command through the
// service's command API, the device runs it and reports its result, and
// the application reads the result back. Clients not on the list, device
// certificates, malformed and oversized requests, unknown devices and
// commands are refused with their status codes; curl, as another client,
// sends a command too.
func TestServiceCommands(t *testing.T) {
	curl := testpeer.Require(t, "curl")
	f := newFleet(t, broker.ServiceRights{Name: "cloud", Read: []string{wire.AllUp}, Write: []string{wire.TopicPrefix + "+/down/cmd"}})
	cmdKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	addrs, ran := f.run(ctx, cloud.Config{
		Registrar: f.registrar(),
		Verifier:  &cloud.VerifierRole{Broker: f.broker.Addr(), Certificate: testpki.Service(t, f.ca, "cloud"), Roots: f.roots},
		Commands:  &cloud.CommandRole{Listen: "127.0.0.1:0", Certificate: f.serverCert, Key: cmdKey, Clients: []string{"app"}},
	})
	st, ca, roots, dir := f.store, f.ca, f.roots, f.dir

	// The device enrolls and obeys: "blink" succeeds, anything else fails.
	devStore, ident := f.enroll(ctx, addrs.Registrar.String(), "lamp-1")
	var dev *transport.Client
	devReady := make(chan struct{})
	dev, err = transport.Dial(ctx, transport.ClientConfig{Broker: f.broker.Addr(), Store: devStore, RetryMin: 50 * time.Millisecond,
		CommandKeys: []crypto.PublicKey{cmdKey.Public()},
		OnCommand: func(ctx context.Context, c transport.Command) {
			<-devReady
			res := transport.CommandResult{ID: c.ID, Output: append([]byte("done: "), c.Body...)}
			if c.Name != "blink" {
				res = transport.CommandResult{ID: c.ID, Failed: true, Output: []byte("unknown command " + c.Name)}
			}
			go func() {
				if err := dev.ReportCommandResult(ctx, res); err != nil {
					t.Error(err)
				}
			}()
		}})
	if err != nil {
		t.Fatal(err)
	}
	close(devReady)
	defer dev.Close(context.Background())
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	if err := dev.AwaitConnection(actx); err != nil {
		t.Fatal(err)
	}

	api := "https://" + addrs.Commands.String()
	client := func(cert *tls.Certificate) *http.Client {
		cfg := &tls.Config{RootCAs: roots}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	appCert := testpki.Service(t, ca, "app")
	app := client(&appCert)
	do := func(c *http.Client, method, path, body string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, api+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s %s: %d, body %q is not JSON", method, path, resp.StatusCode, b)
		}
		return resp.StatusCode, out
	}

	code, sent := do(app, "POST", "/v1/devices/lamp-1/commands", `{"name":"blink","body":"Mw==","ttl":"1m"}`)
	if code != http.StatusAccepted || sent["state"] != "sent" || sent["client"] != "app" || sent["name"] != "blink" {
		t.Fatalf("send: %d %v", code, sent)
	}
	code, got := do(app, "GET", fmt.Sprintf("/v1/devices/lamp-1/commands/%s?wait=20s", sent["id"]), "")
	result, _ := got["result"].(map[string]any)
	if code != http.StatusOK || got["state"] != "succeeded" || result == nil || result["output"] != "ZG9uZTogMw==" { // "done: 3"
		t.Fatalf("result: %d %v", code, got)
	}

	// curl, with the application's certificate in PEM files.
	certFile, keyFile := filepath.Join(dir, "app.crt"), filepath.Join(dir, "app.key")
	var chain []byte
	for _, der := range appCert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyPEM, err := identity.MarshalPrivateKey(appCert.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(dir, "root.crt")
	for f, b := range map[string][]byte{certFile: chain, keyFile: keyPEM, rootFile: identity.EncodeCertificatesPEM(ca.Root())} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.CommandContext(ctx, curl, "-sS", "--fail-with-body", "--cert", certFile, "--key", keyFile, "--cacert", rootFile,
		"-H", "Content-Type: application/json", "-d", `{"name":"reboot"}`, api+"/v1/devices/lamp-1/commands").Output()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	var viaCurl map[string]any
	if err := json.Unmarshal(out, &viaCurl); err != nil || viaCurl["state"] != "sent" {
		t.Fatalf("curl: %s (%v)", out, err)
	}
	code, got = do(app, "GET", fmt.Sprintf("/v1/devices/lamp-1/commands/%s?wait=20s", viaCurl["id"]), "")
	if code != http.StatusOK || got["state"] != "failed" {
		t.Fatalf("result of the command curl sent: %d %v", code, got)
	}

	// Refusals.
	intruderCert := testpki.Service(t, ca, "intruder")
	deviceCert := tls.Certificate{PrivateKey: ident.Key}
	for _, c := range ident.Chain {
		deviceCert.Certificate = append(deviceCert.Certificate, c.Raw)
	}
	for _, c := range []struct {
		name, method, path, body string
		client                   *http.Client
		want                     int
	}{
		{"a service not on the list", "POST", "/v1/devices/lamp-1/commands", `{"name":"blink"}`, client(&intruderCert), http.StatusForbidden},
		{"a device certificate", "POST", "/v1/devices/lamp-1/commands", `{"name":"blink"}`, client(&deviceCert), http.StatusForbidden},
		{"unknown device", "POST", "/v1/devices/lamp-9/commands", `{"name":"blink"}`, app, http.StatusNotFound},
		{"invalid device ID", "POST", "/v1/devices/lamp%2F1/commands", `{"name":"blink"}`, app, http.StatusBadRequest},
		{"unknown field", "POST", "/v1/devices/lamp-1/commands", `{"name":"blink","sudo":true}`, app, http.StatusBadRequest},
		{"two objects", "POST", "/v1/devices/lamp-1/commands", `{"name":"blink"}{}`, app, http.StatusBadRequest},
		{"no name", "POST", "/v1/devices/lamp-1/commands", `{}`, app, http.StatusBadRequest},
		{"ttl too long", "POST", "/v1/devices/lamp-1/commands", `{"name":"blink","ttl":"48h"}`, app, http.StatusBadRequest},
		{"oversized", "POST", "/v1/devices/lamp-1/commands", `{"name":"blink","body":"` + strings.Repeat("A", 80<<10) + `"}`, app, http.StatusRequestEntityTooLarge},
		{"unknown command", "GET", "/v1/devices/lamp-1/commands/12345", "", app, http.StatusNotFound},
		{"another device's command", "GET", fmt.Sprintf("/v1/devices/lamp-2/commands/%s", sent["id"]), "", app, http.StatusNotFound},
		{"wait too long", "GET", fmt.Sprintf("/v1/devices/lamp-1/commands/%s?wait=1h", sent["id"]), "", app, http.StatusBadRequest},
	} {
		if code, body := do(c.client, c.method, c.path, c.body); code != c.want || body["error"] == "" {
			t.Errorf("%s: %d %v, want %d and an error", c.name, code, body, c.want)
		}
	}
	// No client certificate: the handshake itself fails.
	if _, err := client(nil).Get(api + "/v1/devices/lamp-1/commands/1"); err == nil {
		t.Error("a request without a client certificate got an answer")
	}
	if n := dev.Stats().CommandsRun; n != 2 {
		t.Errorf("the device ran %d commands, want 2", n)
	}

	// A revoked device is no longer commanded.
	if _, err := st.RevokeDevice(ctx, "lamp-1", 0); err != nil {
		t.Fatal(err)
	}
	if code, body := do(app, "POST", "/v1/devices/lamp-1/commands", `{"name":"blink"}`); code != http.StatusNotFound {
		t.Errorf("command to a revoked device: %d %v", code, body)
	}

	resp, err := http.Get("http://" + addrs.Ops.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"d2c_commands_sent_total 2", "d2c_command_results_total 2"} {
		if !bytes.Contains(b, []byte(want+"\n")) {
			t.Errorf("metrics lack %q", want)
		}
	}
	cancel()
	if err := <-ran; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Run after cancel: %v", err)
	}
}
