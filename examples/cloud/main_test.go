package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/devbroker"
)

// TestCloud runs the cloud program's subcommands against an embedded broker,
// with a device built from the public API: init issues the service
// certificates, register adds the device, run prints its verified,
// decrypted readings, send delivers a signed command, a renewal announced
// by the device registers itself, and a revocation in the CRL file stops
// its records.
func TestCloud(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()
	caDir, cloudDir := filepath.Join(dir, "ca"), filepath.Join(dir, "cloud")
	ca, err := identity.InitCA(caDir, identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	noEnv := func(string) (string, bool) { return "", false }
	cloud := func(env map[string]string, args ...string) string {
		t.Helper()
		var out bytes.Buffer
		lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
		if err := run(ctx, args, lookup, &out, io.Discard); err != nil {
			t.Fatalf("cloud %s: %v", strings.Join(args, " "), err)
		}
		return out.String()
	}
	cloud(nil, "init", "--ca", caDir, "--dir", cloudDir)
	if err := run(ctx, []string{"init", "--ca", caDir, "--dir", cloudDir}, noEnv, io.Discard, io.Discard); err == nil {
		t.Error("a second init overwrote the cloud directory")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())

	// The broker, with the rights the program gives its services; the
	// mosquitto configuration it writes for them.
	broker, err := devbroker.Start(ctx, devbroker.Config{
		Certificate: tlsCert(t, ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueServer(pub, "127.0.0.1") }),
		ClientRoots: roots, Revocation: ca, Services: services(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	writeFile(t, filepath.Join(dir, "broker.crt"), nil)
	writeFile(t, filepath.Join(dir, "broker.key"), nil)
	cloud(nil, "mosquitto", "--dir", cloudDir, "--listen", "127.0.0.1:8883", "--broker-cert", filepath.Join(dir, "broker.crt"),
		"--broker-key", filepath.Join(dir, "broker.key"), "--out", filepath.Join(dir, "mosquitto"))
	if acl, err := os.ReadFile(filepath.Join(dir, "mosquitto", "acl")); err != nil || !strings.Contains(string(acl), "user svc:commander") {
		t.Errorf("acl %q, %v", acl, err)
	}

	// A device enrolls over EST.
	store, est := enroll(ctx, t, ca, caDir, filepath.Join(dir, "device"), "sensor-0001")
	id, err := store.Current()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "sensor-0001.pem"), identity.EncodeCertificatesPEM(id.Certificate())) // the leaf alone
	crlFile := filepath.Join(dir, "crl.pem")
	writeCRL(t, ca, crlFile)

	// One configuration file serves every subcommand; the environment
	// names the broker.
	conf := filepath.Join(dir, "cloud.conf")
	writeFile(t, conf, []byte("dir = "+cloudDir+"\ncrl = "+crlFile+"\nbroker = 127.0.0.1:1\nrequire-encryption = true\n"))
	env := map[string]string{"D2C_CLOUD_CONFIG": conf, "D2C_CLOUD_BROKER": broker.Addr()}
	if out := cloud(env, "register", "--cert", filepath.Join(dir, "sensor-0001.pem")); !strings.Contains(out, "registered sensor-0001") {
		t.Errorf("register: %q", out)
	}

	// cloud run.
	lines := make(chan string, 64)
	logs := &syncBuffer{}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
		done <- run(rctx, []string{"run", "--log-level", "debug"}, lookup, lineWriter(lines), logs)
	}()
	defer func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("cloud run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("cloud run did not stop")
		}
		if t.Failed() {
			t.Logf("cloud run log:\n%s", logs.String())
		}
	}()

	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "cloud connected") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let the subscription settle

	// The device connects with the cloud's keys and publishes.
	cloudPub, err := identity.ReadPublicKeyFile(filepath.Join(cloudDir, cloudPubFile))
	if err != nil {
		t.Fatal(err)
	}
	commandPub, err := identity.ReadPublicKeyFile(filepath.Join(cloudDir, commandPubFile))
	if err != nil {
		t.Fatal(err)
	}
	commands := make(chan transport.Command, 4)
	dev, err := transport.Dial(ctx, transport.ClientConfig{Broker: broker.Addr(), Store: store,
		Encryption:  &transport.Encryption{CloudKey: cloudPub},
		CommandKeys: []crypto.PublicKey{commandPub},
		OnCommand:   func(_ context.Context, c transport.Command) { commands <- c }})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close(context.Background())
	publish := func(body string) {
		t.Helper()
		if err := dev.Publish(ctx, "temperature", transport.Reading{Time: time.Now(), Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	publish(`{"celsius":21.5}`)
	expectLine(t, lines, `sensor-0001/temperature boot=1 seq=0 {"celsius":21.5}`)

	// cloud send.
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := dev.AwaitConnection(wctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the command subscription settle
	cloud(env, "send", "--device", "sensor-0001", "--name", "set-interval", "--body", "5s")
	select {
	case c := <-commands:
		if c.Name != "set-interval" || string(c.Body) != "5s" {
			t.Errorf("command %+v", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the command did not reach the device")
	}

	// A renewal, announced with the old key as the device program does:
	// the new certificate registers itself.
	renewed, err := store.Renew(ctx, est, identity.RenewOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.PublishWith(ctx, transport.PublishOptions{Stream: identityStream, Priority: 255},
		transport.Reading{Time: time.Now(), Body: identity.EncodeCertificatesPEM(renewed.Chain...)}); err != nil {
		t.Fatal(err)
	}
	if err := dev.Reload(); err != nil {
		t.Fatal(err)
	}
	publish(`{"celsius":22.0}`)
	expectLine(t, lines, `sensor-0001/temperature boot=1 seq=2 {"celsius":22.0}`)
	if files, _ := filepath.Glob(filepath.Join(cloudDir, devicesDir, "sensor-0001-*.pem")); len(files) != 2 {
		t.Errorf("registry holds %v", files)
	}

	// Revoked: the cloud rereads the CRL file and refuses the device.
	if err := ca.Revoke(renewed.Certificate(), 1); err != nil {
		t.Fatal(err)
	}
	writeCRL(t, ca, crlFile)
	time.Sleep(1100 * time.Millisecond) // the CRL file is checked at most once a second
	publish(`{"celsius":23.0}`)
	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "certificate revoked") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "certificate revoked") {
		t.Error("the revoked device's record was not refused")
	}
	select {
	case l := <-lines:
		t.Errorf("printed after the revocation: %s", l)
	default:
	}
}

// enroll enrolls a device over EST with a registrar on 127.0.0.1.
func enroll(ctx context.Context, t *testing.T, ca *identity.CA, caDir, dir, device string) (*identity.Store, identity.ESTClient) {
	t.Helper()
	tokenKey, err := identity.ReadKeyFile(filepath.Join(caDir, identity.CATokenKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	used, err := identity.OpenUsedTokens(filepath.Join(t.TempDir(), "used-tokens.state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { used.Close() })
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, UsedTokens: used})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(reg)
	srv.TLS = reg.TLSConfig(tlsCert(t, ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueServer(pub, "127.0.0.1") }))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	token, err := identity.TokenIssuer{Key: tokenKey}.Issue(device)
	if err != nil {
		t.Fatal(err)
	}
	store, err := identity.OpenStore(dir, identity.StoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	est := identity.ESTClient{URL: srv.URL, Anchors: []*x509.Certificate{ca.Root()}}
	if _, err := store.Enroll(ctx, est, identity.EnrollRequest{DeviceID: device, Auth: identity.EnrollAuth{Token: token}}); err != nil {
		t.Fatal(err)
	}
	return store, identity.ESTClient{URL: srv.URL}
}

func writeCRL(t *testing.T, ca *identity.CA, path string) {
	t.Helper()
	der, err := ca.CRL()
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(path, der, 0o600); err != nil {
		t.Fatal(err)
	}
}

// expectLine waits for a printed line that ends with suffix.
func expectLine(t *testing.T, lines <-chan string, suffix string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case l := <-lines:
			if strings.HasSuffix(l, suffix) {
				return
			}
		case <-deadline:
			t.Fatalf("no line ending in %s", suffix)
		}
	}
}

// lineWriter sends each line written to it on lines.
func lineWriter(lines chan<- string) io.Writer {
	pr, pw := io.Pipe()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return pw
}

func tlsCert(t *testing.T, ca *identity.CA, issue func(crypto.PublicKey) (*x509.Certificate, error)) tls.Certificate {
	t.Helper()
	k, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	c, err := issue(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw, ca.Issuing().Raw}, PrivateKey: k}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
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
