// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package attest

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/identity"
)

// Verifier defaults and bounds.
const (
	// DefaultNonceTTL is how long a challenge can be answered.
	DefaultNonceTTL = 5 * time.Minute
	// MaxNonceTTL is the longest challenge lifetime a Verifier accepts.
	MaxNonceTTL = time.Hour
	// DefaultClockSkew is how far a token's iat may lie before its
	// challenge was issued or after it is verified.
	DefaultClockSkew = 5 * time.Minute
)

// Certificates gives the cloud the registered certificate chains of a
// device (each leaf first). The verifier takes the device's key from here,
// never from the token. transport.MemoryCertificates implements it; fleets
// back it with the database where the registrar records issued
// certificates.
type Certificates interface {
	DeviceCertificates(ctx context.Context, device string) ([][]*x509.Certificate, error)
}

// CertificatesFunc adapts a function to [Certificates].
type CertificatesFunc func(ctx context.Context, device string) ([][]*x509.Certificate, error)

// DeviceCertificates calls f.
func (f CertificatesFunc) DeviceCertificates(ctx context.Context, device string) ([][]*x509.Certificate, error) {
	return f(ctx, device)
}

// VerifierConfig configures a [Verifier]. Certificates and
// CertPolicy.Roots are required; every other zero field means its default.
type VerifierConfig struct {
	// Certificates resolves a device ID to its registered certificate
	// chains. Required.
	Certificates Certificates
	// CertPolicy checks the chain whose key signed a token: fleet roots,
	// validity at the current time, device names and, if
	// CertPolicy.Revocations is set, revocation. Required (Roots); set
	// Revocations in production.
	CertPolicy identity.DeviceCertPolicy
	// Nonces keeps the outstanding challenges. Default: a new
	// [MemoryNonceStore] with default bounds, which serves one process
	// only (see [NonceStore]).
	Nonces NonceStore
	// NonceTTL is how long a challenge can be answered. Default
	// [DefaultNonceTTL]; at most [MaxNonceTTL].
	NonceTTL time.Duration
	// NonceSize is the size of the nonces issued, in bytes. Default
	// [DefaultNonceSize] (32); from [MinNonceSize] (16) to [MaxNonceSize]
	// (64).
	NonceSize int
	// ClockSkew is how far a token's iat may lie before its challenge was
	// issued or after the verification time. Default [DefaultClockSkew];
	// raise it for fleets whose clocks drift.
	ClockSkew time.Duration
	// Time returns the current time. Default time.Now.
	Time func() time.Time
}

// Verifier is the cloud half of attestation: it issues challenges
// ([Verifier.Challenge]) and verifies the tokens that answer them
// ([Verifier.Verify]). It is safe for concurrent use.
type Verifier struct {
	cfg VerifierConfig
}

// NewVerifier checks cfg and returns a verifier. cfg is copied.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.Certificates == nil || cfg.CertPolicy.Roots == nil {
		return nil, errors.New("attest: verifier needs Certificates and CertPolicy.Roots")
	}
	if cfg.Nonces == nil {
		cfg.Nonces = NewMemoryNonceStore(0, 0)
	}
	switch {
	case cfg.NonceTTL == 0:
		cfg.NonceTTL = DefaultNonceTTL
	case cfg.NonceTTL < 0 || cfg.NonceTTL > MaxNonceTTL:
		return nil, fmt.Errorf("attest: nonce lifetime %v outside (0, %v]", cfg.NonceTTL, MaxNonceTTL)
	}
	switch {
	case cfg.NonceSize == 0:
		cfg.NonceSize = DefaultNonceSize
	case cfg.NonceSize < MinNonceSize || cfg.NonceSize > MaxNonceSize:
		return nil, fmt.Errorf("attest: nonce size %d outside [%d, %d]", cfg.NonceSize, MinNonceSize, MaxNonceSize)
	}
	switch {
	case cfg.ClockSkew == 0:
		cfg.ClockSkew = DefaultClockSkew
	case cfg.ClockSkew < 0:
		return nil, fmt.Errorf("attest: negative clock skew %v", cfg.ClockSkew)
	}
	if cfg.Time == nil {
		cfg.Time = time.Now
	}
	return &Verifier{cfg: cfg}, nil
}

// Challenge issues a fresh random nonce for device: the device must answer
// with a token carrying it ([Sign]) within the nonce lifetime, once. Issue
// challenges only to devices you have authenticated (over mutual TLS, or
// inside a signed command): the store is bounded, and its per-device bound
// evicts a device's oldest challenge.
func (v *Verifier) Challenge(ctx context.Context, device string) ([]byte, error) {
	if err := identity.ValidateDeviceID(device); err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	nonce := make([]byte, v.cfg.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	now := v.cfg.Time()
	if err := v.cfg.Nonces.Issue(ctx, device, b64.EncodeToString(nonce), now, now.Add(v.cfg.NonceTTL)); err != nil {
		return nil, err
	}
	return nonce, nil
}

// Policy is what the cloud accepts of a device's reported state. The zero
// value refuses every token: name the allowed images.
type Policy struct {
	// AllowDigest reports whether device may run the image whose SHA-256
	// is digest. Required: nil refuses every token with [ErrPolicy]. See
	// [AllowDigests] for a fixed list.
	AllowDigest func(device string, digest [32]byte) bool
	// SoftwareName, if set, must equal the token's swname. Default: any.
	SoftwareName string
	// MinSoftwareVersion, if set, is the lowest swversion accepted, in
	// the same multipartnumeric form ("42", "1.4"). Default: any.
	MinSoftwareVersion string
	// RequireDebugDisabled refuses a token whose dbgstat is absent or
	// "enabled". Default false.
	RequireDebugDisabled bool
	// RequireSecureBoot refuses a token whose oemboot is absent or false.
	// Default false.
	RequireSecureBoot bool
}

// AllowDigests returns a Policy.AllowDigest that accepts the given image
// digests for every device.
func AllowDigests(digests ...[32]byte) func(device string, digest [32]byte) bool {
	set := make(map[[32]byte]struct{}, len(digests))
	for _, d := range digests {
		set[d] = struct{}{}
	}
	return func(_ string, d [32]byte) bool {
		_, ok := set[d]
		return ok
	}
}

// check applies the policy to verified evidence.
func (p *Policy) check(device string, ev *Evidence, minVersion []uint64) error {
	if !p.AllowDigest(device, ev.ImageDigest) {
		return fmt.Errorf("%w: image digest %x not allowed for %s", ErrPolicy, ev.ImageDigest, device)
	}
	if p.SoftwareName != "" && ev.SoftwareName != p.SoftwareName {
		return fmt.Errorf("%w: software %q, want %q", ErrPolicy, ev.SoftwareName, p.SoftwareName)
	}
	if minVersion != nil {
		got, _ := parseVersion(ev.SoftwareVersion) // checked by parseClaims
		if compareVersions(got, minVersion) < 0 {
			return fmt.Errorf("%w: software version %s below %s", ErrPolicy, ev.SoftwareVersion, p.MinSoftwareVersion)
		}
	}
	if p.RequireDebugDisabled && ev.DebugStatus < DebugDisabled {
		return fmt.Errorf("%w: debug status %s", ErrPolicy, ev.DebugStatus)
	}
	if p.RequireSecureBoot && (ev.SecureBoot == nil || !*ev.SecureBoot) {
		return fmt.Errorf("%w: no OEM-authorized boot reported", ErrPolicy)
	}
	return nil
}

// Result is a verified attestation.
type Result struct {
	// DeviceID is the attested device: the token's subject, its
	// certificate's device ID and its nonce's device.
	DeviceID string
	// Evidence is what the device reported, all checked against the
	// policy.
	Evidence Evidence
	// IssuedAt is the token's iat, by the device's clock.
	IssuedAt time.Time
	// Certificate is the registered device certificate whose key signed.
	Certificate *x509.Certificate
}

// Verify checks an attestation token against the device's registered
// certificate, the challenge issued to it, and policy p. In order (see
// docs/attestation.md):
//
//  1. the policy names the allowed images ([ErrPolicy]) and its minimum
//     version parses;
//  2. the token is at most limits.AttestationToken bytes ([ErrTooLarge]),
//     a compact JWS with exactly the alg (ES256 or EdDSA), kid and typ
//     ([TokenType]) headers, whose claims set follows the d2c profile
//     ([ErrMalformed]);
//  3. the device its sub names has registered certificates
//     ([ErrUnknownDevice]), one of whose keys has the thumbprint kid,
//     matches alg and verifies the signature ([ErrSignature]);
//  4. that certificate chains to the fleet roots now, is not revoked and
//     names the device (identity's sentinels; [ErrWrongDevice]);
//  5. the nonce was issued by this verifier to this device and has not
//     expired; it is consumed now, so a token verifies once ([ErrReplay],
//     [ErrExpired], [ErrWrongDevice]);
//  6. iat lies between the challenge's issue and now, give or take the
//     clock skew ([ErrExpired]);
//  7. the evidence satisfies p ([ErrPolicy]).
//
// A token refused at steps 1 to 4 leaves its nonce usable; from step 5 on,
// the nonce is spent and the device must ask for a new challenge.
func (v *Verifier) Verify(ctx context.Context, token []byte, p Policy) (*Result, error) {
	if p.AllowDigest == nil {
		return nil, fmt.Errorf("%w: no allowed image digests configured", ErrPolicy)
	}
	var minVersion []uint64
	if p.MinSoftwareVersion != "" {
		var err error
		if minVersion, err = parseVersion(p.MinSoftwareVersion); err != nil {
			return nil, fmt.Errorf("attest: policy: MinSoftwareVersion: %v", err)
		}
	}
	t, err := parseToken(token)
	if err != nil {
		return nil, err
	}
	chains, err := v.cfg.Certificates.DeviceCertificates(ctx, t.device)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnknownDevice, t.device, err)
	}
	// Key identification (RFC 9711 section 6.3.9, appendix F.1): kid is the
	// RFC 7638 thumbprint of a registered certificate's key; the key
	// itself always comes from the certificate.
	var chain []*x509.Certificate
	for _, c := range chains {
		if len(c) == 0 || c[0] == nil {
			continue
		}
		if id, err := identity.KeyID(c[0].PublicKey); err == nil && id == t.kid {
			chain = c
			break
		}
	}
	if chain == nil {
		return nil, fmt.Errorf("%w: kid %q names no certificate registered for %s", ErrSignature, clip(t.kid), t.device)
	}
	key := chain[0].PublicKey
	if alg, err := identity.JWSAlgorithm(key); err != nil || alg != string(t.alg) {
		return nil, fmt.Errorf("%w: algorithm %s does not match the registered key", ErrSignature, t.alg)
	}
	if _, err := t.jws.Verify(key); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	now := v.cfg.Time()
	id, err := v.cfg.CertPolicy.Verify(chain, now)
	if err != nil {
		return nil, fmt.Errorf("attest: device certificate of %s: %w", t.device, err)
	}
	if id != t.device {
		return nil, fmt.Errorf("%w: token names %s, its certificate %s", ErrWrongDevice, t.device, id)
	}
	// Freshness (RFC 9711 sections 4.1 and 9.3): the nonce is single use.
	issued, err := v.cfg.Nonces.Consume(ctx, t.device, t.nonce, now)
	if err != nil {
		return nil, err
	}
	iat := time.Unix(t.iat, 0)
	if iat.Before(issued.Add(-v.cfg.ClockSkew)) || iat.After(now.Add(v.cfg.ClockSkew)) {
		return nil, fmt.Errorf("%w: iat %s outside the challenge window [%s, %s] (clock skew %v)", ErrExpired,
			iat.UTC().Format(time.RFC3339), issued.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), v.cfg.ClockSkew)
	}
	if err := p.check(t.device, &t.ev, minVersion); err != nil {
		return nil, err
	}
	return &Result{DeviceID: t.device, Evidence: t.ev, IssuedAt: iat, Certificate: chain[0]}, nil
}
