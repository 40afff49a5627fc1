// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/internal/jws"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Project Wycheproof vectors (testdata/wycheproof, see its README) run
// through d2c's JOSE code:
//
//   - JWS vectors (json_web_signature, json_web_crypto, json_web_key): the
//     JWS path of jws.Parse and jws.Verify (go-jose parse with d2c's
//     algorithm allow-list, exactly one signature, protected header of
//     exactly alg and kid, algorithm bound to the key) with the vector's
//     key. The one d2c rule left out is typ, which no Wycheproof header
//     carries; with it (jws.Parse itself, and a whole Verifier) every
//     vector is refused, which is checked too. A "valid" vector must be
//     accepted if its algorithm is one d2c allows (ES256, EdDSA) and
//     refused otherwise; an "invalid" one must be refused.
//   - JWE vectors (json_web_encryption, json_web_crypto): the JWE path of
//     Verifier.unwrap (go-jose parse with d2c's allow-lists, ECDH-ES+A256KW
//     or dir with A256GCM, then decrypt) with the vector's key; the same
//     rules. Wycheproof mutations (tag, IV, ciphertext, key, header,
//     invalid curve point) are also applied to the valid vectors d2c's
//     profile allows, which Wycheproof itself only mutates in other modes.
//   - Raw signature vectors (ecdsa_secp256r1_sha256 with DER signatures,
//     its P1363 variant, ed25519): a JWS signature covers the JWS signing
//     input, so a (message, signature) pair cannot be put in a JWS. Each
//     vector instead goes through the step of the JWS path that checks the
//     signature once go-jose has parsed it: the signature in its JWS form
//     (RFC 7518 section 3.4: 64-byte r || s, so DER is converted, strictly)
//     checked as go-jose's ES256 and EdDSA verifiers do, with the key taken
//     from the vector's SubjectPublicKeyInfo as d2c takes it from a
//     certificate.
//   - The ES256 signatures of the JWS vectors (special values of r and s,
//     wrong lengths...) are also spliced onto a genuine telemetry envelope
//     of a device whose certificate holds the Wycheproof key, and fed to a
//     Verifier: every one is refused, the genuine envelope accepted.
//
// Each subtest logs its counts (go test -run Wycheproof -v).

// wpTally counts the outcomes of one vector file.
type wpTally struct {
	valid, validAccepted           int
	invalid, invalidRefused        int
	acceptable, acceptableAccepted int
	outOfProfile                   int // valid vectors whose algorithm d2c does not allow: refused, as they must be
	keyNotUsable                   int // valid vectors whose key d2c would never hold (JWK use, key_ops, alg): refused
}

func (c *wpTally) String() string {
	s := fmt.Sprintf("valid %d/%d accepted", c.validAccepted, c.valid-c.outOfProfile-c.keyNotUsable)
	if c.outOfProfile > 0 {
		s += fmt.Sprintf(" (+%d valid outside d2c's algorithms, refused)", c.outOfProfile)
	}
	if c.keyNotUsable > 0 {
		s += fmt.Sprintf(" (+%d valid with a key d2c would not hold, refused)", c.keyNotUsable)
	}
	s += fmt.Sprintf("; invalid %d/%d refused", c.invalidRefused, c.invalid)
	if c.acceptable > 0 {
		s += fmt.Sprintf("; acceptable %d (%d accepted)", c.acceptable, c.acceptableAccepted)
	}
	return s
}

// record checks one outcome against the vector's result. inProfile says
// whether d2c allows the vector's algorithms, keyOK whether d2c would
// hold its key.
func (c *wpTally) record(t *testing.T, id int, comment, result string, inProfile, keyOK bool, err error) {
	t.Helper()
	accepted := err == nil
	switch result {
	case "valid":
		c.valid++
		switch {
		case !inProfile:
			c.outOfProfile++
			if accepted {
				t.Errorf("tcId %d (%s): valid vector outside d2c's algorithms accepted", id, comment)
			}
		case !keyOK:
			c.keyNotUsable++
			if accepted {
				t.Errorf("tcId %d (%s): accepted with a key d2c would not hold", id, comment)
			}
		case accepted:
			c.validAccepted++
		default:
			t.Errorf("tcId %d (%s): valid vector refused: %v", id, comment, err)
		}
	case "invalid":
		c.invalid++
		if accepted {
			t.Errorf("tcId %d (%s): invalid vector accepted", id, comment)
		} else {
			c.invalidRefused++
		}
	case "acceptable":
		c.acceptable++
		if accepted {
			c.acceptableAccepted++
		}
	default:
		t.Fatalf("tcId %d: result %q", id, result)
	}
	if err != nil {
		fzErrIs(t, err, fzVerifyErrors...)
	}
}

// wpJOSEFile is the shape of the json_web_* vector files.
type wpJOSEFile struct {
	NumberOfTests int `json:"numberOfTests"`
	TestGroups    []struct {
		Comment string          `json:"comment"`
		Private json.RawMessage `json:"private"`
		Public  json.RawMessage `json:"public"`
		Tests   []wpJOSETest    `json:"tests"`
	} `json:"testGroups"`
}

type wpJOSETest struct {
	TcID    int             `json:"tcId"`
	Comment string          `json:"comment"`
	JWS     json.RawMessage `json:"jws"`
	JWE     json.RawMessage `json:"jwe"`
	PT      string          `json:"pt"`
	Result  string          `json:"result"`
	Flags   []string        `json:"flags"`
}

func wpRead(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "wycheproof", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// wpCompact returns a vector's serialization as received: the compact
// string, or the JSON serialization's text (which d2c must refuse).
func wpCompact(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// wpHeader decodes the protected header of a compact serialization, or
// returns nil.
func wpHeader(compact string) map[string]any {
	first, _, _ := strings.Cut(compact, ".")
	b, err := base64.RawURLEncoding.DecodeString(first)
	if err != nil {
		return nil
	}
	var h map[string]any
	if json.Unmarshal(b, &h) != nil {
		return nil
	}
	return h
}

// wpJWKs returns the JWK objects of a key or key set.
func wpJWKs(t *testing.T, raw json.RawMessage) []json.RawMessage {
	t.Helper()
	if len(raw) == 0 {
		return nil
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	if set.Keys != nil {
		return set.Keys
	}
	return []json.RawMessage{raw}
}

// wpSigningKeys returns the public keys of the group that d2c could hold
// as a device's signing key, and whether some key was left out because its
// JWK metadata restricts it to another use or algorithm. d2c takes keys
// from certificates, never from JWKs; the harness honors the metadata the
// way a registrar would refuse to certify such a key for signing. A JWK
// that does not parse (a point off its curve, a wrong kty) gives no key.
func wpSigningKeys(t *testing.T, raw json.RawMessage) (keys []crypto.PublicKey, leftOut bool) {
	t.Helper()
	for _, k := range wpJWKs(t, raw) {
		var meta struct {
			Use    string   `json:"use"`
			Alg    string   `json:"alg"`
			KeyOps []string `json:"key_ops"`
		}
		_ = json.Unmarshal(k, &meta)
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(k); err != nil {
			continue
		}
		pub := jwk.Public().Key
		alg, err := identity.JWSAlgorithm(pub)
		if err != nil {
			continue // not a key type d2c signs with: verifyJWS would refuse it anyway
		}
		if meta.Use != "" && meta.Use != "sig" || meta.KeyOps != nil && !slices.Contains(meta.KeyOps, "verify") ||
			meta.Alg != "" && meta.Alg != alg {
			leftOut = true
			continue
		}
		keys = append(keys, pub)
	}
	return keys, leftOut
}

// wpVerifyJWS is d2c's JWS path (parseJWS, verifyJWS) without the typ
// rule: go-jose parse with d2c's allow-list, one signature, a header of
// exactly alg and kid, the algorithm of the key, the signature.
func wpVerifyJWS(compact string, keys []crypto.PublicKey) ([]byte, error) {
	obj, err := jose.ParseSignedCompact(compact, jws.Algorithms())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", wire.ErrMalformed, err)
	}
	if len(obj.Signatures) != 1 {
		return nil, fmt.Errorf("%w: %d signatures", wire.ErrMalformed, len(obj.Signatures))
	}
	if err := jws.OnlyHeaders([]byte(compact), "alg", "kid"); err != nil {
		return nil, err
	}
	err = fmt.Errorf("%w: no key", wire.ErrUnknownDevice)
	for _, k := range keys {
		var payload []byte
		if payload, err = jws.Verify(obj, k); err == nil {
			return payload, nil
		}
	}
	return nil, err
}

func TestWycheproofJWS(t *testing.T) {
	for _, name := range []string{"json_web_signature_test.json", "json_web_crypto_test.json", "json_web_key_test.json"} {
		t.Run(strings.TrimSuffix(name, "_test.json"), func(t *testing.T) {
			var file wpJOSEFile
			wpRead(t, name, &file)
			var c wpTally
			n := 0
			for _, g := range file.TestGroups {
				jwk := g.Public
				if len(jwk) == 0 {
					jwk = g.Private
				}
				keys, leftOut := wpSigningKeys(t, jwk)
				for _, tc := range g.Tests {
					if tc.JWS == nil {
						continue // a JWE vector of json_web_crypto: TestWycheproofJWE
					}
					n++
					compact := wpCompact(tc.JWS)
					h := wpHeader(compact)
					alg, _ := h["alg"].(string)
					inProfile := slices.Contains(jws.Algorithms(), jose.SignatureAlgorithm(alg))
					_, err := wpVerifyJWS(compact, keys)
					c.record(t, tc.TcID, tc.Comment, tc.Result, inProfile, len(keys) > 0 || !leftOut, err)
					// The envelope parser itself requires typ: no vector passes it.
					if _, _, err := jws.Parse([]byte(compact), wire.TelemetryType); err == nil {
						t.Errorf("tcId %d: parseJWS accepted a vector without typ", tc.TcID)
					} else {
						fzErrIs(t, err, wire.ErrMalformed)
					}
				}
			}
			t.Logf("%s: %d JWS vectors: %s; parseJWS (typ required) refused all %d", name, n, &c, n)
		})
	}
}

// wpDecryptJWE is the JWE path of Verifier.unwrap without the cty rule and
// the choice of key by kid: go-jose parse with d2c's allow-lists, decrypt.
func wpDecryptJWE(compact string, key any) ([]byte, error) {
	jwe, err := jose.ParseEncryptedCompact(compact,
		[]jose.KeyAlgorithm{jose.ECDH_ES_A256KW, jose.DIRECT}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", wire.ErrMalformed, err)
	}
	pt, err := jwe.Decrypt(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", wire.ErrDecrypt, err)
	}
	return pt, nil
}

// wpJWEMutations are Wycheproof's JWE mutations, applied to a valid compact
// JWE: each must be refused.
func wpJWEMutations(compact string) map[string]string {
	p := strings.Split(compact, ".")
	dec := func(s string) []byte { b, _ := base64.RawURLEncoding.DecodeString(s); return b }
	enc := base64.RawURLEncoding.EncodeToString
	flip := func(s string, i int) string {
		b := dec(s)
		if len(b) == 0 {
			return "AA"
		}
		b[i%len(b)] ^= 1
		return enc(b)
	}
	join := func(q ...string) string { return strings.Join(q, ".") }
	hdr := dec(p[0])
	tag := dec(p[4])
	return map[string]string{
		"tag truncated by 1":     join(p[0], p[1], p[2], p[3], enc(tag[:len(tag)-1])),
		"tag truncated by 4":     join(p[0], p[1], p[2], p[3], enc(tag[:len(tag)-4])),
		"tag truncated by 8":     join(p[0], p[1], p[2], p[3], enc(tag[:len(tag)-8])),
		"tag too long":           join(p[0], p[1], p[2], p[3], enc(append(slices.Clone(tag), 0))),
		"tag missing":            join(p[0], p[1], p[2], p[3], ""),
		"tag modified at end":    join(p[0], p[1], p[2], p[3], flip(p[4], len(tag)-1)),
		"ciphertext modified":    join(p[0], p[1], p[2], flip(p[3], 0), p[4]),
		"ciphertext missing":     join(p[0], p[1], p[2], "", p[4]),
		"IV modified":            join(p[0], p[1], flip(p[2], 0), p[3], p[4]),
		"IV missing":             join(p[0], p[1], "", p[3], p[4]),
		"encrypted key modified": join(p[0], flip(p[1], 3), p[2], p[3], p[4]),
		"header modified":        join(enc(bytes.Replace(hdr, []byte(`"alg"`), []byte(`"Alg"`), 1)), p[1], p[2], p[3], p[4]),
		"header missing":         join("", p[1], p[2], p[3], p[4]),
		"separator missing":      join(p[0], p[1], p[2], p[3]+p[4]),
	}
}

func TestWycheproofJWE(t *testing.T) {
	fleet := newTestFleet(t)
	for _, name := range []string{"json_web_encryption_test.json", "json_web_crypto_test.json"} {
		t.Run(strings.TrimSuffix(name, "_test.json"), func(t *testing.T) {
			var file wpJOSEFile
			wpRead(t, name, &file)
			var c, mutations wpTally
			var invalidCurveEPK json.RawMessage
			var inProfileValid []string
			var key any
			n, verifierRefused := 0, 0
			for _, g := range file.TestGroups {
				key = nil
				if jwks := wpJWKs(t, g.Private); len(jwks) == 1 {
					var jwk jose.JSONWebKey
					if err := jwk.UnmarshalJSON(jwks[0]); err == nil {
						key = jwk.Key
					}
				}
				// A whole verifier whose cloud key is the group's key, when
				// d2c can hold it: no vector carries d2c's cty, nor a
				// signed envelope inside, so all are refused.
				var v *Verifier
				if k, ok := key.(*ecdsa.PrivateKey); ok && k.Curve == elliptic.P256() {
					v = fleet.verifier(func(cfg *VerifierConfig) { cfg.DecryptionKey = k })
				}
				for _, tc := range g.Tests {
					if tc.JWE == nil {
						continue // a JWS vector of json_web_crypto: TestWycheproofJWS
					}
					n++
					compact := wpCompact(tc.JWE)
					h := wpHeader(compact)
					alg, _ := h["alg"].(string)
					encAlg, _ := h["enc"].(string)
					inProfile := (alg == string(jose.ECDH_ES_A256KW) || alg == string(jose.DIRECT)) && encAlg == string(jose.A256GCM)
					pt, err := wpDecryptJWE(compact, key)
					if err == nil && tc.PT != "" && hex.EncodeToString(pt) != tc.PT {
						err = fmt.Errorf("%w: decrypted %x, want %s", wire.ErrDecrypt, pt, tc.PT)
					}
					c.record(t, tc.TcID, tc.Comment, tc.Result, inProfile, true, err)
					if tc.Result == "valid" && inProfile && err == nil && strings.Count(compact, ".") == 4 {
						inProfileValid = append(inProfileValid, compact)
					}
					if strings.Contains(tc.Comment, "InvalidCurvePoint") && h != nil {
						invalidCurveEPK, _ = json.Marshal(h["epk"])
					}
					if v != nil {
						if _, err := v.Verify(t.Context(), wire.TelemetryTopic("dev-w", "s"), []byte(compact)); err == nil {
							t.Errorf("tcId %d: a Verifier accepted a Wycheproof JWE", tc.TcID)
						} else {
							fzErrIs(t, err, fzVerifyErrors...)
							verifierRefused++
						}
					}
				}
			}
			t.Logf("%s: %d JWE vectors: %s; a Verifier with the P-256 key of the vector's group refused all %d it was given", name, n, &c, verifierRefused)
			if name != "json_web_encryption_test.json" {
				return
			}
			if len(inProfileValid) == 0 {
				t.Fatal("no valid vector within d2c's profile (ECDH-ES+A256KW or dir, A256GCM)")
			}
			// Wycheproof's mutations on the vectors within d2c's profile,
			// decrypted with the P-256 key of their group.
			cloud := wpECDHKey(t, file)
			for _, compact := range inProfileValid {
				for what, m := range wpJWEMutations(compact) {
					_, err := wpDecryptJWE(m, cloud)
					mutations.record(t, 0, what, "invalid", true, true, err)
				}
				// An invalid curve point as the ephemeral key, under
				// d2c's algorithms.
				if invalidCurveEPK != nil {
					hdr, _ := json.Marshal(map[string]any{"alg": jose.ECDH_ES_A256KW, "enc": jose.A256GCM, "cty": wire.TelemetryType,
						"epk": invalidCurveEPK})
					p := strings.Split(compact, ".")
					m := strings.Join(append([]string{base64.RawURLEncoding.EncodeToString(hdr)}, p[1:]...), ".")
					_, err := wpDecryptJWE(m, cloud)
					mutations.record(t, 0, "invalid curve point in epk", "invalid", true, true, err)
				}
			}
			t.Logf("%s: Wycheproof mutations of the %d vector(s) within d2c's profile: %s", name, len(inProfileValid), &mutations)
		})
	}
}

// wpECDHKey returns the P-256 private key of the group of
// json_web_encryption whose key is "kid-ec-decrypt".
func wpECDHKey(t *testing.T, file wpJOSEFile) *ecdsa.PrivateKey {
	t.Helper()
	for _, g := range file.TestGroups {
		var jwk jose.JSONWebKey
		if jwk.UnmarshalJSON(g.Private) != nil {
			continue
		}
		if k, ok := jwk.Key.(*ecdsa.PrivateKey); ok && k.Curve == elliptic.P256() {
			return k
		}
	}
	t.Fatal("no P-256 decryption key in the JWE vectors")
	return nil
}

// wpSigFile is the shape of the raw signature vector files.
type wpSigFile struct {
	NumberOfTests int `json:"numberOfTests"`
	TestGroups    []struct {
		PublicKeyDer string `json:"publicKeyDer"`
		Sha          string `json:"sha"`
		Tests        []struct {
			TcID    int      `json:"tcId"`
			Comment string   `json:"comment"`
			Msg     string   `json:"msg"`
			Sig     string   `json:"sig"`
			Result  string   `json:"result"`
			Flags   []string `json:"flags"`
		} `json:"tests"`
	} `json:"testGroups"`
}

// wpDERToJWS converts an ASN.1 DER ECDSA signature to its JWS form, the
// 64-byte r || s of RFC 7518 section 3.4. Anything that is not strict DER
// of two non-negative integers of at most 256 bits has no JWS form.
func wpDERToJWS(der []byte) ([]byte, error) {
	var sig struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, errors.New("trailing data after the signature")
	}
	if again, err := asn1.Marshal(sig); err != nil || !bytes.Equal(again, der) {
		return nil, errors.New("not DER")
	}
	if sig.R.Sign() < 0 || sig.S.Sign() < 0 || sig.R.BitLen() > 256 || sig.S.BitLen() > 256 {
		return nil, errors.New("r or s out of range for ES256")
	}
	out := make([]byte, 64)
	sig.R.FillBytes(out[:32])
	sig.S.FillBytes(out[32:])
	return out, nil
}

// wpCheckSignature is the check of the JWS path once go-jose has parsed the
// envelope and verifyJWS has bound the algorithm to the key: go-jose v4's
// ES256 verifier (signature exactly 64 bytes, r and s big-endian, ECDSA over
// SHA-256 of the signing input) and its EdDSA verifier (ed25519.Verify).
func wpCheckSignature(pub crypto.PublicKey, input, sig []byte) error {
	alg, err := identity.JWSAlgorithm(pub)
	if err != nil {
		return fmt.Errorf("%w: %v", wire.ErrBadSignature, err)
	}
	switch jose.SignatureAlgorithm(alg) {
	case jose.ES256:
		if len(sig) != 64 {
			return fmt.Errorf("%w: %d-byte ES256 signature", wire.ErrBadSignature, len(sig))
		}
		d := sha256.Sum256(input)
		if !ecdsa.Verify(pub.(*ecdsa.PublicKey), d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			return wire.ErrBadSignature
		}
	case jose.EdDSA:
		if !ed25519.Verify(pub.(ed25519.PublicKey), input, sig) {
			return wire.ErrBadSignature
		}
	}
	return nil
}

func TestWycheproofSignatures(t *testing.T) {
	for _, tf := range []struct {
		name string
		der  bool // signatures in ASN.1 DER, converted to the JWS form
	}{
		{"ecdsa_secp256r1_sha256_test.json", true},
		{"ecdsa_secp256r1_sha256_p1363_test.json", false},
		{"ed25519_test.json", false},
	} {
		t.Run(strings.TrimSuffix(tf.name, "_test.json"), func(t *testing.T) {
			var file wpSigFile
			wpRead(t, tf.name, &file)
			var c wpTally
			n, notDER := 0, 0
			for _, g := range file.TestGroups {
				if g.Sha != "" && g.Sha != "SHA-256" {
					t.Fatalf("group hash %s", g.Sha)
				}
				der, err := hex.DecodeString(g.PublicKeyDer)
				if err != nil {
					t.Fatal(err)
				}
				pub, err := x509.ParsePKIXPublicKey(der)
				if err != nil {
					t.Fatalf("public key: %v", err)
				}
				for _, tc := range g.Tests {
					n++
					msg, err1 := hex.DecodeString(tc.Msg)
					sig, err2 := hex.DecodeString(tc.Sig)
					if err := errors.Join(err1, err2); err != nil {
						t.Fatal(err)
					}
					if tf.der {
						if sig, err = wpDERToJWS(sig); err != nil {
							notDER++
							c.record(t, tc.TcID, tc.Comment, tc.Result, true, true, fmt.Errorf("%w: %v", wire.ErrBadSignature, err))
							continue
						}
					}
					c.record(t, tc.TcID, tc.Comment, tc.Result, true, true, wpCheckSignature(pub, msg, sig))
				}
			}
			if tf.der {
				t.Logf("%s: %d vectors: %s (%d refused at the DER to r || s conversion)", tf.name, n, &c, notDER)
			} else {
				t.Logf("%s: %d vectors: %s", tf.name, n, &c)
			}
		})
	}
}

// TestWycheproofVerifierES256 splices the signature segment of every ES256
// vector of the JWS files onto a genuine telemetry envelope signed with the
// Wycheproof key, whose device certificate the verifier holds: the genuine
// envelope is accepted, every splice refused (special values of r and s,
// wrong lengths, signatures over other inputs).
func TestWycheproofVerifierES256(t *testing.T) {
	var file wpJOSEFile
	wpRead(t, "json_web_signature_test.json", &file)
	var key *ecdsa.PrivateKey
	for _, g := range file.TestGroups {
		var jwk jose.JSONWebKey
		if g.Comment == "es256" && jwk.UnmarshalJSON(g.Private) == nil {
			key, _ = jwk.Key.(*ecdsa.PrivateKey)
		}
	}
	if key == nil {
		t.Fatal("no es256 key in json_web_signature_test.json")
	}
	const device = "kid-ec-sign" // the vectors' kid, a valid device ID
	f := newTestFleet(t)
	der, err := identity.NewCSR(key, device)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := f.ca.IssueDevice(csr, device)
	if err != nil {
		t.Fatal(err)
	}
	f.certs.Add(cert, f.ca.Issuing())
	f.devices[device] = key
	s := f.sealer(device, nil)
	topic := wire.TelemetryTopic(device, "s")
	v := f.verifier(nil)
	genuine, err := s.Seal(Record{Stream: "s", Boot: 1, Seq: 1, Time: f.now, Readings: reading("x")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(t.Context(), topic, genuine.Envelope); err != nil {
		t.Fatalf("genuine envelope: %v", err)
	}
	prefix := genuine.Envelope[:bytes.LastIndexByte(genuine.Envelope, '.')+1] // header.payload.
	spliced := 0
	for _, g := range file.TestGroups {
		for _, tc := range g.Tests {
			compact := wpCompact(tc.JWS)
			if h := wpHeader(compact); h == nil || h["alg"] != "ES256" || strings.Count(compact, ".") != 2 {
				continue
			}
			sig := compact[strings.LastIndexByte(compact, '.')+1:]
			env := append(slices.Clone(prefix), sig...)
			v.Forget(t.Context(), device)
			_, err := v.Verify(t.Context(), topic, env)
			if err == nil {
				t.Errorf("tcId %d (%s): the vector's signature accepted on a d2c envelope", tc.TcID, tc.Comment)
				continue
			}
			fzErrIs(t, err, wire.ErrBadSignature, wire.ErrMalformed)
			spliced++
		}
	}
	t.Logf("%d ES256 signatures of json_web_signature_test.json spliced onto a d2c envelope: all refused; the genuine envelope accepted", spliced)
}

// TestWycheproofBase64Bits tries Wycheproof's "ModifiedUnusedBitsInPayload"
// case (tcId 374) on d2c's own envelopes: the last character of a base64url
// segment whose length is 2 or 3 modulo 4 carries bits that are not part of
// the content; flipping one gives other bytes that go-jose alone would still
// verify. d2c decodes segments strictly and refuses it. (A signed record can
// still have two envelopes, through the (r, n-s) form of its ECDSA
// signature: nothing keys on envelope bytes; see TestMalleatedSignature.)
func TestWycheproofBase64Bits(t *testing.T) {
	f := newTestFleet(t)
	f.device("dev-a", identity.ECDSAP256)
	v := f.verifier(nil)
	var env []byte
	var parts []string
	for seq := uint64(1); ; seq++ { // find an envelope whose payload has unused bits
		env = sealedFor(t, f, "dev-a", seq)
		parts = strings.Split(string(env), ".")
		if len(parts[1])%4 != 0 {
			break
		}
		if seq > 16 {
			t.Fatal("no payload segment with unused bits in 16 tries")
		}
	}
	payload := parts[1]
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, payload[len(payload)-1]) ^ 1
	other := strings.Join([]string{parts[0], payload[:len(payload)-1] + alphabet[last:last+1], parts[2]}, ".")
	if _, err := v.Verify(t.Context(), wire.TelemetryTopic("dev-a", "s"), []byte(other)); !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("envelope with other unused bits: %v, want ErrMalformed", err)
	}
	if _, err := v.Verify(t.Context(), wire.TelemetryTopic("dev-a", "s"), env); err != nil {
		t.Fatalf("the original envelope: %v", err)
	}
}
