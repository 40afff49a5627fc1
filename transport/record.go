// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"github.com/d2c-iot/d2c/internal/cborx"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Reading is one application reading: a time and an opaque body
// ([wire.Reading]).
type Reading = wire.Reading

// Record is the content of a telemetry envelope: who, which stream, where
// in the device's message sequence, and one or more readings
// ([wire.Record]).
type Record = wire.Record

// codec is the record codec with the CBOR modes for d2c's other CBOR
// payloads (commands, session-key deliveries).
type codec struct {
	wire.Codec
	m cborx.Modes
}

func newCodec() (codec, error) {
	rc, err := wire.NewCodec()
	if err != nil {
		return codec{}, err
	}
	m, err := cborx.New(limits.Readings)
	return codec{rc, m}, err
}
