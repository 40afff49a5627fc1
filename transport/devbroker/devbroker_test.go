// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package devbroker_test

// The broker policy scenarios (foreign publish and subscribe, no
// certificate, revoked certificate, wills, session takeover) run against
// this broker and mosquitto alike in transport's TestBrokerDevMochi and
// TestBrokerMosquitto. These tests cover the broker's own lifecycle.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/wire"
)

const testTimeout = 10 * time.Second

type fleet struct {
	ca     *identity.CA
	roots  *x509.CertPool
	server tls.Certificate
	device tls.Certificate // dev-a
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	ca, err := identity.InitCA(filepath.Join(t.TempDir(), "ca"), identity.CAConfig{Fleet: "devbroker test"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{ca: ca, roots: x509.NewCertPool()}
	f.roots.AddCert(ca.Root())
	f.server = testpki.Server(t, ca, "127.0.0.1")
	f.device = testpki.Device(t, ca, "dev-a")
	return f
}

func (f *fleet) config() devbroker.Config {
	return devbroker.Config{Certificate: f.server, ClientRoots: f.roots}
}

// dial opens a TLS connection as dev-a.
func (f *fleet) dial(t *testing.T, addr string) (*tls.Conn, error) {
	t.Helper()
	d := tls.Dialer{Config: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.roots, Certificates: []tls.Certificate{f.device}}}
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	return c.(*tls.Conn), nil
}

// connect dials as dev-a and completes an MQTT v5 CONNECT.
func (f *fleet) connect(t *testing.T, addr string) *tls.Conn {
	t.Helper()
	c, err := f.dial(t, addr)
	if err != nil {
		t.Fatal(err)
	}
	if reason, err := testpeer.MQTTConnect(c, "dev-a"); err != nil || reason != 0 {
		t.Fatalf("CONNACK reason %#x, %v", reason, err)
	}
	return c
}

func TestDevBrokerConfig(t *testing.T) {
	f := newFleet(t)
	for name, mod := range map[string]func(*devbroker.Config){
		"no certificate":    func(c *devbroker.Config) { c.Certificate = tls.Certificate{} },
		"no key":            func(c *devbroker.Config) { c.Certificate.PrivateKey = nil },
		"no client roots":   func(c *devbroker.Config) { c.ClientRoots = nil },
		"bad service":       func(c *devbroker.Config) { c.Services = []broker.ServiceRights{{Name: "svc:x"}} },
		"duplicate service": func(c *devbroker.Config) { c.Services = []broker.ServiceRights{{Name: "x"}, {Name: "x"}} },
		"tiny packets":      func(c *devbroker.Config) { c.MaxPacketSize = 10 },
		"huge packets":      func(c *devbroker.Config) { c.MaxPacketSize = broker.DefaultMaxPacketSize + 1 },
		"queued < 0":        func(c *devbroker.Config) { c.MaxQueuedMessages = -1 },
		"queued > 65535":    func(c *devbroker.Config) { c.MaxQueuedMessages = 65536 },
		"held < 0":          func(c *devbroker.Config) { c.MaxHeldBytes = -1 },
		"held < packet":     func(c *devbroker.Config) { c.MaxPacketSize, c.MaxHeldBytes = 4096, 4095 },
		"bad address":       func(c *devbroker.Config) { c.Addr = "256.0.0.1:0" },
	} {
		cfg := f.config()
		mod(&cfg)
		if b, err := devbroker.Start(t.Context(), cfg); err == nil {
			b.Close()
			t.Errorf("%s: Start succeeded", name)
		}
	}

	// The default address is the loopback, with a port the kernel chose.
	b, err := devbroker.Start(t.Context(), f.config())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	host, port, err := net.SplitHostPort(b.Addr())
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Errorf("Addr() = %q, want 127.0.0.1:<port>", b.Addr())
	}
	f.connect(t, b.Addr())
}

// TestDevBrokerClose checks that Close disconnects clients (MQTT v5
// DISCONNECT 0x8B), does not wait for connections that never sent CONNECT,
// stops listening, leaves no goroutine behind, and can be called twice.
func TestDevBrokerClose(t *testing.T) {
	f := newFleet(t)
	before := runtime.NumGoroutine()
	b, err := devbroker.Start(t.Context(), f.config())
	if err != nil {
		t.Fatal(err)
	}
	addr := b.Addr()
	client := f.connect(t, addr)
	idle, err := f.dial(t, addr) // TLS only, no CONNECT
	if err != nil {
		t.Fatal(err)
	}
	_ = idle

	start := time.Now()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
	pkt, err := packets.ReadPacket(client)
	if err != nil {
		t.Fatalf("client: %v, want DISCONNECT", err)
	}
	if d, ok := pkt.Content.(*packets.Disconnect); !ok || d.ReasonCode != 0x8b {
		t.Errorf("client got %v, want DISCONNECT reason 0x8b (server shutting down)", pkt)
	}
	if _, err := packets.ReadPacket(client); err == nil {
		t.Error("connection still open after DISCONNECT")
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("still listening on %s after Close", addr)
	}
	client.Close()
	idle.Close()
	waitGoroutines(t, before)
}

// waitGoroutines waits until no more goroutines run than before.
func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before Start:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDevBrokerContext checks that the broker stops with its context.
func TestDevBrokerContext(t *testing.T) {
	f := newFleet(t)
	ctx, cancel := context.WithCancel(t.Context())
	b, err := devbroker.Start(ctx, f.config())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	client := f.connect(t, b.Addr())
	cancel()
	pkt, err := packets.ReadPacket(client)
	if err != nil {
		t.Fatalf("client: %v, want DISCONNECT", err)
	}
	if d, ok := pkt.Content.(*packets.Disconnect); !ok || d.ReasonCode != 0x8b {
		t.Errorf("client got %v, want DISCONNECT reason 0x8b", pkt)
	}
}

// TestDevBrokerLimits checks the bounds: a packet over MaxPacketSize ends
// the connection, and a client that never completes its handshake is
// dropped.
func TestDevBrokerLimits(t *testing.T) {
	f := newFleet(t)
	cfg := f.config()
	cfg.MaxPacketSize = 2048
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	b, err := devbroker.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	c := f.connect(t, b.Addr())
	pub := &packets.Publish{Topic: wire.TelemetryTopic("dev-a", "big"), QoS: 1, PacketID: 1, Payload: bytes.Repeat([]byte("x"), 4096), Properties: &packets.Properties{}}
	// The broker may close the connection as soon as it reads the length,
	// while the rest is still being written: a broken pipe or reset here is
	// the refusal arriving early.
	_, werr := pub.WriteTo(c)
	if werr != nil && !errors.Is(werr, syscall.EPIPE) && !isReset(werr) {
		t.Fatal(werr)
	}
	pkt, err := packets.ReadPacket(c)
	switch {
	case werr != nil:
		t.Logf("oversized PUBLISH: connection closed while writing: %v", werr)
	case err != nil:
		t.Logf("oversized PUBLISH: connection ended: %v", err)
	case pkt.Type == packets.DISCONNECT:
		if d := pkt.Content.(*packets.Disconnect); d.ReasonCode != 0x95 {
			t.Errorf("oversized PUBLISH: DISCONNECT reason %#x, want 0x95 (packet too large)", d.ReasonCode)
		}
		t.Logf("oversized PUBLISH: DISCONNECT reason %#x", pkt.Content.(*packets.Disconnect).ReasonCode)
	default:
		t.Fatalf("oversized PUBLISH answered with %v", pkt)
	}
	if pkt, err := packets.ReadPacket(c); err == nil {
		t.Errorf("connection still open after an oversized PUBLISH: %v", pkt)
	}

	// A TCP client that never speaks TLS does not hold a connection
	// forever; Close ends it at once.
	raw, err := net.DialTimeout("tcp", b.Addr(), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	start := time.Now()
	b.Close()
	_ = raw.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := raw.Read(make([]byte, 1)); err != io.EOF && !isReset(err) {
		t.Errorf("silent TCP client after Close: %v, want EOF", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v with a silent client", d)
	}
}

// TestDevBrokerHeldBytes checks MaxHeldBytes: while a reader is away with
// its session, the broker holds what it missed; once that reaches the
// bound, publishes are refused with PUBACK 0x97 (quota exceeded), and
// accepted again when the reader has taken them.
func TestDevBrokerHeldBytes(t *testing.T) {
	f := newFleet(t)
	archiveCert := testpki.Service(t, f.ca, "archive")
	cfg := f.config()
	cfg.Services = []broker.ServiceRights{{Name: "archive", Read: []string{wire.AllUp}}}
	cfg.MaxPacketSize, cfg.MaxHeldBytes = 16<<10, 64<<10
	b, err := devbroker.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	// The archive subscribes with a session of 600 s, and goes away.
	archiveConnect := func(clean bool) *tls.Conn {
		t.Helper()
		c, err := f.dialAs(t, b.Addr(), archiveCert)
		if err != nil {
			t.Fatal(err)
		}
		expiry := uint32(600)
		cp := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: "svc:archive", CleanStart: clean, KeepAlive: 30,
			Properties: &packets.Properties{SessionExpiryInterval: &expiry}}
		if _, err := cp.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		if pkt, err := packets.ReadPacket(c); err != nil || pkt.Content.(*packets.Connack).ReasonCode != 0 {
			t.Fatalf("archive CONNACK: %v %v", pkt, err)
		}
		return c
	}
	a := archiveConnect(true)
	sub := &packets.Subscribe{PacketID: 1, Subscriptions: []packets.SubOptions{{Topic: wire.AllUp, QoS: 1}}, Properties: &packets.Properties{}}
	if _, err := sub.WriteTo(a); err != nil {
		t.Fatal(err)
	}
	if pkt, err := packets.ReadPacket(a); err != nil || pkt.Content.(*packets.Suback).Reasons[0] != 1 {
		t.Fatalf("archive SUBACK: %v %v", pkt, err)
	}
	if _, err := (&packets.Disconnect{Properties: &packets.Properties{}}).WriteTo(a); err != nil {
		t.Fatal(err)
	}
	a.Close()

	// dev-a publishes 8 KiB messages: 8 fit in 64 KiB, the 9th is refused.
	c := f.connect(t, b.Addr())
	topic := wire.TelemetryTopic("dev-a", "t")
	publish := func(id uint16) byte {
		t.Helper()
		pub := &packets.Publish{Topic: topic, QoS: 1, PacketID: id, Payload: bytes.Repeat([]byte("x"), 8<<10), Properties: &packets.Properties{}}
		if _, err := pub.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		pkt, err := packets.ReadPacket(c)
		if err != nil {
			t.Fatalf("publish %d: %v", id, err)
		}
		ack, ok := pkt.Content.(*packets.Puback)
		if !ok || ack.PacketID != id {
			t.Fatalf("publish %d answered %v", id, pkt)
		}
		return ack.ReasonCode
	}
	var codes []byte
	for id := uint16(1); id <= 10; id++ {
		codes = append(codes, publish(id))
	}
	if want := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0x97, 0x97}; !bytes.Equal(codes, want) {
		t.Errorf("PUBACK reasons % x, want % x", codes, want)
	}

	// The archive comes back and takes what was held for it.
	a = archiveConnect(false)
	for n := 0; n < 8; n++ {
		pkt, err := packets.ReadPacket(a)
		if err != nil {
			t.Fatalf("archive: %v after %d messages", err, n)
		}
		p, ok := pkt.Content.(*packets.Publish)
		if !ok {
			t.Fatalf("archive got %v", pkt)
		}
		if _, err := (&packets.Puback{PacketID: p.PacketID, Properties: &packets.Properties{}}).WriteTo(a); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond) // let the broker count again
	if got := publish(11); got != 0 {
		t.Errorf("after the archive caught up: PUBACK %#x, want 0", got)
	}
}

// TestDevBrokerReceiveMaximum checks that a client announcing a small
// Receive Maximum gets every message of a burst much larger than it (mochi
// 2.7.9 alone stops sending after about twice the Receive Maximum).
func TestDevBrokerReceiveMaximum(t *testing.T) {
	f := newFleet(t)
	commander := testpki.Service(t, f.ca, "commander")
	cfg := f.config()
	cfg.Services = []broker.ServiceRights{{Name: "commander", Write: []string{wire.TopicPrefix + "+/down/cmd"}}}
	b, err := devbroker.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	// dev-a announces a Receive Maximum of 4 and subscribes to its
	// commands.
	d, err := f.dial(t, b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	receiveMax := uint16(4)
	cp := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: "dev-a", CleanStart: true, KeepAlive: 30,
		Properties: &packets.Properties{ReceiveMaximum: &receiveMax}}
	if _, err := cp.WriteTo(d); err != nil {
		t.Fatal(err)
	}
	if pkt, err := packets.ReadPacket(d); err != nil || pkt.Content.(*packets.Connack).ReasonCode != 0 {
		t.Fatalf("CONNACK: %v %v", pkt, err)
	}
	sub := &packets.Subscribe{PacketID: 1, Subscriptions: []packets.SubOptions{{Topic: wire.CommandTopic("dev-a"), QoS: 1}}, Properties: &packets.Properties{}}
	if _, err := sub.WriteTo(d); err != nil {
		t.Fatal(err)
	}
	if pkt, err := packets.ReadPacket(d); err != nil || pkt.Content.(*packets.Suback).Reasons[0] != 1 {
		t.Fatalf("SUBACK: %v %v", pkt, err)
	}

	// The commander sends 50 commands at once.
	c, err := f.dialAs(t, b.Addr(), commander)
	if err != nil {
		t.Fatal(err)
	}
	if reason, err := testpeer.MQTTConnect(c, "commander"); err != nil || reason != 0 {
		t.Fatalf("commander CONNACK %#x, %v", reason, err)
	}
	const n = 50
	for i := 1; i <= n; i++ {
		pub := &packets.Publish{Topic: wire.CommandTopic("dev-a"), QoS: 1, PacketID: uint16(i), Payload: fmt.Appendf(nil, "%d", i), Properties: &packets.Properties{}}
		if _, err := pub.WriteTo(c); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		for i := 0; i < n; i++ {
			if _, err := packets.ReadPacket(c); err != nil {
				return
			}
		}
	}()

	got := map[string]bool{}
	for len(got) < n {
		pkt, err := packets.ReadPacket(d)
		if err != nil {
			t.Fatalf("dev-a received %d of %d commands: %v", len(got), n, err)
		}
		p, ok := pkt.Content.(*packets.Publish)
		if !ok {
			t.Fatalf("dev-a got %v", pkt)
		}
		got[string(p.Payload)] = true
		if _, err := (&packets.Puback{PacketID: p.PacketID, Properties: &packets.Properties{}}).WriteTo(d); err != nil {
			t.Fatal(err)
		}
	}
}

// dialAs opens a TLS connection with cert.
func (f *fleet) dialAs(t *testing.T, addr string, cert tls.Certificate) (*tls.Conn, error) {
	t.Helper()
	d := tls.Dialer{Config: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.roots, Certificates: []tls.Certificate{cert}}}
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	return c.(*tls.Conn), nil
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset") }

func ExampleStart() {
	dir, err := os.MkdirTemp("", "devbroker-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ca, err := identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{})
	if err != nil {
		log.Fatal(err)
	}
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		log.Fatal(err)
	}
	cert, err := ca.IssueServer(key.Public(), "127.0.0.1")
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())

	b, err := devbroker.Start(context.Background(), devbroker.Config{
		Certificate: tls.Certificate{Certificate: [][]byte{cert.Raw, ca.Issuing().Raw}, PrivateKey: key},
		ClientRoots: roots,
		Services:    []broker.ServiceRights{{Name: "verifier", Read: []string{wire.AllUp}}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	// Devices and services dial b.Addr() with their fleet certificates.
	host, _, _ := net.SplitHostPort(b.Addr())
	fmt.Println("listening on", host)
	// Output: listening on 127.0.0.1
}
