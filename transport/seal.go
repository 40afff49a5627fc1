// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"crypto"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/internal/jws"
	"github.com/d2c-iot/d2c/transport/wire"
)

// EncryptionMode chooses how envelopes are encrypted to the cloud.
type EncryptionMode int

const (
	// SessionKey (the default) encrypts each envelope with AES-256-GCM
	// under a content key (JWE "dir", RFC 7516/7518 section 4.5) that the
	// device generates, keeps in memory only, and delivers once to the cloud
	// in a signed ECDH-ES+A256KW JWE; rotated by count and time. It costs
	// microseconds per envelope instead of an ECDH agreement.
	SessionKey EncryptionMode = iota
	// PerMessage encrypts each envelope to the cloud key with a fresh
	// ECDH-ES+A256KW agreement (RFC 7518 section 4.6): no key state on
	// either side, about 3 signatures' worth of work per envelope.
	PerMessage
)

// Encryption configures end-to-end encryption of telemetry to the cloud, so
// that a broker (even a third party's) cannot read it.
type Encryption struct {
	// CloudKey is the cloud's P-256 public key (*ecdsa.PublicKey or
	// *ecdh.PublicKey). Required.
	CloudKey crypto.PublicKey
	// CloudKeyID names CloudKey in the JWE "kid" of key deliveries and
	// per-message envelopes.
	CloudKeyID string
	// Mode is SessionKey (default) or PerMessage.
	Mode EncryptionMode
	// RotateAfter is how many envelopes one session key encrypts. Default
	// 100,000.
	RotateAfter int
	// RotateEvery is how long one session key lives. Default 24 hours.
	RotateEvery time.Duration
}

// Sealer builds the envelopes of one device: CBOR record, JWS signed by the
// device key (kid = device ID), optionally nested in a JWE to the cloud.
// It is safe for concurrent use.
type Sealer struct {
	device string
	signer *jws.FastSigner
	codec  codec
	now    func() time.Time
	enc    *Encryption
	encPub crypto.PublicKey

	mu        sync.Mutex
	perMsg    jose.Encrypter
	session   jose.Encrypter // dir encrypter for the current session key
	sessionID string
	sessUses  int
	sessStart time.Time
	keySigner jose.Signer
}

// NewSealer returns the sealer of device id whose key is key. enc, if not
// nil, turns on encryption. now defaults to time.Now.
func NewSealer(id string, key crypto.Signer, enc *Encryption, now func() time.Time) (*Sealer, error) {
	if err := identity.ValidateDeviceID(id); err != nil {
		return nil, err
	}
	signer, err := jws.NewFastSigner(key, id, wire.TelemetryType)
	if err != nil {
		return nil, err
	}
	c, err := newCodec()
	if err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	s := &Sealer{device: id, signer: signer, codec: c, now: now}
	if enc != nil {
		e := *enc
		pub, err := jws.ECDHPublic(e.CloudKey)
		if err != nil {
			return nil, err
		}
		if e.RotateAfter <= 0 {
			e.RotateAfter = 100_000
		}
		if e.RotateEvery <= 0 {
			e.RotateEvery = 24 * time.Hour
		}
		s.enc, s.encPub = &e, pub
		s.perMsg, err = jose.NewEncrypter(jose.A256GCM,
			jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: pub, KeyID: e.CloudKeyID},
			(&jose.EncrypterOptions{}).WithContentType(wire.TelemetryType))
		if err != nil {
			return nil, fmt.Errorf("transport: encrypter: %w", err)
		}
		s.keySigner, err = jws.NewSigner(key, id, wire.KeyDeliveryType)
		if err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Device returns the device ID the sealer signs for.
func (s *Sealer) Device() string { return s.device }

// Sealed is one envelope ready to publish, with, when a new session key
// starts, the key delivery that must be published before it.
type Sealed struct {
	Envelope    []byte
	KeyDelivery []byte // nil unless a new session key starts with this envelope
}

// Seal encodes, signs and (if configured) encrypts rec. rec.Device is set to
// the sealer's device.
func (s *Sealer) Seal(rec Record) (Sealed, error) {
	rec.Device = s.device
	if err := wire.ValidateStream(rec.Stream); err != nil {
		return Sealed{}, err
	}
	payload, err := s.codec.EncodeRecord(rec)
	if err != nil {
		return Sealed{}, err
	}
	compact, err := s.signer.Sign(payload)
	if err != nil {
		return Sealed{}, err
	}
	if s.enc == nil {
		return Sealed{Envelope: compact}, nil
	}
	if s.enc.Mode == PerMessage {
		jwe, err := s.perMsg.Encrypt(compact)
		if err != nil {
			return Sealed{}, fmt.Errorf("transport: encrypt: %w", err)
		}
		out, err := jwe.CompactSerialize()
		return Sealed{Envelope: []byte(out)}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out Sealed
	if s.session == nil || s.sessUses >= s.enc.RotateAfter || s.now().Sub(s.sessStart) >= s.enc.RotateEvery {
		if out.KeyDelivery, err = s.rotateLocked(rec.Boot); err != nil {
			return Sealed{}, err
		}
	}
	s.sessUses++
	jwe, err := s.session.Encrypt(compact)
	if err != nil {
		return Sealed{}, fmt.Errorf("transport: encrypt: %w", err)
	}
	env, err := jwe.CompactSerialize()
	out.Envelope = []byte(env)
	return out, err
}

// keyDelivery is the signed content of a session-key delivery.
type keyDelivery struct {
	Device  string `cbor:"1,keyasint"`
	KeyID   string `cbor:"2,keyasint"`
	Key     []byte `cbor:"3,keyasint"`
	Boot    uint64 `cbor:"4,keyasint"`
	Created int64  `cbor:"5,keyasint"` // Unix milliseconds
}

// rotateLocked starts a new session key and returns its delivery: the key
// record, signed by the device, encrypted to the cloud key with
// ECDH-ES+A256KW.
func (s *Sealer) rotateLocked(boot uint64) ([]byte, error) {
	key := make([]byte, 32)
	kid := make([]byte, 16)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if _, err := rand.Read(kid); err != nil {
		return nil, err
	}
	id := base64.RawURLEncoding.EncodeToString(kid)
	now := s.now()
	payload, err := s.codec.m.Enc.Marshal(keyDelivery{Device: s.device, KeyID: id, Key: key, Boot: boot, Created: now.UnixMilli()})
	if err != nil {
		return nil, err
	}
	sig, err := s.keySigner.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("transport: sign key delivery: %w", err)
	}
	inner, err := sig.CompactSerialize()
	if err != nil {
		return nil, err
	}
	enc, err := jose.NewEncrypter(jose.A256GCM,
		jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: s.encPub, KeyID: s.enc.CloudKeyID},
		(&jose.EncrypterOptions{}).WithContentType(wire.KeyDeliveryType))
	if err != nil {
		return nil, err
	}
	jwe, err := enc.Encrypt([]byte(inner))
	if err != nil {
		return nil, fmt.Errorf("transport: encrypt key delivery: %w", err)
	}
	delivery, err := jwe.CompactSerialize()
	if err != nil {
		return nil, err
	}
	sess, err := jose.NewEncrypter(jose.A256GCM,
		jose.Recipient{Algorithm: jose.DIRECT, Key: key, KeyID: id},
		(&jose.EncrypterOptions{}).WithContentType(wire.TelemetryType))
	if err != nil {
		return nil, err
	}
	s.session, s.sessionID, s.sessUses, s.sessStart = sess, id, 0, now
	return []byte(delivery), nil
}
