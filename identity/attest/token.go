// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package attest

import (
	"bytes"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/limits"
)

// Token format constants.
const (
	// Profile is the eat_profile claim of every d2c attestation token
	// (RFC 9711 sections 4.3.2 and 6): a tag URI (RFC 4151) naming the
	// profile that docs/attestation.md specifies.
	Profile = "tag:d2c-iot.github.io,2026:eat-profile-1"
	// TokenType is the JOSE "typ" header: the media type
	// application/eat+jwt (RFC 9782) without its "application/" prefix,
	// as RFC 7515 section 4.1.9 recommends. Verifiers accept no other.
	TokenType = "eat+jwt"
	// MediaType is the media type of a token (RFC 9782), e.g. for an HTTP
	// Content-Type; [ContentType] adds the profile parameter.
	MediaType = "application/eat+jwt"
	// ContentType is [MediaType] with its optional eat_profile parameter.
	ContentType = MediaType + `; eat_profile="` + Profile + `"`

	// MinNonceSize and MaxNonceSize bound a nonce in bytes. RFC 9711
	// section 4.1 allows 8 to 64; the d2c profile requires 16 (128 bits).
	MinNonceSize = 16
	MaxNonceSize = 64
	// DefaultNonceSize is the size of the nonces a [Verifier] issues.
	DefaultNonceSize = 32
)

// JSON claim names (RFC 9711 section 10.2; RFC 7519 section 4.1) and the
// profile's private claim.
const (
	claimNonce     = "eat_nonce"
	claimProfile   = "eat_profile"
	claimSubject   = "sub"
	claimIssuedAt  = "iat"
	claimSWName    = "swname"
	claimSWVersion = "swversion"
	claimDigest    = "d2c_image_digest"
	claimDebug     = "dbgstat"
	claimOEMBoot   = "oemboot"
	claimOEMID     = "oemid"
	claimBootCount = "bootcount"
)

const (
	// digestAlg names SHA-256 in the COSE Algorithms registry, as RFC
	// 9711's Detached-Submodule-Digest does (section 4.2.18.2), whose
	// [algorithm, digest] shape d2c_image_digest reuses.
	digestAlg = "SHA-256"
	// multipartNumeric is CoSWID version-scheme 1 (RFC 9393 section 4.1).
	multipartNumeric = 1
	// maxKeyIDLen bounds the kid header (an RFC 7638 thumbprint is 43).
	maxKeyIDLen = 64
	// maxMembers bounds the members of a JSON object of a token.
	maxMembers = 16
)

// allowedAlgs are the only JWS algorithms accepted (RFC 7518, RFC 8037).
var allowedAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA}

// b64 is the strict unpadded base64url of JWS (RFC 7515 section 2).
var b64 = base64.RawURLEncoding.Strict()

// Sign returns an attestation token: a compact JWS (ES256 for a P-256 key,
// EdDSA for Ed25519) signed by the device key, typ [TokenType], kid the
// RFC 7638 thumbprint of the key ([identity.KeyID]), whose payload is the
// JSON claims set of the d2c profile for deviceID, ev and the time now
// (which should come from the device's identity.TrustedClock). The key may
// be in hardware (PKCS#11, TPM): only its crypto.Signer is used.
func Sign(signer crypto.Signer, deviceID string, ev Evidence, now time.Time) ([]byte, error) {
	if signer == nil {
		return nil, errors.New("attest: no signing key")
	}
	if err := identity.ValidateDeviceID(deviceID); err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	if err := ev.validate(); err != nil {
		return nil, err
	}
	if now.Unix() <= 0 {
		return nil, fmt.Errorf("attest: time %s is not after 1970", now.UTC().Format(time.RFC3339))
	}
	pub := signer.Public()
	alg, err := identity.JWSAlgorithm(pub)
	if err != nil {
		return nil, err
	}
	kid, err := identity.KeyID(pub)
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	payload, err := encodeClaims(deviceID, &ev, now.Unix())
	if err != nil {
		return nil, err
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: cryptosigner.Opaque(signer)},
		(&jose.SignerOptions{}).WithType(TokenType).WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		return nil, fmt.Errorf("attest: signer: %w", err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("attest: sign: %w", err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		return nil, fmt.Errorf("attest: sign: %w", err)
	}
	if len(out) > limits.AttestationToken {
		return nil, fmt.Errorf("%w: %d bytes over %d", ErrTooLarge, len(out), limits.AttestationToken)
	}
	return []byte(out), nil
}

// wireClaims is the claims set as Sign writes it.
type wireClaims struct {
	Profile   string    `json:"eat_profile"`
	Nonce     string    `json:"eat_nonce"`
	Subject   string    `json:"sub"`
	IssuedAt  int64     `json:"iat"`
	SWName    string    `json:"swname"`
	SWVersion [2]any    `json:"swversion"`
	Digest    [2]string `json:"d2c_image_digest"`
	Debug     string    `json:"dbgstat,omitempty"`
	OEMBoot   *bool     `json:"oemboot,omitempty"`
	OEMID     any       `json:"oemid,omitempty"`
	BootCount *uint64   `json:"bootcount,omitempty"`
}

func encodeClaims(device string, ev *Evidence, iat int64) ([]byte, error) {
	w := wireClaims{
		Profile:   Profile,
		Nonce:     b64.EncodeToString(ev.Nonce),
		Subject:   device,
		IssuedAt:  iat,
		SWName:    ev.SoftwareName,
		SWVersion: [2]any{ev.SoftwareVersion, multipartNumeric},
		Digest:    [2]string{digestAlg, b64.EncodeToString(ev.ImageDigest[:])},
		OEMBoot:   ev.SecureBoot,
		BootCount: ev.BootCount,
	}
	if ev.DebugStatus != DebugNotReported {
		w.Debug = ev.DebugStatus.String()
	}
	switch {
	case ev.OEM.PEN != 0:
		w.OEMID = ev.OEM.PEN
	case len(ev.OEM.OUI) != 0:
		w.OEMID = b64.EncodeToString(ev.OEM.OUI)
	}
	b, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("attest: encode claims: %w", err)
	}
	return b, nil
}

// parsedToken is a token whose form and claims have been checked, but not
// yet its signature.
type parsedToken struct {
	jws    *jose.JSONWebSignature
	alg    jose.SignatureAlgorithm
	kid    string
	device string
	nonce  string // eat_nonce as sent: the nonce store's key
	iat    int64
	ev     Evidence
}

// parseToken checks everything about a token that needs no key: size,
// characters, a protected header of exactly alg (allow-listed), kid and typ
// ([TokenType]), one signature, and a claims set of the d2c profile in
// strict JSON. The claims are read before the signature is checked so that
// the subject can select the device's certificates; nothing in them is
// trusted until [Verifier.Verify] has checked the signature.
func parseToken(b []byte) (*parsedToken, error) {
	if len(b) > limits.AttestationToken {
		return nil, fmt.Errorf("%w: %d bytes over %d", ErrTooLarge, len(b), limits.AttestationToken)
	}
	for _, c := range b {
		if !isBase64URL(c) && c != '.' {
			return nil, fmt.Errorf("%w: not a compact JWS: byte %#x", ErrMalformed, c)
		}
	}
	parts := bytes.Split(b, []byte("."))
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: not a compact JWS: %d parts", ErrMalformed, len(parts))
	}
	// Each segment must be canonical unpadded base64url, so that a signed
	// token has exactly one spelling.
	var seg [3][]byte
	for i, p := range parts {
		var err error
		if seg[i], err = b64.DecodeString(string(p)); err != nil {
			return nil, fmt.Errorf("%w: segment %d: %v", ErrMalformed, i+1, err)
		}
	}
	hdr, payload := seg[0], seg[1]
	alg, kid, err := parseHeader(hdr)
	if err != nil {
		return nil, err
	}
	jws, err := jose.ParseSignedCompact(string(b), allowedAlgs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("%w: %d signatures", ErrMalformed, len(jws.Signatures))
	}
	t, err := parseClaims(payload)
	if err != nil {
		return nil, err
	}
	t.jws, t.alg, t.kid = jws, alg, kid
	return t, nil
}

func isBase64URL(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// parseHeader checks a JOSE header: exactly alg, kid and typ. Keys carried
// in the token (jwk, x5c, x5u, jku), crit and b64 are all refused: the key
// comes from the registered certificate only (RFC 8725 section 3.10).
func parseHeader(b []byte) (jose.SignatureAlgorithm, string, error) {
	m, err := jsonObject(b)
	if err != nil {
		return "", "", fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	alg, okA := jsonString(m["alg"])
	kid, okK := jsonString(m["kid"])
	typ, okT := jsonString(m["typ"])
	if len(m) != 3 || !okA || !okK || !okT {
		return "", "", fmt.Errorf("%w: header must hold exactly alg, kid and typ", ErrMalformed)
	}
	if typ != TokenType {
		return "", "", fmt.Errorf("%w: typ %q, want %q", ErrMalformed, clip(typ), TokenType)
	}
	a := jose.SignatureAlgorithm(alg)
	if a != jose.ES256 && a != jose.EdDSA {
		return "", "", fmt.Errorf("%w: algorithm %q not allowed", ErrMalformed, clip(alg))
	}
	if kid == "" || len(kid) > maxKeyIDLen {
		return "", "", fmt.Errorf("%w: kid of %d bytes", ErrMalformed, len(kid))
	}
	return a, kid, nil
}

// parseClaims decodes a claims set of the d2c profile, refusing duplicate,
// unknown and missing claims and values of the wrong type or size.
func parseClaims(payload []byte) (*parsedToken, error) {
	m, err := jsonObject(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrMalformed, err)
	}
	bad := func(claim string) error { return fmt.Errorf("%w: claim %s missing or invalid", ErrMalformed, claim) }
	// The profile refuses claims it does not define (RFC 9711 section
	// 6.3.12 lets a profile reverse the "ignore unknown claims" rule).
	for k := range m {
		switch k {
		case claimProfile, claimNonce, claimSubject, claimIssuedAt, claimSWName, claimSWVersion, claimDigest,
			claimDebug, claimOEMBoot, claimOEMID, claimBootCount:
		default:
			return nil, fmt.Errorf("%w: claim %q is not part of the profile", ErrMalformed, clip(k))
		}
	}
	t := &parsedToken{}
	ev := &t.ev

	if p, ok := jsonString(m[claimProfile]); !ok || p != Profile {
		return nil, fmt.Errorf("%w: eat_profile is not %q", ErrMalformed, Profile)
	}
	// eat_nonce (RFC 9711 section 4.1): one text string, the base64url of
	// the nonce bytes; the array form is not part of the profile.
	nonce, ok := jsonString(m[claimNonce])
	if !ok || len(nonce) > b64.EncodedLen(MaxNonceSize) {
		return nil, bad(claimNonce)
	}
	if ev.Nonce, err = b64.DecodeString(nonce); err != nil || len(ev.Nonce) < MinNonceSize {
		return nil, bad(claimNonce)
	}
	t.nonce = nonce
	if t.device, ok = jsonString(m[claimSubject]); !ok || identity.ValidateDeviceID(t.device) != nil {
		return nil, bad(claimSubject)
	}
	// iat (RFC 9711 section 4.3.1): an integer NumericDate, never
	// floating point.
	if t.iat, ok = jsonInt(m[claimIssuedAt]); !ok || t.iat <= 0 {
		return nil, bad(claimIssuedAt)
	}
	if ev.SoftwareName, ok = jsonString(m[claimSWName]); !ok {
		return nil, bad(claimSWName)
	}
	// swversion (RFC 9711 section 4.2.7): [version, version-scheme].
	sv, ok := jsonArray(m[claimSWVersion])
	if !ok || len(sv) != 2 {
		return nil, bad(claimSWVersion)
	}
	if scheme, ok := jsonInt(sv[1]); !ok || scheme != multipartNumeric {
		return nil, fmt.Errorf("%w: swversion scheme is not multipartnumeric (1)", ErrMalformed)
	}
	if ev.SoftwareVersion, ok = jsonString(sv[0]); !ok {
		return nil, bad(claimSWVersion)
	}
	// d2c_image_digest: ["SHA-256", base64url of 32 bytes].
	dg, ok := jsonArray(m[claimDigest])
	if !ok || len(dg) != 2 {
		return nil, bad(claimDigest)
	}
	alg, okA := jsonString(dg[0])
	enc, okE := jsonString(dg[1])
	if !okA || alg != digestAlg || !okE || len(enc) != b64.EncodedLen(32) {
		return nil, bad(claimDigest)
	}
	if d, err := b64.DecodeString(enc); err != nil || len(d) != 32 {
		return nil, bad(claimDigest)
	} else {
		ev.ImageDigest = [32]byte(d)
	}
	if raw, present := m[claimDebug]; present {
		s, _ := jsonString(raw) // not a string: parseDebugStatus("") fails
		if ev.DebugStatus, ok = parseDebugStatus(s); !ok {
			return nil, bad(claimDebug)
		}
	}
	if raw, present := m[claimOEMBoot]; present {
		b, ok := jsonBool(raw)
		if !ok {
			return nil, bad(claimOEMBoot)
		}
		ev.SecureBoot = &b
	}
	if raw, present := m[claimOEMID]; present {
		// oemid (RFC 9711 section 4.2.3): a PEN (integer) or an IEEE OUI
		// (base64url of 3 bytes).
		if pen, ok := jsonInt(raw); ok {
			if pen <= 0 || pen > 1<<32-1 {
				return nil, bad(claimOEMID)
			}
			ev.OEM.PEN = uint32(pen)
		} else if s, ok := jsonString(raw); ok && len(s) == 4 {
			if ev.OEM.OUI, err = b64.DecodeString(s); err != nil {
				return nil, bad(claimOEMID)
			}
		} else {
			return nil, bad(claimOEMID)
		}
	}
	if raw, present := m[claimBootCount]; present {
		n, ok := jsonUint(raw)
		if !ok {
			return nil, bad(claimBootCount)
		}
		ev.BootCount = &n
	}
	if err := ev.validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// jsonObject decodes one JSON object (RFC 8259) into its members, refusing
// invalid UTF-8, duplicate member names, more than maxMembers members and
// anything after the object. Member names are compared after unescaping, so
// "e\u0061t_nonce" is a duplicate of "eat_nonce".
func jsonObject(b []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("invalid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	m := map[string]json.RawMessage{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		k, ok := t.(string)
		if !ok {
			return nil, errors.New("not a JSON object")
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("duplicate member %q", clip(k))
		}
		if len(m) == maxMembers {
			return nil, fmt.Errorf("more than %d members", maxMembers)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		m[k] = raw
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return nil, errors.New("unterminated JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return m, nil
}

// The value readers below accept exactly one JSON type each: encoding/json
// alone would take null for a string and 1.0 for an integer.

func jsonString(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

func jsonInt(raw json.RawMessage) (int64, bool) {
	n, err := strconv.ParseInt(string(raw), 10, 64)
	return n, err == nil
}

func jsonUint(raw json.RawMessage) (uint64, bool) {
	n, err := strconv.ParseUint(string(raw), 10, 64)
	return n, err == nil
}

func jsonBool(raw json.RawMessage) (bool, bool) {
	switch string(raw) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

func jsonArray(raw json.RawMessage) ([]json.RawMessage, bool) {
	var a []json.RawMessage
	if len(raw) == 0 || raw[0] != '[' || json.Unmarshal(raw, &a) != nil {
		return nil, false
	}
	return a, true
}
