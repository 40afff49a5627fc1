// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package devbroker runs an embedded MQTT broker (mochi-mqtt v2) for
// development, the quickstart, examples and tests: one MQTT v5 listener
// over TLS 1.3 with mutual authentication, enforcing d2c's broker policy
// through transport/mochihook. It listens on 127.0.0.1 with a port chosen by
// the kernel unless told otherwise, and never on anything else.
//
// Production fleets run a real broker (mosquitto with
// broker.MosquittoConfig, or a clustered one) behind the same policy.
//
// # Limits
//
// One device must not be able to make the broker grow without bound, nor a
// reader that is slow or away. The broker refuses retained messages (d2c
// never publishes them; a retained PUBLISH ends the connection with
// DISCONNECT 0x9A), offers QoS 1 at most (d2c uses nothing else; a QoS 2
// PUBLISH is taken as QoS 1, so nothing waits in the broker for a PUBREL),
// accepts packets of at most [Config.MaxPacketSize] bytes, holds at most
// [Config.MaxQueuedMessages] QoS 1 messages for one client, and at most
// [Config.MaxHeldBytes] bytes of them for all clients together. The first
// bound drops further messages for that one client after their publishers
// got PUBACK, as mosquitto's max_queued_messages does; the second refuses
// every publish with PUBACK 0x97 (quota exceeded) until readers catch up,
// which d2c clients retry later with the message kept in their outbox. A
// message held for longer than a day is dropped. A client's Receive Maximum
// is not enforced: mochi 2.7.9 mishandles the messages it holds back for it
// (it sends them without keeping them for redelivery, and stops sending
// after about twice the Receive Maximum), so the broker may send a client up
// to MaxQueuedMessages messages unacknowledged, and a client that reads
// slowly slows the broker's writes to it instead.
//
//	b, err := devbroker.Start(ctx, devbroker.Config{
//		Certificate: serverCert, // from identity.CA.IssueServer
//		ClientRoots: roots,      // the fleet root
//		Services:    []broker.ServiceRights{{Name: "verifier", Read: []string{wire.AllUp}}},
//	})
//	...
//	defer b.Close()
//	dial b.Addr()
package devbroker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/mochihook"
)

// DefaultAddr is the address the broker listens on by default: the
// loopback, on a port the kernel picks ([Broker.Addr] tells which).
const DefaultAddr = "127.0.0.1:0"

// connectTimeout bounds the TLS handshake and the wait for the client's
// CONNECT; afterwards the client's keep alive applies.
const connectTimeout = 10 * time.Second

// Defaults of [Config]'s limits, sized for development fleets of some
// hundreds of devices.
const (
	// DefaultMaxQueuedMessages is the default of Config.MaxQueuedMessages:
	// mochi's own default.
	DefaultMaxQueuedMessages = 8192
	// DefaultMaxHeldBytes is the default of Config.MaxHeldBytes: 64 MiB,
	// about 150,000 signed envelopes of one reading.
	DefaultMaxHeldBytes = 64 << 20
)

// messageExpiry is how long the broker holds a message for a client, in
// seconds, whatever expiry its publisher asked for.
const messageExpiry = 24 * 60 * 60

// heldRecountInterval is how old the count of the bytes held for clients
// may be before a publish counts them again.
const heldRecountInterval = 10 * time.Millisecond

// Config configures [Start]. Certificate and ClientRoots are required; the
// zero value of every other field is its documented default.
type Config struct {
	// Addr is the TCP address to listen on. Default [DefaultAddr],
	// "127.0.0.1:0".
	Addr string
	// Certificate is the broker's TLS server certificate: its chain, leaf
	// first (identity.CA.IssueServer, then the issuing CA), and its key.
	// Required.
	Certificate tls.Certificate
	// ClientRoots are the roots client certificates must chain to: the
	// fleet root. Clients send their issuing CA after their certificate
	// (identity.Identity.TLSCertificate does); to accept clients that send
	// their certificate alone, add the issuing CA to the pool too. The pool
	// is copied. Required.
	ClientRoots *x509.CertPool
	// Services are the cloud services and their rights. Default none.
	Services []broker.ServiceRights
	// Revocation, if set, is asked about every client certificate during
	// the TLS handshake and again at CONNECT; a revoked certificate fails
	// the handshake. Default: no revocation check.
	Revocation identity.RevocationChecker
	// Logger receives the broker's log: mochi's and the refusals. Default:
	// discarded.
	Logger *slog.Logger
	// MaxPacketSize bounds the MQTT packets accepted from clients, in
	// bytes; a larger one ends the connection (DISCONNECT 0x95). 1024 to
	// broker.DefaultMaxPacketSize, which is the default: every message
	// the broker accepts can then be delivered to every d2c reader.
	MaxPacketSize int
	// MaxQueuedMessages bounds the QoS 1 messages the broker holds for one
	// client: sent and not yet acknowledged, or queued while the client
	// is away with its session. Past it, further messages for that client
	// are dropped, after their publishers got PUBACK: size it for the
	// longest outage of a reader to ride out. 1 to 65535; default
	// [DefaultMaxQueuedMessages].
	MaxQueuedMessages int
	// MaxHeldBytes bounds the topic and payload bytes of the QoS 1
	// messages the broker holds for all clients together. Past it, every
	// publish is refused with PUBACK 0x97 (quota exceeded), a QoS 0 one is
	// dropped: d2c clients keep the message and send it again later, so
	// nothing is lost, but publishers wait until a reader catches up. The
	// count is at most 10 ms old, and what was accepted since is added to
	// it. Default [DefaultMaxHeldBytes].
	MaxHeldBytes int64
}

// Broker is a running development broker.
type Broker struct {
	srv      *mqtt.Server
	listener *listener
	stop     func() bool // unregisters the context's AfterFunc
	once     sync.Once
}

// Start starts a broker and returns once it accepts connections. The
// broker stops when ctx is done or [Broker.Close] is called.
func Start(ctx context.Context, cfg Config) (*Broker, error) {
	if len(cfg.Certificate.Certificate) == 0 || cfg.Certificate.PrivateKey == nil {
		return nil, errors.New("devbroker: Config.Certificate (chain and key) is required")
	}
	if cfg.ClientRoots == nil {
		return nil, errors.New("devbroker: Config.ClientRoots (the fleet root) is required")
	}
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	maxPacket := cfg.MaxPacketSize
	if maxPacket == 0 {
		maxPacket = broker.DefaultMaxPacketSize
	}
	if maxPacket < 1024 || maxPacket > broker.DefaultMaxPacketSize {
		return nil, fmt.Errorf("devbroker: MaxPacketSize %d: want 1024 to %d bytes (what d2c clients read, less what a broker adds)", maxPacket, broker.DefaultMaxPacketSize)
	}
	maxQueued := cfg.MaxQueuedMessages
	if maxQueued == 0 {
		maxQueued = DefaultMaxQueuedMessages
	}
	if maxQueued < 1 || maxQueued > math.MaxUint16 {
		return nil, fmt.Errorf("devbroker: MaxQueuedMessages %d: want 1 to %d, or 0 for the default", maxQueued, math.MaxUint16)
	}
	maxHeld := cfg.MaxHeldBytes
	if maxHeld == 0 {
		maxHeld = DefaultMaxHeldBytes
	}
	if maxHeld < int64(maxPacket) {
		return nil, fmt.Errorf("devbroker: MaxHeldBytes %d: want at least MaxPacketSize (%d), or 0 for the default", maxHeld, maxPacket)
	}
	hook, err := mochihook.New(mochihook.Config{Services: cfg.Services, Revocation: cfg.Revocation})
	if err != nil {
		return nil, fmt.Errorf("devbroker: %w", err)
	}

	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cfg.Certificate},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    cfg.ClientRoots.Clone(),
	}
	if rc := cfg.Revocation; rc != nil {
		tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("devbroker: no client certificate")
			}
			return rc.CheckRevoked(cs.PeerCertificates[0])
		}
	}

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("devbroker: %w", err)
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(maxPacket)
	// mochi checks a publish's ACL before it resolves a topic alias: no
	// aliases, so that every publish names its topic.
	caps.TopicAliasMaximum = 0
	// No retained messages (mochihook also disconnects a client that
	// sends one), and no QoS 2, whose incoming messages wait in the broker
	// for the publisher's PUBREL.
	caps.RetainAvailable = 0
	caps.MaximumQos = 1
	// The QoS 1 messages held for one client, and the packets waiting to
	// be written to it: room for every held message, so that none is
	// dropped for want of a write slot, plus the acknowledgements.
	caps.MaximumInflight = uint16(maxQueued)
	caps.MaximumClientWritesPending = int32(maxQueued) + 1024
	caps.MaximumMessageExpiryInterval = messageExpiry
	srv := mqtt.New(&mqtt.Options{Capabilities: caps, Logger: cfg.Logger})
	l := &listener{ln: ln, tls: tlsConf, conns: make(map[net.Conn]struct{})}
	held := &heldGuard{srv: srv, limit: maxHeld}
	for _, h := range []mqtt.Hook{hook, held, &noSendQuota{}} {
		if err := srv.AddHook(h, nil); err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("devbroker: %w", err)
		}
	}
	if err := srv.AddListener(l); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("devbroker: %w", err)
	}
	b := &Broker{srv: srv, listener: l, stop: func() bool { return false }}
	if err := srv.Serve(); err != nil {
		_ = b.shutdown()
		return nil, fmt.Errorf("devbroker: %w", err)
	}
	b.stop = context.AfterFunc(ctx, func() { _ = b.shutdown() })
	return b, nil
}

// Addr returns the address the broker listens on, such as
// "127.0.0.1:41883" with the default Config.Addr.
func (b *Broker) Addr() string { return b.listener.ln.Addr().String() }

// Close stops the broker: it stops accepting, disconnects every client
// (MQTT v5 clients get DISCONNECT reason 0x8B, server shutting down),
// closes the connections still in their handshake, and returns once every
// connection's goroutine has ended. Closing twice is not an error.
func (b *Broker) Close() error {
	b.stop()
	return b.shutdown()
}

// shutdown closes everything of the listener before mochi's own Close, so
// that no client connection starts while mochi waits for the last one.
func (b *Broker) shutdown() error {
	b.once.Do(func() {
		l := b.listener
		l.stopAccepting()
		for _, cl := range b.srv.Clients.GetByListener(listenerID) {
			_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
		l.closeConns()
		l.wg.Wait()
		_ = b.srv.Close()
	})
	return nil
}

// listener is a mochi listener over a net.Listener opened by Start (so
// that Start reports a bind error, and the address is known at once). It
// performs each TLS handshake itself, bounded in time, logs refusals, and
// tracks every connection so that Close leaves nothing running.
type listener struct {
	ln  net.Listener
	tls *tls.Config
	log *slog.Logger

	wg     sync.WaitGroup // the accept loop and every connection
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

const listenerID = "d2c-tls"

func (l *listener) ID() string       { return listenerID }
func (l *listener) Address() string  { return l.ln.Addr().String() }
func (l *listener) Protocol() string { return "tcp+tls" }

func (l *listener) Init(log *slog.Logger) error {
	l.log = log
	return nil
}

// Serve accepts connections until Close. mochi calls it in a goroutine.
func (l *listener) Serve(establish listeners.EstablishFn) {
	if !l.add(nil) {
		return
	}
	defer l.wg.Done()
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		c := tls.Server(raw, l.tls)
		if !l.add(c) {
			_ = c.Close()
			return
		}
		go func() {
			defer l.remove(c)
			l.serveConn(c, establish)
		}()
	}
}

func (l *listener) serveConn(c *tls.Conn, establish listeners.EstablishFn) {
	_ = c.SetDeadline(time.Now().Add(connectTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	err := c.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.log.Info("d2c: TLS handshake failed", "remote", c.RemoteAddr().String(), "error", err)
		return
	}
	// mochi replaces the deadline with the client's keep alive after
	// CONNECT.
	if err := establish(listenerID, c); err != nil {
		l.log.Debug("d2c: client connection ended", "remote", c.RemoteAddr().String(), "error", err)
	}
}

// add registers a running goroutine (c == nil: the accept loop) or a
// connection, unless the listener is closed.
func (l *listener) add(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.wg.Add(1)
	if c != nil {
		l.conns[c] = struct{}{}
	}
	return true
}

func (l *listener) remove(c net.Conn) {
	_ = c.Close()
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	l.wg.Done()
}

// stopAccepting closes the listening socket; no connection is added
// afterwards.
func (l *listener) stopAccepting() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		_ = l.ln.Close()
	}
}

// closeConns closes every connection still open.
func (l *listener) closeConns() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		_ = c.Close()
	}
}

// Close implements mochi's Listener: mochi calls it from Server.Close,
// after Broker.Close has already closed everything.
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.stopAccepting()
	closeClients(listenerID)
	l.closeConns()
}

var _ listeners.Listener = (*listener)(nil)

// heldGuard is a mochi hook that refuses publishes while the QoS 1
// messages the broker holds for its clients (in flight or queued, in their
// sessions' inflight stores) exceed limit bytes of topic and payload. A
// publish counts them again when the last count is older than
// heldRecountInterval; each publish accepted in between is added to the
// count.
type heldGuard struct {
	mqtt.HookBase
	srv     *mqtt.Server
	limit   int64
	held    atomic.Int64
	counted atomic.Int64 // when held was last counted, in Unix nanoseconds
}

func (g *heldGuard) ID() string { return "d2c-held-bytes" }

func (g *heldGuard) Provides(b byte) bool { return b == mqtt.OnPublish }

// OnPublish accepts pk while the bytes held are below the limit. Past it,
// it answers a QoS 1 publish of an MQTT v5 client with PUBACK 0x97 (quota
// exceeded), and drops the message.
func (g *heldGuard) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	now := time.Now().UnixNano()
	if last := g.counted.Load(); now-last > int64(heldRecountInterval) && g.counted.CompareAndSwap(last, now) {
		g.recount()
	}
	if g.held.Load() < g.limit {
		if pk.FixedHeader.Qos > 0 {
			g.held.Add(heldSize(pk))
		}
		return pk, nil
	}
	if pk.FixedHeader.Qos > 0 && cl.Properties.ProtocolVersion == 5 && !cl.Net.Inline {
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Puback},
			PacketID:    pk.PacketID,
			ReasonCode:  packets.ErrQuotaExceeded.Code,
			Properties:  packets.Properties{ReasonString: "broker holds too many messages for slow or absent readers"},
		})
	}
	return pk, packets.ErrRejectPacket
}

func heldSize(pk packets.Packet) int64 { return int64(len(pk.TopicName) + len(pk.Payload)) }

// recount sums the publishes held in every client's inflight store.
func (g *heldGuard) recount() {
	var n int64
	for _, cl := range g.srv.Clients.GetAll() {
		for _, pk := range cl.State.Inflight.GetAll(false) {
			if pk.FixedHeader.Type == packets.Publish {
				n += heldSize(pk)
			}
		}
	}
	g.held.Store(n)
}

// noSendQuota is a mochi hook that lets the broker send a client its
// messages without holding any back for the client's Receive Maximum
// (MQTT v5 section 3.3.4), as mochi already does for a client that
// announces none. mochi 2.7.9 mishandles the messages it holds back: it
// sends each one later without keeping it for redelivery, after a
// reconnection sends some twice, never gives back the slot of a PUBACK for
// one (so after that many of them the client receives nothing more: a
// burst of twice the 32 a d2c verifier announces silenced it), and takes a
// read lock twice to pick the next one, which deadlocks the broker when a
// publish waits for the same lock. A client that reads slowly slows the
// broker's writes to it instead (TCP), and what the broker holds for it
// stays bounded by MaxQueuedMessages and MaxHeldBytes.
type noSendQuota struct {
	mqtt.HookBase
}

func (h *noSendQuota) ID() string { return "d2c-no-send-quota" }

func (h *noSendQuota) Provides(b byte) bool { return b == mqtt.OnConnect }

// OnConnect clears the Receive Maximum mochi read from the CONNECT, before
// the session is set up from it.
func (h *noSendQuota) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	cl.Properties.Props.ReceiveMaximum = 0
	cl.State.Inflight.ResetSendQuota(0)
	return nil
}
