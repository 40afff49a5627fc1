// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/eclipse/paho.golang/packets"
)

// TestInboundBound: the fixed header of every packet from the broker is
// checked before the byte that completes its remaining length is handed
// out, so paho never learns (and never allocates) an oversized length;
// valid packets before the violation still reach the reader.
func TestInboundBound(t *testing.T) {
	puback := []byte{0x40, 0x02, 0x00, 0x01}
	for _, tc := range []struct {
		name   string
		in     []byte
		chunk  int // bytes per underlying read (0: all at once)
		handed int // bytes handed out before the violation
		want   error
	}{
		{"256 MiB PUBLISH from 8 bytes", []byte{0x30, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x05, 0x64}, 0, 4, ErrPacketTooLarge},
		{"the same a byte at a time", []byte{0x30, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x05, 0x64}, 1, 4, ErrPacketTooLarge},
		{"after a valid PUBACK", append(bytes.Clone(puback), 0x30, 0xff, 0xff, 0xff, 0x7f), 0, 8, ErrPacketTooLarge},
		{"over the limit", append([]byte{0x30}, vbi(400<<10)...), 0, 3, ErrPacketTooLarge},
		{"five-byte remaining length", []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, 0, 4, ErrBrokerProtocol},
		{"reserved packet type 0", append(bytes.Clone(puback), 0x00, 0x00), 0, 4, ErrBrokerProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newPacketConn(&chunkConn{data: tc.in, chunk: tc.chunk}, 1024)
			c.first = true // past the CONNACK (TestFirstPacket)
			got, err := io.ReadAll(c)
			if !errors.Is(err, tc.want) {
				t.Fatalf("read error %v, want %v", err, tc.want)
			}
			if len(got) != tc.handed {
				t.Fatalf("handed out %d bytes (% x), want %d", len(got), got, tc.handed)
			}
			if _, again := c.Read(make([]byte, 16)); !errors.Is(again, tc.want) {
				t.Fatalf("the next read: %v, want the same violation", again)
			}
		})
	}

	// paho's own reader over the bound: valid packets of every size up to
	// the limit, split over reads of every size, come through intact.
	var stream []byte
	for _, size := range []int{0, 1, 127, 128, 1000} {
		p := packets.NewControlPacket(packets.PUBLISH)
		pub := p.Content.(*packets.Publish)
		pub.Topic, pub.QoS, pub.PacketID, pub.Payload = "d2c/v1/dev/x/down/cmd", 1, 7, bytes.Repeat([]byte{'a'}, size)
		var b bytes.Buffer
		if _, err := p.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		stream = append(stream, b.Bytes()...)
	}
	for _, chunk := range []int{1, 2, 3, 7, 64, 0} {
		c := newPacketConn(&chunkConn{data: stream, chunk: chunk}, 1100)
		c.first = true
		for i := range 5 {
			if _, err := packets.ReadPacket(c); err != nil {
				t.Fatalf("chunk %d, packet %d: %v", chunk, i, err)
			}
		}
		if _, err := packets.ReadPacket(c); !errors.Is(err, io.EOF) {
			t.Fatalf("chunk %d: after the last packet: %v, want EOF", chunk, err)
		}
	}
}

// vbi encodes n as an MQTT variable byte integer.
func vbi(n int) []byte {
	var out []byte
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			return out
		}
	}
}

// chunkConn is a net.Conn whose reads return at most chunk bytes of data.
type chunkConn struct {
	net.Conn
	data  []byte
	chunk int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if c.chunk > 0 {
		n = min(n, c.chunk)
	}
	n = copy(p, c.data[:min(n, len(c.data))])
	c.data = c.data[n:]
	return n, nil
}

// TestFirstPacket: the broker's first packet must be a CONNACK that MQTT v5
// allows (or a DISCONNECT); repeated, forbidden or out-of-range CONNACK
// properties end the connection with ErrBrokerProtocol before paho reads
// them, and an oversized first packet is never allocated.
func TestFirstPacket(t *testing.T) {
	connack := func(props ...byte) []byte {
		body := append([]byte{0x00, 0x00}, vbi(len(props))...)
		body = append(body, props...)
		return append(append([]byte{0x20}, vbi(len(body))...), body...)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"plain CONNACK", connack(), nil},
		{"CONNACK with properties", connack(0x21, 0x00, 0x14, 0x24, 0x01, 0x26, 0x00, 0x01, 'k', 0x00, 0x01, 'v', 0x26, 0x00, 0x01, 'k', 0x00, 0x01, 'w'), nil},
		{"DISCONNECT", []byte{0xe0, 0x01, 0x87}, nil},
		{"repeated Receive Maximum", connack(0x21, 0x00, 0x14, 0x21, 0x00, 0x15), ErrBrokerProtocol},
		{"Receive Maximum 0", connack(0x21, 0x00, 0x00), ErrBrokerProtocol},
		{"Topic Alias property (a PUBLISH property)", connack(0x23, 0x00, 0x01), ErrBrokerProtocol},
		{"Maximum QoS 2", connack(0x24, 0x02), ErrBrokerProtocol},
		{"truncated string", connack(0x1f, 0x00, 0x09, 'x'), ErrBrokerProtocol},
		{"reserved acknowledge flag", []byte{0x20, 0x03, 0x02, 0x00, 0x00}, ErrBrokerProtocol},
		{"a PUBLISH first", []byte{0x30, 0x03, 0x00, 0x01, 'x'}, ErrBrokerProtocol},
		{"256 MiB first packet", []byte{0x20, 0xff, 0xff, 0xff, 0x7f}, ErrPacketTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newPacketConn(&chunkConn{data: tc.in, chunk: 1}, 1024)
			got, err := io.ReadAll(c)
			if tc.want == nil {
				if err != nil || !bytes.Equal(got, tc.in) {
					t.Fatalf("read % x, %v; want the packet itself", got, err)
				}
				return
			}
			if !errors.Is(err, tc.want) || len(got) != 0 {
				t.Fatalf("read % x, %v; want nothing and %v", got, err, tc.want)
			}
		})
	}
}
