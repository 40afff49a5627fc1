// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

// Broker policy tests: the pure Authorize function, the generated mosquitto
// configuration, and the same scenarios run against a real mosquitto 2.x
// (started with that configuration) and against the embedded development
// broker (mochi-mqtt with transport/mochihook), with paho.golang as the
// client, over mutual TLS 1.3 on 127.0.0.1.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/wire"
)

// testServices are the cloud services of the broker tests.
var testServices = []broker.ServiceRights{
	{Name: "verifier", Read: []string{wire.AllUp}},
	{Name: "commander", Read: []string{wire.AllCommandResults}, Write: []string{wire.TopicPrefix + "+/down/cmd"}},
}

func TestAuthorize(t *testing.T) {
	const (
		a   = "dev-a"
		b   = "dev-b"
		r   = broker.AccessRead
		w   = broker.AccessWrite
		rw  = broker.AccessRead | broker.AccessWrite
		ver = "svc:verifier"
		cmd = "svc:commander"
	)
	tele := func(dev string) string { return wire.TelemetryTopic(dev, "temp") }
	tests := []struct {
		user, topic string
		access      broker.Access
		want        bool
	}{
		// A device writes only under its own up/ subtree.
		{a, tele(a), w, true},
		{a, wire.KeyTopic(a), w, true},
		{a, wire.CommandResultTopic(a), w, true},
		{a, "d2c/v1/dev/dev-a/up", w, true}, // the parent of up/#, as mosquitto's pattern allows
		{a, tele(b), w, false},
		{a, wire.CommandTopic(a), w, false}, // its own commands are the cloud's to write
		{a, wire.CommandTopic(b), w, false},
		{a, "d2c/v1/dev/dev-a", w, false},
		{a, "d2c/v1/dev/dev-ab/up/tele/x", w, false}, // a prefix of another ID is not its own
		{"dev-ab", "d2c/v1/dev/dev-a/up/tele/x", w, false},
		{a, "d2c/v1/dev/Dev-a/up/tele/x", w, false}, // IDs are case sensitive
		{a, "other/topic", w, false},
		{a, "d2c/v1/dev/dev-a/up/+", w, false}, // no wildcards in a published topic
		{a, "d2c/v1/dev/dev-a/up/#", w, false},
		// A device reads only under its own down/ subtree.
		{a, wire.CommandTopic(a), r, true},
		{a, "d2c/v1/dev/dev-a/down/#", r, true},
		{a, "d2c/v1/dev/dev-a/down/+", r, true},
		{a, "d2c/v1/dev/dev-a/down", r, true},
		{a, wire.CommandTopic(b), r, false},
		{a, tele(a), r, false}, // not even its own telemetry
		{a, wire.CommandTopic(a), rw, false},
		// Wildcard filters are allowed only inside the device's subtree.
		{a, "#", r, false},
		{a, "+", r, false},
		{a, "+/#", r, false},
		{a, "d2c/#", r, false},
		{a, "d2c/v1/dev/#", r, false},
		{a, "d2c/v1/dev/+/down/cmd", r, false},
		{a, "d2c/v1/dev/+/down/#", r, false},
		{a, "d2c/v1/dev/dev-a/#", r, false},
		{a, "d2c/v1/dev/dev-a/+/cmd", r, false},
		{a, "d2c/v1/+/dev-a/down/cmd", r, false},
		{a, "$SYS/#", r, false},
		{a, "$SYS/broker/clients/connected", r, false},
		// Malformed filters.
		{a, "d2c/v1/dev/dev-a/down/cmd#", r, false},
		{a, "d2c/v1/dev/dev-a/down/#/x", r, false},
		{a, "d2c/v1/dev/dev-a/down/c+", r, false},
		{a, "", r, false},
		{a, "", w, false},
		{a, "d2c/v1/dev/dev-a/down/\xff", r, false},
		{a, strings.Repeat("x", 70000), w, false},
		// NUL is refused wherever it is.
		{a, "d2c/v1/dev/dev-a/up/tele/x\x00", w, false},
		{a, "d2c/v1/dev/dev-a\x00/up/tele/x", w, false},
		{a, "d2c/v1/dev/dev-a/down/\x00", r, false},
		// Shared subscriptions are judged on their filter.
		{a, "$share/g/d2c/v1/dev/dev-a/down/cmd", r, true},
		{a, "$share/g/d2c/v1/dev/dev-b/down/cmd", r, false},
		{a, "$share/g/#", r, false},
		{a, "$share//d2c/v1/dev/dev-a/down/cmd", r, false},
		{a, "$share/g+/d2c/v1/dev/dev-a/down/cmd", r, false},
		{a, "$share/g", r, false},
		{a, "$share/g/", r, false},
		{a, "$share/g/$share/h/d2c/v1/dev/dev-a/down/cmd", r, false},
		{a, "$SHARE/g/d2c/v1/dev/dev-a/down/cmd", r, false},
		{a, "$share/g/d2c/v1/dev/dev-a/up/x", w, false}, // no publishing to $share
		// Services have exactly their rights.
		{ver, "d2c/v1/dev/+/up/#", r, true},
		{ver, "d2c/v1/dev/+/up/tele/#", r, true},
		{ver, "d2c/v1/dev/dev-a/up/#", r, true},
		{ver, "$share/verifiers/d2c/v1/dev/+/up/#", r, true},
		{ver, tele(a), r, true},
		{ver, wire.AllCommandResults, r, true},
		{ver, "d2c/v1/dev/#", r, false},
		{ver, "d2c/v1/dev/+/#", r, false},
		{ver, "d2c/v1/dev/+/+/#", r, false},
		{ver, "#", r, false},
		{ver, wire.CommandTopic(a), r, false},
		{ver, wire.CommandTopic(a), w, false},
		{ver, tele(a), w, false},
		{cmd, wire.CommandTopic(a), w, true},
		{cmd, wire.CommandTopic(b), w, true},
		{cmd, wire.CommandTopic(a), r, false},
		{cmd, wire.CommandResultTopic(a), r, true},
		{cmd, wire.AllCommandResults, r, true},
		{cmd, wire.AllUp, r, false},
		{cmd, tele(a), r, false},
		// Unknown or malformed identities have no rights.
		{"svc:ghost", tele(a), r, false},
		{"svc:", tele(a), r, false},
		{"svc:verifier:x", tele(a), r, false},
		{"svc:Verifier", tele(a), r, false},
		{"verifier", wire.AllUp, r, false},
		{"", "d2c/v1/dev//up/x", w, false},
		{"", "d2c/v1/dev//down/x", r, false},
		{"+", "d2c/v1/dev/+/up/x", w, false},
		{"#", "d2c/v1/dev/#", r, false},
		{"dev/a", "d2c/v1/dev/dev/a/up/x", w, false},
		{"dev-a\x00", "d2c/v1/dev/dev-a\x00/up/x", w, false},
		{".hidden", "d2c/v1/dev/.hidden/up/x", w, false},
		// Access must be read, write or both.
		{a, tele(a), 0, false},
		{a, tele(a), 4, false},
		{a, tele(a), w | 4, false},
	}
	for _, tc := range tests {
		if got := broker.Authorize(tc.user, tc.topic, tc.access, testServices); got != tc.want {
			t.Errorf("Authorize(%q, %q, %d) = %v, want %v", tc.user, clipTest(tc.topic), tc.access, got, tc.want)
		}
	}

	// No device ID can be a service's username: the colon is not in the
	// device ID alphabet, so a device certificate cannot be issued for it.
	for _, name := range []string{"svc:verifier", "svc:commander"} {
		if err := identity.ValidateDeviceID(name); err == nil {
			t.Errorf("%q is a valid device ID", name)
		}
	}
	// A service's rights never come from a malformed entry.
	bad := []broker.ServiceRights{{Name: "verifier", Read: []string{"d2c/#/x", "$SYS/#", "#x"}}}
	for _, f := range []string{"d2c/v1/dev/dev-a/up/x", "$SYS/x", "#x"} {
		if broker.Authorize(ver, f, r, bad) {
			t.Errorf("malformed grant allowed %q", f)
		}
	}
}

func clipTest(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

func TestAuthorizeServiceRightsValidate(t *testing.T) {
	good := broker.ServiceRights{Name: "verifier", Read: []string{wire.AllUp, "a/+/b"}, Write: []string{"x/y"}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []broker.ServiceRights{
		{Name: ""},
		{Name: "svc:verifier"},
		{Name: "a b"},
		{Name: "v", Read: []string{""}},
		{Name: "v", Read: []string{"a/#/b"}},
		{Name: "v", Read: []string{"$SYS/#"}},
		{Name: "v", Read: []string{"$share/g/a/b"}},
		{Name: "v", Read: []string{"a b"}},
		{Name: "v", Write: []string{"a\nuser svc:evil"}},
		{Name: "v", Write: []string{"a/%u/b"}},
		{Name: "v", Write: []string{"a\x00"}},
	} {
		if err := s.Validate(); err == nil {
			t.Errorf("Validate(%+q) succeeded", s)
		}
	}
}

func TestBrokerMosquittoConfig(t *testing.T) {
	valid := broker.MosquittoConfig{
		Listen: "127.0.0.1:8883", CAFile: "/etc/d2c/ca.pem", CertFile: "/etc/d2c/server.pem",
		KeyFile: "/etc/d2c/server.key", ACLFile: "/etc/d2c/acl", Services: testServices,
	}
	conf, err := valid.Conf()
	if err != nil {
		t.Fatal(err)
	}
	// Directives, comments aside.
	var directives []string
	for _, line := range strings.Split(conf, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			directives = append(directives, line)
		}
	}
	for _, want := range []string{
		"per_listener_settings false", "listener 8883 127.0.0.1", "cafile /etc/d2c/ca.pem",
		"certfile /etc/d2c/server.pem", "keyfile /etc/d2c/server.key", "require_certificate true",
		"use_identity_as_username true", "use_username_as_clientid true", "tls_version tlsv1.3",
		"allow_anonymous false", "set_tcp_nodelay true", "acl_file /etc/d2c/acl",
		fmt.Sprintf("max_packet_size %d", broker.DefaultMaxPacketSize),
		"retain_available false", "max_qos 1",
		fmt.Sprintf("max_queued_messages %d", broker.DefaultMaxQueuedMessages),
		fmt.Sprintf("max_queued_bytes %d", broker.DefaultMaxQueuedBytes),
		fmt.Sprintf("max_inflight_bytes %d", broker.DefaultMaxPacketSize),
		fmt.Sprintf("memory_limit %d", broker.DefaultMemoryLimit),
	} {
		if !contains(directives, want) {
			t.Errorf("Conf lacks %q:\n%s", want, conf)
		}
	}
	for _, d := range directives {
		f := strings.Fields(d)[0]
		if f == "listener" && d != "listener 8883 127.0.0.1" || f == "port" || f == "crlfile" || f == "persistence" {
			t.Errorf("Conf has %q", d)
		}
	}
	// Every limit is explained: a comment line precedes each directive
	// (a directive continuing a group follows one that does).
	lines := strings.Split(conf, "\n")
	for i, line := range lines {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch f[0] {
		case "retain_available", "max_packet_size", "max_queued_messages", "max_inflight_bytes", "memory_limit", "max_qos":
			if i == 0 || !strings.HasPrefix(lines[i-1], "# ") {
				t.Errorf("%q has no comment", line)
			}
		}
	}
	// The listener option max_qos follows the listener line; the global
	// limits precede it.
	if l, q, m := strings.Index(conf, "\nlistener "), strings.Index(conf, "\nmax_qos "), strings.Index(conf, "\nmemory_limit "); !(m < l && l < q) {
		t.Errorf("memory_limit at %d, listener at %d, max_qos at %d: want the global limit before the listener, max_qos after", m, l, q)
	}
	withCRL := valid
	withCRL.CRLFile, withCRL.PersistenceDir, withCRL.MaxPacketSize, withCRL.Listen = "/etc/d2c/crl.pem", "/var/lib/d2c", 4096, "[::1]:8883"
	withCRL.MaxQueuedMessages, withCRL.MaxQueuedBytes, withCRL.MemoryLimit = 1000, 1<<20, 4<<20
	conf, err = withCRL.Conf()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\ncrlfile /etc/d2c/crl.pem\n", "\npersistence true\n", "\npersistence_location /var/lib/d2c/\n", "\nmax_packet_size 4096\n", "\nlistener 8883 ::1\n",
		"\nmax_queued_messages 1000\n", "\nmax_queued_bytes 1048576\n", "\nmax_inflight_bytes 4096\n", "\nmemory_limit 4194304\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("Conf lacks %q:\n%s", want, conf)
		}
	}

	acl, err := valid.ACL()
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, line := range strings.Split(acl, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			rules = append(rules, line)
		}
	}
	wantRules := []string{
		"pattern write d2c/v1/dev/%u/up/#",
		"pattern read d2c/v1/dev/%u/down/#",
		"user svc:verifier",
		"topic read d2c/v1/dev/+/up/#",
		"user svc:commander",
		"topic read d2c/v1/dev/+/up/cmdres",
		"topic write d2c/v1/dev/+/down/cmd",
	}
	if strings.Join(rules, "\n") != strings.Join(wantRules, "\n") {
		t.Errorf("ACL rules:\n%s\nwant:\n%s", strings.Join(rules, "\n"), strings.Join(wantRules, "\n"))
	}

	for name, mod := range map[string]func(*broker.MosquittoConfig){
		"no Listen":            func(c *broker.MosquittoConfig) { c.Listen = "" },
		"no host":              func(c *broker.MosquittoConfig) { c.Listen = ":8883" },
		"no port":              func(c *broker.MosquittoConfig) { c.Listen = "127.0.0.1" },
		"port 0":               func(c *broker.MosquittoConfig) { c.Listen = "127.0.0.1:0" },
		"port name":            func(c *broker.MosquittoConfig) { c.Listen = "127.0.0.1:mqtts" },
		"port too large":       func(c *broker.MosquittoConfig) { c.Listen = "127.0.0.1:65536" },
		"host with newline":    func(c *broker.MosquittoConfig) { c.Listen = "127.0.0.1\nlistener:1883" },
		"no CAFile":            func(c *broker.MosquittoConfig) { c.CAFile = "" },
		"no CertFile":          func(c *broker.MosquittoConfig) { c.CertFile = "" },
		"no KeyFile":           func(c *broker.MosquittoConfig) { c.KeyFile = "" },
		"no ACLFile":           func(c *broker.MosquittoConfig) { c.ACLFile = "" },
		"relative CAFile":      func(c *broker.MosquittoConfig) { c.CAFile = "ca.pem" },
		"relative CRLFile":     func(c *broker.MosquittoConfig) { c.CRLFile = "crl.pem" },
		"newline in KeyFile":   func(c *broker.MosquittoConfig) { c.KeyFile = "/k\nlistener 1883" },
		"trailing space":       func(c *broker.MosquittoConfig) { c.ACLFile = "/etc/acl " },
		"relative persistence": func(c *broker.MosquittoConfig) { c.PersistenceDir = "db" },
		"packet size small":    func(c *broker.MosquittoConfig) { c.MaxPacketSize = 10 },
		"packet size negative": func(c *broker.MosquittoConfig) { c.MaxPacketSize = -1 },
		"packet size huge":     func(c *broker.MosquittoConfig) { c.MaxPacketSize = 1 << 30 },
		"packet size over what clients read": func(c *broker.MosquittoConfig) {
			c.MaxPacketSize = broker.DefaultMaxPacketSize + 1
		},
		"queued messages < 0": func(c *broker.MosquittoConfig) { c.MaxQueuedMessages = -1 },
		"queued bytes < 0":    func(c *broker.MosquittoConfig) { c.MaxQueuedBytes = -1 },
		"queued bytes < packet": func(c *broker.MosquittoConfig) {
			c.MaxQueuedBytes = broker.DefaultMaxPacketSize - 1
		},
		"queued bytes over int": func(c *broker.MosquittoConfig) { c.MaxQueuedBytes, c.MemoryLimit = 1<<31, 1<<33 },
		"memory < 0":            func(c *broker.MosquittoConfig) { c.MemoryLimit = -1 },
		"memory < 2x queue":     func(c *broker.MosquittoConfig) { c.MemoryLimit = 2*broker.DefaultMaxQueuedBytes - 1 },
		"queue over default memory": func(c *broker.MosquittoConfig) {
			c.MaxQueuedBytes = broker.DefaultMemoryLimit/2 + 1
		},
		"duplicate service": func(c *broker.MosquittoConfig) {
			c.Services = []broker.ServiceRights{{Name: "v"}, {Name: "v"}}
		},
		"bad service filter": func(c *broker.MosquittoConfig) {
			c.Services = []broker.ServiceRights{{Name: "v", Read: []string{"a\ntopic readwrite #"}}}
		},
	} {
		c := valid
		mod(&c)
		if _, err := c.Conf(); err == nil {
			t.Errorf("%s: Conf succeeded", name)
		}
		if _, err := c.ACL(); err == nil {
			t.Errorf("%s: ACL succeeded", name)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// brokerTimeout bounds every network operation of the broker tests.
const brokerTimeout = 10 * time.Second

// brokerFleet is a fleet CA in a temporary directory, on the wall clock
// (mosquitto checks validity against the real time), with a broker
// certificate for 127.0.0.1 and client certificates.
type brokerFleet struct {
	ca     *identity.CA
	roots  *x509.CertPool
	server tls.Certificate
	certs  map[string]tls.Certificate // by CN
}

func newBrokerFleet(t *testing.T) *brokerFleet {
	t.Helper()
	ca, err := identity.InitCA(filepath.Join(t.TempDir(), "ca"), identity.CAConfig{Fleet: "broker test"})
	if err != nil {
		t.Fatal(err)
	}
	f := &brokerFleet{ca: ca, roots: x509.NewCertPool(), certs: map[string]tls.Certificate{}}
	f.roots.AddCert(ca.Root())
	f.server = testpki.Server(t, ca, "127.0.0.1")
	return f
}

// device issues a device certificate for id.
func (f *brokerFleet) device(t *testing.T, id string) tls.Certificate {
	t.Helper()
	tc := testpki.Device(t, f.ca, id)
	f.certs[id] = tc
	return tc
}

// service issues a service certificate for svc:<name>.
func (f *brokerFleet) service(t *testing.T, name string) tls.Certificate {
	t.Helper()
	tc := testpki.Service(t, f.ca, name)
	f.certs[broker.ServiceName(name)] = tc
	return tc
}

// dialTLS opens a mutual TLS 1.3 connection to addr with cert (none if
// nil), verifying the broker against the fleet root.
func (f *brokerFleet) dialTLS(t *testing.T, addr string, cert *tls.Certificate) (*tls.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), brokerTimeout)
	defer cancel()
	conf := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.roots}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	d := tls.Dialer{Config: conf}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*tls.Conn)
	t.Cleanup(func() { _ = tc.Close() })
	return tc, nil
}

// mqttClient is a paho client with what it received.
type mqttClient struct {
	name string
	c    *paho.Client
	msgs chan *paho.Publish
	// lost receives how the connection ended, if the client did not end
	// it: the server's DISCONNECT reason, or the network error.
	lost chan string
}

// connectOpts are the variations of the CONNECT packet the tests use.
type connectOpts struct {
	clientID string // default: the certificate's CN
	will     *paho.WillMessage
	username string
	password string
}

// connect dials addr as the holder of cert and sends an MQTT v5 CONNECT.
// It returns the client on success, and the CONNACK whenever there is one.
func (f *brokerFleet) connect(t *testing.T, addr string, cert tls.Certificate, o connectOpts) (*mqttClient, *paho.Connack, error) {
	t.Helper()
	conn, err := f.dialTLS(t, addr, &cert)
	if err != nil {
		return nil, nil, fmt.Errorf("TLS: %w", err)
	}
	m := &mqttClient{name: cert.Leaf.Subject.CommonName, msgs: make(chan *paho.Publish, 100), lost: make(chan string, 1)}
	lost := func(how string) {
		select {
		case m.lost <- how:
		default:
		}
	}
	c := paho.NewClient(paho.ClientConfig{
		Conn:          packets.NewThreadSafeConn(conn),
		PacketTimeout: brokerTimeout,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case m.msgs <- pr.Packet:
			default:
				t.Errorf("%s: message buffer full", m.name)
			}
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { lost(fmt.Sprintf("DISCONNECT reason %#x", d.ReasonCode)) },
		OnClientError:      func(err error) { lost(err.Error()) },
	})
	cp := &paho.Connect{ClientID: o.clientID, CleanStart: true, KeepAlive: 30, WillMessage: o.will}
	if cp.ClientID == "" {
		cp.ClientID = m.name
	}
	if o.username != "" {
		cp.Username, cp.UsernameFlag = o.username, true
	}
	if o.password != "" {
		cp.Password, cp.PasswordFlag = []byte(o.password), true
	}
	ctx, cancel := context.WithTimeout(t.Context(), brokerTimeout)
	defer cancel()
	ack, err := c.Connect(ctx, cp)
	if err != nil {
		return nil, ack, err
	}
	m.c = c
	t.Cleanup(func() {
		_ = c.Disconnect(&paho.Disconnect{})
		select {
		case <-c.Done():
		case <-time.After(brokerTimeout):
			t.Errorf("%s: paho client did not stop", m.name)
		}
	})
	return m, ack, nil
}

// mustConnect is connect that fails the test unless CONNACK is 0.
func (f *brokerFleet) mustConnect(t *testing.T, addr, cn string) *mqttClient {
	t.Helper()
	m, ack, err := f.connect(t, addr, f.certs[cn], connectOpts{})
	if err != nil {
		t.Fatalf("%s: connect: %v (CONNACK %+v)", cn, err, ack)
	}
	return m
}

// publish publishes payload on topic at QoS 1 and returns the PUBACK
// reason code.
func (m *mqttClient) publish(t *testing.T, topic, payload string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), brokerTimeout)
	defer cancel()
	resp, err := m.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	if resp == nil {
		t.Fatalf("%s: publish %s: no PUBACK: %v", m.name, topic, err)
	}
	if (err == nil) != (resp.ReasonCode < 0x80) {
		t.Errorf("%s: publish %s: reason %#x with error %v", m.name, topic, resp.ReasonCode, err)
	}
	return resp.ReasonCode
}

// subscribe subscribes to filter at QoS 1 and returns the SUBACK reason.
func (m *mqttClient) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), brokerTimeout)
	defer cancel()
	ack, err := m.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if ack == nil || len(ack.Reasons) != 1 {
		t.Fatalf("%s: subscribe %s: no SUBACK: %v", m.name, filter, err)
	}
	return ack.Reasons[0]
}

// expectNext fails the test unless the next message m receives is payload
// on topic. Tests publish a marker after whatever must not be delivered:
// brokers deliver one publisher's messages in order, so the marker
// arriving first shows that nothing else was delivered.
func (m *mqttClient) expectNext(t *testing.T, topic, payload string) {
	t.Helper()
	select {
	case p := <-m.msgs:
		if p.Topic != topic || string(p.Payload) != payload {
			t.Errorf("%s received %q on %s, want %q on %s", m.name, p.Payload, p.Topic, payload, topic)
		}
	case <-time.After(brokerTimeout):
		t.Errorf("%s: no message on %s within %v", m.name, topic, brokerTimeout)
	}
}

// expectOnly fails the test if m has received, and not yet read, a
// message other than payload on topic.
func (m *mqttClient) expectOnly(t *testing.T, topic, payload string) {
	t.Helper()
	for {
		select {
		case p := <-m.msgs:
			if p.Topic != topic || string(p.Payload) != payload {
				t.Errorf("%s received %q on %s, want only %q on %s", m.name, p.Payload, p.Topic, payload, topic)
			}
		default:
			return
		}
	}
}

// expectNothing fails the test if m has received a message not yet read.
func (m *mqttClient) expectNothing(t *testing.T) {
	t.Helper()
	select {
	case p := <-m.msgs:
		t.Errorf("%s received %q on %s, want nothing", m.name, p.Payload, p.Topic)
	default:
	}
}

// refusedAtTLS dials without a certificate (cert nil) or with a refused
// one, and returns the error the client sees. With TLS 1.3 the client's
// handshake completes before the server has judged the client's
// certificate: the refusal arrives as an alert on the first read, so the
// test reads before it writes.
func (f *brokerFleet) refusedAtTLS(t *testing.T, addr string, cert *tls.Certificate) error {
	t.Helper()
	c, err := f.dialTLS(t, addr, cert)
	if err != nil {
		return err
	}
	_ = c.SetDeadline(time.Now().Add(brokerTimeout))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		return err
	}
	reason, err := testpeer.MQTTConnect(c, "refused")
	if err != nil {
		return err
	}
	t.Errorf("TLS connection was accepted: CONNACK reason %#x", reason)
	return nil
}

// connectWithWill connects as the holder of cert with a QoS 1 will on
// topic, using paho's packet layer directly, and returns the CONNACK
// reason. If the broker accepts, the client disconnects with reason 0x04
// (disconnect with will message) and waits until the broker closes the
// connection, which both brokers do after they have queued the will for
// its subscribers.
func (f *brokerFleet) connectWithWill(t *testing.T, addr string, cert tls.Certificate, topic, payload string) byte {
	t.Helper()
	conn, err := f.dialTLS(t, addr, &cert)
	if err != nil {
		t.Fatalf("TLS: %v", err)
	}
	_ = conn.SetDeadline(time.Now().Add(brokerTimeout))
	cp := &packets.Connect{
		ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: cert.Leaf.Subject.CommonName, CleanStart: true, KeepAlive: 30,
		WillFlag: true, WillQOS: 1, WillTopic: topic, WillMessage: []byte(payload),
		Properties: &packets.Properties{}, WillProperties: &packets.Properties{},
	}
	if _, err := cp.WriteTo(conn); err != nil {
		t.Fatalf("write CONNECT: %v", err)
	}
	pkt, err := packets.ReadPacket(conn)
	if err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	ack, ok := pkt.Content.(*packets.Connack)
	if !ok {
		t.Fatalf("got %v, want CONNACK", pkt)
	}
	if ack.ReasonCode != 0 {
		return ack.ReasonCode
	}
	if _, err := (&packets.Disconnect{ReasonCode: 0x04, Properties: &packets.Properties{}}).WriteTo(conn); err != nil {
		t.Fatalf("write DISCONNECT: %v", err)
	}
	for {
		if _, err := packets.ReadPacket(conn); err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the broker did not close the connection after DISCONNECT: %v", err)
			}
			return 0
		}
	}
}

// brokerExpect is what a broker answers where mosquitto and mochi differ.
type brokerExpect struct {
	// foreignSubscribe is the SUBACK reason for a device's subscription
	// outside its subtree: mosquitto grants it (QoS 1) and then delivers
	// nothing; mochi refuses it (0x87).
	foreignSubscribe byte
	// foreignWill is the CONNACK reason for a will on a topic the client
	// may not publish on: mosquitto accepts the connection and drops the
	// will when it would send it; mochi (with mochihook) refuses the
	// connection (0x86).
	foreignWill byte
	// unknownService is the CONNACK reason for a service certificate with
	// no configured rights: mosquitto accepts it (with no rights), mochi
	// refuses it (0x86).
	unknownService byte
	// noCert and revoked are substrings of the TLS error the client sees.
	noCert, revoked string
	// takenOver is a substring of how a connection ends when another
	// one takes over its session: mosquitto closes the socket, mochi sends
	// DISCONNECT reason 0x8e (session taken over).
	takenOver string
}

// runBrokerScenarios checks the broker policy on a running broker with
// the fleet's certificates: devices dev-a, dev-b and dev-revoked (revoked),
// services svc:verifier, svc:commander and svc:ghost (not configured).
func runBrokerScenarios(t *testing.T, f *brokerFleet, addr string, want brokerExpect) {
	const (
		a = "dev-a"
		b = "dev-b"
	)
	verifier := f.mustConnect(t, addr, "svc:verifier")
	commander := f.mustConnect(t, addr, "svc:commander")
	devA := f.mustConnect(t, addr, a)
	devB := f.mustConnect(t, addr, b)
	if got := verifier.subscribe(t, wire.AllUp); got != 1 {
		t.Fatalf("verifier subscribe %s: SUBACK %#x, want 1", wire.AllUp, got)
	}
	for _, d := range []*mqttClient{devA, devB} {
		if got := d.subscribe(t, wire.CommandTopic(d.name)); got != 1 {
			t.Fatalf("%s subscribe to its commands: SUBACK %#x, want 1", d.name, got)
		}
	}

	t.Run("own telemetry delivered", func(t *testing.T) {
		if got := devA.publish(t, wire.TelemetryTopic(a, "temp"), "a1"); got != 0 {
			t.Fatalf("PUBACK %#x, want 0", got)
		}
		verifier.expectNext(t, wire.TelemetryTopic(a, "temp"), "a1")
	})

	t.Run("foreign publish refused", func(t *testing.T) {
		for _, topic := range []string{
			wire.TelemetryTopic(b, "temp"), // another device's telemetry
			wire.KeyTopic(b),               // another device's session key
			wire.CommandTopic(b),           // a command to another device
			wire.CommandTopic(a),           // a command to itself
			"d2c/v1/dev/dev-a",             // outside up/
			"unrelated/topic",
		} {
			if got := devA.publish(t, topic, "forged"); got != 0x87 {
				t.Errorf("%s publish %s: PUBACK %#x, want 0x87 (not authorized)", a, topic, got)
			}
		}
		// Services are bound by their rights too.
		if got := verifier.publish(t, wire.CommandTopic(b), "forged"); got != 0x87 {
			t.Errorf("verifier publish command: PUBACK %#x, want 0x87", got)
		}
		if got := devA.publish(t, wire.TelemetryTopic(a, "temp"), "a2"); got != 0 {
			t.Fatalf("PUBACK %#x, want 0", got)
		}
		verifier.expectNext(t, wire.TelemetryTopic(a, "temp"), "a2")
		devB.expectNothing(t)
	})

	t.Run("foreign subscribe never delivers", func(t *testing.T) {
		for _, filter := range []string{
			wire.CommandTopic(b),
			wire.TopicPrefix + "+/down/#",
			"$share/g/" + wire.CommandTopic(b),
			"#",
			wire.AllUp,
		} {
			if got := devA.subscribe(t, filter); got != want.foreignSubscribe {
				t.Errorf("%s subscribe %s: SUBACK %#x, want %#x", a, filter, got, want.foreignSubscribe)
			}
		}
		if got := commander.publish(t, wire.CommandTopic(b), "cmd-b"); got != 0 {
			t.Fatalf("commander publish: PUBACK %#x, want 0", got)
		}
		if got := devB.publish(t, wire.TelemetryTopic(b, "temp"), "b1"); got != 0 {
			t.Fatalf("PUBACK %#x, want 0", got)
		}
		if got := commander.publish(t, wire.CommandTopic(a), "cmd-a"); got != 0 {
			t.Fatalf("commander publish: PUBACK %#x, want 0", got)
		}
		devB.expectNext(t, wire.CommandTopic(b), "cmd-b")
		verifier.expectNext(t, wire.TelemetryTopic(b, "temp"), "b1")
		// dev-a receives its own command first, not cmd-b or b1, which the
		// broker handled before. Its wildcard subscriptions, where granted,
		// may deliver cmd-a more than once.
		devA.expectNext(t, wire.CommandTopic(a), "cmd-a")
		devA.expectOnly(t, wire.CommandTopic(a), "cmd-a")
	})

	t.Run("publish agrees with Authorize", func(t *testing.T) {
		topics := []string{
			wire.TelemetryTopic(a, "x"), wire.KeyTopic(a), wire.CommandResultTopic(a),
			"d2c/v1/dev/dev-a/up", "d2c/v1/dev/dev-a/up/", "d2c/v1/dev/dev-a/up//x", "d2c/v1/dev/dev-a/upx",
			"d2c/v1/dev/dev-a/down/x", "d2c/v1/dev/dev-a/x", "d2c/v1/dev/dev-ab/up/x", "d2c/v1/dev/dev-A/up/x",
			"d2c/v1/dev//up/x", "d2c/v1/dev/dev-a/up/tele/y/z", "D2C/v1/dev/dev-a/up/x", "/d2c/v1/dev/dev-a/up/x",
		}
		for _, topic := range topics {
			allowed := broker.Authorize(a, topic, broker.AccessWrite, testServices)
			got := devA.publish(t, topic, "p:"+topic)
			if (got < 0x80) != allowed {
				t.Errorf("%s publish %q: PUBACK %#x; Authorize says %v", a, topic, got, allowed)
			}
		}
		// The verifier received the allowed ones only.
		marker := wire.TelemetryTopic(a, "marker")
		devA.publish(t, marker, "end")
		for done := false; !done; {
			select {
			case p := <-verifier.msgs:
				if p.Topic == marker {
					done = true
				} else if string(p.Payload) != "p:"+p.Topic || !broker.Authorize(a, p.Topic, broker.AccessWrite, testServices) {
					t.Errorf("verifier received %q on %q", p.Payload, p.Topic)
				}
			case <-time.After(brokerTimeout):
				t.Fatalf("verifier: no marker within %v", brokerTimeout)
			}
		}
	})

	t.Run("no certificate refused at TLS", func(t *testing.T) {
		err := f.refusedAtTLS(t, addr, nil)
		t.Logf("no certificate: %v", err)
		if err == nil || !strings.Contains(err.Error(), want.noCert) {
			t.Errorf("no certificate: %v, want an error with %q", err, want.noCert)
		}
	})

	t.Run("revoked certificate refused at TLS", func(t *testing.T) {
		cert := f.certs["dev-revoked"]
		err := f.refusedAtTLS(t, addr, &cert)
		t.Logf("revoked certificate: %v", err)
		if err == nil || !strings.Contains(err.Error(), want.revoked) {
			t.Errorf("revoked certificate: %v, want an error with %q", err, want.revoked)
		}
	})

	t.Run("username and password ignored", func(t *testing.T) {
		// The certificate is dev-a's; claiming dev-b gives dev-b's rights
		// to no one.
		m, ack, err := f.connect(t, addr, f.certs[a], connectOpts{clientID: "dev-a-2", username: b, password: "secret"})
		if err != nil {
			t.Fatalf("connect: %v (CONNACK %+v)", err, ack)
		}
		if got := m.publish(t, wire.TelemetryTopic(b, "temp"), "forged"); got != 0x87 {
			t.Errorf("publish as claimed username: PUBACK %#x, want 0x87", got)
		}
		// It took over dev-a's session (the client ID is the CN).
		select {
		case how := <-devA.lost:
			t.Logf("dev-a's first connection, taken over: %s", how)
			if !strings.Contains(how, want.takenOver) {
				t.Errorf("dev-a's first connection ended with %q, want %q", how, want.takenOver)
			}
		case <-time.After(brokerTimeout):
			t.Errorf("dev-a's first connection was not disconnected")
		}
	})

	t.Run("no session takeover across identities", func(t *testing.T) {
		// dev-a connects with dev-b's and the verifier's client IDs: the
		// broker uses its CN instead, so both keep their sessions.
		for _, id := range []string{b, "svc:verifier"} {
			if _, ack, err := f.connect(t, addr, f.certs[a], connectOpts{clientID: id}); err != nil {
				t.Fatalf("connect with client ID %s: %v (CONNACK %+v)", id, err, ack)
			}
		}
		if got := devB.publish(t, wire.TelemetryTopic(b, "temp"), "b2"); got != 0 {
			t.Errorf("dev-b after the attempt: PUBACK %#x, want 0", got)
		}
		verifier.expectNext(t, wire.TelemetryTopic(b, "temp"), "b2")
		for _, m := range []*mqttClient{devB, verifier} {
			select {
			case how := <-m.lost:
				t.Errorf("%s lost its connection: %s", m.name, how)
			default:
			}
		}
	})

	t.Run("will only on own topics", func(t *testing.T) {
		// A will on the device's own telemetry reaches the verifier...
		topic := wire.TelemetryTopic(a, "will")
		if got := f.connectWithWill(t, addr, f.certs[a], topic, "gone"); got != 0 {
			t.Fatalf("connect with a will on %s: CONNACK %#x, want 0", topic, got)
		}
		verifier.expectNext(t, topic, "gone")
		// ...one on another device's commands never reaches that device.
		topic = wire.CommandTopic(b)
		if got := f.connectWithWill(t, addr, f.certs[a], topic, "forged"); got != want.foreignWill {
			t.Errorf("connect with a will on %s: CONNACK %#x, want %#x", topic, got, want.foreignWill)
		}
		if got := commander.publish(t, topic, "cmd-b-after-will"); got != 0 {
			t.Fatalf("commander publish: PUBACK %#x, want 0", got)
		}
		devB.expectNext(t, topic, "cmd-b-after-will")
	})

	t.Run("unknown service has no rights", func(t *testing.T) {
		m, ack, err := f.connect(t, addr, f.certs["svc:ghost"], connectOpts{})
		var got byte
		if ack != nil {
			got = ack.ReasonCode
		}
		if got != want.unknownService {
			t.Fatalf("svc:ghost: CONNACK %#x (%v), want %#x", got, err, want.unknownService)
		}
		if m != nil {
			if got := m.publish(t, wire.CommandTopic(b), "forged"); got != 0x87 {
				t.Errorf("svc:ghost publish: PUBACK %#x, want 0x87", got)
			}
		}
	})

	// Whatever was refused above delivered nothing to dev-b.
	if got := commander.publish(t, wire.CommandTopic(b), "cmd-b2"); got != 0 {
		t.Fatalf("commander publish: PUBACK %#x, want 0", got)
	}
	devB.expectNext(t, wire.CommandTopic(b), "cmd-b2")
}

// scenarioFleet makes the fleet runBrokerScenarios expects.
func scenarioFleet(t *testing.T) *brokerFleet {
	f := newBrokerFleet(t)
	for _, id := range []string{"dev-a", "dev-b", "dev-revoked"} {
		f.device(t, id)
	}
	for _, name := range []string{"verifier", "commander", "ghost"} {
		f.service(t, name)
	}
	if err := f.ca.Revoke(f.certs["dev-revoked"].Leaf, 1); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestBrokerMosquitto runs mosquitto 2.x with the configuration and ACL
// that MosquittoConfig generates.
func TestBrokerMosquitto(t *testing.T) {
	f := scenarioFleet(t)
	conf := mosquittoConf(t, f.ca, f.server, testServices, broker.MosquittoConfig{})
	broker := testpeer.Mosquitto(t, conf)
	// mosquitto opens exactly the configured listener: a listener option
	// before the listener line would open a default one on port 1883 of
	// every interface, without TLS.
	var sockets []string
	for _, line := range strings.Split(broker.Output(), "\n") {
		if strings.Contains(line, "listen socket") {
			sockets = append(sockets, line)
		}
	}
	if len(sockets) != 1 || !strings.HasSuffix(sockets[0], fmt.Sprintf("Opening ipv4 listen socket on port %d.", broker.Port)) {
		t.Errorf("mosquitto opened %d listen sockets, want only port %d:\n%s", len(sockets), broker.Port, strings.Join(sockets, "\n"))
	}

	runBrokerScenarios(t, f, broker.Addr, brokerExpect{
		foreignSubscribe: 1,
		foreignWill:      0,
		unknownService:   0,
		noCert:           "certificate required",
		revoked:          "revoked certificate",
		takenOver:        "EOF",
	})
	if t.Failed() {
		t.Logf("mosquitto output:\n%s", broker.Output())
	}
}

// TestBrokerDevMochi runs the same scenarios against the development
// broker.
func TestBrokerDevMochi(t *testing.T) {
	f := scenarioFleet(t)
	b, err := devbroker.Start(t.Context(), devbroker.Config{
		Certificate: f.server,
		ClientRoots: f.roots,
		Services:    testServices,
		Revocation:  f.ca,
		Logger:      slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	runBrokerScenarios(t, f, b.Addr(), brokerExpect{
		foreignSubscribe: 0x87,
		foreignWill:      0x86,
		unknownService:   0x86,
		noCert:           "certificate required",
		revoked:          "bad certificate",
		takenOver:        "DISCONNECT reason 0x8e",
	})
}
