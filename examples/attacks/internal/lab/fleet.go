// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package lab

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
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/wire"
)

// The cloud services the broker knows, and their rights.
var services = []broker.ServiceRights{
	// The telemetry verifier reads what devices send.
	{Name: "verifier", Read: []string{wire.AllUp}},
	// The command sender writes commands.
	{Name: "commander", Write: []string{wire.TopicPrefix + "+/down/cmd"}},
	// The insider stands for whoever controls the broker (a compromised
	// broker, a cloud operator's stolen admin account): it reads and
	// writes every d2c topic. d2c is designed not to trust the broker.
	{Name: "insider", Read: []string{wire.TopicPrefix + "#"}, Write: []string{wire.TopicPrefix + "#"}},
	// The lab's own probe checks that the verifier listens.
	{Name: "lab-probe", Write: []string{probeTopic}},
}

// Fleet is a d2c fleet on 127.0.0.1: CA, registrar, broker and the keys of
// the cloud.
type Fleet struct {
	// Dir is the temporary directory holding all state; Close removes it.
	Dir string
	// CA is the fleet CA; Roots holds its root.
	CA    *identity.CA
	Roots *x509.CertPool
	// Broker is the embedded MQTT broker (mutual TLS 1.3, d2c ACL).
	Broker *devbroker.Broker
	// CommandKey signs commands; devices trust its public half.
	CommandKey crypto.Signer
	// CloudKey is the cloud's key that telemetry is encrypted to.
	CloudKey *ecdsa.PrivateKey
	// Certs are the device certificates the cloud registered (the
	// registrar's database in a real fleet): every enrolled device's.
	Certs *transport.MemoryCertificates
	// Tokens counts the enrollment tokens the registrar recorded as used.
	Tokens *TokenLedger

	fingerprint []byte
	tokenKey    crypto.Signer
	regCert     tls.Certificate

	mu           sync.Mutex
	registrarURL string
	registrar    *http.Server
	used         *identity.FileUsedTokens
	closers      []func()
}

// NewFleet creates a fleet in a new temporary directory and starts its
// registrar and broker. Close stops everything and removes the directory.
func NewFleet(ctx context.Context) (f *Fleet, err error) {
	dir, err := os.MkdirTemp("", "d2c-attack-lab-")
	if err != nil {
		return nil, err
	}
	f = &Fleet{Dir: dir, Certs: &transport.MemoryCertificates{}, Tokens: &TokenLedger{}}
	f.closers = append(f.closers, func() { os.RemoveAll(dir) })
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	caDir := filepath.Join(dir, "cloud", "ca")
	if f.CA, err = identity.InitCA(caDir, identity.CAConfig{Fleet: "Attack Lab"}); err != nil {
		return nil, err
	}
	f.Roots = x509.NewCertPool()
	f.Roots.AddCert(f.CA.Root())
	fp := sha256.Sum256(f.CA.Root().Raw)
	f.fingerprint = fp[:]
	if f.tokenKey, err = identity.ReadKeyFile(filepath.Join(caDir, identity.CATokenKeyFile)); err != nil {
		return nil, err
	}
	if f.regCert, err = f.issue(func(pub crypto.PublicKey) (*x509.Certificate, error) { return f.CA.IssueServer(pub, "127.0.0.1") }); err != nil {
		return nil, err
	}
	if err := f.StartRegistrar(); err != nil {
		return nil, err
	}
	f.closers = append(f.closers, f.stopRegistrar)

	brokerCert, err := f.issue(func(pub crypto.PublicKey) (*x509.Certificate, error) { return f.CA.IssueServer(pub, "127.0.0.1") })
	if err != nil {
		return nil, err
	}
	if f.Broker, err = devbroker.Start(ctx, devbroker.Config{Certificate: brokerCert, ClientRoots: f.Roots,
		Services: services, Revocation: f.CA}); err != nil {
		return nil, err
	}
	f.closers = append(f.closers, func() { f.Broker.Close() })

	if f.CommandKey, err = identity.GenerateKey(identity.ECDSAP256); err != nil {
		return nil, err
	}
	if f.CloudKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	return f, nil
}

// Close stops the fleet's servers and clients and removes its directory.
func (f *Fleet) Close() {
	f.mu.Lock()
	closers := f.closers
	f.closers = nil
	f.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
}

func (f *Fleet) onClose(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closers = append(f.closers, fn)
}

// issue certifies a fresh key with issue and returns it as a TLS
// certificate with the issuing CA.
func (f *Fleet) issue(issue func(crypto.PublicKey) (*x509.Certificate, error)) (tls.Certificate, error) {
	k, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	c, err := issue(k.Public())
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw, f.CA.Issuing().Raw}, PrivateKey: k}, nil
}

// ServiceCertificate issues the client certificate of cloud service name
// (CN "svc:<name>").
func (f *Fleet) ServiceCertificate(name string) (tls.Certificate, error) {
	return f.issue(func(pub crypto.PublicKey) (*x509.Certificate, error) { return f.CA.IssueService(pub, name) })
}

// StartRegistrar (re)starts the EST registrar on a new 127.0.0.1 port,
// reopening the used-token store from disk: calling it again is a registrar
// restart.
func (f *Fleet) StartRegistrar() error {
	f.stopRegistrar()
	used, err := identity.OpenUsedTokens(filepath.Join(f.Dir, "cloud", "used-tokens.state"), nil)
	if err != nil {
		return err
	}
	f.Tokens.set(used)
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: f.CA,
		TokenKeys: []crypto.PublicKey{f.tokenKey.Public()}, UsedTokens: f.Tokens})
	if err != nil {
		used.Close()
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		used.Close()
		return err
	}
	srv := &http.Server{Handler: reg, ReadHeaderTimeout: Timeout, TLSConfig: reg.TLSConfig(f.regCert)}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	f.mu.Lock()
	f.registrar, f.used, f.registrarURL = srv, used, "https://"+ln.Addr().String()
	f.mu.Unlock()
	return nil
}

// stopRegistrar stops the registrar and closes its used-token store.
func (f *Fleet) stopRegistrar() {
	f.mu.Lock()
	srv, used := f.registrar, f.used
	f.registrar, f.used = nil, nil
	f.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
	if used != nil {
		used.Close()
	}
}

// RegistrarURL is the registrar's current address.
func (f *Fleet) RegistrarURL() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.registrarURL
}

// EST returns the client a new device uses: the registrar's address and
// the fleet root's fingerprint, obtained out of band.
func (f *Fleet) EST() identity.ESTClient {
	return identity.ESTClient{URL: f.RegistrarURL(), BootstrapFingerprint: f.fingerprint}
}

// Token issues a one-time enrollment token for device id, as an operator
// does (`d2c token issue`).
func (f *Fleet) Token(id string) (string, error) {
	return identity.TokenIssuer{Key: f.tokenKey, TTL: 15 * time.Minute}.Issue(id)
}

// NewStore opens an empty device store named name under the fleet
// directory: a device (or an attacker's machine) before enrollment.
func (f *Fleet) NewStore(name string, cfg identity.StoreConfig) (*identity.Store, error) {
	parent := filepath.Join(f.Dir, "machines")
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, err
	}
	return identity.OpenStore(filepath.Join(parent, name), cfg)
}

// Enroll gives device id a token and enrolls it over EST: it generates its
// own key and gets a certificate from the fleet CA, which the cloud
// registers.
func (f *Fleet) Enroll(ctx context.Context, id string) (*identity.Store, error) {
	token, err := f.Token(id)
	if err != nil {
		return nil, err
	}
	store, err := f.NewStore(id, identity.StoreConfig{})
	if err != nil {
		return nil, err
	}
	ident, err := store.Enroll(ctx, f.EST(), identity.EnrollRequest{DeviceID: id, Auth: identity.EnrollAuth{Token: token}})
	if err != nil {
		return nil, err
	}
	f.Certs.Add(ident.Chain...)
	return store, nil
}

// TokenLedger is the registrar's used-token store with a count of the
// tokens it recorded, so that a program can show that a refusal recorded
// nothing.
type TokenLedger struct {
	mu       sync.Mutex
	inner    identity.UsedTokens
	recorded int
}

func (l *TokenLedger) set(u identity.UsedTokens) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inner = u
}

// Consume implements identity.UsedTokens.
func (l *TokenLedger) Consume(ctx context.Context, jti string, expiry time.Time) error {
	l.mu.Lock()
	inner := l.inner
	l.mu.Unlock()
	if err := inner.Consume(ctx, jti, expiry); err != nil {
		return err
	}
	l.mu.Lock()
	l.recorded++
	l.mu.Unlock()
	return nil
}

// Recorded returns how many tokens were recorded as used.
func (l *TokenLedger) Recorded() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recorded
}

// Refusal is a message the cloud verifier refused.
type Refusal struct {
	Topic string
	Err   error
}

// probeTopic is where the lab checks that the verifier's subscription is
// in place: an envelope there is refused (no such device) and swallowed.
var probeTopic = wire.TelemetryTopic("lab-probe", "probe")

// Cloud is the fleet's telemetry verifier, connected to the broker.
type Cloud struct {
	Verifier *transport.Verifier
	records  chan transport.Record
	refusals chan Refusal
	probes   chan struct{}
	nprobes  atomic.Uint64 // probes the verifier refused
}

// StartCloud connects a telemetry verifier (service "verifier") that
// checks every envelope against the registered device certificates and
// decrypts with CloudKey. With requireEncryption, signed-only envelopes are
// refused. It returns once the verifier's subscription is in place. Call it
// once per fleet: the verifier's certificate names one MQTT session.
func (f *Fleet) StartCloud(ctx context.Context, requireEncryption bool) (*Cloud, error) {
	v, err := transport.NewVerifier(transport.VerifierConfig{Certificates: f.Certs, DecryptionKey: f.CloudKey,
		RequireEncryption: requireEncryption, Policy: identity.DeviceCertPolicy{Roots: f.Roots, Revocations: f.CA}})
	if err != nil {
		return nil, err
	}
	c := &Cloud{Verifier: v, records: make(chan transport.Record, 1024), refusals: make(chan Refusal, 64), probes: make(chan struct{}, 1)}
	cert, err := f.ServiceCertificate("verifier")
	if err != nil {
		return nil, err
	}
	conn, err := transport.DialCloud(ctx, transport.CloudConfig{Broker: f.Broker.Addr(), Certificate: cert, Roots: f.Roots, Verifier: v,
		OnRecord: func(_ context.Context, r transport.Record) { c.records <- r },
		OnRefused: func(topic string, err error) {
			if topic == probeTopic {
				c.nprobes.Add(1)
				select {
				case c.probes <- struct{}{}:
				default:
				}
				return
			}
			// The verifier must never wait for the lab: past 64 refusals
			// nobody has read, the lab keeps only the count.
			select {
			case c.refusals <- Refusal{Topic: topic, Err: err}:
			default:
			}
		}})
	if err != nil {
		return nil, err
	}
	f.onClose(func() { conn.Close(context.Background()) })
	wctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	if err := conn.AwaitConnection(wctx); err != nil {
		return nil, fmt.Errorf("cloud verifier: %w", err)
	}
	// The subscription follows the connection: probe until an envelope
	// reaches the verifier.
	probe, err := f.dialService(ctx, "lab-probe")
	if err != nil {
		return nil, err
	}
	for {
		if err := probe.Publish(wctx, probeTopic, []byte("probe")); err != nil {
			return nil, err
		}
		select {
		case <-c.probes:
			return c, nil
		case <-time.After(100 * time.Millisecond):
		case <-wctx.Done():
			return nil, errors.New("cloud verifier: subscription not in place")
		}
	}
}

// Record waits for the next record the verifier accepted.
func (c *Cloud) Record(ctx context.Context) (transport.Record, error) {
	select {
	case r := <-c.records:
		return r, nil
	case <-ctx.Done():
		return transport.Record{}, ctx.Err()
	case <-time.After(Timeout):
		return transport.Record{}, errors.New("no record reached the cloud")
	}
}

// Refusal waits up to wait for the next envelope the verifier refused and
// reported; ok is false if none came.
func (c *Cloud) Refusal(wait time.Duration) (r Refusal, ok bool) {
	select {
	case r := <-c.refusals:
		return r, true
	case <-time.After(wait):
		return Refusal{}, false
	}
}

// Outcome is what the cloud application learnt of an envelope: the
// verifier accepted its record, or refused it and reported why.
type Outcome struct {
	Accepted *transport.Record
	Refused  error
}

// Next waits for the next record accepted or envelope refused.
func (c *Cloud) Next(ctx context.Context) (Outcome, error) {
	select {
	case r := <-c.records:
		return Outcome{Accepted: &r}, nil
	case r := <-c.refusals:
		return Outcome{Refused: r.Err}, nil
	case <-ctx.Done():
		return Outcome{}, ctx.Err()
	case <-time.After(Timeout):
		return Outcome{}, errors.New("the verifier neither accepted nor refused anything")
	}
}

// Stats returns the verifier's counters, without the lab's probes.
func (c *Cloud) Stats() transport.VerifierStats {
	st := c.Verifier.Stats()
	st.Refused -= c.nprobes.Load()
	return st
}

// WaitStats waits until cond holds for the verifier's counters.
func (c *Cloud) WaitStats(ctx context.Context, cond func(transport.VerifierStats) bool) (transport.VerifierStats, error) {
	deadline := time.Now().Add(Timeout)
	for {
		st := c.Stats()
		if cond(st) {
			return st, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return st, fmt.Errorf("verifier counters stuck at %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Verdict waits until the verifier has decided on one more envelope than
// counted in before (accepted, duplicate, replay or refused) and returns
// the counters.
func (c *Cloud) Verdict(ctx context.Context, before transport.VerifierStats) (transport.VerifierStats, error) {
	total := func(s transport.VerifierStats) uint64 { return s.Accepted + s.Duplicates + s.Replays + s.Refused }
	return c.WaitStats(ctx, func(s transport.VerifierStats) bool { return total(s) > total(before) })
}

// DeviceOptions configure a connected device.
type DeviceOptions struct {
	// Encrypt turns on end-to-end encryption of telemetry to CloudKey.
	Encrypt bool
	// Commands makes the device accept commands signed by CommandKey.
	Commands bool
}

// Device is a connected device: its identity store and d2c client, and
// what the client told the application.
type Device struct {
	ID     string
	Store  *identity.Store
	Client *transport.Client
	// Commands receives the commands the device verified and ran.
	Commands chan transport.Command
	// Refusals receives what the client refused or the broker refused.
	Refusals chan transport.Refusal
}

// Connect dials the broker with an enrolled device's identity and waits
// for the connection (and, with commands, for its subscription).
func (f *Fleet) Connect(ctx context.Context, store *identity.Store, opts DeviceOptions) (*Device, error) {
	id, err := store.Current()
	if err != nil {
		return nil, err
	}
	d := &Device{ID: id.DeviceID, Store: store, Commands: make(chan transport.Command, 16), Refusals: make(chan transport.Refusal, 16)}
	cfg := transport.ClientConfig{Broker: f.Broker.Addr(), Store: store,
		OnRefused: func(r transport.Refusal) { d.Refusals <- r }}
	if opts.Encrypt {
		cfg.Encryption = &transport.Encryption{CloudKey: &f.CloudKey.PublicKey}
	}
	if opts.Commands {
		cfg.CommandKeys = []crypto.PublicKey{f.CommandKey.Public()}
		cfg.OnCommand = func(_ context.Context, c transport.Command) { d.Commands <- c }
	}
	if d.Client, err = transport.Dial(ctx, cfg); err != nil {
		return nil, err
	}
	f.onClose(func() { d.Client.Close(context.Background()) })
	wctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	if err := d.Client.AwaitConnection(wctx); err != nil {
		return nil, fmt.Errorf("device %s: %w (last error: %v)", d.ID, err, d.Client.LastConnectError())
	}
	return d, nil
}

// Refusal waits up to wait for the next refusal the client reported.
func (d *Device) Refusal(wait time.Duration) (r transport.Refusal, ok bool) {
	select {
	case r := <-d.Refusals:
		return r, true
	case <-time.After(wait):
		return transport.Refusal{}, false
	}
}

// DeviceOutcome is what a device's application learnt of a command: it
// ran, or the client refused it.
type DeviceOutcome struct {
	Ran     *transport.Command
	Refused error
}

// Next waits for the next command run or refused.
func (d *Device) Next(ctx context.Context) (DeviceOutcome, error) {
	select {
	case c := <-d.Commands:
		return DeviceOutcome{Ran: &c}, nil
	case r := <-d.Refusals:
		return DeviceOutcome{Refused: r.Err}, nil
	case <-ctx.Done():
		return DeviceOutcome{}, ctx.Err()
	case <-time.After(Timeout):
		return DeviceOutcome{}, errors.New("the device neither ran nor refused a command")
	}
}

// Commander is the cloud's command sender (service "commander").
type Commander struct {
	conn   *transport.Cloud
	signer *transport.CommandSigner
}

// Commander connects the command sender, signing with CommandKey.
func (f *Fleet) Commander(ctx context.Context) (*Commander, error) {
	cert, err := f.ServiceCertificate("commander")
	if err != nil {
		return nil, err
	}
	conn, err := transport.DialCloud(ctx, transport.CloudConfig{Broker: f.Broker.Addr(), Certificate: cert, Roots: f.Roots})
	if err != nil {
		return nil, err
	}
	f.onClose(func() { conn.Close(context.Background()) })
	wctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	if err := conn.AwaitConnection(wctx); err != nil {
		return nil, fmt.Errorf("commander: %w", err)
	}
	return &Commander{conn: conn, signer: &transport.CommandSigner{Key: f.CommandKey, TTL: time.Minute}}, nil
}

// Send signs a command for device and publishes it; it returns the
// envelope as it went over the broker.
func (c *Commander) Send(ctx context.Context, device, name, body string) ([]byte, error) {
	env, err := c.signer.Sign(transport.Command{Device: device, Name: name, Body: []byte(body)})
	if err != nil {
		return nil, err
	}
	return env, c.conn.SendCommand(ctx, device, env)
}
