// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package jws is d2c's profile of RFC 7515 compact JWS for envelopes and
// commands: one signature, a protected header of exactly alg, kid and typ,
// ES256 or EdDSA, canonical base64url; a fast path for that profile
// (fast.go) checked against go-jose.
package jws

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Algorithms returns the allow-list of JWS algorithms: ES256 and EdDSA.
func Algorithms() []jose.SignatureAlgorithm { return []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA} }

// NewSigner returns a compact JWS signer with kid and typ headers.
func NewSigner(key crypto.Signer, kid, typ string) (jose.Signer, error) {
	alg, err := identity.JWSAlgorithm(key.Public())
	if err != nil {
		return nil, err
	}
	return jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: cryptosigner.Opaque(key)},
		(&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader(jose.HeaderKey("kid"), kid))
}

// Parse parses a compact JWS of the expected type with exactly one
// signature, and returns it with its kid, before any verification.
func Parse(b []byte, typ string) (*jose.JSONWebSignature, string, error) {
	if len(b) > limits.Envelope {
		return nil, "", fmt.Errorf("%w: %d bytes over %d", wire.ErrMalformed, len(b), limits.Envelope)
	}
	if err := strictSegments(b); err != nil {
		return nil, "", err
	}
	jws, err := jose.ParseSignedCompact(string(b), Algorithms())
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", wire.ErrMalformed, err)
	}
	if len(jws.Signatures) != 1 {
		return nil, "", fmt.Errorf("%w: %d signatures", wire.ErrMalformed, len(jws.Signatures))
	}
	h := jws.Signatures[0].Protected
	if got, _ := h.ExtraHeaders[jose.HeaderType].(string); got != typ {
		return nil, "", fmt.Errorf("%w: typ %q, want %q", wire.ErrMalformed, textutil.Clip(got), typ)
	}
	if err := OnlyHeaders(b, "alg", "kid", "typ"); err != nil {
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
			return fmt.Errorf("%w: base64url segment: %v", wire.ErrMalformed, err)
		}
	}
	return nil
}

// OnlyHeaders checks that the protected header of a compact JOSE object
// holds exactly the named parameters: no embedded key (jwk), no x5c, no
// crit, no b64, nothing a verifier could be tricked into trusting.
func OnlyHeaders(compact []byte, names ...string) error {
	first, _, _ := bytes.Cut(compact, []byte("."))
	raw, err := base64.RawURLEncoding.DecodeString(string(first))
	if err != nil {
		return fmt.Errorf("%w: protected header: %v", wire.ErrMalformed, err)
	}
	var h map[string]json.RawMessage
	if err := json.Unmarshal(raw, &h); err != nil {
		return fmt.Errorf("%w: protected header: %v", wire.ErrMalformed, err)
	}
	if len(h) != len(names) {
		return fmt.Errorf("%w: protected header has %d parameters, want %v", wire.ErrMalformed, len(h), names)
	}
	for _, n := range names {
		if _, ok := h[n]; !ok {
			return fmt.Errorf("%w: protected header lacks %q", wire.ErrMalformed, n)
		}
	}
	return nil
}

// Verify checks the signature with pub, whose algorithm must be the one
// in the header.
func Verify(jws *jose.JSONWebSignature, pub crypto.PublicKey) ([]byte, error) {
	alg, err := identity.JWSAlgorithm(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", wire.ErrBadSignature, err)
	}
	if got := jws.Signatures[0].Protected.Algorithm; got != alg {
		return nil, fmt.Errorf("%w: algorithm %q for a %s key", wire.ErrBadSignature, textutil.Clip(got), alg)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", wire.ErrBadSignature, err)
	}
	return payload, nil
}

// ECDHPublic checks that a cloud encryption key is a P-256 ECDH key (the
// curve of ECDH-ES+A256KW in d2c).
func ECDHPublic(pub crypto.PublicKey) (*ecdsa.PublicKey, error) {
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
