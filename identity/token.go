// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/d2c-iot/d2c/internal/limits"
)

// Enrollment token constants (RFC 7519 claims, RFC 8725 explicit typing).
const (
	// TokenType is the JOSE "typ" header of enrollment tokens, so that no
	// other JWT signed by the same key can be taken for one.
	TokenType = "d2c-enroll+jwt"
	// TokenAudience is the "aud" claim: the d2c EST registrar.
	TokenAudience = "urn:d2c:est"
	// DefaultTokenTTL is an enrollment token's lifetime unless set.
	DefaultTokenTTL = time.Hour
	// MaxTokenTTL is the longest lifetime a registrar accepts.
	MaxTokenTTL = 7 * 24 * time.Hour
	// tokenLeeway absorbs clock differences between issuer and registrar.
	tokenLeeway = time.Minute
)

// Token is the content of a verified enrollment token.
type Token struct {
	DeviceID string
	ID       string // jti, single use
	Expiry   time.Time
}

// TokenIssuer signs one-time enrollment tokens: JWTs (RFC 7519) bound to one
// device ID, short-lived, with a random jti, signed by the fleet's token key
// (ES256 or EdDSA). Tokens are bearer credentials: deliver each to its device
// over a channel you trust (factory line, installer app).
type TokenIssuer struct {
	// Key signs tokens. Required.
	Key crypto.Signer
	// Issuer is the "iss" claim. Default "d2c".
	Issuer string
	// TTL is the token lifetime. Default [DefaultTokenTTL]; at most
	// [MaxTokenTTL].
	TTL time.Duration
	// Time returns the current time. Default time.Now.
	Time func() time.Time
}

// Issue returns a compact JWS enrollment token for device id.
func (ti TokenIssuer) Issue(id string) (string, error) {
	if err := ValidateDeviceID(id); err != nil {
		return "", err
	}
	if ti.Key == nil {
		return "", fmt.Errorf("identity: token issuer has no key")
	}
	alg, err := JWSAlgorithm(ti.Key.Public())
	if err != nil {
		return "", err
	}
	ttl := ti.TTL
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if ttl < 0 || ttl > MaxTokenTTL {
		return "", fmt.Errorf("identity: token lifetime %v outside (0, %v]", ttl, MaxTokenTTL)
	}
	iss := ti.Issuer
	if iss == "" {
		iss = "d2c"
	}
	now := time.Now
	if ti.Time != nil {
		now = ti.Time
	}
	kid, err := KeyID(ti.Key.Public())
	if err != nil {
		return "", err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: cryptosigner.Opaque(ti.Key)},
		(&jose.SignerOptions{}).WithType(TokenType).WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		return "", fmt.Errorf("identity: token signer: %w", err)
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	t := now()
	c := jwt.Claims{
		Issuer:    iss,
		Subject:   id,
		Audience:  jwt.Audience{TokenAudience},
		ID:        base64.RawURLEncoding.EncodeToString(jti),
		IssuedAt:  jwt.NewNumericDate(t),
		NotBefore: jwt.NewNumericDate(t.Add(-tokenLeeway)),
		Expiry:    jwt.NewNumericDate(t.Add(ttl)),
	}
	return jwt.Signed(signer).Claims(c).Serialize()
}

// TokenVerifier checks enrollment tokens on the registrar.
type TokenVerifier struct {
	// Keys are the fleet token public keys, looked up by their key ID
	// ([KeyID]) from the token's "kid" header. Required.
	Keys []crypto.PublicKey
	// Issuer is the required "iss" claim. Default "d2c".
	Issuer string
	// Time returns the current time. Default time.Now.
	Time func() time.Time
}

// Verify checks a token's signature (ES256 or EdDSA only, key chosen by kid
// among Keys, never from the token), type, issuer, audience and validity
// period. Single use is not checked here: the registrar consumes the jti.
func (tv TokenVerifier) Verify(token string) (Token, error) {
	if len(token) > limits.Token {
		return Token{}, fmt.Errorf("%w: %w: over %d bytes", ErrTokenInvalid, ErrTooLarge, limits.Token)
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA})
	if err != nil {
		return Token{}, fmt.Errorf("%w: %v", ErrTokenInvalid, err)
	}
	if len(tok.Headers) != 1 {
		return Token{}, fmt.Errorf("%w: %d signatures", ErrTokenInvalid, len(tok.Headers))
	}
	h := tok.Headers[0]
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != TokenType {
		return Token{}, fmt.Errorf("%w: typ %q, want %q", ErrTokenInvalid, truncate(typ), TokenType)
	}
	var key crypto.PublicKey
	for _, k := range tv.Keys {
		if id, err := KeyID(k); err == nil && id == h.KeyID {
			key = k
			break
		}
	}
	if key == nil {
		return Token{}, fmt.Errorf("%w: unknown key ID %q", ErrTokenInvalid, truncate(h.KeyID))
	}
	if alg, err := JWSAlgorithm(key); err != nil || alg != h.Algorithm {
		return Token{}, fmt.Errorf("%w: algorithm %q does not match the key", ErrTokenInvalid, truncate(h.Algorithm))
	}
	var c jwt.Claims
	if err := tok.Claims(key, &c); err != nil {
		return Token{}, fmt.Errorf("%w: %v", ErrTokenInvalid, err)
	}
	iss := tv.Issuer
	if iss == "" {
		iss = "d2c"
	}
	now := time.Now
	if tv.Time != nil {
		now = tv.Time
	}
	t := now()
	err = c.ValidateWithLeeway(jwt.Expected{Issuer: iss, AnyAudience: jwt.Audience{TokenAudience}, Time: t}, tokenLeeway)
	switch {
	case errors.Is(err, jwt.ErrExpired), errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
		return Token{}, fmt.Errorf("%w: %v", ErrTokenExpired, err)
	case err != nil:
		return Token{}, fmt.Errorf("%w: %v", ErrTokenInvalid, err)
	}
	if c.Expiry == nil || c.IssuedAt == nil || c.ID == "" || len(c.ID) > 64 {
		return Token{}, fmt.Errorf("%w: exp, iat and a jti of at most 64 bytes are required", ErrTokenInvalid)
	}
	if c.Expiry.Time().Sub(c.IssuedAt.Time()) > MaxTokenTTL {
		return Token{}, fmt.Errorf("%w: lifetime over %v", ErrTokenInvalid, MaxTokenTTL)
	}
	if err := ValidateDeviceID(c.Subject); err != nil {
		return Token{}, fmt.Errorf("%w: subject: %w", ErrTokenInvalid, err)
	}
	return Token{DeviceID: c.Subject, ID: c.ID, Expiry: c.Expiry.Time()}, nil
}

// KeyID returns the RFC 7638 JWK SHA-256 thumbprint of a public key,
// base64url: the "kid" of tokens it signs.
func KeyID(pub crypto.PublicKey) (string, error) {
	if _, err := JWSAlgorithm(pub); err != nil {
		return "", err
	}
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// JWSAlgorithm maps a public key to the one JWS algorithm d2c signs and
// verifies with it, as the "alg" header value names it: "ES256" for ECDSA
// P-256 (RFC 7518), "EdDSA" for Ed25519 (RFC 8037). Any other key is
// refused with [ErrUnsupportedKey]: every d2c signature format (tokens,
// telemetry, update metadata, attestation, audit heads) uses this one
// mapping, so no key ever signs with a second algorithm.
func JWSAlgorithm(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k != nil && k.Curve == elliptic.P256() {
			return string(jose.ES256), nil
		}
	case ed25519.PublicKey:
		if len(k) == ed25519.PublicKeySize {
			return string(jose.EdDSA), nil
		}
	}
	return "", fmt.Errorf("%w: %T for JWS", ErrUnsupportedKey, pub)
}
