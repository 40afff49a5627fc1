// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/base64"
	"fmt"

	"github.com/d2c-iot/d2c/identity"
)

// JWS algorithms of the profile (RFC 7518 section 3.4, RFC 8037 section 3.1).
const (
	algES256 = "ES256"
	algEdDSA = "EdDSA"
)

// jwkJSON is a public key as an RFC 7517 JSON Web Key holding exactly the
// members its RFC 7638 thumbprint covers: kty, crv, x and (EC) y.
type jwkJSON struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y,omitempty"`
}

// keyAlg returns the one JWS algorithm a public key signs with: ES256 for
// ECDSA P-256, EdDSA for Ed25519. Other keys are refused.
func keyAlg(pub crypto.PublicKey) (string, error) {
	alg, err := identity.JWSAlgorithm(pub)
	if err != nil {
		return "", fmt.Errorf("%w: key type %T (want ECDSA P-256 or Ed25519)", ErrAlgorithm, pub)
	}
	return alg, nil
}

// keyID returns the key ID of a public key: its RFC 7638 JWK SHA-256
// thumbprint, base64url without padding ([identity.KeyID]).
func keyID(pub crypto.PublicKey) (string, error) {
	if _, err := keyAlg(pub); err != nil {
		return "", err
	}
	return identity.KeyID(pub)
}

var b64 = base64.RawURLEncoding.Strict()

// encodeJWK returns the JWK of an ECDSA P-256 or Ed25519 public key.
func encodeJWK(pub crypto.PublicKey) (jwkJSON, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.Curve != elliptic.P256() {
			break
		}
		b, err := k.Bytes()
		if err != nil {
			return jwkJSON{}, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		return jwkJSON{Kty: "EC", Crv: "P-256", X: b64.EncodeToString(b[1:33]), Y: b64.EncodeToString(b[33:])}, nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			break
		}
		return jwkJSON{Kty: "OKP", Crv: "Ed25519", X: b64.EncodeToString(k)}, nil
	}
	return jwkJSON{}, fmt.Errorf("%w: key type %T (want ECDSA P-256 or Ed25519)", ErrAlgorithm, pub)
}

// decodeJWK parses a JWK written by encodeJWK: an EC P-256 point on the
// curve (RFC 7518 section 6.2), or an Ed25519 OKP key (RFC 8037 section 2),
// coordinates in unpadded base64url of their exact length.
func decodeJWK(id string, j jwkJSON) (crypto.PublicKey, error) {
	id = truncate(id)
	switch {
	case j.Kty == "EC" && j.Crv == "P-256":
		x, err1 := b64.DecodeString(j.X)
		y, err2 := b64.DecodeString(j.Y)
		if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
			return nil, fmt.Errorf("%w: key %q: EC x and y must be 32-byte base64url", ErrMalformed, id)
		}
		k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, fmt.Errorf("%w: key %q: %v", ErrMalformed, id, err)
		}
		return k, nil
	case j.Kty == "OKP" && j.Crv == "Ed25519" && j.Y == "":
		x, err := b64.DecodeString(j.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%w: key %q: Ed25519 x must be 32-byte base64url", ErrMalformed, id)
		}
		return ed25519.PublicKey(x), nil
	}
	return nil, fmt.Errorf("%w: key %q: kty %q crv %q (want EC P-256 or OKP Ed25519)", ErrAlgorithm, id, truncate(j.Kty), truncate(j.Crv))
}

// clonePublicKey returns a copy of a key that shares no memory with it, so
// that a caller holding a returned Root cannot change a Trusted's keys.
func clonePublicKey(pub crypto.PublicKey) crypto.PublicKey {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if b, err := k.Bytes(); err == nil {
			if c, err := ecdsa.ParseUncompressedPublicKey(k.Curve, b); err == nil {
				return c
			}
		}
	case ed25519.PublicKey:
		return ed25519.PublicKey(bytes.Clone(k))
	}
	return pub
}
