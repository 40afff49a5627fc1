// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package wire

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/internal/cborx"
	"github.com/d2c-iot/d2c/internal/limits"
)

// Envelope media types (the JOSE "typ" and "cty" headers, RFC 7515 section
// 4.1.9, RFC 8725 section 3.11 explicit typing).
const (
	// TelemetryType is the "typ" of a telemetry JWS.
	TelemetryType = "d2c-tele+jws"
	// CommandType is the "typ" of a command JWS.
	CommandType = "d2c-cmd+jws"
	// KeyDeliveryType is the "typ" of a session-key delivery JWS.
	KeyDeliveryType = "d2c-key+jws"
	// ContentType is the MQTT v5 content type of every d2c envelope: a JOSE
	// compact serialization (RFC 7515 section 9.2.1 "application/jose").
	ContentType = "application/jose"
)

// Errors of envelope verification. Every refusal wraps one of them.
var (
	// ErrMalformed: the envelope does not parse (JOSE or CBOR), or breaks a
	// size limit.
	ErrMalformed = errors.New("transport: malformed envelope")
	// ErrBadSignature: the signature does not verify with the key of the
	// device's registered certificate, or its algorithm is not allowed.
	ErrBadSignature = errors.New("transport: bad signature")
	// ErrWrongDevice: the envelope's signer, record and topic do not name
	// the same device.
	ErrWrongDevice = errors.New("transport: device mismatch")
	// ErrUnknownDevice: no registered certificate for the envelope's kid.
	ErrUnknownDevice = errors.New("transport: unknown device")
	// ErrDecrypt: an encrypted envelope does not decrypt.
	ErrDecrypt = errors.New("transport: cannot decrypt")
	// ErrReplay: a message older than the replay window, or from an
	// earlier boot, was refused.
	ErrReplay = errors.New("transport: replayed message")
	// ErrDuplicate: a message already accepted (a QoS 1 redelivery) was
	// dropped.
	ErrDuplicate = errors.New("transport: duplicate message")
)

// Reading is one application reading: a time and an opaque body.
type Reading struct {
	Time time.Time
	Body []byte
}

// Record is the content of a telemetry envelope: who, which stream, where in
// the device's message sequence, and one or more readings.
type Record struct {
	Device   string
	Stream   string
	Boot     uint64 // device boot counter, persisted, rises at every start
	Seq      uint64 // sequence number within the boot, from 0
	Time     time.Time
	Readings []Reading
}

// wireRecord is the CBOR form of a Record (RFC 8949, core deterministic
// encoding): a map with small integer keys. Times are Unix milliseconds.
type wireRecord struct {
	Device   string        `cbor:"1,keyasint"`
	Stream   string        `cbor:"2,keyasint"`
	Boot     uint64        `cbor:"3,keyasint"`
	Seq      uint64        `cbor:"4,keyasint"`
	Time     int64         `cbor:"5,keyasint"`
	Readings []wireReading `cbor:"6,keyasint"`
}

type wireReading struct {
	_    struct{} `cbor:",toarray"`
	Time int64
	Body []byte
}

// Codec encodes and decodes records in their one CBOR form (RFC 8949
// core deterministic encoding, a map with small integer keys). It holds
// no state but the CBOR modes; make one with [NewCodec] and share it.
type Codec struct{ m cborx.Modes }

// NewCodec returns a Codec.
func NewCodec() (Codec, error) {
	m, err := cborx.New(limits.Readings)
	return Codec{m}, err
}

// EncodeRecord returns the CBOR form of r: 1 to [limits.Readings] readings,
// each body at most [limits.ReadingBody] bytes.
func (c Codec) EncodeRecord(r Record) ([]byte, error) {
	if len(r.Readings) == 0 || len(r.Readings) > limits.Readings {
		return nil, fmt.Errorf("transport: %d readings in one envelope, want 1 to %d", len(r.Readings), limits.Readings)
	}
	w := wireRecord{Device: r.Device, Stream: r.Stream, Boot: r.Boot, Seq: r.Seq, Time: r.Time.UnixMilli(),
		Readings: make([]wireReading, len(r.Readings))}
	for i, rd := range r.Readings {
		if len(rd.Body) > limits.ReadingBody {
			return nil, fmt.Errorf("transport: reading body of %d bytes over %d", len(rd.Body), limits.ReadingBody)
		}
		body := rd.Body
		if body == nil {
			body = []byte{} // a byte string, never CBOR null
		}
		w.Readings[i] = wireReading{Time: rd.Time.UnixMilli(), Body: body}
	}
	return c.m.Enc.Marshal(w)
}

// DecodeRecord parses the CBOR form of a record, refusing any encoding but
// the deterministic one with every field, with [ErrMalformed].
func (c Codec) DecodeRecord(b []byte) (Record, error) {
	var w wireRecord
	if err := c.m.Dec.Unmarshal(b, &w); err != nil {
		return Record{}, fmt.Errorf("%w: record: %v", ErrMalformed, err)
	}
	// Only the deterministic encoding is accepted (RFC 8949 section
	// 4.2.1): every key present, shortest forms, keys in order. One signed
	// record has exactly one encoding.
	if again, err := c.m.Enc.Marshal(w); err != nil || !bytes.Equal(again, b) {
		return Record{}, fmt.Errorf("%w: record is not in deterministic CBOR encoding with every field", ErrMalformed)
	}
	if len(w.Readings) == 0 {
		return Record{}, fmt.Errorf("%w: record without readings", ErrMalformed)
	}
	r := Record{Device: w.Device, Stream: w.Stream, Boot: w.Boot, Seq: w.Seq, Time: time.UnixMilli(w.Time),
		Readings: make([]Reading, len(w.Readings))}
	for i, rd := range w.Readings {
		if len(rd.Body) > limits.ReadingBody {
			return Record{}, fmt.Errorf("%w: reading body over %d bytes", ErrMalformed, limits.ReadingBody)
		}
		r.Readings[i] = Reading{Time: time.UnixMilli(rd.Time), Body: rd.Body}
	}
	return r, nil
}
