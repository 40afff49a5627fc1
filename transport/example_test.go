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
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/wire"
)

// exampleFleet is a throwaway fleet for the examples, in dir: a fleet CA,
// an EST registrar on 127.0.0.1 that records every certificate it issues
// (the cloud's registry) and, once started, the embedded development
// broker. In production the CA's root key is offline, the registrar is
// `d2c cloud serve` and the broker is mosquitto (MosquittoConfig).
type exampleFleet struct {
	dir      string
	ca       *identity.CA
	roots    *x509.CertPool
	tokenKey crypto.Signer
	certs    *transport.MemoryCertificates // the registry: every device certificate issued
	broker   *devbroker.Broker
}

func newExampleFleet(dir string) *exampleFleet {
	ca, err := identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{Fleet: "Example Fleet"})
	if err != nil {
		log.Fatal(err)
	}
	tokenKey, err := identity.ReadKeyFile(filepath.Join(dir, "ca", identity.CATokenKeyFile))
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	return &exampleFleet{dir: dir, ca: ca, roots: roots, tokenKey: tokenKey, certs: &transport.MemoryCertificates{}}
}

// serverCert is a TLS certificate from the fleet CA for 127.0.0.1.
func (f *exampleFleet) serverCert() tls.Certificate {
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		log.Fatal(err)
	}
	cert, err := f.ca.IssueServer(key.Public(), "127.0.0.1")
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw, f.ca.Issuing().Raw}, PrivateKey: key}
}

// serviceCert is the client certificate of the cloud service name.
func (f *exampleFleet) serviceCert(name string) tls.Certificate {
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		log.Fatal(err)
	}
	cert, err := f.ca.IssueService(key.Public(), name)
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw, f.ca.Issuing().Raw}, PrivateKey: key}
}

// startBroker starts the embedded broker: mutual TLS 1.3 on 127.0.0.1, each
// device confined to its own topics, the "verifier" service reading all
// telemetry.
func (f *exampleFleet) startBroker(ctx context.Context) *devbroker.Broker {
	b, err := devbroker.Start(ctx, devbroker.Config{Certificate: f.serverCert(), ClientRoots: f.roots,
		Services: []broker.ServiceRights{{Name: "verifier", Read: []string{wire.AllUp}}}})
	if err != nil {
		log.Fatal(err)
	}
	f.broker = b
	return b
}

// device enrolls device id over EST with a one-time token and returns its
// identity store.
func (f *exampleFleet) device(id string) *identity.Store {
	used, err := identity.OpenUsedTokens(filepath.Join(f.dir, "used-tokens.state"), nil)
	if err != nil {
		log.Fatal(err)
	}
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: f.ca, TokenKeys: []crypto.PublicKey{f.tokenKey.Public()}, UsedTokens: used})
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(reg)
	srv.TLS = reg.TLSConfig(f.serverCert())
	srv.StartTLS()
	defer srv.Close()
	store, err := identity.OpenStore(filepath.Join(f.dir, "device-"+id), identity.StoreConfig{})
	if err != nil {
		log.Fatal(err)
	}
	token, err := identity.TokenIssuer{Key: f.tokenKey}.Issue(id)
	if err != nil {
		log.Fatal(err)
	}
	fp := sha256.Sum256(f.ca.Root().Raw)
	est := identity.ESTClient{URL: srv.URL, BootstrapFingerprint: fp[:]}
	ident, err := store.Enroll(context.Background(), est, identity.EnrollRequest{DeviceID: id, Auth: identity.EnrollAuth{Token: token}})
	if err != nil {
		log.Fatal(err)
	}
	f.certs.Add(ident.Chain...)
	return store
}

// exampleDir is a temporary directory for one example.
func exampleDir() (string, func()) {
	dir, err := os.MkdirTemp("", "d2c-transport-example")
	if err != nil {
		log.Fatal(err)
	}
	return dir, func() { os.RemoveAll(dir) }
}

// Dial starts a device's connection to the broker: mutual TLS 1.3 with the
// device certificate from its identity store, the broker verified against
// the fleet's anchors in the same store. Dial returns once the device's
// state (outbox, boot counter) is open; AwaitConnection waits for the
// broker, and says why when it is not reached.
func ExampleDial() {
	ctx := context.Background()
	dir, cleanup := exampleDir()
	defer cleanup()
	fleet := newExampleFleet(dir)
	broker := fleet.startBroker(ctx)
	defer broker.Close()
	store := fleet.device("sensor-1")

	dev, err := transport.Dial(ctx, transport.ClientConfig{
		Broker: broker.Addr(), // host:port; the broker's certificate must name the host (or ServerName)
		Store:  store,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close(ctx)
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := dev.AwaitConnection(actx); err != nil {
		log.Fatal(err) // for example "transport: not connected to …: context deadline exceeded: last failed attempt: …"
	}
	fmt.Println("sensor-1 connected")

	// A broker whose certificate does not name the address dialled is
	// never connected to, and the error says so.
	wrong, err := transport.Dial(ctx, transport.ClientConfig{Broker: broker.Addr(), ServerName: "broker.example.com",
		Store: store, StateDir: filepath.Join(dir, "other-state")})
	if err != nil {
		log.Fatal(err)
	}
	defer wrong.Close(ctx)
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	err = wrong.AwaitConnection(wctx)
	var hostErr x509.HostnameError
	fmt.Println("deadline:", errors.Is(err, context.DeadlineExceeded), "because:", errors.As(err, &hostErr))
	// Output:
	// sensor-1 connected
	// deadline: true because: true
}

// Publish seals readings into one signed envelope (one signature for the
// batch) and returns once it is stored durably in the device's outbox; the
// client delivers it in the background and keeps it until the broker
// acknowledges it. Flush waits for that.
func ExampleClient_Publish() {
	ctx := context.Background()
	dir, cleanup := exampleDir()
	defer cleanup()
	fleet := newExampleFleet(dir)
	broker := fleet.startBroker(ctx)
	defer broker.Close()

	dev, err := transport.Dial(ctx, transport.ClientConfig{Broker: broker.Addr(), Store: fleet.device("sensor-1")})
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close(ctx)

	now := time.Now()
	err = dev.Publish(ctx, "temperature",
		transport.Reading{Time: now.Add(-time.Minute), Body: []byte(`{"c":21.4}`)},
		transport.Reading{Time: now, Body: []byte(`{"c":21.5}`)})
	if err != nil {
		log.Fatal(err) // nothing stored: ErrOutboxFull, ErrNoConsent, an invalid stream name
	}
	fmt.Println("stored:", dev.Stats().Stored)

	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := dev.Flush(fctx); err != nil {
		log.Fatal(err) // for example "transport: flush: 1 messages not yet acknowledged by the broker: …"
	}
	st := dev.Stats()
	fmt.Println("acknowledged by the broker:", st.Acked, "still queued:", st.QueueDepth)
	// Output:
	// stored: 1
	// acknowledged by the broker: 1 still queued: 0
}

// NewVerifier is the cloud's check of every envelope: the signature
// against the device's registered certificate (chained to the fleet root,
// not revoked), the device named by the signer, the record and the topic
// alike, and freshness: a replay is refused, a QoS 1 redelivery dropped as
// a duplicate. No broker is needed to use it; DialCloud runs it on every
// message received.
func ExampleNewVerifier() {
	ctx := context.Background()
	dir, cleanup := exampleDir()
	defer cleanup()
	fleet := newExampleFleet(dir)

	// A device's key and certificate (in a fleet: enrollment, and the
	// registrar recording the certificate).
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		log.Fatal(err)
	}
	der, err := identity.NewCSR(key, "meter-9")
	if err != nil {
		log.Fatal(err)
	}
	csr, err := identity.ParseCSR(der)
	if err != nil {
		log.Fatal(err)
	}
	cert, err := fleet.ca.IssueDevice(csr, "meter-9")
	if err != nil {
		log.Fatal(err)
	}
	fleet.certs.Add(cert, fleet.ca.Issuing())

	cloudKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader) // for encrypted envelopes
	if err != nil {
		log.Fatal(err)
	}
	v, err := transport.NewVerifier(transport.VerifierConfig{
		Certificates:  fleet.certs,
		Policy:        identity.DeviceCertPolicy{Roots: fleet.roots, Revocations: fleet.ca},
		DecryptionKey: cloudKey,
	})
	if err != nil {
		log.Fatal(err)
	}

	// What the device's Client does on Publish.
	sealer, err := transport.NewSealer("meter-9", key, nil, nil)
	if err != nil {
		log.Fatal(err)
	}
	sealed, err := sealer.Seal(transport.Record{Stream: "power", Boot: 3, Seq: 0,
		Readings: []transport.Reading{{Time: time.Now(), Body: []byte(`{"w":412}`)}}})
	if err != nil {
		log.Fatal(err)
	}
	topic := wire.TelemetryTopic("meter-9", "power")

	rec, err := v.Verify(ctx, topic, sealed.Envelope)
	fmt.Println(rec.Device, rec.Stream, rec.Boot, rec.Seq, string(rec.Readings[0].Body), err)
	_, err = v.Verify(ctx, topic, sealed.Envelope) // the broker delivers it again
	fmt.Println("again:", errors.Is(err, wire.ErrDuplicate))

	// Someone without meter-9's key claims to be meter-9.
	forgerKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		log.Fatal(err)
	}
	forger, err := transport.NewSealer("meter-9", forgerKey, nil, nil)
	if err != nil {
		log.Fatal(err)
	}
	forged, err := forger.Seal(transport.Record{Stream: "power", Boot: 3, Seq: 1,
		Readings: []transport.Reading{{Time: time.Now(), Body: []byte(`{"w":0}`)}}})
	if err != nil {
		log.Fatal(err)
	}
	_, err = v.Verify(ctx, topic, forged.Envelope)
	fmt.Println("forged:", errors.Is(err, wire.ErrBadSignature))
	// Output:
	// meter-9 power 3 0 {"w":412} <nil>
	// again: true
	// forged: true
}

// DialCloud connects a cloud service to the broker with its service
// certificate and subscribes to the fleet's telemetry; every message is
// verified (NewVerifier) before OnRecord sees it, and acknowledged to the
// broker only after that.
func ExampleDialCloud() {
	ctx := context.Background()
	dir, cleanup := exampleDir()
	defer cleanup()
	fleet := newExampleFleet(dir)
	broker := fleet.startBroker(ctx)
	defer broker.Close()

	v, err := transport.NewVerifier(transport.VerifierConfig{Certificates: fleet.certs,
		Policy: identity.DeviceCertPolicy{Roots: fleet.roots, Revocations: fleet.ca}})
	if err != nil {
		log.Fatal(err)
	}
	records := make(chan transport.Record, 1)
	cloud, err := transport.DialCloud(ctx, transport.CloudConfig{
		Broker:      broker.Addr(),
		Certificate: fleet.serviceCert("verifier"), // CN svc:verifier, allowed to read d2c/v1/dev/+/up/#
		Roots:       fleet.roots,
		Verifier:    v,
		OnRecord:    func(_ context.Context, r transport.Record) { records <- r },
		OnRefused:   func(topic string, err error) { log.Print("refused on ", topic, ": ", err) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cloud.Close(ctx)
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := cloud.AwaitConnection(actx); err != nil { // connected and subscribed
		log.Fatal(err)
	}

	dev, err := transport.Dial(ctx, transport.ClientConfig{Broker: broker.Addr(), Store: fleet.device("sensor-1")})
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close(ctx)
	if err := dev.Publish(ctx, "temperature", transport.Reading{Time: time.Now(), Body: []byte(`{"c":21.5}`)}); err != nil {
		log.Fatal(err)
	}
	select {
	case r := <-records:
		fmt.Printf("verified: %s %s %s\n", r.Device, r.Stream, r.Readings[0].Body)
	case <-actx.Done():
		log.Fatal("no record")
	}
	// Output:
	// verified: sensor-1 temperature {"c":21.5}
}
