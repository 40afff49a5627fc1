// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/wire"
)

// e2eFleet is a whole fleet on this machine: CA, registrar over HTTPS,
// embedded broker with mutual TLS and the generated ACL, a cloud verifier.
type e2eFleet struct {
	t        *testing.T
	dir      string
	ca       *identity.CA
	tokenKey crypto.Signer
	est      identity.ESTClient
	broker   *devbroker.Broker
	certs    *transport.MemoryCertificates
	cloudKey *ecdsa.PrivateKey
	cmdKey   crypto.Signer
	roots    *x509.CertPool
}

var services = []broker.ServiceRights{
	{Name: "verifier", Read: []string{wire.AllUp}},
	{Name: "commander", Write: []string{wire.TopicPrefix + "+/down/cmd"}},
}

func newE2EFleet(t *testing.T) *e2eFleet {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{Fleet: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	tokenKey, err := identity.ReadKeyFile(filepath.Join(dir, "ca", identity.CATokenKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	used, err := identity.OpenUsedTokens(filepath.Join(dir, "used.state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, UsedTokens: used})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(reg)
	srv.TLS = reg.TLSConfig(serverCert(t, ca))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	fp := sha256.Sum256(ca.Root().Raw)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	b, err := devbroker.Start(t.Context(), devbroker.Config{Certificate: serverCert(t, ca), ClientRoots: roots, Services: services, Revocation: ca})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	cloudKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cmdKey, _ := identity.GenerateKey(identity.ECDSAP256)
	return &e2eFleet{t: t, dir: dir, ca: ca, tokenKey: tokenKey, broker: b, certs: &transport.MemoryCertificates{},
		cloudKey: cloudKey, cmdKey: cmdKey, roots: roots,
		est: identity.ESTClient{URL: srv.URL, BootstrapFingerprint: fp[:]}}
}

func serverCert(t *testing.T, ca *identity.CA) tls.Certificate {
	return testpki.Server(t, ca, "127.0.0.1")
}

func (f *e2eFleet) serviceCert(name string) tls.Certificate {
	return testpki.Service(f.t, f.ca, name)
}

// enroll enrolls a device over EST and registers its certificate with the
// cloud, as a registrar hook would.
func (f *e2eFleet) enroll(id string) *identity.Store {
	f.t.Helper()
	s, err := f.enrollErr(f.t.Context(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// enrollErr is enroll for any goroutine: it returns the error instead of
// failing the test.
func (f *e2eFleet) enrollErr(ctx context.Context, id string) (*identity.Store, error) {
	s, err := identity.OpenStore(filepath.Join(f.dir, "dev-"+id), identity.StoreConfig{})
	if err != nil {
		return nil, err
	}
	tok, err := identity.TokenIssuer{Key: f.tokenKey}.Issue(id)
	if err != nil {
		return nil, err
	}
	ident, err := s.Enroll(ctx, f.est, identity.EnrollRequest{DeviceID: id, Auth: identity.EnrollAuth{Token: tok}})
	if err != nil {
		return nil, err
	}
	f.certs.Add(ident.Chain...)
	return s, nil
}

func (f *e2eFleet) verifier() *transport.Verifier {
	v, err := transport.NewVerifier(transport.VerifierConfig{Certificates: f.certs,
		Policy: identity.DeviceCertPolicy{Roots: f.roots, Revocations: f.ca}, DecryptionKey: f.cloudKey})
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

// collector gathers verified records.
type collector struct {
	mu      sync.Mutex
	recs    []transport.Record
	refused []error
	got     chan struct{}
}

func newCollector() *collector { return &collector{got: make(chan struct{}, 1<<16)} }

func (c *collector) onRecord(_ context.Context, r transport.Record) {
	c.mu.Lock()
	c.recs = append(c.recs, r)
	c.mu.Unlock()
	c.got <- struct{}{}
}

func (c *collector) onRefused(_ string, err error) {
	c.mu.Lock()
	c.refused = append(c.refused, err)
	c.mu.Unlock()
}

func (c *collector) wait(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		c.mu.Lock()
		have := len(c.recs)
		c.mu.Unlock()
		if have >= n {
			return
		}
		select {
		case <-c.got:
		case <-deadline:
			t.Fatalf("received %d of %d records in %v", have, n, within)
		}
	}
}

func (f *e2eFleet) cloud(col *collector, v *transport.Verifier, name string) *transport.Cloud {
	f.t.Helper()
	return f.cloudAt(f.broker.Addr(), col, v, name)
}

// cloudAt connects the cloud service name to the broker at addr, with the
// verifier v reporting to col, and waits for its subscription.
func (f *e2eFleet) cloudAt(addr string, col *collector, v *transport.Verifier, name string) *transport.Cloud {
	f.t.Helper()
	c, err := transport.DialCloud(f.t.Context(), transport.CloudConfig{Broker: addr, Certificate: f.serviceCert(name),
		Roots: f.roots, Verifier: v, OnRecord: col.onRecord, OnRefused: col.onRefused})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close(context.Background()) })
	ctx, cancel := context.WithTimeout(f.t.Context(), 10*time.Second)
	defer cancel()
	if err := c.AwaitConnection(ctx); err != nil {
		f.t.Fatal(err)
	}
	return c
}

func TestEndToEndEmbeddedBroker(t *testing.T) {
	f := newE2EFleet(t)
	store := f.enroll("sensor-1")
	col := newCollector()
	v := f.verifier()
	cloud := f.cloud(col, v, "verifier")
	time.Sleep(200 * time.Millisecond) // let the cloud's subscription settle

	commands := make(chan transport.Command, 1)
	dev, err := transport.Dial(t.Context(), transport.ClientConfig{Broker: f.broker.Addr(), Store: store,
		Encryption: &transport.Encryption{CloudKey: &f.cloudKey.PublicKey}, CommandKeys: []crypto.PublicKey{f.cmdKey.Public()},
		OnCommand: func(_ context.Context, c transport.Command) { commands <- c }})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close(context.Background())
	const n = 50
	for i := range n {
		if err := dev.Publish(t.Context(), "temp", transport.Reading{Time: time.Now(), Body: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	col.wait(t, n, 15*time.Second)
	// The broker may forward the last messages to the cloud before its
	// PUBACKs reach the device: give those a moment.
	for deadline := time.Now().Add(5 * time.Second); dev.Stats().Acked < n && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	st := dev.Stats()
	if st.Acked < n || v.Stats().Accepted != n || v.Stats().KeysDelivered != 1 {
		t.Fatalf("device %+v verifier %+v", st, v.Stats())
	}
	seen := map[string]bool{}
	for _, r := range col.recs {
		if r.Device != "sensor-1" || r.Stream != "temp" {
			t.Fatalf("record %+v", r)
		}
		seen[string(r.Readings[0].Body)] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct readings, want %d", len(seen), n)
	}

	// A signed command from the commander service reaches the device.
	commander := f.cloud(newCollector(), nil, "commander")
	signer := &transport.CommandSigner{Key: f.cmdKey}
	env, err := signer.Sign(transport.Command{Device: "sensor-1", Name: "blink", Body: []byte("3")})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := commander.SendCommand(t.Context(), "sensor-1", env); err != nil {
		t.Fatal(err)
	}
	var cmd transport.Command
	select {
	case cmd = <-commands:
		if cmd.Name != "blink" || string(cmd.Body) != "3" {
			t.Fatalf("command %+v", cmd)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("command not received")
	}

	// The device reports its result, signed and sequenced like telemetry;
	// a result for a command it never ran is refused before it is sealed.
	if err := dev.ReportCommandResult(t.Context(), transport.CommandResult{ID: cmd.ID + 1}); !errors.Is(err, transport.ErrNoSuchCommand) {
		t.Fatalf("result of a command not run: %v", err)
	}
	if err := dev.ReportCommandResult(t.Context(), transport.CommandResult{ID: cmd.ID, Output: make([]byte, transport.MaxCommandOutput+1)}); err == nil {
		t.Fatal("oversized output accepted")
	}
	if err := dev.ReportCommandResult(t.Context(), transport.CommandResult{ID: cmd.ID, Failed: true, Output: []byte("no LED")}); err != nil {
		t.Fatal(err)
	}
	col.wait(t, n+1, 15*time.Second)
	r := col.recs[n]
	if r.Stream != wire.CommandResultStream || r.Device != "sensor-1" {
		t.Fatalf("result record %+v", r)
	}
	res, err := transport.ParseCommandResult(r)
	if err != nil || res.ID != cmd.ID || !res.Failed || string(res.Output) != "no LED" {
		t.Fatalf("result %+v, %v", res, err)
	}
	_ = cloud
}

// TestCommandResultTopics: a command result is only read from the
// command-result topic, and nothing else is read from it.
func TestCommandResultTopics(t *testing.T) {
	f := newE2EFleet(t)
	store := f.enroll("sensor-1")
	f.enroll("sensor-2")
	v := f.verifier()
	id, err := store.Current()
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := transport.NewSealer(id.DeviceID, id.Key, nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	seal := func(stream string, seq uint64, body string) []byte {
		t.Helper()
		out, err := sealer.Seal(transport.Record{Stream: stream, Boot: 1, Seq: seq, Time: time.Now(),
			Readings: []transport.Reading{{Time: time.Now(), Body: []byte(body)}}})
		if err != nil {
			t.Fatal(err)
		}
		return out.Envelope
	}
	result := `{"v":1,"id":7,"failed":false}`
	for _, c := range []struct {
		name, topic string
		env         []byte
		want        error
	}{
		{"result on the telemetry topic", wire.TelemetryTopic("sensor-1", wire.CommandResultStream), seal(wire.CommandResultStream, 1, result), wire.ErrInvalidTopic},
		{"telemetry on the result topic", wire.CommandResultTopic("sensor-1"), seal("temp", 2, "21.5"), wire.ErrMalformed},
		{"result of another device's topic", wire.CommandResultTopic("sensor-2"), seal(wire.CommandResultStream, 3, result), wire.ErrWrongDevice},
		{"result", wire.CommandResultTopic("sensor-1"), seal(wire.CommandResultStream, 4, result), nil},
	} {
		rec, err := v.Verify(t.Context(), c.topic, c.env)
		if !errors.Is(err, c.want) {
			t.Fatalf("%s: %v, want %v", c.name, err, c.want)
		}
		if c.want == nil {
			if r, err := transport.ParseCommandResult(rec); err != nil || r.ID != 7 {
				t.Fatalf("%s: %+v %v", c.name, r, err)
			}
		}
	}
}
