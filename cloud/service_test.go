// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package cloud_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/cloud"
	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/wire"
)

// TestServiceAllRoles runs the registrar, verifier and CRL roles in one
// service on an SQLite store with the embedded broker: a device enrolls
// through the service, publishes encrypted readings, and every one is
// counted as verified; the CRL is written; health, readiness and metrics
// answer; cancelling the context stops the service cleanly.
func TestServiceAllRoles(t *testing.T) {
	f := newFleet(t, broker.ServiceRights{Name: "verifier", Read: []string{wire.AllUp}})
	cloudKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	crlFile := filepath.Join(f.dir, "crl.pem")
	addrs, ran := f.run(ctx, cloud.Config{
		Registrar: f.registrar(),
		Verifier: &cloud.VerifierRole{Broker: f.broker.Addr(), Certificate: testpki.Service(t, f.ca, "verifier"), Roots: f.roots,
			DecryptionKey: cloudKey},
		CRL: &cloud.CRLRole{Out: crlFile},
	})

	// A device enrolls through the service's registrar and publishes.
	devStore, _ := f.enroll(ctx, addrs.Registrar.String(), "meter-1")
	dev, err := transport.Dial(ctx, transport.ClientConfig{Broker: f.broker.Addr(), Store: devStore,
		Encryption: &transport.Encryption{CloudKey: &cloudKey.PublicKey}, RetryMin: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close(context.Background())
	const n = 20
	for i := range n {
		if err := dev.Publish(ctx, "power", transport.Reading{Time: time.Now(), Body: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}

	ops := "http://" + addrs.Ops.String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(ops + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	metric := func(body, name string) string {
		for _, line := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		return ""
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, body := get("/metrics")
		if metric(body, "d2c_readings_verified_total") == fmt.Sprint(n) {
			if got := metric(body, "d2c_enrollments_total"); got != "1" {
				t.Errorf("d2c_enrollments_total %q, want 1", got)
			}
			if got := metric(body, "d2c_session_keys_total"); got != "1" {
				t.Errorf("d2c_session_keys_total %q, want 1", got)
			}
			if got := metric(body, "d2c_crl_number"); got != "1" {
				t.Errorf("d2c_crl_number %q, want 1", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readings verified: %q of %d\n%s", metric(body, "d2c_readings_verified_total"), n, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The fleet's gauges come from the store (cached 5 s between scrapes).
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, body := get("/metrics")
		if metric(body, "d2c_devices_connected") == "1" && metric(body, `d2c_certificates{status="valid"}`) == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fleet gauges: devices connected %q, valid certificates %q", metric(body, "d2c_devices_connected"),
				metric(body, `d2c_certificates{status="valid"}`))
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := get(path); code != http.StatusOK {
			t.Errorf("GET %s: %d %s", path, code, body)
		}
	}
	b, err := os.ReadFile(crlFile)
	if err != nil {
		t.Fatal(err)
	}
	cache := identity.NewCRLCache(f.ca.Issuing(), nil)
	if err := cache.Update(b); err != nil {
		t.Fatalf("the CRL the service wrote: %v", err)
	}

	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the service did not stop")
	}
}

// TestServiceConfigRefused: a service with no store, no role, or a
// registrar without the CA is refused before anything starts.
func TestServiceConfigRefused(t *testing.T) {
	st, err := store.Open(t.Context(), store.Config{URL: "sqlite:" + filepath.Join(t.TempDir(), "fleet.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for name, cfg := range map[string]cloud.Config{
		"no store":              {CRL: &cloud.CRLRole{Out: "x"}},
		"no role":               {Store: st},
		"registrar, no CA":      {Store: st, Registrar: &cloud.RegistrarRole{}},
		"CRL publisher, no CA":  {Store: st, CRL: &cloud.CRLRole{Out: "x"}},
		"commands, no verifier": {Store: st, CA: &identity.CA{}, Commands: &cloud.CommandRole{}},
	} {
		if err := cloud.Run(t.Context(), cfg); err == nil {
			t.Errorf("%s: Run succeeded", name)
		}
	}
}
