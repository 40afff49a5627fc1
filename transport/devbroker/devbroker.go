// Package devbroker runs an embedded MQTT broker (mochi-mqtt v2) for
// development, the quickstart, examples and tests: one MQTT v5 listener
// over TLS 1.3 with mutual authentication, enforcing d2c's broker policy
// through transport/mochihook. It listens on 127.0.0.1 with a port chosen by
// the kernel unless told otherwise, and never on anything else.
//
// Production fleets run a real broker (mosquitto with
// transport.MosquittoConfig, or a clustered one) behind the same policy.
//
//	b, err := devbroker.Start(ctx, devbroker.Config{
//		Certificate: serverCert, // from identity.CA.IssueServer
//		ClientRoots: roots,      // the fleet root
//		Services:    []transport.ServiceRights{{Name: "verifier", Read: []string{transport.AllUp}}},
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
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/mochihook"
)

// DefaultAddr is the address the broker listens on by default: the
// loopback, on a port the kernel picks ([Broker.Addr] tells which).
const DefaultAddr = "127.0.0.1:0"

// connectTimeout bounds the TLS handshake and the wait for the client's
// CONNECT; afterwards the client's keep alive applies.
const connectTimeout = 10 * time.Second

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
	Services []transport.ServiceRights
	// Revocation, if set, is asked about every client certificate during
	// the TLS handshake and again at CONNECT; a revoked certificate fails
	// the handshake. Default: no revocation check.
	Revocation identity.RevocationChecker
	// Logger receives the broker's log: mochi's and the refusals. Default:
	// discarded.
	Logger *slog.Logger
	// MaxPacketSize bounds the MQTT packets accepted from clients, in
	// bytes. Default transport.DefaultMaxPacketSize.
	MaxPacketSize int
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
		maxPacket = transport.DefaultMaxPacketSize
	}
	if maxPacket < 1024 {
		return nil, fmt.Errorf("devbroker: MaxPacketSize %d: want at least 1024 bytes", maxPacket)
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
	srv := mqtt.New(&mqtt.Options{Capabilities: caps, Logger: cfg.Logger})
	l := &listener{ln: ln, tls: tlsConf, conns: make(map[net.Conn]struct{})}
	if err := srv.AddHook(hook, nil); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("devbroker: %w", err)
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
