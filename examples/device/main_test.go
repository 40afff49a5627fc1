// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/wire"
	"github.com/d2c-iot/d2c/update"
)

// TestDevice runs the device program against an embedded broker, an EST
// registrar and an update repository, with the cloud half built from the
// public API: the device enrolls, renews at once (its first certificate is
// issued as if ten minutes old) and announces the new chain, publishes
// encrypted readings the cloud verifies, obeys set-interval, and installs,
// restarts into and confirms a release on update.check.
func TestDevice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()

	// The fleet CA issues the first certificate ten minutes in the past, so
	// that it is due for renewal at once; later ones now.
	var skew atomic.Int64
	skew.Store(int64(-10 * time.Minute))
	clock := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	ca, err := identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{Time: clock, DeviceValidity: 12 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())

	// The registrar, recording every certificate it issues in the cloud's
	// registry, as a fleet's registrar would.
	registry := &transport.MemoryCertificates{}
	issued := make(chan *x509.Certificate, 4)
	tokenKey, err := identity.ReadKeyFile(filepath.Join(dir, "ca", identity.CATokenKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	used, err := identity.OpenUsedTokens(filepath.Join(dir, "used-tokens.state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer used.Close()
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, UsedTokens: used})
	if err != nil {
		t.Fatal(err)
	}
	est := httptest.NewUnstartedServer(recordIssued(reg, func(c *x509.Certificate) {
		registry.Add(c, ca.Issuing())
		skew.Store(0)
		issued <- c
	}))
	est.TLS = reg.TLSConfig(tlsCert(t, ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueServer(pub, "127.0.0.1") }))
	est.StartTLS()
	defer est.Close()
	token, err := identity.TokenIssuer{Key: tokenKey, Time: clock}.Issue("sensor-0001")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "token"), []byte(token))

	// The broker and the cloud half.
	broker, err := devbroker.Start(ctx, devbroker.Config{
		Certificate: tlsCert(t, ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueServer(pub, "127.0.0.1") }),
		ClientRoots: roots, Revocation: ca,
		Services: []broker.ServiceRights{
			{Name: "verifier", Read: []string{wire.AllUp}},
			{Name: "commander", Write: []string{wire.TopicPrefix + "+/down/cmd"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	cloudKey := genKey(t).(*ecdsa.PrivateKey)
	verifier, err := transport.NewVerifier(transport.VerifierConfig{Certificates: registry, DecryptionKey: cloudKey,
		RequireEncryption: true, Policy: identity.DeviceCertPolicy{Roots: roots, Revocations: ca}})
	if err != nil {
		t.Fatal(err)
	}
	records := make(chan transport.Record, 64)
	cloud := dialCloud(ctx, t, broker.Addr(), ca, roots, "verifier", verifier, func(_ context.Context, r transport.Record) { records <- r })
	defer cloud.Close(context.Background())
	commander := dialCloud(ctx, t, broker.Addr(), ca, roots, "commander", nil, nil)
	defer commander.Close(context.Background())
	// The embedded broker acknowledges a message no one subscribed to and
	// drops it: let the verifier's subscription settle first.
	time.Sleep(200 * time.Millisecond)
	commandKey := genKey(t)
	writeFile(t, filepath.Join(dir, "cloud.pub"), marshalPub(t, cloudKey.Public()))
	writeFile(t, filepath.Join(dir, "command.pub"), marshalPub(t, commandKey.Public()))

	// The update repository, empty until the test publishes a release.
	repo := newRepo(t)
	srv := httptest.NewServer(repo)
	defer srv.Close()
	writeFile(t, filepath.Join(dir, "root.json"), repo.root)

	// The device: settings from a file, the environment and flags.
	fp := sha256.Sum256(ca.Root().Raw)
	writeFile(t, filepath.Join(dir, "device.conf"), []byte(strings.Join([]string{
		"# test configuration",
		"identity-dir = " + filepath.Join(dir, "device", "identity"),
		"device-id = sensor-0001",
		"root-fingerprint = " + hex.EncodeToString(fp[:]),
		"token-file = " + filepath.Join(dir, "token"),
		"broker = 127.0.0.1:1", // overridden by the environment
		"cloud-key = " + filepath.Join(dir, "cloud.pub"),
		"command-key = " + filepath.Join(dir, "command.pub"),
		"update-root = " + filepath.Join(dir, "root.json"),
		"hardware-class = gateway-v1",
		"slots-dir = " + filepath.Join(dir, "device", "slots"),
		"update-insecure-http = true",
		"interval = 1h", // overridden by the flag
	}, "\n")))
	env := map[string]string{"D2C_BROKER": broker.Addr(), "D2C_EST_URL": est.URL, "D2C_UPDATE_URL": srv.URL}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	logs := &syncBuffer{}
	dctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(dctx, []string{"--config", filepath.Join(dir, "device.conf"), "--interval", "1s"}, lookup, logs)
	}()
	defer func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("device: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("the device did not stop")
		}
		if t.Failed() {
			t.Logf("device log:\n%s", logs.String())
		}
	}()

	var first, renewed *x509.Certificate
	for _, c := range []**x509.Certificate{&first, &renewed} {
		select {
		case *c = <-issued:
		case <-time.After(10 * time.Second):
			t.Fatal("the device did not enroll and renew")
		}
	}
	if renewed.Subject.CommonName != "sensor-0001" || renewed.Equal(first) {
		t.Fatalf("renewal issued %v", renewed.Subject)
	}

	// Readings reach the cloud, verified.
	expect(t, records, func(r transport.Record) bool {
		return r.Stream == "temperature" && bytes.HasPrefix(r.Readings[0].Body, []byte(`{"celsius":`))
	}, "a verified temperature reading")

	// A signed command reaches the device, which reports it.
	send := func(name, body string) {
		t.Helper()
		env, err := (&transport.CommandSigner{Key: commandKey}).Sign(transport.Command{Device: "sensor-0001", Name: name, Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		if err := commander.SendCommand(ctx, "sensor-0001", env); err != nil {
			t.Fatal(err)
		}
	}
	send("set-interval", "2s")
	expect(t, records, func(r transport.Record) bool {
		res, err := transport.ParseCommandResult(r)
		return err == nil && !res.Failed && string(res.Output) == "interval 2s"
	}, "the set-interval result")

	// An update announced by a command is installed, started on trial
	// and confirmed, each step reported.
	repo.publish(t, 1, []byte("firmware v1\n"))
	send(update.CheckCommand, "")
	want := map[string]func(transport.Record) bool{
		"the update.check result": func(r transport.Record) bool {
			res, err := transport.ParseCommandResult(r)
			return err == nil && !res.Failed && string(res.Output) == "update check started"
		},
	}
	for _, event := range []string{"installed", "confirmed"} {
		want["update "+event] = func(r transport.Record) bool {
			var res update.Result
			return r.Stream == update.ReportStream && json.Unmarshal(r.Readings[0].Body, &res) == nil &&
				res.Event == event && res.Version == 1
		}
	}
	expectAll(t, records, want)
	img, err := os.ReadFile(filepath.Join(dir, "device", "slots", "current", "image"))
	if err != nil || string(img) != "firmware v1\n" {
		t.Errorf("current image %q, %v", img, err)
	}
}

// TestSettingsPrecedence checks that flags override the environment, which
// overrides the file, and that the file refuses unknown and repeated names.
func TestSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "device.conf")
	writeFile(t, conf, []byte("identity-dir = /from/file\nbroker = file:1\nstream = file\n\n# comment\ninterval = 3s\n"))
	env := map[string]string{"D2C_CONFIG": conf, "D2C_BROKER": "env:1", "D2C_STREAM": "env", "D2C_INTERVAL": ""}
	s, err := parseSettings([]string{"--stream", "flag"}, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if s.identityDir != "/from/file" || s.broker != "env:1" || s.stream != "flag" || s.interval != 3*time.Second || s.stateDir != "/from/file" {
		t.Errorf("settings %+v", s)
	}
	for _, bad := range []string{"identity-dir = a\nidentity-dir = b\n", "identity_dir = a\n", "no equals sign\n"} {
		writeFile(t, conf, []byte(bad))
		if _, err := parseSettings([]string{"--broker", "b:1"}, func(k string) (string, bool) { v, ok := env[k]; return v, ok && k == "D2C_CONFIG" }, io.Discard); err == nil {
			t.Errorf("file %q accepted", bad)
		}
	}
	if _, err := parseSettings([]string{"--help"}, func(string) (string, bool) { return "", false }, io.Discard); err != flag.ErrHelp {
		t.Errorf("--help: %v", err)
	}
}

// expect waits for a record that ok accepts, skipping others.
func expect(t *testing.T, records <-chan transport.Record, ok func(transport.Record) bool, what string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case r := <-records:
			if ok(r) {
				return
			}
		case <-deadline:
			t.Fatalf("no %s", what)
		}
	}
}

// expectAll waits for records matching each of want, in any order.
func expectAll(t *testing.T, records <-chan transport.Record, want map[string]func(transport.Record) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for len(want) > 0 {
		select {
		case r := <-records:
			for what, ok := range want {
				if ok(r) {
					delete(want, what)
				}
			}
		case <-deadline:
			t.Fatalf("none of %v", slices.Collect(maps.Keys(want)))
		}
	}
}

// recordIssued wraps a registrar and reports every certificate it issues.
func recordIssued(h http.Handler, issued func(*x509.Certificate)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != identity.ESTSimpleEnroll && r.URL.Path != identity.ESTSimpleReenroll {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code == http.StatusOK {
			if certs, err := identity.DecodeCertsOnly(rec.Body.Bytes()); err == nil {
				issued(certs[0])
			}
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
}

func dialCloud(ctx context.Context, t *testing.T, addr string, ca *identity.CA, roots *x509.CertPool, name string,
	v *transport.Verifier, onRecord func(context.Context, transport.Record)) *transport.Cloud {
	t.Helper()
	cert := tlsCert(t, ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueService(pub, name) })
	c, err := transport.DialCloud(ctx, transport.CloudConfig{Broker: addr, Certificate: cert, Roots: roots, Verifier: v, OnRecord: onRecord})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.AwaitConnection(wctx); err != nil {
		t.Fatal(err)
	}
	return c
}

func tlsCert(t *testing.T, ca *identity.CA, issue func(crypto.PublicKey) (*x509.Certificate, error)) tls.Certificate {
	t.Helper()
	k := genKey(t)
	c, err := issue(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw, ca.Issuing().Raw}, PrivateKey: k}
}

func genKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func marshalPub(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	b, err := identity.MarshalPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// repo is an update repository served over HTTP: root v1, then the
// releases the test publishes.
type repo struct {
	mu                  sync.Mutex
	files               map[string][]byte
	root                []byte
	rel, tsKey, rootKey crypto.Signer
	timestamps          uint64
}

func newRepo(t *testing.T) *repo {
	r := &repo{files: map[string][]byte{}, rootKey: genKey(t), rel: genKey(t), tsKey: genKey(t)}
	root := &update.Root{Version: 1, Expires: time.Now().Add(24 * time.Hour)}
	for role, k := range map[update.Role]crypto.Signer{update.RoleRoot: r.rootKey, update.RoleRelease: r.rel, update.RoleTimestamp: r.tsKey} {
		if err := root.SetRole(role, 1, k.Public()); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if r.root, err = root.Sign(r.rootKey); err != nil {
		t.Fatal(err)
	}
	r.files["1.root.json"] = r.root
	return r
}

func (r *repo) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	b, ok := r.files[strings.TrimPrefix(req.URL.Path, "/")]
	r.mu.Unlock()
	if !ok {
		http.NotFound(w, req)
		return
	}
	http.ServeContent(w, req, req.URL.Path, time.Time{}, bytes.NewReader(b))
}

func (r *repo) publish(t *testing.T, version uint64, image []byte) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	name := fmt.Sprintf("firmware-%d.bin", version)
	art, err := update.NewArtifact("firmware", name, bytes.NewReader(image), nil)
	if err != nil {
		t.Fatal(err)
	}
	rel := &update.Release{Version: version, SecurityCounter: 1, HardwareClass: "gateway-v1",
		Artifacts: []update.Artifact{art}, Expires: time.Now().Add(24 * time.Hour)}
	rb, err := rel.Sign(r.rel)
	if err != nil {
		t.Fatal(err)
	}
	r.timestamps++
	ts, err := update.NewTimestamp(r.timestamps, time.Now().Add(time.Hour), rb)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := ts.Sign(r.tsKey)
	if err != nil {
		t.Fatal(err)
	}
	r.files[name], r.files[fmt.Sprintf("%d.release.json", version)], r.files["timestamp.json"] = image, rb, tb
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
