// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"crypto"
	"encoding/json"
	"fmt"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/internal/limits"
)

// The JWS profile (docs/update-format.md, "JWS profile"): RFC 7515 JSON
// general serialization, exactly
//
//	{"payload":"<base64url>","signatures":[{"protected":"<base64url>","signature":"<base64url>"}, ...]}
//
// with no unprotected "header", no flattened form, and a protected header
// of exactly {"alg","kid","typ"}.
type (
	jwsJSON struct {
		Payload    string       `json:"payload"`
		Signatures []jwsSigJSON `json:"signatures"`
	}
	jwsSigJSON struct {
		Protected string `json:"protected"`
		Signature string `json:"signature"`
	}
	protectedJSON struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}
)

// allowedAlgs is the algorithm allow-list handed to go-jose.
var allowedAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA}

// envelope is a signed document whose structure and headers passed the
// profile, before any signature is checked.
type envelope struct {
	role     Role
	payload  []byte // as decoded here; go-jose's must be the same
	kids     []string
	algs     []string
	jws      *jose.JSONWebSignature
	verified []bool // signature i verified (cached across key sets)
}

// parseEnvelope checks a signed document of role against its size bound
// and the JWS profile, and parses it with go-jose. It checks no signature.
func parseEnvelope(b []byte, role Role, max int) (*envelope, error) {
	if len(b) > max {
		return nil, fmt.Errorf("%w: %s metadata of %d bytes (at most %d)", ErrTooLarge, role, len(b), max)
	}
	var w jwsJSON
	if err := strictUnmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("%w: %s: not a JWS in JSON general serialization: %v", ErrMalformed, role, err)
	}
	if len(w.Signatures) == 0 {
		return nil, fmt.Errorf("%w: %s: no signature", ErrThreshold, role)
	}
	if len(w.Signatures) > limits.UpdateSignatures {
		return nil, fmt.Errorf("%w: %s: %d signatures (at most %d)", ErrTooLarge, role, len(w.Signatures), limits.UpdateSignatures)
	}
	payload, err := b64.DecodeString(w.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: payload is not unpadded base64url", ErrMalformed, role)
	}
	e := &envelope{role: role, payload: payload, verified: make([]bool, len(w.Signatures))}
	for i, s := range w.Signatures {
		raw, err := b64.DecodeString(s.Protected)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: signature %d: protected header is not unpadded base64url", ErrMalformed, role, i)
		}
		if _, err := b64.DecodeString(s.Signature); err != nil {
			return nil, fmt.Errorf("%w: %s: signature %d is not unpadded base64url", ErrMalformed, role, i)
		}
		var h protectedJSON
		if err := strictUnmarshal(raw, &h); err != nil {
			// Checked before the strict decode so that "none" or HS256
			// is named as what it is even with other members around.
			if alg, ok := headerAlg(raw); ok && alg != algES256 && alg != algEdDSA {
				return nil, fmt.Errorf("%w: %s: signature %d: alg %q (allowed: ES256, EdDSA)", ErrAlgorithm, role, i, truncate(alg))
			}
			return nil, fmt.Errorf("%w: %s: signature %d: protected header must be exactly alg, kid and typ: %v", ErrMalformed, role, i, err)
		}
		if h.Alg != algES256 && h.Alg != algEdDSA {
			return nil, fmt.Errorf("%w: %s: signature %d: alg %q (allowed: ES256, EdDSA)", ErrAlgorithm, role, i, truncate(h.Alg))
		}
		if h.Typ != role.MediaType() {
			return nil, fmt.Errorf("%w: typ %q presented as %s (want %q)", ErrWrongType, truncate(h.Typ), role, role.MediaType())
		}
		if h.Kid == "" {
			return nil, fmt.Errorf("%w: %s: signature %d has an empty kid", ErrUnknownKey, role, i)
		}
		e.kids = append(e.kids, h.Kid)
		e.algs = append(e.algs, h.Alg)
	}
	// go-jose parses the same bytes: it enforces the allow-list again and
	// keeps the exact protected headers the signatures cover.
	jws, err := jose.ParseSignedJSON(string(b), allowedAlgs)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, role, err)
	}
	if len(jws.Signatures) != len(e.kids) {
		return nil, fmt.Errorf("%w: %s: signature count differs between parsers", ErrMalformed, role)
	}
	e.jws = jws
	return e, nil
}

// headerAlg reads "alg" from a protected header that failed the strict
// decode, for the error message.
func headerAlg(raw []byte) (string, bool) {
	var h struct {
		Alg *string `json:"alg"`
	}
	if err := json.Unmarshal(raw, &h); err != nil || h.Alg == nil {
		return "", false
	}
	return *h.Alg, true
}

// requireKnown refuses a signature whose kid is in none of the key sets:
// a key the role does not trust (unknown, revoked or spoofed).
func (e *envelope) requireKnown(sets ...map[string]crypto.PublicKey) error {
	for i, kid := range e.kids {
		known := false
		for _, s := range sets {
			if _, ok := s[kid]; ok {
				known = true
				break
			}
		}
		if !known {
			return fmt.Errorf("%w: %s signature %d by key %q", ErrUnknownKey, e.role, i, truncate(kid))
		}
	}
	return nil
}

// verify checks every signature made by a key of keys and returns the
// distinct key IDs whose signatures verified: a key that signed twice is
// counted once. Any failing signature by a listed key refuses the whole
// document; signatures by other keys are left to requireKnown.
func (e *envelope) verify(keys map[string]crypto.PublicKey) (map[string]bool, error) {
	good := map[string]bool{}
	for i, kid := range e.kids {
		pub, ok := keys[kid]
		if !ok {
			continue
		}
		if !e.verified[i] {
			alg, err := keyAlg(pub)
			if err != nil {
				return nil, err
			}
			if alg != e.algs[i] {
				return nil, fmt.Errorf("%w: %s signature %d: alg %s for a %s key %q", ErrAlgorithm, e.role, i, e.algs[i], alg, truncate(kid))
			}
			one := *e.jws
			one.Signatures = e.jws.Signatures[i : i+1]
			payload, err := one.Verify(pub)
			if err != nil {
				return nil, fmt.Errorf("%w: %s signature %d by key %q: %v", ErrBadSignature, e.role, i, truncate(kid), err)
			}
			if !bytes.Equal(payload, e.payload) {
				return nil, fmt.Errorf("%w: %s: payload differs between parsers", ErrMalformed, e.role)
			}
			e.verified[i] = true
		}
		good[kid] = true
	}
	return good, nil
}

// threshold refuses unless at least rk.Threshold of the role's keys are in
// good. what names the key set in the error ("root version 3").
func threshold(role Role, rk RoleKeys, good map[string]bool, what string) error {
	n := 0
	for _, id := range rk.KeyIDs {
		if good[id] {
			n++
		}
	}
	if n < rk.Threshold {
		return fmt.Errorf("%w: %s signed by %d distinct %s keys of %s, threshold %d", ErrThreshold, role, n, role, what, rk.Threshold)
	}
	return nil
}

// verifyRole checks a signed document of role against the role's keys in
// root: every signature by a key of the role, each valid, at least the
// threshold of distinct keys. It returns the verified payload.
func verifyRole(b []byte, role Role, max int, root *Root) ([]byte, error) {
	e, err := parseEnvelope(b, role, max)
	if err != nil {
		return nil, err
	}
	keys := root.roleKeys(role)
	if err := e.requireKnown(keys); err != nil {
		return nil, err
	}
	good, err := e.verify(keys)
	if err != nil {
		return nil, err
	}
	if err := threshold(role, root.Roles[role], good, fmt.Sprintf("root version %d", root.Version)); err != nil {
		return nil, err
	}
	return e.payload, nil
}
