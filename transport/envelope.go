// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"

	"github.com/d2c-iot/d2c/identity"
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

// codec holds the CBOR modes shared by envelope code.
type codec struct{ m cborx.Modes }

func newCodec() (codec, error) {
	m, err := cborx.New(limits.Readings)
	return codec{m}, err
}

func (c codec) encodeRecord(r Record) ([]byte, error) {
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

func (c codec) decodeRecord(b []byte) (Record, error) {
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

var allowedSigAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA}

// newJWSSigner returns a compact JWS signer with kid and typ headers.
func newJWSSigner(key crypto.Signer, kid, typ string) (jose.Signer, error) {
	alg, err := identity.JWSAlgorithm(key.Public())
	if err != nil {
		return nil, err
	}
	return jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: cryptosigner.Opaque(key)},
		(&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader(jose.HeaderKey("kid"), kid))
}

// parseJWS parses a compact JWS of the expected type with exactly one
// signature, and returns it with its kid, before any verification.
func parseJWS(b []byte, typ string) (*jose.JSONWebSignature, string, error) {
	if len(b) > limits.Envelope {
		return nil, "", fmt.Errorf("%w: %d bytes over %d", ErrMalformed, len(b), limits.Envelope)
	}
	if err := strictSegments(b); err != nil {
		return nil, "", err
	}
	jws, err := jose.ParseSignedCompact(string(b), allowedSigAlgs)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(jws.Signatures) != 1 {
		return nil, "", fmt.Errorf("%w: %d signatures", ErrMalformed, len(jws.Signatures))
	}
	h := jws.Signatures[0].Protected
	if got, _ := h.ExtraHeaders[jose.HeaderType].(string); got != typ {
		return nil, "", fmt.Errorf("%w: typ %q, want %q", ErrMalformed, clip(got), typ)
	}
	if err := onlyHeaders(b, "alg", "kid", "typ"); err != nil {
		return nil, "", err
	}
	return jws, h.KeyID, nil
}

// strictSegments refuses a compact serialization whose base64url segments
// are not canonical (non-zero unused bits, padding, other alphabets): one
// signed content has exactly one encoding, as RFC 7515 appendix C asks of
// base64url, and go-jose alone would accept variants.
func strictSegments(compact []byte) error {
	for seg := range bytes.SplitSeq(compact, []byte(".")) {
		if _, err := base64.RawURLEncoding.Strict().DecodeString(string(seg)); err != nil {
			return fmt.Errorf("%w: base64url segment: %v", ErrMalformed, err)
		}
	}
	return nil
}

// onlyHeaders checks that the protected header of a compact JOSE object
// holds exactly the named parameters: no embedded key (jwk), no x5c, no
// crit, no b64, nothing a verifier could be tricked into trusting.
func onlyHeaders(compact []byte, names ...string) error {
	first, _, _ := bytes.Cut(compact, []byte("."))
	raw, err := base64.RawURLEncoding.DecodeString(string(first))
	if err != nil {
		return fmt.Errorf("%w: protected header: %v", ErrMalformed, err)
	}
	var h map[string]json.RawMessage
	if err := json.Unmarshal(raw, &h); err != nil {
		return fmt.Errorf("%w: protected header: %v", ErrMalformed, err)
	}
	if len(h) != len(names) {
		return fmt.Errorf("%w: protected header has %d parameters, want %v", ErrMalformed, len(h), names)
	}
	for _, n := range names {
		if _, ok := h[n]; !ok {
			return fmt.Errorf("%w: protected header lacks %q", ErrMalformed, n)
		}
	}
	return nil
}

// verifyJWS checks the signature with pub, whose algorithm must be the one
// in the header.
func verifyJWS(jws *jose.JSONWebSignature, pub crypto.PublicKey) ([]byte, error) {
	alg, err := identity.JWSAlgorithm(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if got := jws.Signatures[0].Protected.Algorithm; got != alg {
		return nil, fmt.Errorf("%w: algorithm %q for a %s key", ErrBadSignature, clip(got), alg)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return payload, nil
}

// ecdhPublic checks that a cloud encryption key is a P-256 ECDH key (the
// curve of ECDH-ES+A256KW in d2c).
func ecdhPublic(pub crypto.PublicKey) (*ecdsa.PublicKey, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return k, nil
		}
	case *ecdh.PublicKey:
		if k.Curve() == ecdh.P256() {
			return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), k.Bytes())
		}
	}
	return nil, fmt.Errorf("transport: the cloud encryption key must be P-256, got %T", pub)
}
