// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package roguebroker

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpki"
)

// rogueFleet is a fleet CA, a rogue broker's TLS configuration from it,
// and a device's client configuration.
type rogueFleet struct {
	server, client *tls.Config
}

func newRogueFleet(t *testing.T) rogueFleet {
	t.Helper()
	ca, err := identity.InitCA(filepath.Join(t.TempDir(), "ca"), identity.CAConfig{Fleet: "rogue test"})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	return rogueFleet{
		server: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{testpki.Server(t, ca, "127.0.0.1")},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots},
		client: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "127.0.0.1",
			Certificates: []tls.Certificate{testpki.Device(t, ca, "dev-1")}},
	}
}

func startRogue(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// rawClient is a TLS connection that writes packets and reads them back
// whole.
type rawClient struct {
	t    *testing.T
	conn *tls.Conn
	r    *bufio.Reader
}

func dialRogue(t *testing.T, s *Server, cfg *tls.Config) *rawClient {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.Addr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (c *rawClient) send(p interface {
	WriteTo(io.Writer) (int64, error)
}) {
	c.t.Helper()
	var b bytes.Buffer
	if _, err := p.WriteTo(&b); err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.Write(b.Bytes()); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawClient) connect() {
	c.t.Helper()
	c.send(&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: "dev-1", CleanStart: true, Properties: &packets.Properties{}})
}

func (c *rawClient) next() *packets.ControlPacket {
	c.t.Helper()
	cp, err := packets.ReadPacket(c.r)
	if err != nil {
		c.t.Fatal(err)
	}
	return cp
}

// TestRogueStartRequiresClientCertificates: a rogue broker verifies the
// client certificate like a real one, or does not start.
func TestRogueStartRequiresClientCertificates(t *testing.T) {
	f := newRogueFleet(t)
	lax := f.server.Clone()
	lax.ClientAuth = tls.RequestClientCert
	if _, err := Start(Config{TLS: lax}); err == nil {
		t.Fatal("started without verifying client certificates")
	}
	s := startRogue(t, Config{TLS: f.server})
	noCert := f.client.Clone()
	noCert.Certificates = nil
	conn, err := tls.Dial("tcp", s.Addr(), noCert)
	if err == nil {
		// TLS 1.3: the server's verdict comes with the first read.
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !waitUntil(func() bool { return s.RefusedHandshakes() == 1 }) {
		t.Fatalf("a client without a certificate: %v, %d refused", err, s.RefusedHandshakes())
	}
}

// TestRogueHonest: CONNACK, SUBACK, PUBACK for a QoS 1 PUBLISH, PINGRESP;
// the CONNECT and the PUBLISH are recorded.
func TestRogueHonest(t *testing.T) {
	f := newRogueFleet(t)
	s := startRogue(t, Config{TLS: f.server})
	c := dialRogue(t, s, f.client)
	c.connect()
	if cp := c.next(); cp.Type != packets.CONNACK || cp.Content.(*packets.Connack).ReasonCode != 0 {
		t.Fatalf("want CONNACK 0, got %v", cp)
	}
	c.send(&packets.Subscribe{PacketID: 1, Subscriptions: []packets.SubOptions{{Topic: "a/b", QoS: 1}}, Properties: &packets.Properties{}})
	if cp := c.next(); cp.Type != packets.SUBACK {
		t.Fatalf("want SUBACK, got %v", cp)
	}
	c.send(&packets.Publish{Topic: "up", QoS: 1, PacketID: 7, Payload: []byte("hello"), Properties: &packets.Properties{}})
	if cp := c.next(); cp.Type != packets.PUBACK || cp.Content.(*packets.Puback).PacketID != 7 {
		t.Fatalf("want PUBACK 7, got %v", cp)
	}
	c.send(&packets.Pingreq{})
	if cp := c.next(); cp.Type != packets.PINGRESP {
		t.Fatalf("want PINGRESP, got %v", cp)
	}
	if got := s.Payloads("up"); len(got) != 1 || string(got[0]) != "hello" {
		t.Fatalf("recorded %q", got)
	}
	if cs := s.Connects(); len(cs) != 1 || cs[0].ClientID != "dev-1" || cs[0].Behaviour != Honest {
		t.Fatalf("connects %+v", cs)
	}
}

// TestRogueBoundsWhatItReads: a client announcing a packet over MaxPacket
// is disconnected before the server reads (or allocates) its body, and so
// is one with a remaining length over 4 bytes.
func TestRogueBoundsWhatItReads(t *testing.T) {
	f := newRogueFleet(t)
	s := startRogue(t, Config{TLS: f.server, MaxPacket: 1024})
	for _, hdr := range [][]byte{
		{0x30, 0xff, 0xff, 0xff, 0x7f}, // 256 MiB
		{0x30, 0x81, 0x08},             // 1025 bytes of body
		{0x30, 0x80, 0x80, 0x80, 0x80, 0x01},
	} {
		c := dialRogue(t, s, f.client)
		c.connect()
		c.next() // CONNACK
		if _, err := c.conn.Write(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("header % x: the server kept the connection (%v)", hdr, err)
		}
	}
}

// TestRogueOversizedPublishWellFormed: the packet OversizedPublish
// streams is a valid PUBLISH of exactly the configured size.
func TestRogueOversizedPublishWellFormed(t *testing.T) {
	f := newRogueFleet(t)
	for _, size := range []int{200, 16385, 1 << 20, 2097157} {
		s := startRogue(t, Config{TLS: f.server, Behaviour: OversizedPublish, OversizedSize: size})
		c := dialRogue(t, s, f.client)
		c.connect()
		c.next() // CONNACK
		raw := make([]byte, size)
		if _, err := io.ReadFull(c.r, raw); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		cp, err := packets.ReadPacket(bytes.NewReader(raw))
		if err != nil || cp.Type != packets.PUBLISH {
			t.Fatalf("size %d: not a PUBLISH: %v", size, err)
		}
	}
}

// TestRogueHugeLength: the 8 bytes follow the CONNACK.
func TestRogueHugeLength(t *testing.T) {
	f := newRogueFleet(t)
	s := startRogue(t, Config{TLS: f.server, Behaviour: HugeLength})
	c := dialRogue(t, s, f.client)
	c.connect()
	c.next() // CONNACK
	got := make([]byte, len(HugeLengthBytes))
	if _, err := io.ReadFull(c.r, got); err != nil || !bytes.Equal(got, HugeLengthBytes) {
		t.Fatalf("after CONNACK: % x (%v)", got, err)
	}
}

func waitUntil(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}
