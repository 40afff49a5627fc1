// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package roguebroker is an MQTT v5 server that misbehaves on purpose, for
// tests and for the attack lab (examples/attacks/rogue-broker). d2c's threat
// model does not trust the broker: this is the broker an attacker would run.
//
// A [Server] listens on 127.0.0.1, completes mutual TLS like a real broker
// (the caller's tls.Config carries a fleet server certificate and verifies
// the client certificate against the fleet CA), reads the client's CONNECT
// with a bounded reader of its own, and then behaves as its current
// [Behaviour] says: [Honest] answers like a correct broker, every other
// behaviour breaks a rule of the protocol (MQTT v5, OASIS standard 2019)
// or abuses it. [Server.SetBehaviour] changes the behaviour of later connections,
// so that a test can attack a client and then check that it recovers once
// the broker turns honest.
//
// The server records what it saw for assertions: every CONNECT
// ([Server.Connects], with its time, to measure reconnection backoff) and
// every PUBLISH the client sent ([Server.Received]), acknowledged or not.
//
// # Reading
//
// The server reads no packet larger than [Config.MaxPacket] and parses a
// packet (with paho's packets package) only once all of its bytes are in
// hand, so a hostile client cannot make it allocate more. It is a test
// tool all the same: it keeps no session state (it only reports a session
// present to a client that resumes one, see [Config.ForgetSessions]),
// delivers nothing between clients, and accepts any client that the TLS
// configuration accepts.
package roguebroker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// Behaviour is what the server does on a connection, after the TLS
// handshake and the client's CONNECT.
type Behaviour int

const (
	// Honest behaves correctly: CONNACK, SUBACK granting every filter,
	// PUBACK (reason 0) for every QoS 1 PUBLISH, PINGRESP.
	Honest Behaviour = iota

	// HugeLength sends, right after the CONNACK, the 8 bytes
	// 30 ff ff ff 7f 00 05 64: the start of a PUBLISH whose remaining
	// length is 268,435,455 bytes (256 MiB), the largest MQTT allows. A
	// client that allocates a packet's body from its header alone
	// allocates 256 MiB.
	HugeLength

	// OversizedPublish sends, right after the CONNACK, a well-formed
	// PUBLISH of [Config.OversizedSize] bytes (default 1 MiB), larger
	// than the Maximum Packet Size d2c advertises (MQTT v5 section
	// 3.1.2.11.4 forbids it). The body is streamed: the server does not
	// hold it in memory.
	OversizedPublish

	// ReservedType sends, right after the CONNACK, a packet of the
	// reserved type 0 (section 2.1.2).
	ReservedType

	// LongLength sends, right after the CONNACK, a PUBLISH whose
	// remaining length runs over 5 bytes (at most 4 are allowed, section
	// 1.5.5).
	LongLength

	// Truncated sends, right after the CONNACK, the first half of a
	// PUBLISH and closes the connection.
	Truncated

	// RepeatedProperties sends a CONNACK with the Receive Maximum and the
	// Topic Alias Maximum properties twice each, which is a protocol
	// error (section 3.2.2.3), and then behaves honestly.
	RepeatedProperties

	// ForbiddenProperty sends a CONNACK carrying a Topic Alias property,
	// twice: it belongs only in a PUBLISH (section 2.2.2.2).
	ForbiddenProperty

	// ZeroReceiveMaximum sends a CONNACK with Receive Maximum 0, a
	// protocol error (section 3.2.2.3.3), and then behaves honestly.
	ZeroReceiveMaximum

	// TopicAlias behaves honestly, but after each SUBACK it sends every
	// payload of [Config.Payloads] with a Topic Alias property, which the
	// client never allowed (it sent no Topic Alias Maximum, section
	// 3.3.2.3.4): first with the subscribed topic and alias 1, then with
	// an empty topic and alias 1 only.
	TopicAlias

	// Unsolicited behaves honestly, but right after the CONNACK and after
	// each SUBACK it sends every payload of [Config.Payloads] on
	// [Config.Topic], a topic the client never subscribed to.
	Unsolicited

	// Retained behaves honestly, but after each SUBACK it sends every
	// payload of [Config.Payloads] on the subscribed topic with the
	// RETAIN flag set: the replay of an old message.
	Retained

	// Commands behaves honestly, and after each SUBACK it sends every
	// payload of [Config.Payloads] on the subscribed topic at QoS 1: for
	// a d2c device, commands on its real command topic (unsigned or
	// signed by a key the device does not trust).
	Commands

	// Flood behaves honestly, and after each SUBACK sends the payloads of
	// [Config.Payloads] round after round, [Config.FloodCount] PUBLISH
	// packets in all, at QoS 0 on the subscribed topic, as fast as the
	// connection takes them. QoS 0 has no flow control (Receive Maximum
	// counts QoS 1 and 2 only): a client that queues what it has not
	// handled yet without a bound runs out of memory.
	Flood

	// UnknownPuback sends, right after the CONNACK, PUBACKs for packet
	// identifiers the client never used (0 and 65520 to 65535), then
	// behaves honestly.
	UnknownPuback

	// DuplicatePuback behaves honestly but sends every PUBACK twice.
	DuplicatePuback

	// NoConnack reads the CONNECT and never answers; the connection stays
	// open until the client or [Server.DropConnections] closes it.
	NoConnack

	// DisconnectStorm sends a CONNACK and closes the connection at once,
	// at every connection.
	DisconnectStorm

	// SessionTakeover sends a CONNACK and then DISCONNECT with reason
	// 0x8E, session taken over (section 3.14.2.1), at every connection.
	SessionTakeover

	// LateSuback behaves honestly but never answers the first SUBSCRIBE
	// of each connection, as a broker too busy to answer in time.
	LateSuback
)

var behaviourNames = [...]string{"Honest", "HugeLength", "OversizedPublish", "ReservedType", "LongLength", "Truncated",
	"RepeatedProperties", "ForbiddenProperty", "ZeroReceiveMaximum", "TopicAlias", "Unsolicited", "Retained", "Commands",
	"Flood", "UnknownPuback", "DuplicatePuback", "NoConnack", "DisconnectStorm", "SessionTakeover", "LateSuback"}

func (b Behaviour) String() string {
	if b >= 0 && int(b) < len(behaviourNames) {
		return behaviourNames[b]
	}
	return fmt.Sprintf("Behaviour(%d)", int(b))
}

// HugeLengthBytes are the 8 bytes [HugeLength] sends.
var HugeLengthBytes = []byte{0x30, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x05, 0x64}

// Config configures a [Server].
type Config struct {
	// TLS is the server's TLS configuration: a server certificate from
	// the fleet CA for 127.0.0.1, and ClientAuth
	// tls.RequireAndVerifyClientCert with the fleet roots in ClientCAs,
	// as a real broker of the fleet is configured. Required; the server
	// refuses a configuration that does not verify client certificates.
	TLS *tls.Config
	// Behaviour is the behaviour of the first connections; see
	// [Server.SetBehaviour]. Default [Honest].
	Behaviour Behaviour
	// Payloads are what [TopicAlias], [Unsolicited], [Retained] and
	// [Commands] send. Default: the one payload "rogue".
	Payloads [][]byte
	// Topic is where [Unsolicited] sends (default "rogue/unsolicited"),
	// and where [TopicAlias], [Retained] and [Commands] send if set
	// (default: the topic of the client's first subscription).
	Topic string
	// FloodCount is how many PUBLISH packets [Flood] sends. Default 1000.
	FloodCount int
	// OversizedSize is the size of the packet [OversizedPublish] sends,
	// fixed header included (a size no remaining length makes exactly,
	// such as 130, gives a packet one byte shorter). Default 1 MiB.
	OversizedSize int
	// ForgetSessions makes every CONNACK say that the server has no
	// session for the client, as a broker that lost its state (restarted
	// without persistence) does. By default the server reports a session
	// present to a client that connected before and asks to resume it
	// (Clean Start 0), as a broker keeping sessions does; it keeps no
	// session state beyond that.
	ForgetSessions bool
	// MaxPacket bounds every packet the server reads, fixed header
	// included; a client that sends a larger one is disconnected.
	// Default 1 MiB.
	MaxPacket int
	// Timeout bounds the TLS handshake, the wait for the CONNECT and
	// every write. Default 10 s.
	Timeout time.Duration
}

// Connect is a CONNECT the server read.
type Connect struct {
	Time     time.Time
	ClientID string
	// ReceiveMaximum and MaximumPacketSize are the client's properties
	// (MQTT v5 sections 3.1.2.11.3, 3.1.2.11.4); 0 when absent.
	ReceiveMaximum    uint16
	MaximumPacketSize uint32
	// Behaviour is how the server treated the connection.
	Behaviour Behaviour
}

// Message is a PUBLISH the server read.
type Message struct {
	Time    time.Time
	Topic   string
	Payload []byte
	QoS     byte
	// Acked reports that the server answered it with PUBACK reason 0.
	Acked bool
}

// Server is a misbehaving MQTT v5 server on 127.0.0.1. Close stops it.
type Server struct {
	cfg Config
	ln  net.Listener
	wg  sync.WaitGroup

	mu        sync.Mutex
	behaviour Behaviour
	conns     map[net.Conn]struct{}
	closed    bool
	connects  []Connect
	received  []Message
	sessions  map[string]bool // client IDs that connected
	refused   int             // TLS handshakes that failed (no or untrusted client certificate)
}

// Start listens on 127.0.0.1:0 and serves until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.TLS == nil || cfg.TLS.ClientAuth != tls.RequireAndVerifyClientCert || cfg.TLS.ClientCAs == nil {
		return nil, errors.New("roguebroker: Config.TLS must require and verify client certificates against ClientCAs")
	}
	if len(cfg.Payloads) == 0 {
		cfg.Payloads = [][]byte{[]byte("rogue")}
	}
	if cfg.FloodCount <= 0 {
		cfg.FloodCount = 1000
	}
	if cfg.OversizedSize <= 0 {
		cfg.OversizedSize = 1 << 20
	}
	if cfg.MaxPacket <= 0 {
		cfg.MaxPacket = 1 << 20
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	cfg.TLS = cfg.TLS.Clone()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, ln: ln, behaviour: cfg.Behaviour, conns: map[net.Conn]struct{}{}, sessions: map[string]bool{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// SetBehaviour sets the behaviour of the connections accepted from now
// on; open connections keep theirs (close them with DropConnections).
func (s *Server) SetBehaviour(b Behaviour) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.behaviour = b
}

// DropConnections closes every open connection, as a broker restart
// would.
func (s *Server) DropConnections() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

// Connects returns every CONNECT read so far, oldest first.
func (s *Server) Connects() []Connect {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Connect(nil), s.connects...)
}

// Received returns every PUBLISH read so far, oldest first.
func (s *Server) Received() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.received...)
}

// Payloads returns the payloads of the PUBLISH packets read on topic.
func (s *Server) Payloads(topic string) [][]byte {
	var out [][]byte
	for _, m := range s.Received() {
		if m.Topic == topic {
			out = append(out, m.Payload)
		}
	}
	return out
}

// RefusedHandshakes counts the TLS handshakes that failed: clients
// without a certificate the fleet CA issued.
func (s *Server) RefusedHandshakes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// Close stops listening, closes every connection and waits for their
// goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	err := s.ln.Close()
	s.DropConnections()
	s.wg.Wait()
	return err
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
			s.serve(c)
		}()
	}
}

// conn is one client connection.
type conn struct {
	s              *Server
	tc             *tls.Conn
	r              *bufio.Reader
	b              Behaviour
	nextID         uint16 // the server's packet identifiers, for its QoS 1 PUBLISH
	sessionPresent bool
	broken         bool // the server sent bytes that end the protocol: answer nothing more
	subscribes     int  // SUBSCRIBE packets read on this connection
}

func (s *Server) serve(raw net.Conn) {
	tc := tls.Server(raw, s.cfg.TLS)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.mu.Lock()
		s.refused++
		s.mu.Unlock()
		return
	}
	c := &conn{s: s, tc: tc, r: bufio.NewReader(tc)}
	_ = tc.SetReadDeadline(time.Now().Add(s.cfg.Timeout))
	cp, err := c.read()
	if err != nil || cp.Type != packets.CONNECT {
		return
	}
	_ = tc.SetReadDeadline(time.Time{})
	connect := cp.Content.(*packets.Connect)
	rec := Connect{Time: time.Now(), ClientID: connect.ClientID}
	if p := connect.Properties; p != nil {
		if p.ReceiveMaximum != nil {
			rec.ReceiveMaximum = *p.ReceiveMaximum
		}
		if p.MaximumPacketSize != nil {
			rec.MaximumPacketSize = *p.MaximumPacketSize
		}
	}
	s.mu.Lock()
	c.b = s.behaviour
	rec.Behaviour = c.b
	s.connects = append(s.connects, rec)
	c.sessionPresent = !connect.CleanStart && s.sessions[connect.ClientID] && !s.cfg.ForgetSessions
	s.sessions[connect.ClientID] = true
	s.mu.Unlock()
	if err := c.start(); err != nil {
		return
	}
	for {
		cp, err := c.read()
		if err != nil {
			return
		}
		if err := c.handle(cp); err != nil {
			return
		}
	}
}

// framingDelay is the pause between the CONNACK and a framing attack.
const framingDelay = 20 * time.Millisecond

// errHangUp ends a connection on the server's initiative.
var errHangUp = errors.New("roguebroker: hang up")

// start answers the CONNECT as the behaviour says.
func (c *conn) start() error {
	connack := &packets.Connack{SessionPresent: c.sessionPresent, Properties: &packets.Properties{}}
	switch c.b {
	case NoConnack:
		_, err := io.Copy(io.Discard, c.r) // until the client or DropConnections closes
		return errors.Join(err, errHangUp)
	case RepeatedProperties:
		// Receive Maximum 20 then 10, Topic Alias Maximum 5 then 6.
		return c.writeRaw(rawConnack(c.sessionPresent, 0x21, 0, 20, 0x21, 0, 10, 0x22, 0, 5, 0x22, 0, 6))
	case ForbiddenProperty:
		return c.writeRaw(rawConnack(c.sessionPresent, 0x23, 0, 1, 0x23, 0, 2))
	case ZeroReceiveMaximum:
		return c.writeRaw(rawConnack(c.sessionPresent, 0x21, 0, 0))
	}
	if err := c.write(connack); err != nil {
		return err
	}
	switch c.b {
	case HugeLength, OversizedPublish, ReservedType, LongLength:
		// The framing attacks come a moment after the CONNACK: paho
		// v0.23.0 has a data race (autopaho net.go:92 against paho
		// client.go:328) when its connection fails while Connect is
		// returning, which the race detector reports and which is not
		// what these behaviours test: the client's bound on what it reads.
		time.Sleep(framingDelay)
	}
	switch c.b {
	case DisconnectStorm:
		return errHangUp
	case SessionTakeover:
		return errors.Join(c.write(&packets.Disconnect{ReasonCode: 0x8E, Properties: &packets.Properties{}}), errHangUp)
	case HugeLength:
		c.broken = true
		return c.writeRaw(HugeLengthBytes)
	case OversizedPublish:
		c.broken = true
		return c.writeOversized()
	case ReservedType:
		c.broken = true
		return c.writeRaw([]byte{0x00, 0x02, 0x00, 0x00})
	case LongLength:
		c.broken = true
		return c.writeRaw([]byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01, 0x00, 0x01, 0x61})
	case Truncated:
		var b bytes.Buffer
		p := &packets.Publish{Topic: "rogue/truncated", Payload: bytes.Repeat([]byte("t"), 64), Properties: &packets.Properties{}}
		if _, err := p.WriteTo(&b); err != nil {
			return err
		}
		return errors.Join(c.writeRaw(b.Bytes()[:b.Len()/2]), errHangUp)
	case Unsolicited:
		return c.publishAll(c.topic("rogue/unsolicited"), 0, false)
	case UnknownPuback:
		for _, id := range []uint16{0, 65520, 65521, 65522, 65523, 65524, 65525, 65526, 65527, 65528, 65529, 65530, 65531, 65532, 65533, 65534, 65535} {
			if err := c.write(&packets.Puback{PacketID: id, Properties: &packets.Properties{}}); err != nil {
				return err
			}
		}
	}
	return nil
}

// handle answers one packet from the client.
func (c *conn) handle(cp *packets.ControlPacket) error {
	switch p := cp.Content.(type) {
	case *packets.Publish:
		m := Message{Time: time.Now(), Topic: p.Topic, Payload: p.Payload, QoS: p.QoS, Acked: p.QoS == 1 && !c.broken}
		c.s.mu.Lock()
		c.s.received = append(c.s.received, m)
		c.s.mu.Unlock()
		if !m.Acked {
			return nil
		}
		ack := &packets.Puback{PacketID: p.PacketID, Properties: &packets.Properties{}}
		if err := c.write(ack); err != nil {
			return err
		}
		if c.b == DuplicatePuback {
			return c.write(ack)
		}
	case *packets.Subscribe:
		if len(p.Subscriptions) == 0 {
			return errHangUp // a protocol error (section 3.8.3)
		}
		if c.subscribes++; c.broken || c.b == LateSuback && c.subscribes == 1 {
			return nil
		}
		sa := &packets.Suback{PacketID: p.PacketID, Properties: &packets.Properties{}}
		for _, o := range p.Subscriptions {
			sa.Reasons = append(sa.Reasons, min(o.QoS, 1))
		}
		if err := c.write(sa); err != nil {
			return err
		}
		return c.afterSuback(p.Subscriptions[0].Topic)
	case *packets.Unsubscribe:
		if !c.broken {
			return c.write(&packets.Unsuback{PacketID: p.PacketID, Reasons: make([]byte, len(p.Topics)), Properties: &packets.Properties{}})
		}
	case *packets.Pingreq:
		if !c.broken {
			return c.write(&packets.Pingresp{})
		}
	case *packets.Disconnect:
		return errHangUp
	}
	return nil
}

// afterSuback sends what the behaviour sends once the client subscribed
// to topic.
func (c *conn) afterSuback(subscribed string) error {
	switch c.b {
	case Commands:
		return c.publishAll(c.topic(subscribed), 1, false)
	case Retained:
		return c.publishAll(c.topic(subscribed), 1, true)
	case Flood:
		var encoded [][]byte // each payload's packet, encoded once
		for _, pl := range c.s.cfg.Payloads {
			var b bytes.Buffer
			if _, err := (&packets.Publish{Topic: c.topic(subscribed), Payload: pl, Properties: &packets.Properties{}}).WriteTo(&b); err != nil {
				return err
			}
			encoded = append(encoded, b.Bytes())
		}
		for i := range c.s.cfg.FloodCount {
			if err := c.writeRaw(encoded[i%len(encoded)]); err != nil {
				return err
			}
		}
	case Unsolicited:
		return c.publishAll(c.topic("rogue/unsolicited"), 1, false)
	case TopicAlias:
		for _, pl := range c.s.cfg.Payloads {
			alias := uint16(1)
			for _, t := range []string{c.topic(subscribed), ""} {
				p := &packets.Publish{Topic: t, Payload: pl, QoS: 1, PacketID: c.packetID(), Properties: &packets.Properties{TopicAlias: &alias}}
				if err := c.write(p); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// topic returns Config.Topic, or def if it is not set.
func (c *conn) topic(def string) string {
	if c.s.cfg.Topic != "" {
		return c.s.cfg.Topic
	}
	return def
}

// publishAll sends every configured payload on topic.
func (c *conn) publishAll(topic string, qos byte, retain bool) error {
	for _, pl := range c.s.cfg.Payloads {
		p := &packets.Publish{Topic: topic, Payload: pl, QoS: qos, Retain: retain, Properties: &packets.Properties{}}
		if qos > 0 {
			p.PacketID = c.packetID()
		}
		if err := c.write(p); err != nil {
			return err
		}
	}
	return nil
}

func (c *conn) packetID() uint16 {
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	return c.nextID
}

// read reads one packet from the client: the fixed header byte by byte
// (a remaining length of at most 4 bytes, section 1.5.5), the length
// checked against MaxPacket, and only then the body.
func (c *conn) read() (*packets.ControlPacket, error) {
	hdr := make([]byte, 1, 5)
	if _, err := io.ReadFull(c.r, hdr); err != nil {
		return nil, err
	}
	length, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return nil, errors.New("roguebroker: remaining length over 4 bytes")
		}
		b, err := c.r.ReadByte()
		if err != nil {
			return nil, err
		}
		hdr = append(hdr, b)
		length += int(b&0x7f) * mult
		mult <<= 7
		if b&0x80 == 0 {
			break
		}
	}
	if len(hdr)+length > c.s.cfg.MaxPacket {
		return nil, fmt.Errorf("roguebroker: a %d-byte packet, limit %d", len(hdr)+length, c.s.cfg.MaxPacket)
	}
	pkt := make([]byte, len(hdr)+length)
	copy(pkt, hdr)
	if _, err := io.ReadFull(c.r, pkt[len(hdr):]); err != nil {
		return nil, err
	}
	return parse(pkt)
}

// parse decodes one whole packet; a packet that makes the decoder panic
// is malformed, not a reason to stop the server.
func parse(pkt []byte) (cp *packets.ControlPacket, err error) {
	defer func() {
		if r := recover(); r != nil {
			cp, err = nil, fmt.Errorf("roguebroker: malformed packet: %v", r)
		}
	}()
	return packets.ReadPacket(bytes.NewReader(pkt))
}

// packet is what the packets package writes.
type packet interface {
	WriteTo(io.Writer) (int64, error)
}

// write sends p in one write.
func (c *conn) write(p packet) error {
	var b bytes.Buffer
	if _, err := p.WriteTo(&b); err != nil {
		return err
	}
	return c.writeRaw(b.Bytes())
}

func (c *conn) writeRaw(b []byte) error {
	_ = c.tc.SetWriteDeadline(time.Now().Add(c.s.cfg.Timeout))
	_, err := c.tc.Write(b)
	return err
}

// writeOversized streams a well-formed PUBLISH of OversizedSize bytes on
// topic "rogue/oversized", from one small buffer.
func (c *conn) writeOversized() error {
	const topic = "rogue/oversized"
	size := c.s.cfg.OversizedSize
	// The remaining length is size minus the fixed header, whose own
	// length (1 type byte, 1 to 4 length bytes) depends on it.
	var b bytes.Buffer
	remaining := 0
	for l := 1; l <= 4; l++ {
		if remaining = size - 1 - l; len(vbi(remaining)) == l {
			break
		}
	}
	b.WriteByte(0x30)
	b.Write(vbi(remaining))
	b.Write([]byte{0, byte(len(topic))})
	b.WriteString(topic)
	b.WriteByte(0) // no properties
	if err := c.writeRaw(b.Bytes()); err != nil {
		return err
	}
	chunk := make([]byte, 32<<10)
	for left := remaining - (2 + len(topic) + 1); left > 0; {
		n := min(left, len(chunk))
		if err := c.writeRaw(chunk[:n]); err != nil {
			return err
		}
		left -= n
	}
	return nil
}

// vbi encodes n as a variable byte integer (section 1.5.5).
func vbi(n int) []byte {
	var out []byte
	for {
		d := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			return out
		}
	}
}

// rawConnack is a CONNACK (reason 0) with the given property bytes,
// written by hand so that they may break the rules.
func rawConnack(sessionPresent bool, props ...byte) []byte {
	flags := byte(0)
	if sessionPresent {
		flags = 1
	}
	body := append([]byte{flags, 0x00, byte(len(props))}, props...)
	return append([]byte{0x20, byte(len(body))}, body...)
}
