// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package cloud_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/cloud"
	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
)

// fleet is a fleet CA, the embedded broker with mutual TLS and an SQLite
// store, ready for a service.
type fleet struct {
	t          *testing.T
	dir        string
	ca         *identity.CA
	tokenKey   crypto.Signer
	roots      *x509.CertPool
	serverCert tls.Certificate
	broker     *devbroker.Broker
	store      *store.Store
}

// newFleet starts the broker, giving the services the rights listed.
func newFleet(t *testing.T, services ...broker.ServiceRights) *fleet {
	f := newFleetNoBroker(t)
	var err error
	if f.broker, err = devbroker.Start(t.Context(), devbroker.Config{Certificate: f.serverCert, ClientRoots: f.roots, Services: services}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.broker.Close() })
	return f
}

// newFleetNoBroker is a fleet whose test starts a broker of its own
// (broker is nil).
func newFleetNoBroker(t *testing.T) *fleet {
	f := &fleet{t: t, dir: t.TempDir()}
	var err error
	if f.ca, err = identity.InitCA(filepath.Join(f.dir, "ca"), identity.CAConfig{Fleet: "service test"}); err != nil {
		t.Fatal(err)
	}
	if f.tokenKey, err = identity.ReadKeyFile(filepath.Join(f.dir, "ca", identity.CATokenKeyFile)); err != nil {
		t.Fatal(err)
	}
	f.roots = x509.NewCertPool()
	f.roots.AddCert(f.ca.Root())
	f.serverCert = testpki.Server(t, f.ca, "127.0.0.1")
	if f.store, err = store.Open(t.Context(), store.Config{URL: "sqlite:" + filepath.Join(f.dir, "fleet.db")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.store.Close() })
	return f
}

// registrar is a registrar role on a free port.
func (f *fleet) registrar() *cloud.RegistrarRole {
	return &cloud.RegistrarRole{Listen: "127.0.0.1:0", Certificate: f.serverCert, TokenKeys: []crypto.PublicKey{f.tokenKey.Public()}}
}

// run runs cfg (Store and CA filled in, Ops on a free port) until ctx
// ends, and returns its addresses once ready, and the channel Run's
// result arrives on.
func (f *fleet) run(ctx context.Context, cfg cloud.Config) (cloud.Addrs, <-chan error) {
	f.t.Helper()
	ready := make(chan cloud.Addrs, 1)
	ran := make(chan error, 1)
	cfg.Store, cfg.CA, cfg.Ops = f.store, f.ca, "127.0.0.1:0"
	cfg.Ready = func(a cloud.Addrs) { ready <- a }
	go func() { ran <- cloud.Run(ctx, cfg) }()
	select {
	case a := <-ready:
		return a, ran
	case err := <-ran:
		f.t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		f.t.Fatal("the service did not become ready")
	}
	return cloud.Addrs{}, nil
}

// enroll enrolls device through the registrar at addr.
func (f *fleet) enroll(ctx context.Context, addr, device string) (*identity.Store, *identity.Identity) {
	f.t.Helper()
	s, err := identity.OpenStore(filepath.Join(f.dir, "dev-"+device), identity.StoreConfig{})
	if err != nil {
		f.t.Fatal(err)
	}
	tok, err := identity.TokenIssuer{Key: f.tokenKey}.Issue(device)
	if err != nil {
		f.t.Fatal(err)
	}
	fp := sha256.Sum256(f.ca.Root().Raw)
	est := identity.ESTClient{URL: "https://" + addr, BootstrapFingerprint: fp[:]}
	id, err := s.Enroll(ctx, est, identity.EnrollRequest{DeviceID: device, Auth: identity.EnrollAuth{Token: tok}})
	if err != nil {
		f.t.Fatal(err)
	}
	return s, id
}
