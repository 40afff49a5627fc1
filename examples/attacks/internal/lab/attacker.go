// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Message is an MQTT message as the attacker's client sees it.
type Message struct {
	Topic   string
	Payload []byte
}

// MQTT is the attacker's own MQTT v5 client (paho), which does whatever it
// is told: no signing, no outbox, any topic.
type MQTT struct {
	c    *paho.Client
	msgs chan Message
}

// DialMQTT connects to addr and sends an MQTT CONNECT. With tlsCfg nil the
// connection is plain TCP. username and password, if not empty, go into
// the CONNECT packet.
func DialMQTT(ctx context.Context, addr string, tlsCfg *tls.Config, clientID, username, password string) (*MQTT, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil {
		tc := tls.Client(conn, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		conn = tc
	}
	m := &MQTT{msgs: make(chan Message, 1024)}
	// paho writes from several goroutines (the pinger sends its first
	// PINGREQ at once): serialize the writes, or packets interleave.
	m.c = paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn), PacketTimeout: 5 * time.Second,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case m.msgs <- Message{Topic: pr.Packet.Topic, Payload: bytes.Clone(pr.Packet.Payload)}:
			default: // the attacker is not keeping up: drop
			}
			return true, nil
		}}})
	cp := &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true}
	if username != "" {
		cp.UsernameFlag, cp.Username = true, username
	}
	if password != "" {
		cp.PasswordFlag, cp.Password = true, []byte(password)
	}
	ack, err := m.c.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		if ack != nil {
			return nil, fmt.Errorf("CONNACK reason 0x%02x: %w", ack.ReasonCode, err)
		}
		return nil, err
	}
	return m, nil
}

// CheckTLS runs a TLS handshake with addr and waits briefly for the
// server's verdict on the client's certificate: in TLS 1.3 the client
// finishes its handshake before the server has checked the client
// certificate, so a refusal arrives as an alert on the first read. It
// returns nil if the server kept the connection open.
func CheckTLS(ctx context.Context, addr string, cfg *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	// An MQTT server sends nothing before the client's CONNECT: a read
	// that times out means the server accepted the handshake.
	if err := conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 1))
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}

// RawPublish is the attacker's lowest-level tool: it opens a connection to
// addr with tlsCfg, sends CONNECT as clientID and then p exactly as given
// (retained, oversized, any QoS: nothing is checked against what the
// broker announced, which a paho client would do), and reports what the
// broker answered: "PUBACK reason 0x00", "DISCONNECT reason 0x9a", or
// "connection closed" when it just hung up. It returns an error only if the
// connection or the CONNECT failed.
func RawPublish(ctx context.Context, addr string, tlsCfg *tls.Config, clientID string, p *packets.Publish) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	d := tls.Dialer{Config: tlsCfg}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	cp := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: clientID, CleanStart: true, KeepAlive: 30,
		Properties: &packets.Properties{}}
	if _, err := cp.WriteTo(conn); err != nil {
		return "", err
	}
	pkt, err := packets.ReadPacket(conn)
	if err != nil {
		return "", fmt.Errorf("CONNACK: %w", err)
	}
	if ack, ok := pkt.Content.(*packets.Connack); !ok || ack.ReasonCode != 0 {
		return "", fmt.Errorf("CONNECT refused: %v", pkt)
	}
	if p.Properties == nil {
		p.Properties = &packets.Properties{}
	}
	// The broker may hang up before the whole packet is written: what it
	// answered is read below either way.
	_, _ = p.WriteTo(conn)
	pkt, err = packets.ReadPacket(conn)
	if err != nil {
		return "connection closed", nil
	}
	switch c := pkt.Content.(type) {
	case *packets.Puback:
		return fmt.Sprintf("PUBACK reason 0x%02x", c.ReasonCode), nil
	case *packets.Disconnect:
		return fmt.Sprintf("DISCONNECT reason 0x%02x", c.ReasonCode), nil
	}
	return pkt.PacketType(), nil
}

// Insider connects the insider: a client with broker-level rights over
// every d2c topic (service "insider"), standing for a compromised broker.
// Connect it once per fleet: like every MQTT identity, it has one session.
func (f *Fleet) Insider(ctx context.Context) (*MQTT, error) { return f.dialService(ctx, "insider") }

// dialService connects a raw MQTT client as cloud service name.
func (f *Fleet) dialService(ctx context.Context, name string) (*MQTT, error) {
	cert, err := f.ServiceCertificate(name)
	if err != nil {
		return nil, err
	}
	m, err := DialMQTT(ctx, f.Broker.Addr(), &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.Roots,
		ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}}, "", "", "")
	if err != nil {
		return nil, err
	}
	f.onClose(m.Close)
	return m, nil
}

// RefusedError is a broker's refusal of a publish or a subscription.
type RefusedError struct {
	Packet string // PUBACK or SUBACK
	Reason byte   // MQTT v5 reason code, 0x87 for "not authorized"
}

func (e *RefusedError) Error() string { return fmt.Sprintf("%s reason 0x%02x", e.Packet, e.Reason) }

// NotAuthorized reports whether err is a broker's refusal with reason 0x87,
// not authorized.
func NotAuthorized(err error) bool {
	var re *RefusedError
	return errors.As(err, &re) && re.Reason == 0x87
}

// Subscribe subscribes to filter at QoS 1 and returns once the broker
// granted it.
func (m *MQTT) Subscribe(ctx context.Context, filter string) error {
	sa, err := m.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if sa != nil && len(sa.Reasons) == 1 && sa.Reasons[0] >= 0x80 {
		return &RefusedError{Packet: "SUBACK", Reason: sa.Reasons[0]}
	}
	return err
}

// Publish publishes payload on topic at QoS 1 and waits for the PUBACK; a
// refusal is an error naming its reason code.
func (m *MQTT) Publish(ctx context.Context, topic string, payload []byte) error {
	resp, err := m.c.Publish(ctx, &paho.Publish{QoS: 1, Topic: topic, Payload: payload,
		Properties: &paho.PublishProperties{ContentType: wire.ContentType}})
	if resp != nil && resp.ReasonCode >= 0x80 {
		return &RefusedError{Packet: "PUBACK", Reason: resp.ReasonCode}
	}
	return err
}

// Next waits for the next message received whose topic has the given
// suffix (any message with ""), discarding others.
func (m *MQTT) Next(ctx context.Context, topicSuffix string) (Message, error) {
	timeout := time.After(Timeout)
	for {
		select {
		case msg := <-m.msgs:
			if strings.HasSuffix(msg.Topic, topicSuffix) {
				return msg, nil
			}
		case <-ctx.Done():
			return Message{}, ctx.Err()
		case <-timeout:
			return Message{}, fmt.Errorf("no message on *%s", topicSuffix)
		}
	}
}

// Drain returns the messages received so far, waiting up to wait for the
// first one.
func (m *MQTT) Drain(wait time.Duration) []Message {
	var out []Message
	timeout := time.After(wait)
	for {
		select {
		case msg := <-m.msgs:
			out = append(out, msg)
			timeout = time.After(50 * time.Millisecond)
		case <-timeout:
			return out
		}
	}
}

// Close disconnects.
func (m *MQTT) Close() {
	_ = m.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
}

// SelfMadeCertificate makes what an attacker can make without the fleet
// CA: a CA of its own, named like the fleet's, and a client certificate
// from it claiming device id.
func SelfMadeCertificate(id string) (tls.Certificate, error) {
	caKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"Attack Lab"}, CommonName: "Attack Lab root CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	uri, err := url.Parse(identity.DeviceURI(id))
	if err != nil {
		return tls.Certificate{}, err
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{Organization: []string{"Attack Lab"}, CommonName: id},
		URIs: []*url.URL{uri}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, key.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: key}, nil
}

// b64 is base64url without padding, the JOSE encoding (RFC 7515 section 2).
var b64 = base64.RawURLEncoding

// Peek describes what an observer of an envelope can read without any
// key: the JOSE header of a JWS or JWE, and for a JWS the readable text of
// its payload.
func Peek(envelope []byte) string {
	parts := strings.Split(string(envelope), ".")
	header, _ := b64.DecodeString(parts[0])
	switch len(parts) {
	case 3:
		payload, _ := b64.DecodeString(parts[1])
		return fmt.Sprintf("JWS, signed only: header %s\npayload (CBOR, %d bytes), readable text: %s", header, len(payload), readable(payload))
	case 5:
		ct, _ := b64.DecodeString(parts[3])
		return fmt.Sprintf("JWE, encrypted: header %s\nciphertext: %d bytes of AES-GCM output, no readable text", header, len(ct))
	}
	return fmt.Sprintf("not a JOSE envelope (%d bytes)", len(envelope))
}

// Visible reports whether secret can be read from envelope by someone
// without keys: in its bytes, or in any of its base64url-decoded parts.
func Visible(envelope, secret []byte) bool {
	if bytes.Contains(envelope, secret) {
		return true
	}
	for _, p := range strings.Split(string(envelope), ".") {
		if b, err := b64.DecodeString(p); err == nil && bytes.Contains(b, secret) {
			return true
		}
	}
	return false
}

// readable returns the runs of at least four printable ASCII characters of
// b, like the strings(1) tool, quoted and joined.
func readable(b []byte) string {
	var runs []string
	start := -1
	for i := 0; i <= len(b); i++ {
		printable := i < len(b) && b[i] >= 0x20 && b[i] < 0x7f
		switch {
		case printable && start < 0:
			start = i
		case !printable && start >= 0:
			if i-start >= 4 {
				runs = append(runs, fmt.Sprintf("%q", b[start:i]))
			}
			start = -1
		}
	}
	return strings.Join(runs, " ")
}

// EditPayload decodes the payload of a compact JWS, lets edit change it in
// place, and puts it back, leaving header and signature as they were: what
// an attacker in the middle can do to a signed-only envelope.
func EditPayload(envelope []byte, edit func(payload []byte)) ([]byte, error) {
	return editSegment(envelope, 3, 1, edit)
}

// EditCiphertext does the same to the ciphertext of a compact JWE.
func EditCiphertext(envelope []byte, edit func(ciphertext []byte)) ([]byte, error) {
	return editSegment(envelope, 5, 3, edit)
}

// editSegment edits segment i of a compact serialization of parts parts.
func editSegment(envelope []byte, parts, i int, edit func([]byte)) ([]byte, error) {
	segs := strings.Split(string(envelope), ".")
	if len(segs) != parts {
		return nil, fmt.Errorf("%d segments, want %d", len(segs), parts)
	}
	b, err := b64.DecodeString(segs[i])
	if err != nil {
		return nil, err
	}
	edit(b)
	segs[i] = b64.EncodeToString(b)
	return []byte(strings.Join(segs, ".")), nil
}

// StripSignature turns a compact JWS into an unsigned one: header
// {"alg":"none"} with the original typ and kid, same payload, empty
// signature (the "alg: none" attack of RFC 8725 section 2.1).
func StripSignature(envelope []byte) ([]byte, error) {
	parts := strings.Split(string(envelope), ".")
	if len(parts) != 3 {
		return nil, errors.New("not a compact JWS")
	}
	header, err := b64.DecodeString(parts[0])
	if err != nil {
		return nil, err
	}
	// Keep typ and kid, replace the algorithm.
	h := strings.Replace(string(header), `"alg":"ES256"`, `"alg":"none"`, 1)
	if h == string(header) {
		return nil, fmt.Errorf("header %s has no ES256 alg", header)
	}
	return []byte(b64.EncodeToString([]byte(h)) + "." + parts[1] + "."), nil
}
