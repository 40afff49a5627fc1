// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package jws

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/wire"
)

// The one-profile fast path of RFC 7515 compact JWS: a protected header of
// exactly {"alg", "kid", "typ"} in d2c's canonical JSON, ES256 (RFC 7518
// section 3.4: SHA-256, signature R || S, 32 bytes each) or EdDSA (RFC 8037).
// It composes the standard library exactly as go-jose does for this
// profile, without rebuilding and reparsing the header JSON per message.
// Anything else (another header, another encoding of the same header) goes
// through go-jose. TestFastJWSDifferential checks both directions against
// go-jose; the fuzz targets run through it.

var b64 = base64.RawURLEncoding

// canonicalHeader returns the base64url protected header d2c writes for
// (alg, kid, typ).
func canonicalHeader(alg, kid, typ string) (string, error) {
	h, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{alg, kid, typ})
	if err != nil {
		return "", err
	}
	return b64.EncodeToString(h), nil
}

// FastSigner signs compact JWS of one header with one key.
type FastSigner struct {
	key    crypto.Signer
	alg    jose.SignatureAlgorithm
	header string // base64url
}

func NewFastSigner(key crypto.Signer, kid, typ string) (*FastSigner, error) {
	alg, err := identity.JWSAlgorithm(key.Public())
	if err != nil {
		return nil, err
	}
	h, err := canonicalHeader(alg, kid, typ)
	if err != nil {
		return nil, err
	}
	return &FastSigner{key: key, alg: jose.SignatureAlgorithm(alg), header: h}, nil
}

// sign returns header.payload.signature.
func (s *FastSigner) Sign(payload []byte) ([]byte, error) {
	out := make([]byte, 0, len(s.header)+2+b64.EncodedLen(len(payload))+b64.EncodedLen(64))
	out = append(out, s.header...)
	out = append(out, '.')
	out = b64.AppendEncode(out, payload)
	var sig []byte
	switch s.alg {
	case jose.ES256:
		digest := sha256.Sum256(out)
		der, err := s.key.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("transport: sign: %w", err)
		}
		if sig, err = derToRS(der); err != nil {
			return nil, err
		}
	case jose.EdDSA:
		var err error
		if sig, err = s.key.Sign(rand.Reader, out, crypto.Hash(0)); err != nil {
			return nil, fmt.Errorf("transport: sign: %w", err)
		}
	}
	out = append(out, '.')
	return b64.AppendEncode(out, sig), nil
}

// derToRS converts an ASN.1 ECDSA signature (what crypto.Signer returns)
// to the fixed 64-byte R || S of JWS ES256.
func derToRS(der []byte) ([]byte, error) {
	var sig struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil || len(rest) != 0 || sig.R.Sign() <= 0 || sig.S.Sign() <= 0 || sig.R.BitLen() > 256 || sig.S.BitLen() > 256 {
		return nil, errors.New("transport: signer returned a malformed ECDSA signature")
	}
	rs := make([]byte, 64)
	sig.R.FillBytes(rs[:32])
	sig.S.FillBytes(rs[32:])
	return rs, nil
}

// ErrNotCanonical sends a JWS to the go-jose path.
var ErrNotCanonical = errors.New("not the canonical header")

// FastVerify verifies a compact JWS whose protected header is exactly the
// canonical one for (the algorithm of pub, kid, typ). It returns
// ErrNotCanonical for any other header, so that the caller falls back to
// the general path.
func FastVerify(compact []byte, kid, typ string, pub crypto.PublicKey) ([]byte, error) {
	alg, err := identity.JWSAlgorithm(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", wire.ErrBadSignature, err)
	}
	first := bytes.IndexByte(compact, '.')
	last := bytes.LastIndexByte(compact, '.')
	if first < 0 || last == first {
		return nil, ErrNotCanonical
	}
	want, err := canonicalHeader(alg, kid, typ)
	if err != nil || string(compact[:first]) != want {
		return nil, ErrNotCanonical
	}
	payload, err := b64.Strict().DecodeString(string(compact[first+1 : last]))
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %v", wire.ErrMalformed, err)
	}
	sig, err := b64.Strict().DecodeString(string(compact[last+1:]))
	if err != nil {
		return nil, fmt.Errorf("%w: signature: %v", wire.ErrMalformed, err)
	}
	input := compact[:last]
	ok := false
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if len(sig) == 64 {
			digest := sha256.Sum256(input)
			ok = ecdsa.Verify(k, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
		}
	case ed25519.PublicKey:
		ok = len(sig) == ed25519.SignatureSize && ed25519.Verify(k, input, sig)
	}
	if !ok {
		return nil, fmt.Errorf("%w: signature does not verify", wire.ErrBadSignature)
	}
	return payload, nil
}
