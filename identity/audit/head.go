// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/limits"
)

// HeadType is the JOSE "typ" header of a signed head. Verifiers accept no
// other, so that no other token signed by the device key passes for a
// head.
const HeadType = "d2c-audit-head+jws"

// SignedHead is the content of a signed head: the device vouches that its
// log held record Seq with hash Hash at Time.
type SignedHead struct {
	Device string
	Seq    uint64
	Hash   [32]byte
	Time   time.Time // millisecond precision
}

// wireHead is the JWS payload of a signed head. The hash is lower-case
// hex; the time is in Unix milliseconds.
type wireHead struct {
	Device string `json:"device"`
	Seq    uint64 `json:"seq"`
	Hash   string `json:"hash"`
	Time   int64  `json:"time"`
}

// wireHeader is the protected header of a signed head: exactly these
// members, in this order (go-jose writes them sorted).
type wireHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

var (
	allowedAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA}
	b64         = base64.RawURLEncoding.Strict()
)

// SignHead signs the log's current head for deviceID with the device key
// (ES256 for a P-256 key, EdDSA for Ed25519; the key may be in hardware:
// only its crypto.Signer is used): a compact JWS, typ [HeadType], kid the
// RFC 7638 thumbprint of the key ([identity.KeyID]), whose payload is the
// JSON {"device", "seq", "hash", "time"}. The device publishes it to the
// cloud ([HeadReporter]); the cloud checks it with [VerifyHead] and keeps
// the last one per device.
func (l *Log) SignHead(signer crypto.Signer, deviceID string) ([]byte, error) {
	seq, hash := l.Head()
	return signHead(signer, SignedHead{Device: deviceID, Seq: seq, Hash: hash, Time: l.cfg.Now()})
}

func signHead(signer crypto.Signer, h SignedHead) ([]byte, error) {
	if signer == nil {
		return nil, errors.New("audit: sign head: no signing key")
	}
	if err := identity.ValidateDeviceID(h.Device); err != nil {
		return nil, fmt.Errorf("audit: sign head: %w", err)
	}
	pub := signer.Public()
	alg, err := identity.JWSAlgorithm(pub)
	if err != nil {
		return nil, err
	}
	kid, err := identity.KeyID(pub)
	if err != nil {
		return nil, fmt.Errorf("audit: sign head: %w", err)
	}
	payload, err := json.Marshal(wireHead{Device: h.Device, Seq: h.Seq, Hash: hex.EncodeToString(h.Hash[:]), Time: h.Time.UnixMilli()})
	if err != nil {
		return nil, fmt.Errorf("audit: sign head: %w", err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: cryptosigner.Opaque(signer)},
		(&jose.SignerOptions{}).WithType(HeadType).WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		return nil, fmt.Errorf("audit: sign head: %w", err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("audit: sign head: %w", err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		return nil, fmt.Errorf("audit: sign head: %w", err)
	}
	if len(out) > limits.AuditHeadToken {
		return nil, fmt.Errorf("%w: signed head of %d bytes", ErrTooLarge, len(out))
	}
	return []byte(out), nil
}

// VerifyHead checks a signed head against the device certificate cert
// (the one the cloud registered for the device, whose chain and
// revocation the caller has checked, e.g. with identity.DeviceCertPolicy):
// the form (size, canonical base64url, a header of exactly alg, kid and
// typ [HeadType], a payload of exactly device, seq, hash and time), the
// key (kid and algorithm of cert's key), the signature, and that the head
// names the device cert names. The key comes from cert only, never from
// the token.
func VerifyHead(token []byte, cert *x509.Certificate) (SignedHead, error) {
	if cert == nil {
		return SignedHead{}, errors.New("audit: verify head: no certificate")
	}
	if len(token) > limits.AuditHeadToken {
		return SignedHead{}, fmt.Errorf("%w: signed head of %d bytes, at most %d", ErrTooLarge, len(token), limits.AuditHeadToken)
	}
	parts := strings.Split(string(token), ".")
	if len(parts) != 3 {
		return SignedHead{}, fmt.Errorf("%w: signed head: not a compact JWS", ErrMalformed)
	}
	var seg [3][]byte
	for i, p := range parts {
		var err error
		if seg[i], err = b64.DecodeString(p); err != nil || b64.EncodeToString(seg[i]) != p {
			return SignedHead{}, fmt.Errorf("%w: signed head: segment %d is not base64url", ErrMalformed, i+1)
		}
	}
	var hdr wireHeader
	if err := strictJSON(seg[0], &hdr); err != nil {
		return SignedHead{}, fmt.Errorf("%w: signed head header: %v", ErrMalformed, err)
	}
	if hdr.Typ != HeadType {
		return SignedHead{}, fmt.Errorf("%w: signed head typ %q, want %q", ErrMalformed, clip(hdr.Typ), HeadType)
	}
	var w wireHead
	if err := strictJSON(seg[1], &w); err != nil {
		return SignedHead{}, fmt.Errorf("%w: signed head payload: %v", ErrMalformed, err)
	}
	h := SignedHead{Device: w.Device, Seq: w.Seq, Time: time.UnixMilli(w.Time).UTC()}
	hb, err := hex.DecodeString(w.Hash)
	if err != nil || len(hb) != len(h.Hash) || hex.EncodeToString(hb) != w.Hash {
		return SignedHead{}, fmt.Errorf("%w: signed head hash is not 64 lower-case hex digits", ErrMalformed)
	}
	copy(h.Hash[:], hb)
	if err := identity.ValidateDeviceID(w.Device); err != nil || w.Seq > maxSeq {
		return SignedHead{}, fmt.Errorf("%w: signed head device or sequence number out of range", ErrMalformed)
	}

	device := cert.Subject.CommonName
	if identity.ValidateDeviceID(device) != nil || len(cert.URIs) != 1 || cert.URIs[0].String() != identity.DeviceURI(device) {
		return SignedHead{}, fmt.Errorf("audit: verify head: %w: the certificate names no device", identity.ErrUntrusted)
	}
	alg, err := identity.JWSAlgorithm(cert.PublicKey)
	if err != nil {
		return SignedHead{}, err
	}
	if alg != hdr.Alg {
		return SignedHead{}, fmt.Errorf("%w: algorithm %q, the certificate's key needs %s", ErrSignature, clip(hdr.Alg), alg)
	}
	kid, err := identity.KeyID(cert.PublicKey)
	if err != nil {
		return SignedHead{}, fmt.Errorf("audit: verify head: %w", err)
	}
	if hdr.Kid != kid {
		return SignedHead{}, fmt.Errorf("%w: signed by another key than %s's certificate (kid %q)", ErrSignature, device, clip(hdr.Kid))
	}
	jws, err := jose.ParseSignedCompact(string(token), allowedAlgs)
	if err != nil {
		return SignedHead{}, fmt.Errorf("%w: signed head: %v", ErrMalformed, err)
	}
	if len(jws.Signatures) != 1 {
		return SignedHead{}, fmt.Errorf("%w: signed head with %d signatures", ErrMalformed, len(jws.Signatures))
	}
	if _, err := jws.Verify(cert.PublicKey); err != nil {
		return SignedHead{}, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	if w.Device != device {
		return SignedHead{}, fmt.Errorf("%w: the head names %s, the certificate %s", ErrWrongDevice, w.Device, device)
	}
	return h, nil
}

// strictJSON decodes b into v (a struct) and requires b to be exactly
// what encoding/json writes for the result: no unknown, duplicate or
// missing member, no null, no white space, one spelling of every value.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	again, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if !bytes.Equal(again, b) {
		return errors.New("not in canonical form (members, order, spelling)")
	}
	return nil
}

// CheckNextHead checks, in the cloud, a newly verified head against the
// last one kept for the device: same device, a sequence number not lower
// (a lower one means the log was reset or rewritten), and the same hash
// at the same sequence number (otherwise the log forked). It cannot tell
// that next extends last: only the records between them can
// ([CheckLog]).
func CheckNextHead(last, next SignedHead) error {
	switch {
	case next.Device != last.Device:
		return fmt.Errorf("%w: %s after a head of %s", ErrWrongDevice, next.Device, last.Device)
	case next.Seq < last.Seq:
		return chainErr(ErrTampered, next.Seq, "head at record %d after a head at record %d (the log was reset or rewritten)", next.Seq, last.Seq)
	case next.Seq == last.Seq && next.Hash != last.Hash:
		return chainErr(ErrTampered, next.Seq, "record %d modified (two heads at record %d with different hashes)", next.Seq, next.Seq)
	}
	return nil
}

// DefaultHeadStream is the telemetry stream signed heads go to.
const DefaultHeadStream = "audit.head"

// Head reporter defaults.
const (
	DefaultHeadInterval = time.Hour
	DefaultHeadDelay    = time.Minute
)

// HeadReporterConfig configures a [HeadReporter]. Signer, DeviceID and
// Publish are required; every other zero field means its default.
type HeadReporterConfig struct {
	// Signer is the device key. Required.
	Signer crypto.Signer
	// DeviceID is the device's ID, as its certificate names it. Required.
	DeviceID string
	// Publish stores body for delivery on a telemetry stream, e.g. with
	// transport:
	//
	//	func(ctx context.Context, stream string, body []byte) error {
	//		return client.Publish(ctx, stream, transport.Reading{Time: time.Now(), Body: body})
	//	}
	//
	// Required. (This package cannot import transport, which imports
	// identity.)
	Publish func(ctx context.Context, stream string, body []byte) error
	// Stream is the telemetry stream. Default [DefaultHeadStream]
	// ("audit.head").
	Stream string
	// Interval is how often [HeadReporter.Run] publishes the head even if
	// it did not change, so that the cloud knows the log is alive.
	// Default [DefaultHeadInterval] (1 h).
	Interval time.Duration
	// Delay is how long Run waits after an append before it publishes,
	// so that a burst of records costs one head; also the retry delay
	// after a failed publish. Default [DefaultHeadDelay] (1 min). The
	// window in which an attacker with root on the device can rewrite
	// the log unnoticed is about Delay plus the time to delivery.
	Delay time.Duration
	// Logger receives failed publishes. Default: none.
	Logger *slog.Logger
}

// HeadReporter publishes the log's signed head: after appends and
// periodically. Each published head bounds what an attacker who later
// takes the device can rewrite: the cloud holds it and checks the log
// against it ([VerifyAgainstHead], [CheckNextHead]).
type HeadReporter struct {
	log *Log
	cfg HeadReporterConfig
}

// NewHeadReporter checks cfg and returns a reporter for l. cfg is copied.
func NewHeadReporter(l *Log, cfg HeadReporterConfig) (*HeadReporter, error) {
	switch {
	case l == nil, cfg.Signer == nil, cfg.Publish == nil:
		return nil, errors.New("audit: head reporter needs a Log, Signer and Publish")
	case cfg.Interval < 0, cfg.Delay < 0:
		return nil, errors.New("audit: head reporter: negative Interval or Delay")
	}
	if err := identity.ValidateDeviceID(cfg.DeviceID); err != nil {
		return nil, fmt.Errorf("audit: head reporter: %w", err)
	}
	if _, err := identity.JWSAlgorithm(cfg.Signer.Public()); err != nil {
		return nil, err
	}
	if cfg.Stream == "" {
		cfg.Stream = DefaultHeadStream
	}
	if identity.ValidateDeviceID(cfg.Stream) != nil {
		return nil, fmt.Errorf("audit: head reporter: invalid stream name %q", clip(cfg.Stream))
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultHeadInterval
	}
	if cfg.Delay == 0 {
		cfg.Delay = DefaultHeadDelay
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &HeadReporter{log: l, cfg: cfg}, nil
}

// Report signs the current head and publishes it now.
func (r *HeadReporter) Report(ctx context.Context) error {
	if r.log.isClosed() {
		return ErrClosed
	}
	tok, err := r.log.SignHead(r.cfg.Signer, r.cfg.DeviceID)
	if err != nil {
		return err
	}
	if err := r.cfg.Publish(ctx, r.cfg.Stream, tok); err != nil {
		return fmt.Errorf("audit: publish head: %w", err)
	}
	return nil
}

// Run publishes the head at once, then Delay after each append (one head
// for a burst), and every Interval in any case, until ctx ends (it
// returns ctx's error) or the log closes ([ErrClosed]). A failed publish
// is logged and retried after Delay.
func (r *HeadReporter) Run(ctx context.Context) error {
	next := time.NewTimer(0)
	defer next.Stop()
	changed := r.log.wait()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
			if r.log.isClosed() {
				return ErrClosed
			}
			next.Reset(r.cfg.Delay)
			changed = nil // until this head is published
			continue
		case <-next.C:
		}
		changed = r.log.wait()
		err := r.Report(ctx)
		switch {
		case errors.Is(err, ErrClosed):
			return err
		case err != nil && ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			r.cfg.Logger.Error("audit: publish signed head", "err", err)
			next.Reset(r.cfg.Delay)
		default:
			next.Reset(r.cfg.Interval)
		}
	}
}
