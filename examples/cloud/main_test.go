// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/wire"
)

// TestCloud runs the program with every role against an embedded broker: a
// device enrolls through its registrar and publishes encrypted readings,
// which are printed; it renews, and its records signed with the new key
// are printed too (the registrar recorded the new certificate in the
// store); the CRL file is written; cancelling stops the program cleanly.
func TestCloud(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	ca, err := identity.InitCA(caDir, identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	brokerKey := generateKey(t)
	brokerCert, err := ca.IssueServer(brokerKey.Public(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	broker, err := devbroker.Start(ctx, devbroker.Config{ClientRoots: roots,
		Certificate: tls.Certificate{Certificate: [][]byte{brokerCert.Raw, ca.Issuing().Raw}, PrivateKey: brokerKey},
		Services:    []broker.ServiceRights{{Name: "verifier", Read: []string{wire.AllUp}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()

	// The files the operator gives the program: a service certificate and
	// the cloud key.
	svcKey := generateKey(t)
	svcCert, err := ca.IssueService(svcKey.Public(), "verifier")
	if err != nil {
		t.Fatal(err)
	}
	cloudKey := generateKey(t)
	file := func(name string) string { return filepath.Join(dir, name) }
	for name, k := range map[string]crypto.Signer{"verifier.key": svcKey, "cloud.key": cloudKey} {
		if err := identity.WriteKeyFile(file(name), k); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(file("verifier.crt"), identity.EncodeCertificatesPEM(svcCert, ca.Issuing()), 0o644); err != nil {
		t.Fatal(err)
	}

	lines := make(chan string, 64)
	stdout := lineWriter(lines)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(rctx, []string{"--ca", caDir, "--db", "sqlite:" + file("fleet.db"), "--registrar", "127.0.0.1:0",
			"--broker", broker.Addr(), "--cert", file("verifier.crt"), "--key", file("verifier.key"), "--cloud-key", file("cloud.key"),
			"--crl-out", file("crl.pem"), "--ops", "127.0.0.1:0"}, stdout, io.Discard)
		stdout.Close()
	}()
	estURL := strings.TrimPrefix(expectLine(t, lines, "registrar https://"), "registrar ")

	// A device enrolls through the program's registrar and publishes.
	tokenKey, err := identity.ReadKeyFile(filepath.Join(caDir, identity.CATokenKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	token, err := identity.TokenIssuer{Key: tokenKey}.Issue("sensor-0001")
	if err != nil {
		t.Fatal(err)
	}
	devStore, err := identity.OpenStore(file("device"), identity.StoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	fp := sha256.Sum256(ca.Root().Raw)
	est := identity.ESTClient{URL: estURL, BootstrapFingerprint: fp[:]}
	if _, err := devStore.Enroll(ctx, est, identity.EnrollRequest{DeviceID: "sensor-0001", Auth: identity.EnrollAuth{Token: token}}); err != nil {
		t.Fatal(err)
	}
	dev, err := transport.Dial(ctx, transport.ClientConfig{Broker: broker.Addr(), Store: devStore,
		Encryption: &transport.Encryption{CloudKey: cloudKey.Public()}})
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
	publish(`21.5`)
	expectLine(t, lines, `sensor-0001/temperature boot=1 seq=0 "21.5"`)

	// A renewal: the store knows the new certificate, nothing to register.
	if _, err := devStore.Renew(ctx, est, identity.RenewOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := dev.Reload(); err != nil {
		t.Fatal(err)
	}
	publish(`22.0`)
	expectLine(t, lines, `sensor-0001/temperature boot=1 seq=1 "22.0"`)

	b, err := os.ReadFile(file("crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.NewCRLCache(ca.Issuing(), nil).Update(b); err != nil {
		t.Errorf("the CRL written: %v", err)
	}

	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Error("the program did not stop")
	}
}

// TestCloudRefusesBadFlags: the program says what is missing before
// starting anything.
func TestCloudRefusesBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--ca", t.TempDir(), "--broker", "127.0.0.1:8883"},
	} {
		if err := run(t.Context(), args, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--ca is required") {
			t.Errorf("%q: %v", args, err)
		}
	}
}

func generateKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

// expectLine waits for a printed line that contains want and returns it.
func expectLine(t *testing.T, lines <-chan string, want string) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the program ended before printing %s", want)
			}
			if strings.Contains(l, want) {
				return l
			}
		case <-deadline:
			t.Fatalf("no line with %s", want)
		}
	}
}

// lineWriter sends each line written to it on lines, and closes lines
// when it is closed.
func lineWriter(lines chan<- string) io.WriteCloser {
	pr, pw := io.Pipe()
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return pw
}
