// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/transport/wire"
)

// FuzzBrokerBytes is the device's inbound path from a hostile broker:
// after a valid CONNACK the broker sends the fuzzer's bytes, which go
// through the packet bound (packetConn) into paho's client and its
// session state, and every PUBLISH paho delivers goes to Client.onPublish
// with fzDevice's command verifier. Run it with
//
//	go test ./transport/ -run '^$' -fuzz '^FuzzBrokerBytes$' -fuzztime 60s -fuzzminimizetime 200x
//
// It checks that nothing panics or hangs; that paho is handed no complete
// fixed header of a reserved type, of more than 4 length bytes or of a
// packet over limits.MQTTPacket (an independent parse of the bytes handed
// out); that when the bound stops the connection its error names the
// violation the independent parse finds in the bytes sent; that no
// delivered PUBLISH exceeds the bound; and that a command runs only if it
// came unretained on the command topic and is one the fixed command key
// signed.
func FuzzBrokerBytes(f *testing.F) {
	for _, s := range fzBrokerSeeds(f) {
		f.Add(s.data)
	}
	cv, err := newCommandVerifier(nil, filepath.Join(f.TempDir(), "commands.state"), fzDevice,
		[]crypto.PublicKey{fzKey(f, fzCommandKeyPEM).Public()}, fzNow)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		cv.mu.Lock()
		cv.last = 0
		cv.mu.Unlock()
		r := fzRunBroker(t, cv, in)
		stream := append(fzConnack(), in...)
		if !bytes.HasPrefix(stream, r.handed) {
			t.Fatal("packetConn handed out bytes the broker never sent")
		}
		if at, kind := fzScanHeaders(r.handed, limits.MQTTPacket); kind != nil {
			t.Fatalf("paho was handed a complete header at %d that breaks the bound: %v", at, kind)
		}
		if r.readErr != nil {
			at, kind := fzScanHeaders(stream, limits.MQTTPacket)
			if kind == nil || !errors.Is(r.readErr, kind) {
				t.Fatalf("packetConn stopped with %v; the bytes sent break %v at %d", r.readErr, kind, at)
			}
			if at > len(r.handed) {
				t.Fatalf("packetConn stopped at byte %d, before the violating packet at %d", len(r.handed), at)
			}
		}
		cmds := fzCommands()
		for _, d := range r.deliveries {
			if d.size > limits.MQTTPacket {
				t.Fatalf("paho delivered a %d-byte PUBLISH", d.size)
			}
			if d.ran == nil {
				continue
			}
			want, ok := cmds[d.ran.ID]
			if d.retain || d.topic != wire.CommandTopic(fzDevice) || !ok || d.ran.Name != want.Name || !bytes.Equal(d.ran.Body, want.Body) {
				t.Fatalf("ran %+v from a PUBLISH on %q (retain %v)", *d.ran, d.topic, d.retain)
			}
		}
	})
}

// fzBrokerResult is what one run of the inbound path saw.
type fzBrokerResult struct {
	handed     []byte // the bytes packetConn handed to paho
	readErr    error  // the violation packetConn found, if any
	deliveries []fzDelivery
}

// fzDelivery is one PUBLISH paho handed to the client.
type fzDelivery struct {
	topic  string
	retain bool
	size   int
	ran    *Command // the command it ran, if any
}

// fzRecordingConn records what packetConn hands to paho; it keeps
// packetConn's Lock and Unlock, which paho uses to write a packet.
type fzRecordingConn struct {
	*packetConn
	mu     sync.Mutex
	handed []byte
}

func (c *fzRecordingConn) Read(p []byte) (int, error) {
	n, err := c.packetConn.Read(p)
	c.mu.Lock()
	c.handed = append(c.handed, p[:n]...)
	c.mu.Unlock()
	return n, err
}

// fzRunBroker connects a paho client through packetConn to a broker over
// net.Pipe that answers CONNECT with a valid CONNACK, then sends in and
// closes; it returns once the client has stopped.
func fzRunBroker(t *testing.T, cv *commandVerifier, in []byte) fzBrokerResult {
	srv, cli := net.Pipe()
	defer srv.Close()
	pc := newPacketConn(cli, limits.MQTTPacket)
	rc := &fzRecordingConn{packetConn: pc}
	go func() { _, _ = io.Copy(io.Discard, srv) }() // the client's CONNECT, PUBACKs, ...

	var mu sync.Mutex
	var deliveries []fzDelivery
	var current atomic.Pointer[fzDelivery]
	c := &Client{log: slog.New(slog.DiscardHandler), cmds: cv}
	c.cfg.OnCommand = func(_ context.Context, cmd Command) { current.Load().ran = &cmd }
	c.ident.Store(&identity.Identity{DeviceID: fzDevice})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	pahoClient := paho.NewClient(paho.ClientConfig{Conn: rc, PacketTimeout: 5 * time.Second,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d := &fzDelivery{topic: pr.Packet.Topic, retain: pr.Packet.Retain, size: len(pr.Packet.Topic) + len(pr.Packet.Payload)}
			current.Store(d)
			c.onPublish(ctx, pr.Packet)
			mu.Lock()
			deliveries = append(deliveries, *d)
			mu.Unlock()
			return true, nil
		}}})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		if _, err := srv.Write(fzConnack()); err != nil {
			return
		}
		_, _ = srv.Write(in) // fails once the client closes: it stopped reading
		srv.Close()
	}()
	if _, err := pahoClient.Connect(ctx, &paho.Connect{ClientID: fzDevice, CleanStart: true}); err == nil {
		select {
		case <-pahoClient.Done():
		case <-ctx.Done():
			t.Fatalf("the client did not stop after the broker closed (%d bytes handed out)", len(rc.handed))
		}
	}
	srv.Close()
	cli.Close()
	<-sent
	rc.mu.Lock()
	defer rc.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	return fzBrokerResult{handed: slices.Clone(rc.handed), readErr: pc.readErr, deliveries: deliveries}
}

// fzConnack is a valid CONNACK: session not present, success, no
// properties.
func fzConnack() []byte { return []byte{0x20, 0x03, 0x00, 0x00, 0x00} }

// fzScanHeaders walks the fixed headers of stream, skipping each packet's
// body, and returns the offset of the first packet whose complete header
// breaks the bound, with the sentinel it breaks: a reserved type 0 or a
// remaining length of more than 4 bytes (ErrBrokerProtocol), a packet
// over max bytes (ErrPacketTooLarge). A header cut short by the end of
// stream breaks nothing yet, unless its fourth length byte announces a
// fifth.
func fzScanHeaders(stream []byte, max int) (int, error) {
	for at := 0; at < len(stream); {
		if stream[at]>>4 == 0 {
			return at, ErrBrokerProtocol
		}
		length, i := 0, at+1
		for n := 1; ; n++ {
			if i >= len(stream) {
				return at, nil
			}
			b := stream[i]
			length |= int(b&0x7f) << (7 * (n - 1))
			i++
			if b&0x80 == 0 {
				break
			}
			if n == 4 { // a fifth length byte would follow
				return at, ErrBrokerProtocol
			}
		}
		if i-at+length > max {
			return at, ErrPacketTooLarge
		}
		at = i + length
	}
	return len(stream), nil
}

// fzBrokerSeeds are broker byte streams (after the CONNACK): the rogue
// broker's attacks, genuine traffic (a signed command, SUBACK, PINGRESP),
// and the protocol's corner cases.
func fzBrokerSeeds(tb testing.TB) []fzNamed {
	tb.Helper()
	pkt := func(p interface {
		WriteTo(io.Writer) (int64, error)
	}) []byte {
		var b bytes.Buffer
		if _, err := p.WriteTo(&b); err != nil {
			tb.Fatal(err)
		}
		return b.Bytes()
	}
	var valid []byte
	for _, s := range fzCommandSeeds(tb) {
		if s.name == "valid" {
			valid = s.data
		}
	}
	props := func() *packets.Properties { return &packets.Properties{} }
	topic := wire.CommandTopic(fzDevice)
	command := pkt(&packets.Publish{Topic: topic, QoS: 1, PacketID: 1, Payload: valid, Properties: props()})
	alias := uint16(1)
	half := pkt(&packets.Publish{Topic: topic, QoS: 1, PacketID: 2, Payload: valid, Properties: props()})
	// A PUBLISH header announcing exactly the bound, and one byte over.
	atLimit := append([]byte{0x30}, fzVBI(limits.MQTTPacket-1-len(fzVBI(limits.MQTTPacket-4)))...)
	overLimit := append([]byte{0x30}, fzVBI(limits.MQTTPacket-len(fzVBI(limits.MQTTPacket-4)))...)
	return []fzNamed{
		{"huge-length", []byte{0x30, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x05, 0x64}},
		{"reserved-type", []byte{0x00, 0x02, 0x00, 0x00}},
		{"long-length", []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01, 0x00, 0x01, 0x61}},
		// Found by the fuzzer: the fourth length byte announces a fifth,
		// which never comes. That is a violation already.
		{"long-length-at-end", []byte{0x30, 0xf0, 0xf0, 0xf0, 0xf0}},
		{"truncated", half[:len(half)/2]},
		{"header-at-limit", append(atLimit, 0x00, 0x01, 'x')},
		{"header-over-limit", append(overLimit, 0x00, 0x01, 'x')},
		{"command", command},
		{"command-qos0", pkt(&packets.Publish{Topic: topic, Payload: valid, Properties: props()})},
		{"command-retained", pkt(&packets.Publish{Topic: topic, QoS: 1, PacketID: 3, Retain: true, Payload: valid, Properties: props()})},
		{"command-qos2", pkt(&packets.Publish{Topic: topic, QoS: 2, PacketID: 4, Payload: valid, Properties: props()})},
		{"command-other-topic", pkt(&packets.Publish{Topic: wire.TelemetryTopic(fzDevice, fzStream), QoS: 1, PacketID: 5, Payload: valid, Properties: props()})},
		{"topic-alias", append(pkt(&packets.Publish{Topic: topic, QoS: 1, PacketID: 6, Payload: valid, Properties: &packets.Properties{TopicAlias: &alias}}),
			pkt(&packets.Publish{QoS: 1, PacketID: 7, Payload: valid, Properties: &packets.Properties{TopicAlias: &alias}})...)},
		{"puback-unknown", pkt(&packets.Puback{PacketID: 9, Properties: props()})},
		{"pubrec-pubrel-unknown", append(pkt(&packets.Pubrec{PacketID: 10, Properties: props()}), pkt(&packets.Pubrel{PacketID: 11, Properties: props()})...)},
		{"second-connack", fzConnack()},
		{"session-taken-over", pkt(&packets.Disconnect{ReasonCode: 0x8E, Properties: props()})},
		{"traffic", slices.Concat(pkt(&packets.Suback{PacketID: 1, Reasons: []byte{1}, Properties: props()}), command, pkt(&packets.Pingresp{}))},
		{"empty", nil},
	}
}

// fzVBI encodes n as a variable byte integer.
func fzVBI(n int) []byte {
	var out []byte
	for {
		d := byte(n & 0x7f)
		if n >>= 7; n > 0 {
			d |= 0x80
		}
		if out = append(out, d); n == 0 {
			return out
		}
	}
}

// TestFuzzBrokerBytesSeeds checks that the committed seeds of
// FuzzBrokerBytes still mean what their names say: the bound stops the
// oversized and malformed streams with the right sentinel, the genuine
// command runs and the others do not. With -update-fuzz-seeds it first
// rewrites them.
func TestFuzzBrokerBytesSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzBrokerBytes")
	if *fzUpdateSeeds {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, s := range fzBrokerSeeds(t) {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.data)
			if err := os.WriteFile(filepath.Join(dir, s.name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := map[string]struct {
		err error
		ran int
	}{
		"huge-length":        {ErrPacketTooLarge, 0},
		"header-over-limit":  {ErrPacketTooLarge, 0},
		"reserved-type":      {ErrBrokerProtocol, 0},
		"long-length":        {ErrBrokerProtocol, 0},
		"long-length-at-end": {ErrBrokerProtocol, 0},
		"command":            {nil, 1},
		"command-qos0":       {nil, 1},
		"command-qos2":       {nil, 1},
		"topic-alias":        {nil, 1}, // the copy with the topic; the one with only the alias has none
		"traffic":            {nil, 1},
	}
	cv, err := newCommandVerifier(nil, filepath.Join(t.TempDir(), "commands.state"), fzDevice,
		[]crypto.PublicKey{fzKey(t, fzCommandKeyPEM).Public()}, fzNow)
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus in %s (%v)", dir, err)
	}
	for _, file := range files {
		name := filepath.Base(file)
		cv.last = 0
		r := fzRunBroker(t, cv, fzReadCorpusFile(t, file))
		ran := 0
		for _, d := range r.deliveries {
			if d.ran != nil {
				ran++
			}
		}
		w := want[name]
		if (w.err == nil) != (r.readErr == nil) || (w.err != nil && !errors.Is(r.readErr, w.err)) || ran != w.ran {
			t.Errorf("%s: bound error %v, %d commands run; want %v and %d", name, r.readErr, ran, w.err, w.ran)
		}
	}
}
