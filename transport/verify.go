// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/transport/internal/jws"
	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/replay"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Certificates gives the cloud the registered certificate chains of a
// device (each leaf first), newest first: after a renewal the previous one
// stays valid for envelopes sealed before it. The verifier takes a signer's
// key from here, never from the envelope. [MemoryCertificates] is an
// in-process implementation; fleets back it with the database where the
// registrar records issued certificates.
type Certificates interface {
	DeviceCertificates(ctx context.Context, device string) ([][]*x509.Certificate, error)
}

// CachedCertificates is a [Certificates] that answers from a cache (a
// database-backed registry, cloud/store): before refusing an envelope that
// none of the cached certificates verifies, the verifier asks
// FreshDeviceCertificates, which reads past the cache, so that a device's
// first envelopes after a renewal are not refused.
type CachedCertificates interface {
	Certificates
	FreshDeviceCertificates(ctx context.Context, device string) ([][]*x509.Certificate, error)
}

// MemoryCertificates is a [Certificates] held in memory, keeping the two
// newest chains of each device.
type MemoryCertificates struct {
	mu sync.RWMutex
	m  map[string][][]*x509.Certificate
}

// Add registers chain (leaf first) under the device ID its leaf names.
func (mc *MemoryCertificates) Add(chain ...*x509.Certificate) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.m == nil {
		mc.m = map[string][][]*x509.Certificate{}
	}
	id := chain[0].Subject.CommonName
	prev := mc.m[id]
	if len(prev) > 0 && prev[0][0].Equal(chain[0]) {
		return
	}
	next := [][]*x509.Certificate{chain}
	if len(prev) > 0 {
		next = append(next, prev[0])
	}
	mc.m[id] = next
}

// Remove forgets every certificate of device.
func (mc *MemoryCertificates) Remove(device string) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	delete(mc.m, device)
}

// DeviceCertificates implements [Certificates].
func (mc *MemoryCertificates) DeviceCertificates(_ context.Context, device string) ([][]*x509.Certificate, error) {
	mc.mu.RLock()
	defer mc.mu.RUnlock()
	c, ok := mc.m[device]
	if !ok {
		return nil, fmt.Errorf("%w: %q", wire.ErrUnknownDevice, device)
	}
	return c, nil
}

// VerifierConfig configures a [Verifier].
type VerifierConfig struct {
	// Certificates resolves a device ID to its registered certificate.
	// Required.
	Certificates Certificates
	// Policy checks registered certificates: fleet roots and revocation.
	// Required (Roots).
	Policy identity.DeviceCertPolicy
	// DecryptionKey is the cloud's P-256 key for encrypted envelopes and
	// session-key deliveries. Nil: encrypted envelopes are refused.
	DecryptionKey *ecdsa.PrivateKey
	// RequireEncryption refuses envelopes that are only signed.
	RequireEncryption bool
	// Replay decides which records are fresh, exactly once. Default: a new
	// in-memory [replay.Window] of this process. Verifiers that share a
	// broker subscription must share it (github.com/d2c-iot/d2c/cloud/store).
	Replay ReplayState
	// SessionKeys keeps accepted session-key deliveries. Default: in
	// memory, in this process. Verifiers that share a subscription must
	// share it, or a verifier that did not receive a device's delivery
	// cannot open its envelopes (github.com/d2c-iot/d2c/cloud/store).
	SessionKeys SessionKeys
	// Time returns the current time. Default time.Now.
	Time func() time.Time
	// Logger receives one event per refused envelope. Default: none.
	Logger *slog.Logger
}

// VerifierStats counts envelopes by outcome.
type VerifierStats struct {
	Accepted, Duplicates, Replays, Refused, KeysDelivered uint64
	// Parked counts envelopes parked until their session key arrives
	// ([EnvelopeParking]).
	Parked uint64
}

// Verifier is the cloud half of telemetry: it decrypts (when encrypted),
// checks the signature against the device's registered certificate (not
// revoked, valid now), checks that signer, record and topic name the same
// device and stream, and classifies the (boot, seq) pair. It is safe for
// concurrent use.
type Verifier struct {
	cfg   VerifierConfig
	codec codec
	log   *slog.Logger

	memKeys *memoryKeys // the default SessionKeys, or nil

	mu       sync.Mutex
	verified map[string]verifiedCert // registered leaf DER -> chain verified recently
	keyCache map[string][]byte       // device + "\x00" + key ID -> session key opened from its delivery

	accepted, duplicates, replays, refused, keys, parked atomic.Uint64
}

// keyCacheMax bounds the session keys held in memory (about 100 bytes
// each); past it the cache is emptied and refilled from SessionKeys.
const keyCacheMax = 1 << 17

// verifiedCacheMax bounds the certificate-verification cache (about 1 KiB
// an entry).
const verifiedCacheMax = 1 << 16

type verifiedCert struct {
	device string
	until  time.Time
}

// NewVerifier checks cfg and returns a verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.Certificates == nil || cfg.Policy.Roots == nil {
		return nil, errors.New("transport: verifier needs Certificates and Policy.Roots")
	}
	if cfg.RequireEncryption && cfg.DecryptionKey == nil {
		return nil, errors.New("transport: RequireEncryption needs a DecryptionKey")
	}
	if cfg.Replay == nil {
		cfg.Replay = replay.New(0)
	}
	if cfg.Time == nil {
		cfg.Time = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := newCodec()
	if err != nil {
		return nil, err
	}
	v := &Verifier{cfg: cfg, codec: c, log: log, verified: map[string]verifiedCert{}, keyCache: map[string][]byte{}}
	if v.cfg.SessionKeys == nil {
		v.memKeys = newMemoryKeys()
		v.cfg.SessionKeys = v.memKeys
	}
	return v, nil
}

// Stats returns the counters.
func (v *Verifier) Stats() VerifierStats {
	return VerifierStats{Accepted: v.accepted.Load(), Duplicates: v.duplicates.Load(), Replays: v.replays.Load(),
		Refused: v.refused.Load(), KeysDelivered: v.keys.Load(), Parked: v.parked.Load()}
}

// Verify checks one message received on topic. For telemetry it returns the
// record; for a session-key delivery it stores the key and returns a zero
// Record and nil. Duplicates (QoS 1 redeliveries) return an error wrapping
// [wire.ErrDuplicate]: drop them silently. Every other error is a refusal to
// report.
func (v *Verifier) Verify(ctx context.Context, topic string, payload []byte) (Record, error) {
	recs, errs := v.VerifyBatch(ctx, []Inbound{{Topic: topic, Payload: payload}})
	return recs[0], errs[0]
}

// Inbound is one message received from the broker.
type Inbound struct {
	Topic   string
	Payload []byte
}

// VerifyBatch verifies msgs as [Verifier.Verify] does, in order, and
// decides the freshness of all their records in one call to
// [ReplayState.Accept] (one transaction with a shared store). It returns
// a record and an error per message. If the verifier's shared state
// fails (its database unreachable: replay windows, registry, revocations,
// session keys), the error of each message it could not decide wraps
// [ErrReplayState] and nothing of it was accepted: verify it again later
// (DialCloud holds its acknowledgement and does).
//
// With a [SessionKeys] that parks envelopes ([EnvelopeParking]), an
// envelope whose session key no verifier has received yet (its delivery
// is on its way to another verifier sharing the subscription) is parked,
// with an error wrapping [ErrParked]; it is verified again by whichever
// verifier accepts its key ([Verifier.VerifyParked]).
func (v *Verifier) VerifyBatch(ctx context.Context, msgs []Inbound) ([]Record, []error) {
	b := v.openBatch(ctx, msgs)
	v.acceptBatch(ctx, b)
	return b.recs, b.errs
}

// openedBatch is a batch whose cryptography has been checked: the first
// of VerifyBatch's two stages, which a cloud service overlaps with the
// second stage (the replay state's transaction) of the batch before.
type openedBatch struct {
	msgs    []Inbound
	recs    []Record
	errs    []error
	unopen  []int    // messages the first stage could not decide: open again
	pending []int    // messages whose freshness is still to decide
	fresh   []Record // their records
}

// openBatch opens every message (decryption, signature, content; keys
// kept, envelopes parked), leaving freshness to acceptBatch.
func (v *Verifier) openBatch(ctx context.Context, msgs []Inbound) *openedBatch {
	b := &openedBatch{msgs: msgs, recs: make([]Record, len(msgs)), errs: make([]error, len(msgs))}
	for i := range msgs {
		v.openOne(ctx, b, i)
	}
	return b
}

// reopenBatch opens again the messages the first stage left undecided.
func (v *Verifier) reopenBatch(ctx context.Context, b *openedBatch) {
	unopen := b.unopen
	b.unopen = nil
	for _, i := range unopen {
		v.openOne(ctx, b, i)
	}
}

// openOne opens message i of b. What the verifier's shared state could
// not decide (a registry, key or revocation lookup that failed, wrapping
// [ErrReplayState], or anything once ctx has ended) is neither accepted
// nor refused: it goes to b.unopen, to be opened again, so that a cloud
// service holds its acknowledgement instead of losing it.
func (v *Verifier) openOne(ctx context.Context, b *openedBatch, i int) {
	m := b.msgs[i]
	rec, err := v.open(ctx, m.Topic, m.Payload)
	var uk *unknownKeyError
	if parking, ok := v.cfg.SessionKeys.(EnvelopeParking); ok && errors.As(err, &uk) {
		err = v.park(ctx, parking, uk, m)
	}
	if err != nil && (errors.Is(err, ErrReplayState) || ctx.Err() != nil) {
		if !errors.Is(err, ErrReplayState) {
			err = fmt.Errorf("%w: %w", ErrReplayState, err)
		}
		b.errs[i] = err
		b.unopen = append(b.unopen, i)
		v.count(m.Topic, Record{}, err)
		return
	}
	if err != nil || rec.Device == "" {
		b.errs[i] = err
		v.count(m.Topic, rec, err)
		return
	}
	b.errs[i] = nil
	b.pending = append(b.pending, i)
	b.fresh = append(b.fresh, rec)
}

// acceptBatch decides the freshness of the batch's pending records in one
// call to ReplayState.Accept. If the replay state fails, they stay
// pending, their errors wrapping ErrReplayState: call it again.
func (v *Verifier) acceptBatch(ctx context.Context, b *openedBatch) {
	if len(b.pending) == 0 {
		return
	}
	verdicts, err := v.cfg.Replay.Accept(ctx, b.fresh)
	if err != nil {
		for _, i := range b.pending {
			b.errs[i] = fmt.Errorf("%w: %w", ErrReplayState, err)
			v.count(b.msgs[i].Topic, Record{}, b.errs[i])
		}
		return
	}
	for j, i := range b.pending {
		b.errs[i] = verdicts[j]
		if verdicts[j] == nil {
			b.recs[i] = b.fresh[j]
		}
		v.count(b.msgs[i].Topic, b.recs[i], b.errs[i])
	}
	b.pending, b.fresh = nil, nil
}

// EnvelopeParking is a [SessionKeys] that keeps, bounded per device, the
// envelopes that name a session key it does not hold yet, so that
// verifiers sharing a subscription lose none of them when a device's key
// delivery reaches one verifier and its first envelopes another
// (cloud/store implements it).
type EnvelopeParking interface {
	SessionKeys
	// Park keeps an envelope of device sealed under keyID. A full parking
	// (per device) gives an error: the envelope is refused. An error
	// wrapping [ErrReplayState] (the parking unreachable) leaves it
	// undecided: it is verified again.
	Park(ctx context.Context, device, keyID string, m Inbound) error
	// Parked returns up to max envelopes parked under keys whose delivery
	// is now kept, with the IDs to pass to Unpark once they are decided.
	Parked(ctx context.Context, max int) ([]ParkedEnvelope, error)
	// Unpark forgets envelopes decided.
	Unpark(ctx context.Context, ids []int64) error
}

// ParkedEnvelope is an envelope parked until its session key arrived.
type ParkedEnvelope struct {
	ID int64
	Inbound
}

// unknownKeyError: an envelope names a session key not kept (yet).
type unknownKeyError struct {
	device, keyID string
	err           error
}

func (e *unknownKeyError) Error() string { return e.err.Error() }
func (e *unknownKeyError) Unwrap() error { return e.err }

// park parks m: its verdict is ErrParked, or the refusal for the unknown
// key if it cannot be parked.
func (v *Verifier) park(ctx context.Context, p EnvelopeParking, uk *unknownKeyError, m Inbound) error {
	if err := p.Park(ctx, uk.device, uk.keyID, m); err != nil {
		v.log.Warn("envelope with an unknown session key not parked", "device", uk.device, "err", err)
		return uk
	}
	return fmt.Errorf("%w: %s key %q", ErrParked, uk.device, textutil.Clip(uk.keyID))
}

// VerifyParked verifies, in one batch, up to max envelopes parked in
// SessionKeys whose session key is now kept (by this or another
// verifier), and forgets them once decided: it returns their records
// accepted now. Call it periodically and after accepting key deliveries
// ([Cloud] does); with a SessionKeys that parks nothing it does nothing.
func (v *Verifier) VerifyParked(ctx context.Context, max int) ([]Record, error) {
	p, ok := v.cfg.SessionKeys.(EnvelopeParking)
	if !ok {
		return nil, nil
	}
	parked, err := p.Parked(ctx, max)
	if err != nil || len(parked) == 0 {
		return nil, err
	}
	msgs := make([]Inbound, len(parked))
	for i, e := range parked {
		msgs[i] = e.Inbound
	}
	recs, errs := v.VerifyBatch(ctx, msgs)
	var out []Record
	var done []int64
	for i, err := range errs {
		switch {
		case errors.Is(err, ErrReplayState):
			continue // undecided: parked still
		case errors.Is(err, ErrParked):
			// Parked again (its key went): the old copy goes.
		case err == nil && recs[i].Device != "":
			out = append(out, recs[i])
		}
		done = append(done, parked[i].ID)
	}
	if err := p.Unpark(ctx, done); err != nil {
		// Decided but not forgotten: verified again later, then a
		// duplicate.
		return out, err
	}
	return out, nil
}

// count counts and logs one outcome.
func (v *Verifier) count(topic string, rec Record, err error) {
	switch {
	case err == nil:
		if rec.Device != "" {
			v.accepted.Add(1)
		}
	case errors.Is(err, ErrReplayState):
		v.log.Error("replay state unavailable", "topic", textutil.Clip(topic), "err", err)
	case errors.Is(err, ErrParked):
		v.parked.Add(1)
	case errors.Is(err, wire.ErrDuplicate):
		v.duplicates.Add(1)
	case errors.Is(err, wire.ErrReplay):
		v.replays.Add(1)
		v.log.Warn("replay refused", "topic", textutil.Clip(topic), "err", err)
	default:
		v.refused.Add(1)
		v.log.Warn("envelope refused", "topic", textutil.Clip(topic), "err", err)
	}
}

// open checks a message's cryptography and content, everything but
// freshness: it returns the record of a telemetry envelope, or keeps the
// key of a session-key delivery and returns a zero Record.
func (v *Verifier) open(ctx context.Context, topic string, payload []byte) (Record, error) {
	t, err := wire.ParseTopic(topic)
	if err != nil {
		return Record{}, err
	}
	if len(payload) > limits.Envelope {
		return Record{}, fmt.Errorf("%w: %d bytes over %d", wire.ErrMalformed, len(payload), limits.Envelope)
	}
	switch t.Kind {
	case wire.KindTelemetry, wire.KindCommandResult:
		stream := t.Stream
		if t.Kind == wire.KindCommandResult {
			stream = wire.CommandResultStream
		} else if stream == wire.CommandResultStream {
			return Record{}, fmt.Errorf("%w: command results go on %s", wire.ErrInvalidTopic, wire.CommandResultTopic(t.Device))
		}
		inner, err := v.unwrap(ctx, t.Device, payload, wire.TelemetryType)
		if err != nil {
			return Record{}, err
		}
		body, err := v.checkSigned(ctx, t.Device, inner, wire.TelemetryType)
		if err != nil {
			return Record{}, err
		}
		rec, err := v.codec.DecodeRecord(body)
		if err != nil {
			return Record{}, err
		}
		if rec.Device != t.Device {
			return Record{}, fmt.Errorf("%w: record names %q, signer and topic %q", wire.ErrWrongDevice, textutil.Clip(rec.Device), t.Device)
		}
		if rec.Stream != stream {
			return Record{}, fmt.Errorf("%w: record stream %q on the topic of stream %q", wire.ErrMalformed, textutil.Clip(rec.Stream), stream)
		}
		return rec, nil
	case wire.KindKey:
		return Record{}, v.acceptKey(ctx, t.Device, payload)
	}
	return Record{}, fmt.Errorf("%w: not a telemetry, command-result or key topic", wire.ErrInvalidTopic)
}

// isJWE tells a compact JWE (five parts) from a compact JWS (three).
func isJWE(b []byte) bool { return bytes.Count(b, []byte(".")) == 4 }

// unwrap decrypts an encrypted envelope (session key or ECDH-ES) and
// returns the inner JWS; a plain JWS passes through unless encryption is
// required.
func (v *Verifier) unwrap(ctx context.Context, device string, payload []byte, cty string) ([]byte, error) {
	if !isJWE(payload) {
		if v.cfg.RequireEncryption {
			return nil, fmt.Errorf("%w: plaintext envelope where encryption is required", wire.ErrDecrypt)
		}
		return payload, nil
	}
	if v.cfg.DecryptionKey == nil {
		return nil, fmt.Errorf("%w: encrypted envelope, and this verifier has no decryption key", wire.ErrDecrypt)
	}
	jwe, err := jose.ParseEncryptedCompact(string(payload),
		[]jose.KeyAlgorithm{jose.ECDH_ES_A256KW, jose.DIRECT}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", wire.ErrMalformed, err)
	}
	h := jwe.Header
	if got, _ := h.ExtraHeaders[jose.HeaderContentType].(string); got != cty {
		return nil, fmt.Errorf("%w: JWE cty %q, want %q", wire.ErrMalformed, textutil.Clip(got), cty)
	}
	var key any
	switch jose.KeyAlgorithm(h.Algorithm) {
	case jose.DIRECT:
		if cty != wire.TelemetryType {
			return nil, fmt.Errorf("%w: key deliveries must use ECDH-ES+A256KW", wire.ErrDecrypt)
		}
		k, err := v.sessionKey(ctx, device, h.KeyID)
		if err != nil {
			return nil, err
		}
		key = k
	default:
		key = v.cfg.DecryptionKey
	}
	inner, err := jwe.Decrypt(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", wire.ErrDecrypt, err)
	}
	return inner, nil
}

// checkSigned verifies a JWS of type typ signed by device with the key of
// its registered, currently valid, unrevoked certificate. An envelope in
// d2c's canonical form takes the fast path; any other goes through go-jose
// with every check of parseJWS.
func (v *Verifier) checkSigned(ctx context.Context, device string, b []byte, typ string) ([]byte, error) {
	payload, err := v.checkSignedWith(ctx, device, b, typ, v.cfg.Certificates.DeviceCertificates)
	if cc, ok := v.cfg.Certificates.(CachedCertificates); ok && (errors.Is(err, wire.ErrBadSignature) || errors.Is(err, wire.ErrUnknownDevice)) {
		return v.checkSignedWith(ctx, device, b, typ, cc.FreshDeviceCertificates)
	}
	return payload, err
}

// checkSignedWith is checkSigned with the certificates from lookup.
func (v *Verifier) checkSignedWith(ctx context.Context, device string, b []byte, typ string,
	lookup func(context.Context, string) ([][]*x509.Certificate, error)) ([]byte, error) {
	chains, err := lookup(ctx, device)
	if err != nil {
		if _, _, perr := jws.Parse(b, typ); perr != nil {
			return nil, perr // a malformed envelope is malformed for unknown devices too
		}
		if !errors.Is(err, wire.ErrUnknownDevice) && !errors.Is(err, identity.ErrRevoked) && !errors.Is(err, ErrReplayState) {
			// The registry did not answer: undecided, not refused.
			err = fmt.Errorf("%w: certificates of %q: %w", ErrReplayState, device, err)
		}
		return nil, err
	}
	// The newest certificate whose key verifies the signature decides; it
	// must be valid now and unrevoked.
	canonical := false
	err = fmt.Errorf("%w: no registered certificate", wire.ErrUnknownDevice)
	for _, chain := range chains {
		var payload []byte
		payload, err = jws.FastVerify(b, device, typ, chain[0].PublicKey)
		switch {
		case errors.Is(err, jws.ErrNotCanonical):
			continue
		case errors.Is(err, wire.ErrMalformed):
			return nil, err
		case err != nil:
			canonical = true
			continue
		}
		if err := v.checkCert(device, chain); err != nil {
			return nil, err
		}
		return payload, nil
	}
	if canonical {
		return nil, err
	}
	obj, kid, err := jws.Parse(b, typ)
	if err != nil {
		return nil, err
	}
	if kid != device {
		return nil, fmt.Errorf("%w: signed by %q, topic is %q's", wire.ErrWrongDevice, textutil.Clip(kid), device)
	}
	err = fmt.Errorf("%w: no registered certificate", wire.ErrUnknownDevice)
	for _, chain := range chains {
		var payload []byte
		if payload, err = jws.Verify(obj, chain[0].PublicKey); err != nil {
			continue
		}
		if err = v.checkCert(device, chain); err != nil {
			return nil, err
		}
		return payload, nil
	}
	return nil, err
}

// checkCert verifies the registered chain, caching the chain verification
// for a minute; revocation is checked every time.
func (v *Verifier) checkCert(device string, chain []*x509.Certificate) error {
	now := v.cfg.Time()
	v.mu.Lock()
	c, ok := v.verified[string(chain[0].Raw)] // a lookup that does not copy
	v.mu.Unlock()
	if ok && c.device == device && now.Before(c.until) {
		if v.cfg.Policy.Revocations != nil {
			return v.cfg.Policy.Revocations.CheckRevoked(chain[0])
		}
		return nil
	}
	id, err := v.cfg.Policy.Verify(chain, now)
	if err != nil {
		return err
	}
	if id != device {
		return fmt.Errorf("%w: registered certificate names %q", wire.ErrWrongDevice, id)
	}
	until := now.Add(time.Minute)
	if chain[0].NotAfter.Before(until) {
		until = chain[0].NotAfter
	}
	v.mu.Lock()
	if len(v.verified) >= verifiedCacheMax {
		clear(v.verified) // a cache: bounded, rebuilt on demand
	}
	v.verified[string(chain[0].Raw)] = verifiedCert{device: device, until: until}
	v.mu.Unlock()
	return nil
}

// openKeyDelivery decrypts and verifies a session-key delivery of device.
func (v *Verifier) openKeyDelivery(ctx context.Context, device string, payload []byte) (keyDelivery, error) {
	if !isJWE(payload) {
		return keyDelivery{}, fmt.Errorf("%w: key delivery must be encrypted", wire.ErrMalformed)
	}
	inner, err := v.unwrap(ctx, device, payload, wire.KeyDeliveryType)
	if err != nil {
		return keyDelivery{}, err
	}
	body, err := v.checkSigned(ctx, device, inner, wire.KeyDeliveryType)
	if err != nil {
		return keyDelivery{}, err
	}
	var kd keyDelivery
	if err := v.codec.m.Dec.Unmarshal(body, &kd); err != nil {
		return keyDelivery{}, fmt.Errorf("%w: key delivery: %v", wire.ErrMalformed, err)
	}
	if kd.Device != device {
		return keyDelivery{}, fmt.Errorf("%w: key delivery names %q", wire.ErrWrongDevice, textutil.Clip(kd.Device))
	}
	if len(kd.Key) != 32 || kd.KeyID == "" || len(kd.KeyID) > 64 {
		return keyDelivery{}, fmt.Errorf("%w: key delivery key or ID malformed", wire.ErrMalformed)
	}
	return kd, nil
}

// acceptKey verifies a session-key delivery and keeps it (as received) in
// SessionKeys, so that every verifier sharing them can open the device's
// envelopes.
func (v *Verifier) acceptKey(ctx context.Context, device string, payload []byte) error {
	kd, err := v.openKeyDelivery(ctx, device, payload)
	if err != nil {
		return err
	}
	if err := v.cfg.SessionKeys.PutKeyDelivery(ctx, KeyDelivery{Device: device, KeyID: kd.KeyID, Boot: kd.Boot,
		Created: time.UnixMilli(kd.Created), Envelope: payload}); err != nil {
		return err
	}
	if v.cacheKey(device, kd.KeyID, kd.Key) {
		v.keys.Add(1)
	}
	return nil
}

// sessionKey returns device's session key keyID: from the cache, else
// opened again from its delivery in SessionKeys (decrypted and its
// signature verified: the store is not trusted to hold a genuine one).
func (v *Verifier) sessionKey(ctx context.Context, device, keyID string) ([]byte, error) {
	v.mu.Lock()
	k, ok := v.keyCache[device+"\x00"+keyID]
	v.mu.Unlock()
	if ok {
		return k, nil
	}
	env, err := v.cfg.SessionKeys.KeyDelivery(ctx, device, keyID)
	if errors.Is(err, ErrUnknownSessionKey) {
		return nil, &unknownKeyError{device: device, keyID: keyID, err: fmt.Errorf("%w: %w", wire.ErrDecrypt, err)}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: session key %q: %w", ErrReplayState, textutil.Clip(keyID), err)
	}
	kd, err := v.openKeyDelivery(ctx, device, env)
	if err != nil {
		return nil, fmt.Errorf("%w: the kept delivery of session key %q: %w", wire.ErrDecrypt, textutil.Clip(keyID), err)
	}
	if kd.KeyID != keyID {
		return nil, fmt.Errorf("%w: the kept delivery of session key %q holds key %q", wire.ErrDecrypt, textutil.Clip(keyID), textutil.Clip(kd.KeyID))
	}
	v.cacheKey(device, keyID, kd.Key)
	return kd.Key, nil
}

// cacheKey keeps a session key in memory, reporting whether it was new.
func (v *Verifier) cacheKey(device, keyID string, key []byte) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	id := device + "\x00" + keyID
	if _, ok := v.keyCache[id]; ok {
		return false
	}
	if len(v.keyCache) >= keyCacheMax {
		clear(v.keyCache) // a cache: bounded, refilled from SessionKeys
	}
	v.keyCache[id] = key
	return true
}

// Forget removes everything the verifier holds about device: replay state,
// session keys, cached certificate verification.
func (v *Verifier) Forget(ctx context.Context, device string) error {
	err := v.cfg.Replay.Forget(ctx, device)
	if v.memKeys != nil {
		v.memKeys.forget(device)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for k := range v.keyCache {
		if strings.HasPrefix(k, device+"\x00") {
			delete(v.keyCache, k)
		}
	}
	for k, c := range v.verified {
		if c.device == device {
			delete(v.verified, k)
		}
	}
	return err
}
