// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/wire"
)

// fleet is the cloud half, on 127.0.0.1: a CA, an EST registrar over
// HTTPS, an embedded MQTT broker with mutual TLS, and a verifier that
// receives the device's telemetry.
type fleet struct {
	ca       *identity.CA
	roots    *x509.CertPool
	issuer   identity.TokenIssuer
	est      identity.ESTClient
	broker   *devbroker.Broker
	registry *registry
	records  chan transport.Record
	refused  chan error
	closers  []func()
}

func startFleet(ctx context.Context, dir string) (_ *fleet, err error) {
	f := &fleet{registry: &registry{}, records: make(chan transport.Record, 16), refused: make(chan error, 16)}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	caDir := filepath.Join(dir, "cloud", "ca")
	if f.ca, err = identity.InitCA(caDir, identity.CAConfig{Fleet: "Hardware Keys Fleet"}); err != nil {
		return nil, err
	}
	f.roots = x509.NewCertPool()
	f.roots.AddCert(f.ca.Root())
	tokenKey, err := identity.ReadKeyFile(filepath.Join(caDir, identity.CATokenKeyFile))
	if err != nil {
		return nil, err
	}
	f.issuer = identity.TokenIssuer{Key: tokenKey, TTL: 15 * time.Minute}
	used, err := identity.OpenUsedTokens(filepath.Join(dir, "cloud", "used-tokens.state"), nil)
	if err != nil {
		return nil, err
	}
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: f.ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, UsedTokens: used})
	if err != nil {
		return nil, err
	}
	srvCert, err := f.serverCert()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: reg, ReadHeaderTimeout: 10 * time.Second, TLSConfig: reg.TLSConfig(srvCert),
		ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	f.closers = append(f.closers, func() { _ = srv.Close() })
	fp := sha256.Sum256(f.ca.Root().Raw)
	f.est = identity.ESTClient{URL: "https://" + ln.Addr().String(), BootstrapFingerprint: fp[:]}

	brokerCert, err := f.serverCert()
	if err != nil {
		return nil, err
	}
	f.broker, err = devbroker.Start(ctx, devbroker.Config{Certificate: brokerCert, ClientRoots: f.roots, Revocation: f.ca,
		Services: []broker.ServiceRights{{Name: "verifier", Read: []string{wire.AllUp}}}})
	if err != nil {
		return nil, err
	}
	f.closers = append(f.closers, func() { _ = f.broker.Close() })

	verifier, err := transport.NewVerifier(transport.VerifierConfig{Certificates: f.registry,
		Policy: identity.DeviceCertPolicy{Roots: f.roots, Revocations: f.ca}})
	if err != nil {
		return nil, err
	}
	svcKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return nil, err
	}
	svc, err := f.ca.IssueService(svcKey.Public(), "verifier")
	if err != nil {
		return nil, err
	}
	cloud, err := transport.DialCloud(ctx, transport.CloudConfig{Broker: f.broker.Addr(), Roots: f.roots, Verifier: verifier,
		Certificate: tls.Certificate{Certificate: [][]byte{svc.Raw, f.ca.Issuing().Raw}, PrivateKey: svcKey},
		OnRecord:    func(_ context.Context, r transport.Record) { f.records <- r },
		OnRefused: func(topic string, err error) {
			select {
			case f.refused <- err:
			default:
			}
		}})
	if err != nil {
		return nil, err
	}
	f.closers = append(f.closers, func() { _ = cloud.Close(context.Background()) })
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := cloud.AwaitConnection(wctx); err != nil {
		return nil, err
	}
	return f, nil
}

// serverCert issues a TLS server certificate for 127.0.0.1.
func (f *fleet) serverCert() (tls.Certificate, error) {
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := f.ca.IssueServer(key.Public(), "127.0.0.1")
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw, f.ca.Issuing().Raw}, PrivateKey: key}, nil
}

// receive waits for the cloud to verify one record.
func (f *fleet) receive(ctx context.Context) (transport.Record, error) {
	select {
	case r := <-f.records:
		return r, nil
	case err := <-f.refused:
		return transport.Record{}, err
	case <-time.After(10 * time.Second):
		return transport.Record{}, errors.New("the cloud received no telemetry within 10 s")
	case <-ctx.Done():
		return transport.Record{}, ctx.Err()
	}
}

func (f *fleet) close() {
	for i := len(f.closers) - 1; i >= 0; i-- {
		f.closers[i]()
	}
}

// registry is the cloud's record of each device's current certificate,
// as the registrar would keep it in a database. It gives the verifier the
// current certificate only, so that telemetry after a renewal verifies
// against the new key and no other.
type registry struct {
	mu sync.Mutex
	m  map[string][]*x509.Certificate
}

func (r *registry) set(chain []*x509.Certificate) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string][]*x509.Certificate{}
	}
	r.m[chain[0].Subject.CommonName] = chain
}

// DeviceCertificates implements transport.Certificates.
func (r *registry) DeviceCertificates(_ context.Context, device string) ([][]*x509.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.m[device]
	if !ok {
		return nil, wire.ErrUnknownDevice
	}
	return [][]*x509.Certificate{c}, nil
}
