// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock shared by the CA, registrar and devices.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

// newFakeClock starts at the present, so that certificates made on the fake
// clock are also valid for real peers (openssl, curl, mosquitto) that read
// the wall clock; tests move it from there.
func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Now().UTC().Truncate(time.Second)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fleet is a CA, a token issuer and a registrar served over real HTTPS on
// 127.0.0.1, all on one fake clock.
type fleet struct {
	t          testing.TB
	clock      *fakeClock
	caDir      string
	ca         *CA
	issuer     TokenIssuer
	used       *FileUsedTokens
	registrar  *Registrar
	server     *httptest.Server
	regConfig  RegistrarConfig
	serverCert tls.Certificate
}

func newFleet(t testing.TB, mod func(*RegistrarConfig)) *fleet {
	t.Helper()
	clock := newFakeClock()
	dir := t.TempDir()
	ca, err := InitCA(filepath.Join(dir, "ca"), CAConfig{Fleet: "test fleet", Time: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	tokenKey, err := ReadKeyFile(filepath.Join(dir, "ca", CATokenKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{t: t, clock: clock, caDir: filepath.Join(dir, "ca"), ca: ca,
		issuer: TokenIssuer{Key: tokenKey, Time: clock.Now}}
	f.used, err = OpenUsedTokens(filepath.Join(dir, "used-tokens.state"), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	f.regConfig = RegistrarConfig{CA: ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, UsedTokens: f.used}
	if mod != nil {
		mod(&f.regConfig)
	}
	f.registrar, err = NewRegistrar(f.regConfig)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := GenerateKey(ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.IssueServer(srvKey.Public(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	f.serverCert = tls.Certificate{Certificate: [][]byte{srvCert.Raw, ca.Issuing().Raw}, PrivateKey: srvKey}
	f.server = httptest.NewUnstartedServer(f.registrar)
	f.server.TLS = f.registrar.TLSConfig(f.serverCert)
	f.server.StartTLS()
	t.Cleanup(f.server.Close)
	return f
}

// restartRegistrar replaces the registrar with a new one reading the same
// state from disk, as after a process restart.
func (f *fleet) restartRegistrar() {
	f.t.Helper()
	ca, err := LoadCA(f.caDir, CAConfig{Fleet: "test fleet", Time: f.clock.Now})
	if err != nil {
		f.t.Fatal(err)
	}
	used, err := OpenUsedTokens(f.used.path, f.clock.Now)
	if err != nil {
		f.t.Fatal(err)
	}
	cfg := f.regConfig
	cfg.CA, cfg.UsedTokens = ca, used
	reg, err := NewRegistrar(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.ca, f.used, f.registrar = ca, used, reg
	f.server.Config.Handler = reg
}

func (f *fleet) fingerprint() []byte {
	sum := sha256.Sum256(f.ca.Root().Raw)
	return sum[:]
}

// client returns an EST client that bootstraps from the root fingerprint.
func (f *fleet) client() ESTClient {
	return ESTClient{URL: f.server.URL, BootstrapFingerprint: f.fingerprint(), Time: f.clock.Now}
}

func (f *fleet) token(id string) string {
	f.t.Helper()
	tok, err := f.issuer.Issue(id)
	if err != nil {
		f.t.Fatal(err)
	}
	return tok
}

// device opens a device store in a fresh directory on the fleet clock.
func (f *fleet) device() *Store {
	f.t.Helper()
	s, err := OpenStore(filepath.Join(f.t.TempDir(), "device"), StoreConfig{Time: f.clock.Now})
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// enroll enrolls a new device with a fresh token.
func (f *fleet) enroll(id string) (*Store, *Identity) {
	f.t.Helper()
	s := f.device()
	ident, err := s.Enroll(f.t.Context(), f.client(), EnrollRequest{DeviceID: id, Auth: EnrollAuth{Token: f.token(id)}})
	if err != nil {
		f.t.Fatalf("enroll %s: %v", id, err)
	}
	return s, ident
}
