// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package wire_test

import (
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/transport/wire"
)

// ExampleParseTopic splits a topic of the d2c/v1 scheme; anything else is
// refused.
func ExampleParseTopic() {
	t := wire.TelemetryTopic("gw-12", "temp")
	p, err := wire.ParseTopic(t)
	fmt.Println(t, p.Device, p.Stream, p.Kind == wire.KindTelemetry, err)
	_, err = wire.ParseTopic("d2c/v1/dev/gw-12/up/../../x")
	fmt.Println(err != nil)
	// Output:
	// d2c/v1/dev/gw-12/up/tele/temp gw-12 temp true <nil>
	// true
}

// ExampleCodec encodes a record as the CBOR an envelope signs and reads it
// back; there is exactly one encoding of each record.
func ExampleCodec() {
	c, err := wire.NewCodec()
	if err != nil {
		fmt.Println(err)
		return
	}
	at := time.UnixMilli(1795000000000)
	b, err := c.EncodeRecord(wire.Record{Device: "gw-12", Stream: "temp", Boot: 7, Seq: 0, Time: at,
		Readings: []wire.Reading{{Time: at, Body: []byte("21.5")}}})
	if err != nil {
		fmt.Println(err)
		return
	}
	r, err := c.DecodeRecord(b)
	fmt.Printf("%d bytes: %s %s %d/%d %q %v\n", len(b), r.Device, r.Stream, r.Boot, r.Seq, r.Readings[0].Body, err)
	// Output:
	// 45 bytes: gw-12 temp 7/0 "21.5" <nil>
}
