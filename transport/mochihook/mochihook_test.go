// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package mochihook_test

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"path/filepath"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/mochihook"
	"github.com/d2c-iot/d2c/transport/wire"
)

var services = []broker.ServiceRights{{Name: "verifier", Read: []string{wire.AllUp}}}

// pki is a fleet CA and the broker side of TLS.
type pki struct {
	dir    string
	ca     *identity.CA
	roots  *x509.CertPool
	server tls.Certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := identity.InitCA(dir, identity.CAConfig{Fleet: "mochihook test"})
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: dir, ca: ca, roots: x509.NewCertPool()}
	p.roots.AddCert(ca.Root())
	p.server = testpki.Server(t, ca, "127.0.0.1")
	return p
}

func (p *pki) device(t *testing.T, id string) tls.Certificate {
	t.Helper()
	return testpki.Device(t, p.ca, id)
}

func (p *pki) service(t *testing.T, name string) tls.Certificate {
	t.Helper()
	return testpki.Service(t, p.ca, name)
}

// custom signs a client certificate with the fleet's issuing key for an
// arbitrary subject, as a compromised or careless issuer might.
func (p *pki) custom(t *testing.T, subject pkix.Name) tls.Certificate {
	t.Helper()
	issKey, err := identity.ReadKeyFile(filepath.Join(p.dir, identity.CAIssuingKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	key := testpki.Key(t)
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()),
		Subject:      subject,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, p.ca.Issuing(), key.Public(), issKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, p.ca.Issuing().Raw}, PrivateKey: key, Leaf: leaf}
}

// serverConn runs a TLS 1.3 handshake over loopback TCP between a client
// holding cert (none if nil) and a server with clientAuth, and returns the
// server's side of the connection.
func (p *pki) serverConn(t *testing.T, clientAuth tls.ClientAuthType, cert *tls.Certificate) *tls.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	clientConf := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: p.roots}
	if cert != nil {
		clientConf.Certificates = []tls.Certificate{*cert}
	}
	done := make(chan error, 1)
	go func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), clientConf)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		done <- err
	}()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	s := tls.Server(raw, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{p.server},
		ClientAuth: clientAuth, ClientCAs: p.roots})
	t.Cleanup(func() { s.Close() })
	if err := s.Handshake(); err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	return s
}

// newClient returns a mochi client over conn as mochi's server makes it
// before OnConnectAuthenticate: it has parsed the CONNECT.
func newClient(t *testing.T, conn net.Conn, pk packets.Packet) *mqtt.Client {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	cl := srv.NewClient(conn, "test", "", false)
	cl.ParseConnect("test", pk)
	return cl
}

func connectPacket(clientID string) packets.Packet {
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), ClientIdentifier: clientID, Clean: true, Keepalive: 30,
		},
	}
}

func newHook(t *testing.T, cfg mochihook.Config) *mochihook.Hook {
	t.Helper()
	h, err := mochihook.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.SetOpts(slog.New(slog.DiscardHandler), nil)
	return h
}

func TestMochiHookNew(t *testing.T) {
	h := newHook(t, mochihook.Config{Services: services})
	if h.ID() == "" || !h.Provides(mqtt.OnConnectAuthenticate) || !h.Provides(mqtt.OnACLCheck) || !h.Provides(mqtt.OnPublish) || h.Provides(mqtt.OnSubscribe) {
		t.Errorf("ID %q, Provides wrong", h.ID())
	}
	for _, bad := range [][]broker.ServiceRights{
		{{Name: "v"}, {Name: "v"}},
		{{Name: "svc:v"}},
		{{Name: "v", Read: []string{"#/x"}}},
		{{Name: "v", Write: []string{"$SYS/#"}}},
	} {
		if _, err := mochihook.New(mochihook.Config{Services: bad}); err == nil {
			t.Errorf("New(%+v) succeeded", bad)
		}
	}
	// The hook keeps its own copy of the rights.
	mine := []broker.ServiceRights{{Name: "verifier", Read: []string{wire.AllUp}}}
	h = newHook(t, mochihook.Config{Services: mine})
	mine[0].Read[0] = "#"
	p := newPKI(t)
	cert := p.service(t, "verifier")
	cl := newClient(t, p.serverConn(t, tls.RequireAndVerifyClientCert, &cert), connectPacket("x"))
	if !h.OnConnectAuthenticate(cl, connectPacket("x")) {
		t.Fatal("service refused")
	}
	if h.OnACLCheck(cl, "anything", false) || !h.OnACLCheck(cl, wire.TelemetryTopic("d", "s"), false) {
		t.Error("the hook follows the caller's slice after New")
	}
}

type fakeRevocation struct {
	revoked map[string]bool
	asked   []string
	fail    error
}

func (f *fakeRevocation) CheckRevoked(cert *x509.Certificate) error {
	f.asked = append(f.asked, cert.Subject.CommonName)
	if f.fail != nil {
		return f.fail
	}
	if f.revoked[cert.Subject.CommonName] {
		return fmt.Errorf("%w: %s", identity.ErrRevoked, cert.Subject.CommonName)
	}
	return nil
}

func TestMochiHookAuthenticate(t *testing.T) {
	p := newPKI(t)
	devA := p.device(t, "dev-a")
	devR := p.device(t, "dev-revoked")
	verifier := p.service(t, "verifier")
	ghost := p.service(t, "ghost")
	oidCN := asn1.ObjectIdentifier{2, 5, 4, 3}
	twoCNs := p.custom(t, pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidCN, Value: "dev-a"}, {Type: oidCN, Value: "svc:verifier"}}})
	badCN := p.custom(t, pkix.Name{CommonName: "dev a"})
	noCN := p.custom(t, pkix.Name{Organization: []string{"x"}})
	rev := &fakeRevocation{revoked: map[string]bool{"dev-revoked": true}}
	h := newHook(t, mochihook.Config{Services: services, Revocation: rev})

	for _, tc := range []struct {
		name       string
		clientAuth tls.ClientAuthType
		cert       *tls.Certificate
		want       string // username, or "" if refused
	}{
		{"device", tls.RequireAndVerifyClientCert, &devA, "dev-a"},
		{"service", tls.RequireAndVerifyClientCert, &verifier, "svc:verifier"},
		{"device, optional client certificate verified", tls.VerifyClientCertIfGiven, &devA, "dev-a"},
		{"unknown service", tls.RequireAndVerifyClientCert, &ghost, ""},
		{"revoked", tls.RequireAndVerifyClientCert, &devR, ""},
		{"two common names", tls.RequireAndVerifyClientCert, &twoCNs, ""},
		{"CN not a device ID", tls.RequireAndVerifyClientCert, &badCN, ""},
		{"no CN", tls.RequireAndVerifyClientCert, &noCN, ""},
		{"unverified certificate", tls.RequireAnyClientCert, &devA, ""},
		{"no certificate", tls.VerifyClientCertIfGiven, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := p.serverConn(t, tc.clientAuth, tc.cert)
			pk := connectPacket("chosen-by-client")
			pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte("dev-b")
			pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte("secret")
			cl := newClient(t, conn, pk)
			got := h.OnConnectAuthenticate(cl, pk)
			if got != (tc.want != "") {
				t.Fatalf("OnConnectAuthenticate = %v, want %v", got, tc.want != "")
			}
			if !got {
				if h.OnACLCheck(cl, wire.TelemetryTopic("dev-b", "s"), true) {
					t.Error("refused client passes an ACL check on its claimed username")
				}
				return
			}
			if string(cl.Properties.Username) != tc.want || cl.ID != tc.want {
				t.Errorf("username %q, client ID %q; want both %q", cl.Properties.Username, cl.ID, tc.want)
			}
		})
	}
	if len(rev.asked) == 0 {
		t.Error("the revocation checker was never asked")
	}

	t.Run("revocation check failing", func(t *testing.T) {
		h := newHook(t, mochihook.Config{Revocation: &fakeRevocation{fail: errors.New("CRL unreadable")}})
		pk := connectPacket("dev-a")
		if h.OnConnectAuthenticate(newClient(t, p.serverConn(t, tls.RequireAndVerifyClientCert, &devA), pk), pk) {
			t.Error("accepted while the revocation check fails")
		}
	})

	t.Run("empty client ID", func(t *testing.T) {
		pk := connectPacket("")
		cl := newClient(t, p.serverConn(t, tls.RequireAndVerifyClientCert, &devA), pk)
		if cl.Properties.Props.AssignedClientID == "" {
			t.Fatal("mochi assigned no client ID")
		}
		if !h.OnConnectAuthenticate(cl, pk) {
			t.Fatal("refused")
		}
		if cl.ID != "dev-a" || cl.Properties.Props.AssignedClientID != "dev-a" {
			t.Errorf("client ID %q, assigned %q; want dev-a", cl.ID, cl.Properties.Props.AssignedClientID)
		}
	})

	t.Run("no TLS", func(t *testing.T) {
		// Username and password alone are never accepted.
		c1, c2 := net.Pipe()
		defer c1.Close()
		defer c2.Close()
		pk := connectPacket("dev-a")
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte("dev-a")
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte("secret")
		cl := newClient(t, c1, pk)
		if h.OnConnectAuthenticate(cl, pk) {
			t.Error("accepted a client without TLS")
		}
		if h.OnACLCheck(cl, wire.TelemetryTopic("dev-a", "s"), true) {
			t.Error("a client without TLS passes an ACL check")
		}
	})

	t.Run("will", func(t *testing.T) {
		for topic, want := range map[string]bool{
			wire.TelemetryTopic("dev-a", "status"): true,
			wire.TelemetryTopic("dev-b", "status"): false,
			wire.CommandTopic("dev-b"):             false,
			"$SYS/broker/x":                        false,
		} {
			pk := connectPacket("dev-a")
			pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillQos = true, topic, 1
			cl := newClient(t, p.serverConn(t, tls.RequireAndVerifyClientCert, &devA), pk)
			if got := h.OnConnectAuthenticate(cl, pk); got != want {
				t.Errorf("will on %s: OnConnectAuthenticate = %v, want %v", topic, got, want)
			}
		}
	})
}

func TestMochiHookACL(t *testing.T) {
	p := newPKI(t)
	devA := p.device(t, "dev-a")
	h := newHook(t, mochihook.Config{Services: services})
	pk := connectPacket("dev-a")
	cl := newClient(t, p.serverConn(t, tls.RequireAndVerifyClientCert, &devA), pk)
	if !h.OnConnectAuthenticate(cl, pk) {
		t.Fatal("refused")
	}
	for _, tc := range []struct {
		topic string
		write bool
		want  bool
	}{
		{wire.TelemetryTopic("dev-a", "t"), true, true},
		{wire.TelemetryTopic("dev-b", "t"), true, false},
		{wire.CommandTopic("dev-a"), false, true},
		{wire.CommandTopic("dev-a"), true, false},
		{wire.CommandTopic("dev-b"), false, false},
		{"d2c/v1/dev/+/down/cmd", false, false},
		{"$share/g/" + wire.CommandTopic("dev-a"), false, true},
		{"#", false, false},
		{"", true, false}, // a publish by topic alias alone
	} {
		if got := h.OnACLCheck(cl, tc.topic, tc.write); got != tc.want {
			t.Errorf("OnACLCheck(%q, write %v) = %v, want %v", tc.topic, tc.write, got, tc.want)
		}
	}
	// The rights come from the certificate, not from the username field.
	cl.Properties.Username = []byte("dev-b")
	if h.OnACLCheck(cl, wire.TelemetryTopic("dev-b", "t"), true) || !h.OnACLCheck(cl, wire.TelemetryTopic("dev-a", "t"), true) {
		t.Error("OnACLCheck follows the username field")
	}
}

// TestMochiHookRetained checks that a retained PUBLISH ends the
// connection (the rogue device suite in transport checks the DISCONNECT
// 0x9A on the wire), and that a retained will refuses the client.
func TestMochiHookRetained(t *testing.T) {
	p := newPKI(t)
	devA := p.device(t, "dev-a")
	h := newHook(t, mochihook.Config{Services: services})
	pk := connectPacket("dev-a")
	cl := newClient(t, p.serverConn(t, tls.RequireAndVerifyClientCert, &devA), pk)
	if !h.OnConnectAuthenticate(cl, pk) {
		t.Fatal("refused")
	}
	pub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: wire.TelemetryTopic("dev-a", "t"), Payload: []byte("x"), PacketID: 1}
	if got, err := h.OnPublish(cl, pub); err != nil || got.TopicName != pub.TopicName {
		t.Fatalf("plain publish: %v", err)
	}
	if cl.StopCause() != nil {
		t.Fatalf("plain publish stopped the client: %v", cl.StopCause())
	}
	pub.FixedHeader.Retain = true
	if _, err := h.OnPublish(cl, pub); !errors.Is(err, packets.ErrRejectPacket) {
		t.Errorf("retained publish: %v, want ErrRejectPacket", err)
	}
	if !errors.Is(cl.StopCause(), packets.ErrRetainNotSupported) {
		t.Errorf("after a retained publish the client stopped with %v, want %v", cl.StopCause(), packets.ErrRetainNotSupported)
	}

	will := connectPacket("dev-a")
	will.Connect.WillFlag, will.Connect.WillTopic, will.Connect.WillPayload = true, wire.TelemetryTopic("dev-a", "will"), []byte("gone")
	cl = newClient(t, p.serverConn(t, tls.RequireAndVerifyClientCert, &devA), will)
	if !h.OnConnectAuthenticate(cl, will) {
		t.Fatal("will on its own topic refused")
	}
	will.Connect.WillRetain = true
	cl = newClient(t, p.serverConn(t, tls.RequireAndVerifyClientCert, &devA), will)
	if h.OnConnectAuthenticate(cl, will) {
		t.Error("retained will accepted")
	}
}

func ExampleNew() {
	hook, err := mochihook.New(mochihook.Config{
		Services: []broker.ServiceRights{{Name: "verifier", Read: []string{wire.AllUp}}},
		// Revocation: ca, or a RevocationList parsed from the fleet CRL.
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	// The only hook that authenticates or authorizes: mochi allows what
	// any hook allows.
	if err := srv.AddHook(hook, nil); err != nil {
		fmt.Println(err)
		return
	}
	// Then a TLS listener that requires and verifies client certificates:
	//
	//	srv.AddListener(listeners.NewTCP(listeners.Config{ID: "mqtts", Address: "127.0.0.1:8883",
	//		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: ...,
	//			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: fleetRoot}}))
	//
	// (transport/devbroker does all of this.)
	fmt.Println("installed", hook.ID())
	// Output: installed d2c-certificate-acl
}
