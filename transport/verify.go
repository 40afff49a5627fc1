package transport

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/limits"
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
		return nil, fmt.Errorf("%w: %q", ErrUnknownDevice, device)
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
	// Replay classifies (boot, seq). Default: a new in-memory window.
	Replay *ReplayWindow
	// Time returns the current time. Default time.Now.
	Time func() time.Time
	// Logger receives one event per refused envelope. Default: none.
	Logger *slog.Logger
}

// VerifierStats counts envelopes by outcome.
type VerifierStats struct {
	Accepted, Duplicates, Replays, Refused, KeysDelivered uint64
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

	mu       sync.Mutex
	verified map[string]verifiedCert // registered leaf DER -> chain verified recently
	sessions map[string][]sessionKey // device -> its two newest session keys, oldest first

	accepted, duplicates, replays, refused, keys atomic.Uint64
}

type sessionKey struct {
	id  string
	key []byte
}

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
		cfg.Replay = NewReplayWindow(0)
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
	return &Verifier{cfg: cfg, codec: c, log: log, verified: map[string]verifiedCert{}, sessions: map[string][]sessionKey{}}, nil
}

// Stats returns the counters.
func (v *Verifier) Stats() VerifierStats {
	return VerifierStats{Accepted: v.accepted.Load(), Duplicates: v.duplicates.Load(), Replays: v.replays.Load(),
		Refused: v.refused.Load(), KeysDelivered: v.keys.Load()}
}

// Verify checks one message received on topic. For telemetry it returns the
// record; for a session-key delivery it stores the key and returns a zero
// Record and nil. Duplicates (QoS 1 redeliveries) return an error wrapping
// [ErrDuplicate]: drop them silently. Every other error is a refusal to
// report.
func (v *Verifier) Verify(ctx context.Context, topic string, payload []byte) (Record, error) {
	rec, err := v.verify(ctx, topic, payload)
	switch {
	case err == nil:
		if rec.Device != "" {
			v.accepted.Add(1)
		}
	case errors.Is(err, ErrDuplicate):
		v.duplicates.Add(1)
	case errors.Is(err, ErrReplay):
		v.replays.Add(1)
		v.log.Warn("replay refused", "topic", clip(topic), "err", err)
	default:
		v.refused.Add(1)
		v.log.Warn("envelope refused", "topic", clip(topic), "err", err)
	}
	return rec, err
}

func (v *Verifier) verify(ctx context.Context, topic string, payload []byte) (Record, error) {
	t, err := ParseTopic(topic)
	if err != nil {
		return Record{}, err
	}
	if len(payload) > limits.Envelope {
		return Record{}, fmt.Errorf("%w: %d bytes over %d", ErrMalformed, len(payload), limits.Envelope)
	}
	switch t.Kind {
	case KindTelemetry:
		inner, err := v.unwrap(t.Device, payload, TelemetryType)
		if err != nil {
			return Record{}, err
		}
		body, err := v.checkSigned(ctx, t.Device, inner, TelemetryType)
		if err != nil {
			return Record{}, err
		}
		rec, err := v.codec.decodeRecord(body)
		if err != nil {
			return Record{}, err
		}
		if rec.Device != t.Device {
			return Record{}, fmt.Errorf("%w: record names %q, signer and topic %q", ErrWrongDevice, clip(rec.Device), t.Device)
		}
		if rec.Stream != t.Stream {
			return Record{}, fmt.Errorf("%w: record stream %q on topic stream %q", ErrMalformed, clip(rec.Stream), t.Stream)
		}
		if err := v.cfg.Replay.Check(rec.Device, rec.Boot, rec.Seq); err != nil {
			return Record{}, err
		}
		return rec, nil
	case KindKey:
		return Record{}, v.acceptKey(ctx, t.Device, payload)
	}
	return Record{}, fmt.Errorf("%w: not a telemetry or key topic", ErrInvalidTopic)
}

// isJWE tells a compact JWE (five parts) from a compact JWS (three).
func isJWE(b []byte) bool { return bytes.Count(b, []byte(".")) == 4 }

// unwrap decrypts an encrypted envelope (session key or ECDH-ES) and
// returns the inner JWS; a plain JWS passes through unless encryption is
// required.
func (v *Verifier) unwrap(device string, payload []byte, cty string) ([]byte, error) {
	if !isJWE(payload) {
		if v.cfg.RequireEncryption {
			return nil, fmt.Errorf("%w: plaintext envelope where encryption is required", ErrDecrypt)
		}
		return payload, nil
	}
	if v.cfg.DecryptionKey == nil {
		return nil, fmt.Errorf("%w: encrypted envelope, and this verifier has no decryption key", ErrDecrypt)
	}
	jwe, err := jose.ParseEncryptedCompact(string(payload),
		[]jose.KeyAlgorithm{jose.ECDH_ES_A256KW, jose.DIRECT}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	h := jwe.Header
	if got, _ := h.ExtraHeaders[jose.HeaderContentType].(string); got != cty {
		return nil, fmt.Errorf("%w: JWE cty %q, want %q", ErrMalformed, clip(got), cty)
	}
	var key any
	switch jose.KeyAlgorithm(h.Algorithm) {
	case jose.DIRECT:
		if cty != TelemetryType {
			return nil, fmt.Errorf("%w: key deliveries must use ECDH-ES+A256KW", ErrDecrypt)
		}
		v.mu.Lock()
		for _, sk := range v.sessions[device] {
			if sk.id == h.KeyID {
				key = sk.key
			}
		}
		v.mu.Unlock()
		if key == nil {
			return nil, fmt.Errorf("%w: unknown session key %q for %s", ErrDecrypt, clip(h.KeyID), device)
		}
	default:
		key = v.cfg.DecryptionKey
	}
	inner, err := jwe.Decrypt(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	return inner, nil
}

// checkSigned verifies a JWS of type typ signed by device with the key of
// its registered, currently valid, unrevoked certificate. An envelope in
// d2c's canonical form takes the fast path; any other goes through go-jose
// with every check of parseJWS.
func (v *Verifier) checkSigned(ctx context.Context, device string, b []byte, typ string) ([]byte, error) {
	chains, err := v.cfg.Certificates.DeviceCertificates(ctx, device)
	if err != nil {
		if _, _, perr := parseJWS(b, typ); perr != nil {
			return nil, perr // a malformed envelope is malformed for unknown devices too
		}
		return nil, err
	}
	// The newest certificate whose key verifies the signature decides; it
	// must be valid now and unrevoked.
	canonical := false
	err = fmt.Errorf("%w: no registered certificate", ErrUnknownDevice)
	for _, chain := range chains {
		var payload []byte
		payload, err = fastVerify(b, device, typ, chain[0].PublicKey)
		switch {
		case errors.Is(err, errNotCanonical):
			continue
		case errors.Is(err, ErrMalformed):
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
	jws, kid, err := parseJWS(b, typ)
	if err != nil {
		return nil, err
	}
	if kid != device {
		return nil, fmt.Errorf("%w: signed by %q, topic is %q's", ErrWrongDevice, clip(kid), device)
	}
	err = fmt.Errorf("%w: no registered certificate", ErrUnknownDevice)
	for _, chain := range chains {
		var payload []byte
		if payload, err = verifyJWS(jws, chain[0].PublicKey); err != nil {
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
		return fmt.Errorf("%w: registered certificate names %q", ErrWrongDevice, id)
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

// acceptKey decrypts and verifies a session-key delivery and stores the key
// (the two newest per device).
func (v *Verifier) acceptKey(ctx context.Context, device string, payload []byte) error {
	if !isJWE(payload) {
		return fmt.Errorf("%w: key delivery must be encrypted", ErrMalformed)
	}
	inner, err := v.unwrap(device, payload, KeyDeliveryType)
	if err != nil {
		return err
	}
	body, err := v.checkSigned(ctx, device, inner, KeyDeliveryType)
	if err != nil {
		return err
	}
	var kd keyDelivery
	if err := v.codec.m.Dec.Unmarshal(body, &kd); err != nil {
		return fmt.Errorf("%w: key delivery: %v", ErrMalformed, err)
	}
	if kd.Device != device {
		return fmt.Errorf("%w: key delivery names %q", ErrWrongDevice, clip(kd.Device))
	}
	if len(kd.Key) != 32 || kd.KeyID == "" || len(kd.KeyID) > 64 {
		return fmt.Errorf("%w: key delivery key or ID malformed", ErrMalformed)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	ks := v.sessions[device]
	for _, sk := range ks {
		if sk.id == kd.KeyID {
			return nil // a redelivery
		}
	}
	// The previous key stays usable for envelopes still in flight.
	if len(ks) == 2 {
		ks = ks[1:]
	}
	v.sessions[device] = append(ks, sessionKey{id: kd.KeyID, key: kd.Key})
	v.keys.Add(1)
	return nil
}

// Forget removes everything the verifier holds about device: replay state,
// session keys, cached certificate verification.
func (v *Verifier) Forget(device string) {
	v.cfg.Replay.Forget(device)
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.sessions, device)
	for k, c := range v.verified {
		if c.device == device {
			delete(v.verified, k)
		}
	}
}
