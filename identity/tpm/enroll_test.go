// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package tpm

import (
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
)

// fleet is a minimal cloud half built from identity's public API: a CA, a
// token issuer and a registrar served over HTTPS on 127.0.0.1.
type fleet struct {
	t      testing.TB
	ca     *identity.CA
	issuer identity.TokenIssuer
	server *httptest.Server
}

func newFleet(t testing.TB) *fleet {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{Fleet: "tpm test fleet"})
	if err != nil {
		t.Fatal(err)
	}
	tokenKey, err := identity.ReadKeyFile(filepath.Join(dir, "ca", identity.CATokenKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	used, err := identity.OpenUsedTokens(filepath.Join(dir, "used-tokens.state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = used.Close() })
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, UsedTokens: used})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(reg)
	srv.TLS = reg.TLSConfig(serverCert(t, ca))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return &fleet{t: t, ca: ca, issuer: identity.TokenIssuer{Key: tokenKey}, server: srv}
}

func serverCert(t testing.TB, ca *identity.CA) tls.Certificate {
	t.Helper()
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServer(key.Public(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw, ca.Issuing().Raw}, PrivateKey: key}
}

func (f *fleet) client() identity.ESTClient {
	sum := sha256.Sum256(f.ca.Root().Raw)
	return identity.ESTClient{URL: f.server.URL, BootstrapFingerprint: sum[:]}
}

func (f *fleet) token(id string) string {
	f.t.Helper()
	tok, err := f.issuer.Issue(id)
	if err != nil {
		f.t.Fatal(err)
	}
	return tok
}

// handshake runs a TLS 1.3 handshake with id's certificate and key as
// client certificate against a listener on 127.0.0.1 that requires and
// verifies client certificates, and returns the client CN the server saw.
func (f *fleet) handshake(id *identity.Identity) (string, error) {
	f.t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Root())
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverCert(f.t, f.ca)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		f.t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		cn  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		_, err = tc.Write([]byte("ok"))
		done <- result{cn: tc.ConnectionState().PeerCertificates[0].Subject.CommonName, err: err}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		RootCAs:      roots,
		ServerName:   "127.0.0.1",
		Certificates: []tls.Certificate{id.TLSCertificate()},
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		<-done
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if c.ConnectionState().Version != tls.VersionTLS13 {
		f.t.Fatalf("TLS version %x", c.ConnectionState().Version)
	}
	// In TLS 1.3 the server checks the client's certificate after the
	// client's handshake is done: wait for its answer.
	b, err := io.ReadAll(io.LimitReader(c, 2))
	r := <-done
	if r.err != nil {
		return "", r.err
	}
	if err != nil || string(b) != "ok" {
		return "", errors.Join(errors.New("no answer from the server"), err)
	}
	return r.cn, nil
}

func keyFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestEnrollRenewTLS: a device store whose keys are in the TPM enrolls over
// EST, authenticates a TLS 1.3 handshake with the TPM key, reopens from the
// TPM, and renews, which destroys the old key file.
func TestEnrollRenewTLS(t *testing.T) {
	f := newFleet(t)
	ks := openTest(t, testpeer.SWTPM(t))
	dir := filepath.Join(t.TempDir(), "device")
	store, err := identity.OpenStore(dir, identity.StoreConfig{Keys: ks, KeyLabelPrefix: "d2c-device"})
	if err != nil {
		t.Fatal(err)
	}
	id, err := store.Enroll(t.Context(), f.client(), identity.EnrollRequest{DeviceID: "tpm-1", Auth: identity.EnrollAuth{Token: f.token("tpm-1")}})
	if err != nil {
		t.Fatal(err)
	}
	if got := keyFiles(t, ks.dir); !slices.Equal(got, []string{"d2c-device-00000001.key"}) {
		t.Fatalf("key directory: %v", got)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "key-*.pem")); len(m) != 0 {
		t.Fatalf("software key files in the store: %v", m)
	}
	if cn, err := f.handshake(id); err != nil || cn != "tpm-1" {
		t.Fatalf("TLS handshake with the TPM key: %q, %v", cn, err)
	}

	// A new process: the store reopens its identity from the TPM.
	store2, err := identity.OpenStore(dir, identity.StoreConfig{Keys: ks, KeyLabelPrefix: "d2c-device"})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := store2.Current()
	if err != nil {
		t.Fatal(err)
	}
	if cn, err := f.handshake(cur); err != nil || cn != "tpm-1" {
		t.Fatalf("TLS handshake after reopening: %q, %v", cn, err)
	}

	id2, err := store2.Renew(t.Context(), f.client(), identity.RenewOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := keyFiles(t, ks.dir); !slices.Equal(got, []string{"d2c-device-00000002.key"}) {
		t.Fatalf("key directory after renewal: %v", got)
	}
	if _, err := sign(cur.Key); err == nil {
		t.Fatal("the old key still signs after renewal")
	}
	if cn, err := f.handshake(id2); err != nil || cn != "tpm-1" {
		t.Fatalf("TLS handshake with the renewed key: %q, %v", cn, err)
	}
}

// TestTPMKilled: the TPM stops answering in the middle of a run of
// signatures. Signing and opening fail (no hang), the store reports
// ErrKeystore, renewal fails, and no software key appears anywhere.
func TestTPMKilled(t *testing.T) {
	f := newFleet(t)
	sw := testpeer.SWTPM(t)
	ks := openTest(t, sw)
	dir := filepath.Join(t.TempDir(), "device")
	store, err := identity.OpenStore(dir, identity.StoreConfig{Keys: ks, KeyLabelPrefix: "d2c-device"})
	if err != nil {
		t.Fatal(err)
	}
	id, err := store.Enroll(t.Context(), f.client(), identity.EnrollRequest{DeviceID: "tpm-2", Auth: identity.EnrollAuth{Token: f.token("tpm-2")}})
	if err != nil {
		t.Fatal(err)
	}
	before := keyFiles(t, dir)

	var signed atomic.Int64
	failed := make(chan error, 1)
	go func() {
		for {
			if _, err := sign(id.Key); err != nil {
				failed <- err
				return
			}
			signed.Add(1)
		}
	}()
	for signed.Load() < 5 {
		time.Sleep(time.Millisecond)
	}
	sw.Kill()
	select {
	case err := <-failed:
		t.Logf("Sign after %d signatures: %v", signed.Load(), err)
	case <-time.After(30 * time.Second):
		t.Fatal("Sign did not return after the TPM was killed")
	}
	if _, err := sign(id.Key); err == nil {
		t.Fatal("Sign succeeded with the TPM gone")
	}
	if _, err := ks.Open(t.Context(), "d2c-device-00000001"); err == nil {
		t.Fatal("Open succeeded with the TPM gone")
	}
	if _, err := store.Current(); !errors.Is(err, identity.ErrKeystore) {
		t.Fatalf("Current with the TPM gone: %v, want ErrKeystore", err)
	}
	if _, err := store.Renew(t.Context(), f.client(), identity.RenewOptions{}); !errors.Is(err, identity.ErrKeystore) {
		t.Fatalf("Renew with the TPM gone: %v, want ErrKeystore", err)
	}
	if _, err := f.handshake(id); err == nil {
		t.Fatal("TLS handshake succeeded with the TPM gone")
	}
	if after := keyFiles(t, dir); !slices.Equal(before, after) {
		t.Fatalf("store directory changed: %v, then %v", before, after)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "key-*.pem")); len(m) != 0 {
		t.Fatalf("software key files in the store: %v", m)
	}
	if got := keyFiles(t, ks.dir); !slices.Equal(got, []string{"d2c-device-00000001.key"}) {
		t.Fatalf("key directory: %v", got)
	}
}
