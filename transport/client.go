// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/audit"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/transport/consent"
	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/outbox"
	"github.com/d2c-iot/d2c/transport/wire"
)

// ClientConfig configures a device [Client]. Zero fields take the documented
// defaults; there is no setting that turns TLS, certificate verification or
// signing off.
type ClientConfig struct {
	// Broker is the broker's host:port. Required. The connection is always
	// TLS 1.3 with the device certificate; the broker must present a
	// certificate that chains to the fleet anchors in Store.
	Broker string
	// ServerName overrides the name checked in the broker certificate.
	// Default: the host of Broker.
	ServerName string
	// Store holds the device identity and fleet anchors. Required.
	Store *identity.Store
	// StateDir holds the outbox, the boot counter and the command state.
	// Default: "transport" inside the store directory.
	StateDir string
	// Encryption, if set, encrypts telemetry end to end to the cloud.
	Encryption *Encryption
	// CommandKeys are the fleet's command-signing public keys. With
	// OnCommand set, the client subscribes to its command topic and runs
	// every command that verifies.
	CommandKeys []crypto.PublicKey
	// OnCommand runs a verified command. It must not block for long.
	OnCommand func(context.Context, Command)
	// OnRefused is told of every message the broker refused for good (PUBACK
	// reason >= 0x80 that retrying cannot fix) and every command refused.
	OnRefused func(Refusal)
	// Audit, if set, records every refusal (commands, messages refused by
	// the broker) and every consent change in the device's tamper-evident
	// audit log.
	Audit *audit.Log
	// Outbox bounds the durable queue (Dir is set from StateDir).
	Outbox outbox.Config
	// KeepAlive is the MQTT keep-alive. Default 30 s.
	KeepAlive time.Duration
	// SessionExpiry is how long the broker keeps the session (command
	// subscription, undelivered commands) while the device is away.
	// Default 24 h.
	SessionExpiry time.Duration
	// RetryMin and RetryMax bound the reconnect backoff (exponential, full
	// jitter). Defaults 1 s and 2 min.
	RetryMin, RetryMax time.Duration
	// Logger receives connection and delivery events. Default: none.
	Logger *slog.Logger
	// Streams declares streams that carry personal data, with their
	// purpose: Publish refuses a stream declared Personal with
	// [consent.ErrNoConsent] unless the user's consent to its purpose is in force
	// ([Client.GrantConsent]). Streams not listed need no consent. Default:
	// none.
	Streams []consent.Policy
	// SecurityReportInterval is how often the client reports its security
	// metrics on [wire.SecurityStream] (only when a counter changed).
	// Default 5 min; negative: never.
	SecurityReportInterval time.Duration
}

// Refusal reports a message or command that was refused for good.
type Refusal struct {
	Topic     string
	MessageID uint64 // outbox ID, 0 for a command
	Reason    string
	Err       error
}

// ClientStats counts what the client did since Dial.
type ClientStats struct {
	Stored, Sent, Acked, Refused, Retried uint64
	QueueDepth                            int
	Connects, ConnectFailures             uint64
	CommandsRun, CommandsRefused          uint64
	// ProtocolErrors counts connections dropped because the broker broke
	// the protocol ([ErrPacketTooLarge], [ErrBrokerProtocol]).
	ProtocolErrors uint64
	// Ignored counts messages from the broker that were not commands for
	// this device: retained, or on a topic the client never subscribed to.
	Ignored uint64
}

// Client is the device half of telemetry: Publish seals readings into a
// signed (optionally encrypted) envelope and stores it durably; a delivery
// loop publishes stored envelopes at QoS 1 over MQTT v5 and removes each
// only after a successful PUBACK.
type Client struct {
	cfg    ClientConfig
	log    *slog.Logger
	outbox *outbox.Outbox
	seq    *sequence
	cmds   *commandVerifier
	cm     *autopaho.ConnectionManager
	cancel context.CancelFunc
	done   chan struct{}
	pubs   sync.WaitGroup // publish goroutines
	bg     sync.WaitGroup // security reporting

	consent *consentGate
	sec     securityMetrics

	ident  atomic.Pointer[identity.Identity]
	sealer atomic.Pointer[Sealer]

	retry          reconnectBackoff
	conn           atomic.Pointer[connScope] // ends when the current connection goes down
	up             atomic.Bool               // connected
	receiveMax     atomic.Int32
	lastConnectErr atomic.Pointer[error]
	wake           chan struct{}
	subscribed     chan struct{} // closed at the first SUBACK for the command topic
	subscribedOnce sync.Once

	// sealMu is held from taking a sequence number to queueing its
	// envelope in the outbox, so that outbox IDs rise with (boot, seq)
	// (the outbox's sending window relies on it).
	sealMu sync.Mutex

	mu           sync.Mutex
	inflight     map[uint64]bool
	inflightKeys map[uint64]bool // in-flight key deliveries: nothing else goes until they are acked

	sent, acked, refused, retried, connects, connectFailures, cmdRun, cmdRefused atomic.Uint64
	authFailures, outboxFull, protocolErrors, unexpected                         atomic.Uint64
}

// Dial opens the client's state and starts connecting in the background; it
// returns once the state is open. Use [Client.AwaitConnection] to wait for
// the broker. Close stops it.
func Dial(ctx context.Context, cfg ClientConfig) (*Client, error) {
	if cfg.Store == nil || cfg.Broker == "" {
		return nil, errors.New("transport: ClientConfig needs Store and Broker")
	}
	host, _, err := net.SplitHostPort(cfg.Broker)
	if err != nil {
		return nil, fmt.Errorf("transport: broker address %q: %w", cfg.Broker, err)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(cfg.Store.Dir(), "transport")
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.SessionExpiry <= 0 {
		cfg.SessionExpiry = 24 * time.Hour
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(2*time.Minute, cfg.RetryMin)
	}
	if cfg.SecurityReportInterval == 0 {
		cfg.SecurityReportInterval = DefaultSecurityReportInterval
	}
	policies, err := validateStreamPolicies(cfg.Streams)
	if err != nil {
		return nil, err
	}
	cfg.Streams = slices.Clone(cfg.Streams)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	id, err := cfg.Store.Current()
	if err != nil {
		return nil, err
	}
	anchors, err := cfg.Store.Anchors()
	if err != nil {
		return nil, err
	}
	if err := atomicfile.MkdirPrivate(nil, cfg.StateDir); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: log.With("device", id.DeviceID), wake: make(chan struct{}, 1), subscribed: make(chan struct{}), inflight: map[uint64]bool{}, inflightKeys: map[uint64]bool{}, done: make(chan struct{})}
	if err := c.useIdentity(id); err != nil {
		return nil, err
	}
	if c.seq, err = openSequence(nil, filepath.Join(cfg.StateDir, "boot.state")); err != nil {
		return nil, err
	}
	if cfg.OnCommand != nil {
		if len(cfg.CommandKeys) == 0 {
			return nil, errors.New("transport: OnCommand needs CommandKeys")
		}
		if c.cmds, err = newCommandVerifier(nil, filepath.Join(cfg.StateDir, "commands.state"), id.DeviceID, cfg.CommandKeys, cfg.Store.Clock().Now); err != nil {
			return nil, err
		}
	}
	ocfg := cfg.Outbox
	ocfg.Dir = filepath.Join(cfg.StateDir, "outbox")
	if ocfg.Logger == nil {
		ocfg.Logger = log
	}
	if c.outbox, err = outbox.Open(ocfg); err != nil {
		return nil, err
	}
	cstore, err := openConsentStore(nil, filepath.Join(cfg.StateDir, "consent.state"))
	if err != nil {
		c.outbox.Close()
		return nil, err
	}
	c.consent = newConsentGate(cstore, policies, c.outbox, cfg.Store.Clock().Now, c.log, c.store)
	c.consent.reconcile(ctx)
	c.sec.custom, c.sec.since = map[string]uint64{}, cfg.Store.Clock().Now()
	c.receiveMax.Store(16)
	c.retry.min, c.retry.max = cfg.RetryMin, cfg.RetryMax

	pool := x509.NewCertPool()
	for _, a := range anchors {
		if a.CheckSignatureFrom(a) == nil {
			pool.AddCert(a)
		}
	}
	tlsCfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		ServerName: cfg.ServerName,
		Time:       cfg.Store.Clock().Now,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			tc := c.ident.Load().TLSCertificate()
			return &tc, nil
		},
	}
	brokerURL := &url.URL{Scheme: "tls", Host: cfg.Broker}
	marker := filepath.Join(cfg.StateDir, "session")
	_, statErr := os.Stat(marker)
	firstConnect := errors.Is(statErr, os.ErrNotExist)

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c.cancel = cancel
	c.conn.Store(newConnScope(runCtx))
	acfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{brokerURL},
		TlsCfg:                        tlsCfg,
		KeepAlive:                     uint16(cfg.KeepAlive / time.Second),
		CleanStartOnInitialConnection: firstConnect,
		SessionExpiryInterval:         uint32(cfg.SessionExpiry / time.Second),
		ReconnectBackoff:              c.retry.delay,
		ConnectTimeout:                15 * time.Second,
		ConnectPacketBuilder:          advertiseBounds(deviceReceiveMaximum),
		AttemptConnection: func(ctx context.Context, ac autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
			if leaf := c.ident.Load().Certificate(); cfg.Store.Clock().Now().After(leaf.NotAfter) {
				return nil, fmt.Errorf("%w: %w: renew or enroll again", ErrCertificateRejected, identity.ErrCertExpired)
			}
			// autopaho passes its run context here, not one bounded by
			// ConnectTimeout: bound the TCP connect and the TLS handshake,
			// or a broker that accepts and never answers stalls the client
			// for good.
			ctx, cancel := context.WithTimeout(ctx, ac.ConnectTimeout)
			defer cancel()
			return dialTLS(ctx, u.Host, tlsCfg)
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, ack *paho.Connack) {
			c.connects.Add(1)
			c.up.Store(true)
			c.retry.connected()
			if ack.Properties != nil && ack.Properties.ReceiveMaximum != nil {
				c.receiveMax.Store(int32(*ack.Properties.ReceiveMaximum))
			} else {
				c.receiveMax.Store(65535)
			}
			c.log.Info("connected", "broker", cfg.Broker, "session_present", ack.SessionPresent)
			if firstConnect {
				_ = atomicfile.WriteFile(nil, marker, []byte("1\n"))
				firstConnect = false
			}
			if c.cmds != nil {
				// On every connection, not only when the broker has
				// no session: a process that died between its first
				// CONNACK and the SUBACK left a session without the
				// subscription. Subscribing again is idempotent.
				go c.subscribe(runCtx, cm)
			}
			c.signal()
		},
		OnConnectionDown: func() bool {
			// Publishes awaiting a PUBACK on the lost connection give up
			// now instead of at paho's packet timeout: their messages stay
			// stored and go again on the next connection.
			c.up.Store(false)
			c.conn.Swap(newConnScope(runCtx)).cancel()
			return true
		},
		OnConnectError: func(err error) {
			c.connectFailures.Add(1)
			err = classifyDialError(err)
			c.lastConnectErr.Store(&err)
			if errors.Is(err, ErrPacketTooLarge) || errors.Is(err, ErrBrokerProtocol) {
				c.protocolErrors.Add(1)
				c.log.Error("the broker broke the protocol; backing off", "err", err)
				return
			}
			if errors.Is(err, ErrCertificateRejected) {
				c.authFailures.Add(1)
				c.log.Error("the broker refused the device certificate; backing off", "err", err)
				return
			}
			c.log.Warn("connect failed", "err", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID: id.DeviceID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) { c.onPublish(runCtx, pr.Packet); return true, nil },
			},
			OnClientError: c.connectionError,
		},
	}
	cm, err := autopaho.NewConnection(runCtx, acfg)
	if err != nil {
		cancel()
		c.outbox.Close()
		return nil, fmt.Errorf("transport: %w", err)
	}
	c.cm = cm
	go c.deliver(runCtx)
	if cfg.SecurityReportInterval > 0 {
		c.bg.Add(1)
		go c.reportSecurity(runCtx, cfg.SecurityReportInterval)
	}
	return c, nil
}

// useIdentity switches to id for new connections and new envelopes.
func (c *Client) useIdentity(id *identity.Identity) error {
	s, err := NewSealer(id.DeviceID, id.Key, c.cfg.Encryption, c.cfg.Store.Clock().Now)
	if err != nil {
		return err
	}
	c.ident.Store(id)
	c.sealer.Store(s)
	return nil
}

// Reload rereads the identity from the store, after a renewal (wire it to
// identity.Renewer.OnRenew). The next connection presents the new
// certificate and new envelopes are signed with the new key.
func (c *Client) Reload() error {
	id, err := c.cfg.Store.Current()
	if err != nil {
		return err
	}
	return c.useIdentity(id)
}

// connectionError is told of an established connection failing. A broker
// breaking the protocol ([ErrPacketTooLarge], [ErrBrokerProtocol]) is
// logged as an error and counted; the reconnection backs off because the
// connection was short-lived (reconnectBackoff).
func (c *Client) connectionError(err error) {
	if errors.Is(err, ErrPacketTooLarge) || errors.Is(err, ErrBrokerProtocol) {
		c.protocolErrors.Add(1)
		c.lastConnectErr.Store(&err)
		c.log.Error("the broker broke the protocol; dropped the connection", "err", err)
		return
	}
	c.log.Warn("connection error", "err", err)
}

// LastConnectError returns the error of the latest failed connection
// attempt, or of the latest connection dropped because the broker broke
// the protocol (nil if none), classified: it wraps
// [ErrCertificateRejected] when the broker refused the device certificate,
// [ErrPacketTooLarge] or [ErrBrokerProtocol] when the broker misbehaved.
func (c *Client) LastConnectError() error {
	if p := c.lastConnectErr.Load(); p != nil {
		return *p
	}
	return nil
}

// AwaitConnection waits until the client is connected.
//
// With OnCommand set it also waits until the broker has answered the first
// subscription to the command topic, so that a command sent after
// AwaitConnection returns is not lost.
//
// If ctx ends first, the error wraps ctx's error and the last failed
// connection attempt's ([Client.LastConnectError]), so that it says why
// and both errors.Is(err, context.DeadlineExceeded) and, say,
// errors.Is(err, ErrCertificateRejected) hold:
//
//	transport: not connected to mqtt.example.net:8883: context deadline exceeded:
//	last failed attempt: failed to connect to tls://mqtt.example.net:8883:
//	tls: failed to verify certificate: x509: certificate is valid for broker.example.com, not mqtt.example.net
//
// (one line, wrapped here).
func (c *Client) AwaitConnection(ctx context.Context) error {
	if err := c.cm.AwaitConnection(ctx); err != nil {
		return notConnected(c.cfg.Broker, ctx.Err(), err, c.LastConnectError())
	}
	if c.cmds == nil {
		return nil
	}
	select {
	case <-c.subscribed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("transport: connected to %s, but the broker has not answered the command subscription: %w", c.cfg.Broker, ctx.Err())
	}
}

// notConnected is AwaitConnection's error when the wait ended without a
// connection: ctxErr is the context's error (nil if the client was closed
// instead, then err says so), last the latest failed attempt's (or nil).
func notConnected(broker string, ctxErr, err, last error) error {
	switch {
	case ctxErr == nil:
		return fmt.Errorf("transport: not connected to %s: %w", broker, err)
	case last == nil:
		return fmt.Errorf("transport: not connected to %s: %w (no connection attempt has failed yet)", broker, ctxErr)
	default:
		return fmt.Errorf("transport: not connected to %s: %w: last failed attempt: %w", broker, ctxErr, last)
	}
}

// Flush waits until every message stored before the call (every Publish
// that had returned, and the client's own messages: key deliveries,
// consent events, security reports) has left the outbox: acknowledged by
// the broker, refused by it for good ([ClientConfig].OnRefused), expired
// ([PublishOptions].TTL) or purged by a consent withdrawal. Flush sends
// nothing itself; the delivery loop does, while connected, so an offline
// client makes Flush wait for the connection.
//
// If ctx ends first, the error wraps ctx's error and says how many of those
// messages remain; while the client is not connected it also wraps the last
// failed connection attempt's error. After Close, Flush returns
// [outbox.ErrClosed].
func (c *Client) Flush(ctx context.Context) error {
	n, err := c.outbox.Flush(ctx)
	switch {
	case err == nil:
		return nil
	case ctx.Err() == nil:
		return fmt.Errorf("transport: flush: %w", err)
	}
	if last := c.LastConnectError(); last != nil && !c.up.Load() {
		return fmt.Errorf("transport: flush: %d messages not yet acknowledged by the broker: %w (not connected to %s: last failed attempt: %w)",
			n, err, c.cfg.Broker, last)
	}
	return fmt.Errorf("transport: flush: %d messages not yet acknowledged by the broker: %w", n, err)
}

// Publish seals readings of stream into one envelope (one signature for the
// whole batch) and stores it durably; it returns once the envelope is on
// disk. Delivery happens in the background.
//
// A stream declared Personal in [ClientConfig.Streams] is refused with
// [consent.ErrNoConsent], nothing stored, unless consent is in force; the
// reserved "d2c." streams are refused.
func (c *Client) Publish(ctx context.Context, stream string, readings ...Reading) error {
	return c.PublishWith(ctx, PublishOptions{Stream: stream}, readings...)
}

// PublishOptions tune one publish.
type PublishOptions struct {
	Stream string
	// Priority orders delivery, higher first, among the messages the
	// sending window allows: the 256 oldest sequence numbers still queued
	// (the cloud's replay window). A message further ahead waits whatever
	// its priority, since the cloud would refuse the older ones as replays
	// once it had accepted it. Default 0.
	Priority uint8
	TTL      time.Duration // drop instead of sending after this; default: never
}

// PublishWith is Publish with options.
func (c *Client) PublishWith(ctx context.Context, o PublishOptions, readings ...Reading) error {
	if err := wire.ValidateStream(o.Stream); err != nil {
		return err
	}
	if wire.IsReserved(o.Stream) {
		return fmt.Errorf("transport: stream %q is reserved for the SDK", o.Stream)
	}
	// Held from the consent check until the envelope is stored, so that a
	// withdrawal waits for this Publish and its consent event comes after.
	release, err := c.consent.hold(o.Stream)
	if err != nil {
		return err
	}
	defer release()
	_, err = c.store(ctx, sealRequest{o, readings})
	return err
}

// sealRequest is one record to seal: a stream's readings and how to send
// them.
type sealRequest struct {
	opts     PublishOptions
	readings []Reading
}

// store seals each request into its envelope and stores them all in one
// durable append, returning their outbox IDs (key deliveries included).
// Sequence numbers are taken and the envelopes queued in the outbox under
// sealMu, so that outbox IDs rise with (boot, seq); the fsync is awaited
// outside it, so that concurrent calls share it (group commit).
func (c *Client) store(ctx context.Context, reqs ...sealRequest) ([]uint64, error) {
	c.sealMu.Lock()
	var msgs []outbox.Message
	for _, r := range reqs {
		m, err := c.seal(r.opts, r.readings)
		if err != nil {
			c.sealMu.Unlock()
			return nil, err
		}
		msgs = append(msgs, m...)
	}
	a, err := c.outbox.Enqueue(msgs)
	c.sealMu.Unlock()
	var ids []uint64
	if err == nil {
		ids, err = a.Wait(ctx)
	}
	if err != nil {
		if errors.Is(err, outbox.ErrFull) {
			c.outboxFull.Add(1)
		}
		return nil, err
	}
	c.signal()
	return ids, nil
}

// seal seals readings of o.Stream into the messages to store: the
// envelope, preceded by a session-key delivery when a new key starts.
// Called with sealMu held.
func (c *Client) seal(o PublishOptions, readings []Reading) ([]outbox.Message, error) {
	s := c.sealer.Load()
	now := c.cfg.Store.Clock().Now()
	seq := c.seq.take(1)
	out, err := s.Seal(Record{Stream: o.Stream, Boot: c.seq.boot, Seq: seq, Time: now, Readings: readings})
	if err != nil {
		return nil, err
	}
	var exp time.Time
	if o.TTL > 0 {
		exp = now.Add(o.TTL)
	}
	topic := wire.TelemetryTopic(s.Device(), o.Stream)
	if o.Stream == wire.CommandResultStream {
		topic = wire.CommandResultTopic(s.Device())
	}
	msgs := []outbox.Message{{Topic: topic, Payload: out.Envelope, Priority: o.Priority, Expires: exp, Stream: o.Stream,
		Boot: c.seq.boot, Seq: seq}}
	if out.KeyDelivery != nil {
		// The key goes first (top priority), in the same durable append.
		msgs = append([]outbox.Message{{Topic: wire.KeyTopic(s.Device()), Payload: out.KeyDelivery, Priority: 255}}, msgs...)
	}
	return msgs, nil
}

// GrantConsent records the user's consent to purpose for a stream
// declared Personal in [ClientConfig.Streams]; purpose must be the one
// declared (what the user was shown). It stores the consent durably,
// queues the consent event (top priority, sent alone before anything
// sealed after it), and only then lets Publish take the stream. Granting
// consent already in force does nothing. On error consent is not in force.
func (c *Client) GrantConsent(ctx context.Context, stream, purpose string) error {
	if err := c.consent.grant(ctx, stream, purpose); err != nil {
		return err
	}
	c.audited(ctx, func(ctx context.Context, l *audit.Log) error { return l.ConsentChange(ctx, stream, true) })
	return nil
}

// WithdrawConsent withdraws consent for a personal stream, in this order:
// it stops the stream (Publish refuses it with [consent.ErrNoConsent], the delivery
// loop starts no PUBLISH of it), waits (within ctx) for the messages of the
// stream already handed to the connection to be answered, records the
// withdrawal durably, removes the stream's queued, unsent messages from the
// outbox durably ([outbox.Outbox.PurgeStream]), and queues the consent event.
// When it returns nil, nothing of the stream will be written by this or a
// later process, with one exception the protocol imposes: a PUBLISH
// written before the withdrawal whose connection dropped before its PUBACK
// is retransmitted by the MQTT session after the reconnect.
//
// Messages written before the withdrawal (at most the broker's Receive
// Maximum) cannot be recalled and may still arrive. They were sealed
// before the withdrawal, so their (boot, seq) is below the consent
// event's, and a cloud service using [consent.Ledger] discards them.
//
// On error the stream is stopped in this process in any case; the error
// says what did not complete, and Dial completes it (purge, event) after a
// restart. Withdrawing consent not in force still purges.
func (c *Client) WithdrawConsent(ctx context.Context, stream string) error {
	err := c.consent.withdraw(ctx, stream)
	if err == nil || !c.consent.consent(stream).Granted {
		// Recorded once the stream is stopped, even if the purge or
		// the event must be completed later.
		c.audited(ctx, func(ctx context.Context, l *audit.Log) error { return l.ConsentChange(ctx, stream, false) })
	}
	return err
}

// audited runs record against the audit log, if there is one, with a
// context that the caller's cancellation does not end (the event happened
// either way); a failure to record is logged.
func (c *Client) audited(ctx context.Context, record func(context.Context, *audit.Log) error) {
	if c.cfg.Audit == nil {
		return
	}
	if err := record(context.WithoutCancel(ctx), c.cfg.Audit); err != nil {
		c.log.Error("audit log", "err", err)
	}
}

// Consent returns the consent recorded for stream; Granted reports consent
// in force (granted for the stream's declared purpose, its event queued).
func (c *Client) Consent(stream string) consent.State { return c.consent.consent(stream) }

func (c *Client) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// deliver publishes stored messages while connected, at most Receive
// Maximum in flight, removing each on PUBACK success.
func (c *Client) deliver(ctx context.Context) {
	defer close(c.done)
	for {
		if err := c.cm.AwaitConnection(ctx); err != nil {
			return
		}
		c.mu.Lock()
		free := int(c.receiveMax.Load()) - len(c.inflight)
		barrier := c.inflightKeyLocked()
		c.mu.Unlock()
		var batch []outbox.Message
		if free > 0 && !barrier {
			batch = c.outbox.Next(free, c.isInflight)
		}
		for i, m := range batch {
			if i > 0 && isBarrier(m) {
				// A key delivery is sent alone, before what it encrypts; a
				// consent event alone, before what is sealed after it.
				break
			}
			key := isBarrier(m)
			c.mu.Lock()
			c.inflight[m.ID] = true
			if key {
				c.inflightKeys[m.ID] = true
			}
			c.mu.Unlock()
			c.pubs.Add(1)
			go c.publish(c.conn.Load().ctx, m)
			if key {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-c.outbox.Wait():
		case <-time.After(time.Second):
		}
	}
}

func isKeyTopic(topic string) bool {
	p, err := wire.ParseTopic(topic)
	return err == nil && p.Kind == wire.KindKey
}

// isBarrier reports a message that goes alone: nothing else is sent until
// its PUBACK.
func isBarrier(m outbox.Message) bool { return m.Stream == wire.ConsentStream || isKeyTopic(m.Topic) }

func (c *Client) inflightKeyLocked() bool { return len(c.inflightKeys) > 0 }

func (c *Client) isInflight(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inflight[id]
}

// permanent reports PUBACK reasons that retrying cannot fix (MQTT v5
// section 3.4.2.1).
func permanent(reason byte) bool {
	switch reason {
	case 0x87, 0x90, 0x95, 0x99: // not authorized, topic name invalid, packet too large, payload format invalid
		return true
	}
	return false
}

func (c *Client) publish(ctx context.Context, m outbox.Message) {
	defer c.pubs.Done()
	defer func() {
		c.mu.Lock()
		delete(c.inflight, m.ID)
		delete(c.inflightKeys, m.ID)
		c.mu.Unlock()
		c.signal()
	}()
	if !c.consent.beginSend(m.Stream) {
		return // consent withdrawn since Next returned it: the purge removed it
	}
	defer c.consent.endSend(m.Stream)
	c.sent.Add(1)
	ct := wire.ContentType
	resp, err := c.cm.Publish(ctx, &paho.Publish{QoS: 1, Topic: m.Topic, Payload: m.Payload,
		Properties: &paho.PublishProperties{ContentType: ct}})
	switch {
	case err == nil && resp != nil && resp.ReasonCode == 0x10:
		// "No matching subscribers": the broker took it, but no cloud
		// service heard it (a verifier restarting, a broker restarted
		// without persistence). Keep it and try again later.
		c.retried.Add(1)
		sleepCtx(ctx, c.retry.after(2))
	case err == nil && (resp == nil || resp.ReasonCode < 0x80):
		c.acked.Add(1)
		if err := c.outbox.Ack(m.ID); err != nil {
			c.log.Error("outbox ack", "err", err)
		}
		if m.Stream == wire.SecurityStream {
			c.securityDelivered(m.ID)
		}
	case resp != nil && permanent(resp.ReasonCode):
		c.refused.Add(1)
		reason := fmt.Sprintf("PUBACK reason 0x%02x", resp.ReasonCode)
		if resp.Properties != nil && resp.Properties.ReasonString != "" {
			reason += ": " + resp.Properties.ReasonString
		}
		c.log.Error("broker refused message", "topic", m.Topic, "id", m.ID, "reason", reason)
		if err := c.outbox.Drop(m.ID, reason); err != nil {
			c.log.Error("outbox drop", "err", err)
		}
		if m.Stream == wire.SecurityStream {
			c.securityDelivered(m.ID)
		}
		c.audited(ctx, func(ctx context.Context, l *audit.Log) error { return l.MessageRefused(ctx, m.Topic, reason) })
		if c.cfg.OnRefused != nil {
			c.cfg.OnRefused(Refusal{Topic: m.Topic, MessageID: m.ID, Reason: reason, Err: ErrRefusedByBroker})
		}
	default:
		// Not delivered (connection down, timeout, transient refusal): it
		// stays in the outbox and goes again, after a pause while still
		// marked in flight, so that a connection failing at once does not
		// become a loop of sends.
		c.retried.Add(1)
		if resp != nil {
			c.log.Warn("broker refused message for now", "topic", m.Topic, "reason", resp.ReasonCode)
		}
		sleepCtx(ctx, c.retry.after(1))
	}
}

// connScope is the life of one connection: its context ends when the
// connection goes down.
type connScope struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func newConnScope(parent context.Context) *connScope {
	ctx, cancel := context.WithCancel(parent)
	return &connScope{ctx, cancel}
}

// subscribe (re)subscribes to the command topic, when the broker has no
// session for the device.
func (c *Client) subscribe(ctx context.Context, cm *autopaho.ConnectionManager) {
	topic := wire.CommandTopic(c.ident.Load().DeviceID)
	sa, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}})
	if err != nil && sa == nil {
		c.log.Warn("subscribe to commands", "err", err)
		return
	}
	// paho returns an error with the SUBACK when a reason is >= 0x80: the
	// broker answered, so AwaitConnection stops waiting either way.
	defer c.subscribedOnce.Do(func() { close(c.subscribed) })
	for _, r := range sa.Reasons {
		if r >= 0x80 {
			c.log.Error("broker refused the command subscription", "topic", topic, "reason", r)
			if c.cfg.OnRefused != nil {
				c.cfg.OnRefused(Refusal{Topic: topic, Reason: fmt.Sprintf("SUBACK reason 0x%02x", r), Err: ErrRefusedByBroker})
			}
		}
	}
}

// onPublish handles a message from the broker: a command for this device.
// Anything else is ignored and counted: a retained message (d2c never
// publishes one; a broker replaying it is replaying an old message), a
// message on a topic the client never subscribed to, or any message when
// the client takes no commands.
func (c *Client) onPublish(ctx context.Context, p *paho.Publish) {
	if c.cmds == nil || p.Retain || p.Topic != wire.CommandTopic(c.ident.Load().DeviceID) {
		c.unexpected.Add(1)
		c.log.Warn("unexpected message ignored", "topic", textutil.Clip(p.Topic), "retain", p.Retain)
		return
	}
	cmd, err := c.cmds.verify(p.Payload)
	if err != nil {
		c.cmdRefused.Add(1)
		c.log.Warn("command refused", "err", err)
		c.audited(ctx, func(ctx context.Context, l *audit.Log) error {
			return l.CommandRefused(ctx, textutil.Clip(p.Topic), err.Error())
		})
		if c.cfg.OnRefused != nil {
			c.cfg.OnRefused(Refusal{Topic: p.Topic, Reason: "command refused", Err: err})
		}
		return
	}
	c.cmdRun.Add(1)
	c.cfg.OnCommand(ctx, cmd)
}

// Stats returns the client's counters.
func (c *Client) Stats() ClientStats {
	st := c.outbox.Stats()
	return ClientStats{Stored: st.Appended, Sent: c.sent.Load(), Acked: c.acked.Load(), Refused: c.refused.Load(),
		Retried: c.retried.Load(), QueueDepth: st.Len, Connects: c.connects.Load(), ConnectFailures: c.connectFailures.Load(),
		CommandsRun: c.cmdRun.Load(), CommandsRefused: c.cmdRefused.Load(),
		ProtocolErrors: c.protocolErrors.Load(), Ignored: c.unexpected.Load()}
}

// Close disconnects and closes the outbox. Messages not yet acknowledged
// stay stored and go out after the next Dial.
func (c *Client) Close(ctx context.Context) error {
	err := c.cm.Disconnect(ctx)
	c.cancel()
	c.bg.Wait()
	<-c.done
	<-c.cm.Done()
	c.pubs.Wait() // no Ack after the outbox closes
	if cerr := c.outbox.Close(); err == nil {
		err = cerr
	}
	return err
}

// sleepCtx waits for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
