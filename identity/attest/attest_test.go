// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package attest_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/attest"
	"github.com/d2c-iot/d2c/internal/limits"
)

func TestHappyPath(t *testing.T) {
	for _, kt := range []identity.KeyType{identity.ECDSAP256, identity.Ed25519} {
		t.Run(kt.String(), func(t *testing.T) {
			f := newFixture(t)
			f.enroll("sensor-1", kt)
			nonce := f.challenge("sensor-1")
			yes, boots := true, uint64(17)
			ev := evidence(nonce)
			ev.SoftwareVersion = "1.4.2"
			ev.DebugStatus = attest.DebugDisabledSinceBoot
			ev.SecureBoot = &yes
			ev.OEM = attest.OEMID{OUI: []byte{0x00, 0x1b, 0x63}}
			ev.BootCount = &boots
			tok := f.sign("sensor-1", ev)
			f.advance(30 * time.Second)
			res, err := f.v.Verify(context.Background(), tok, attest.Policy{
				AllowDigest: attest.AllowDigests(goodDigest), SoftwareName: "acme-fw", MinSoftwareVersion: "1.4",
				RequireDebugDisabled: true, RequireSecureBoot: true})
			if err != nil {
				t.Fatal(err)
			}
			if res.DeviceID != "sensor-1" || !res.IssuedAt.Equal(t0) || res.Certificate.Subject.CommonName != "sensor-1" {
				t.Fatalf("result %+v", res)
			}
			got := res.Evidence
			if !bytes.Equal(got.Nonce, nonce) || got.SoftwareName != "acme-fw" || got.SoftwareVersion != "1.4.2" ||
				got.ImageDigest != goodDigest || got.DebugStatus != attest.DebugDisabledSinceBoot ||
				got.SecureBoot == nil || !*got.SecureBoot || !bytes.Equal(got.OEM.OUI, ev.OEM.OUI) ||
				got.BootCount == nil || *got.BootCount != 17 {
				t.Fatalf("evidence %+v, want %+v", got, ev)
			}
		})
	}
}

// TestWireFormat pins the header and claims set of the d2c profile.
func TestWireFormat(t *testing.T) {
	f := newFixture(t, "sensor-1")
	nonce := f.challenge("sensor-1")
	no := false
	ev := evidence(nonce)
	ev.DebugStatus = attest.DebugDisabledPermanently
	ev.SecureBoot = &no
	ev.OEM = attest.OEMID{PEN: 32473}
	tok := f.sign("sensor-1", ev)
	parts := strings.Split(string(tok), ".")
	if len(parts) != 3 {
		t.Fatalf("%d parts", len(parts))
	}
	var hdr, body map[string]any
	for i, v := range []*map[string]any{&hdr, &body} {
		b, err := b64.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatal(err)
		}
	}
	kid, _ := identity.KeyID(f.key("sensor-1").Public())
	if want := (map[string]any{"alg": "ES256", "kid": kid, "typ": "eat+jwt"}); !jsonEqual(t, hdr, want) {
		t.Errorf("header %v, want %v", hdr, want)
	}
	want := map[string]any{
		"eat_profile":      "tag:d2c-iot.github.io,2026:eat-profile-1",
		"eat_nonce":        b64.EncodeToString(nonce),
		"sub":              "sensor-1",
		"iat":              t0.Unix(),
		"swname":           "acme-fw",
		"swversion":        []any{"42", 1},
		"d2c_image_digest": []any{"SHA-256", b64.EncodeToString(goodDigest[:])},
		"dbgstat":          "disabled-permanently",
		"oemboot":          false,
		"oemid":            32473,
	}
	if !jsonEqual(t, body, want) {
		t.Errorf("claims %v, want %v", body, want)
	}
	if _, err := f.verify(tok); err != nil {
		t.Fatal(err)
	}
}

func jsonEqual(t *testing.T, a, b any) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(mustJSON(t, a), &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(mustJSON(t, b), &y); err != nil {
		t.Fatal(err)
	}
	return string(mustJSON(t, x)) == string(mustJSON(t, y))
}

func TestReplay(t *testing.T) {
	t.Run("same token twice", func(t *testing.T) {
		f := newFixture(t, "sensor-1")
		tok := f.attest("sensor-1")
		if _, err := f.verify(tok); err != nil {
			t.Fatal(err)
		}
		_, err := f.verify(tok)
		mustRefuse(t, err, attest.ErrReplay)
	})
	t.Run("nonce never issued", func(t *testing.T) {
		f := newFixture(t, "sensor-1")
		f.challenge("sensor-1")
		_, err := f.verify(f.sign("sensor-1", evidence(bytes.Repeat([]byte{7}, 32))))
		mustRefuse(t, err, attest.ErrReplay)
	})
	t.Run("nonce expired", func(t *testing.T) {
		f := newFixture(t, "sensor-1")
		tok := f.attest("sensor-1")
		f.advance(attest.DefaultNonceTTL)
		_, err := f.verify(tok)
		mustRefuse(t, err, attest.ErrReplay, attest.ErrExpired)
		// It is gone, not merely late.
		f.advance(-attest.DefaultNonceTTL)
		_, err = f.verify(tok)
		mustRefuse(t, err, attest.ErrReplay)
	})
	t.Run("nonce evicted", func(t *testing.T) {
		f := newFixture(t, "sensor-1")
		tok := f.attest("sensor-1")
		for range limits.AttestationNoncesPerDevice {
			f.challenge("sensor-1")
		}
		_, err := f.verify(tok)
		mustRefuse(t, err, attest.ErrReplay)
	})
	t.Run("concurrent", func(t *testing.T) {
		f := newFixture(t, "sensor-1")
		tok := f.attest("sensor-1")
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Go(func() { _, errs[i] = f.verify(tok) })
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			} else {
				mustRefuse(t, err, attest.ErrReplay)
			}
		}
		if ok != 1 {
			t.Fatalf("%d of %d concurrent verifications accepted, want 1", ok, len(errs))
		}
	})
}

func TestOtherDevice(t *testing.T) {
	t.Run("answers another device's challenge", func(t *testing.T) {
		f := newFixture(t, "sensor-a", "sensor-b")
		nonceA := f.challenge("sensor-a")
		_, err := f.verify(f.sign("sensor-b", evidence(nonceA)))
		mustRefuse(t, err, attest.ErrWrongDevice)
		// The refusal did not burn A's challenge.
		if _, err := f.verify(f.sign("sensor-a", evidence(nonceA))); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("claims another device with its own key", func(t *testing.T) {
		f := newFixture(t, "sensor-a", "sensor-b")
		nonceA := f.challenge("sensor-a")
		tok, err := attest.Sign(f.key("sensor-b"), "sensor-a", evidence(nonceA), t0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.verify(tok)
		mustRefuse(t, err, attest.ErrSignature)
	})
	t.Run("claims another device and its kid", func(t *testing.T) {
		f := newFixture(t, "sensor-a", "sensor-b")
		nonceA := f.challenge("sensor-a")
		forged := liar{Signer: f.key("sensor-b"), pub: f.key("sensor-a").Public()}
		tok, err := attest.Sign(forged, "sensor-a", evidence(nonceA), t0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.verify(tok)
		mustRefuse(t, err, attest.ErrSignature)
	})
	t.Run("certificate registered under another device", func(t *testing.T) {
		f := newFixture(t, "sensor-a", "sensor-b")
		f.mu.Lock()
		f.certs["sensor-a"] = f.certs["sensor-b"] // a registry mix-up
		f.mu.Unlock()
		nonceA := f.challenge("sensor-a")
		tok, err := attest.Sign(f.key("sensor-b"), "sensor-a", evidence(nonceA), t0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.verify(tok)
		mustRefuse(t, err, attest.ErrWrongDevice)
	})
	t.Run("unknown device", func(t *testing.T) {
		f := newFixture(t, "sensor-a")
		f.enroll("ghost", identity.ECDSAP256)
		tok := f.attest("ghost")
		f.mu.Lock()
		delete(f.certs, "ghost")
		f.mu.Unlock()
		_, err := f.verify(tok)
		mustRefuse(t, err, attest.ErrUnknownDevice)
	})
}

// liar signs with one key and claims another's public key.
type liar struct {
	crypto.Signer
	pub crypto.PublicKey
}

func (l liar) Public() crypto.PublicKey { return l.pub }

func TestCertificate(t *testing.T) {
	t.Run("revoked", func(t *testing.T) {
		f := newFixture(t, "sensor-1")
		tok := f.attest("sensor-1")
		f.mu.Lock()
		leaf := f.certs["sensor-1"][0][0]
		f.mu.Unlock()
		if err := f.ca.Revoke(leaf, 1); err != nil {
			t.Fatal(err)
		}
		_, err := f.verify(tok)
		mustRefuse(t, err, identity.ErrRevoked)
	})
	t.Run("expired", func(t *testing.T) {
		f := newFixture(t, "sensor-1")
		f.advance(-100 * 24 * time.Hour)
		f.enroll("sensor-1", identity.ECDSAP256) // 90 days
		f.advance(100 * 24 * time.Hour)
		_, err := f.verify(f.attest("sensor-1"))
		mustRefuse(t, err, identity.ErrCertExpired)
	})
	t.Run("untrusted", func(t *testing.T) {
		f := newFixture(t, "sensor-1")
		other := newFixture(t, "sensor-1") // another fleet's CA, same device ID
		f.mu.Lock()
		f.certs["sensor-1"] = other.certs["sensor-1"]
		f.keys["sensor-1"] = other.keys["sensor-1"]
		f.mu.Unlock()
		_, err := f.verify(f.attest("sensor-1"))
		mustRefuse(t, err, identity.ErrUntrusted)
	})
	t.Run("renewed: old and new keys both verify", func(t *testing.T) {
		f := newFixture(t, "sensor-1")
		old := f.key("sensor-1")
		tokOld, err := attest.Sign(old, "sensor-1", evidence(f.challenge("sensor-1")), t0)
		if err != nil {
			t.Fatal(err)
		}
		f.enroll("sensor-1", identity.Ed25519)
		if _, err := f.verify(tokOld); err != nil {
			t.Fatal(err)
		}
		if _, err := f.verify(f.attest("sensor-1")); err != nil {
			t.Fatal(err)
		}
	})
}

func TestIssuedAt(t *testing.T) {
	for name, at := range map[string]time.Duration{
		"in the future":        attest.DefaultClockSkew + time.Second,
		"before the challenge": -attest.DefaultClockSkew - time.Second,
		"in 1970":              -time.Duration(t0.Unix()-1) * time.Second,
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, "sensor-1")
			ev := evidence(f.challenge("sensor-1"))
			tok, err := attest.Sign(f.key("sensor-1"), "sensor-1", ev, t0.Add(at))
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.verify(tok)
			mustRefuse(t, err, attest.ErrExpired)
		})
	}
}

func TestPolicy(t *testing.T) {
	enabled := func(ev *attest.Evidence) { ev.DebugStatus = attest.DebugEnabled }
	v43 := func(ev *attest.Evidence) { ev.SoftwareVersion = "43" }
	for _, tc := range []struct {
		name   string
		policy attest.Policy
		edit   func(*attest.Evidence)
		ok     bool
	}{
		{"digest not allowed", attest.Policy{AllowDigest: attest.AllowDigests(sha256.Sum256([]byte("other")))}, nil, false},
		{"no digests configured", attest.Policy{}, nil, false},
		{"digest refused for this device", attest.Policy{AllowDigest: func(d string, _ [32]byte) bool { return d != "sensor-1" }}, nil, false},
		{"version below minimum", attest.Policy{AllowDigest: attest.AllowDigests(goodDigest), MinSoftwareVersion: "42.0.1"}, nil, false},
		{"version at minimum", attest.Policy{AllowDigest: attest.AllowDigests(goodDigest), MinSoftwareVersion: "42.0"}, nil, true},
		{"version above minimum", attest.Policy{AllowDigest: attest.AllowDigests(goodDigest), MinSoftwareVersion: "9.99"}, v43, true},
		{"other software", attest.Policy{AllowDigest: attest.AllowDigests(goodDigest), SoftwareName: "other-fw"}, nil, false},
		{"debug not reported", attest.Policy{AllowDigest: attest.AllowDigests(goodDigest), RequireDebugDisabled: true}, nil, false},
		{"debug enabled", attest.Policy{AllowDigest: attest.AllowDigests(goodDigest), RequireDebugDisabled: true}, enabled, false},
		{"secure boot not reported", attest.Policy{AllowDigest: attest.AllowDigests(goodDigest), RequireSecureBoot: true}, nil, false},
		{"secure boot false", attest.Policy{AllowDigest: attest.AllowDigests(goodDigest), RequireSecureBoot: true}, func(ev *attest.Evidence) {
			no := false
			ev.SecureBoot, ev.OEM = &no, attest.OEMID{PEN: 1}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "sensor-1")
			ev := evidence(f.challenge("sensor-1"))
			if tc.edit != nil {
				tc.edit(&ev)
			}
			_, err := f.v.Verify(context.Background(), f.sign("sensor-1", ev), tc.policy)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			mustRefuse(t, err, attest.ErrPolicy)
		})
	}
	t.Run("invalid minimum version", func(t *testing.T) {
		f := newFixture(t, "sensor-1")
		_, err := f.v.Verify(context.Background(), f.attest("sensor-1"),
			attest.Policy{AllowDigest: attest.AllowDigests(goodDigest), MinSoftwareVersion: "v1"})
		if err == nil {
			t.Fatal("accepted")
		}
	})
}

// TestRefusedForms presents tokens whose form is wrong, each signed
// correctly by the device for a live challenge, so only the flaw under
// test can cause the refusal.
func TestRefusedForms(t *testing.T) {
	type mk func(f *fixture, key crypto.Signer, nonce []byte) []byte
	// build signs the (altered) header and claims with the device key.
	build := func(editH func(map[string]any), editC func(map[string]any)) mk {
		return func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			h, c := header(f.tb, key), claims("sensor-1", nonce, t0)
			if editH != nil {
				editH(h)
			}
			if editC != nil {
				editC(c)
			}
			return signRaw(f.tb, key, mustJSON(f.tb, h), mustJSON(f.tb, c))
		}
	}
	// rawClaims signs literal claims JSON, for what a map cannot express.
	rawClaims := func(tmpl string) mk {
		return func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			c := strings.ReplaceAll(tmpl, "NONCE", b64.EncodeToString(nonce))
			c = strings.ReplaceAll(c, "DIGEST", b64.EncodeToString(goodDigest[:]))
			return signRaw(f.tb, key, mustJSON(f.tb, header(f.tb, key)), []byte(c))
		}
	}
	const base = `"eat_profile":"tag:d2c-iot.github.io,2026:eat-profile-1","eat_nonce":"NONCE","sub":"sensor-1",` +
		`"swname":"acme-fw","swversion":["42",1],"d2c_image_digest":["SHA-256","DIGEST"]`
	set := func(k string, v any) func(map[string]any) { return func(m map[string]any) { m[k] = v } }
	del := func(k string) func(map[string]any) { return func(m map[string]any) { delete(m, k) } }

	for _, tc := range []struct {
		name string
		make mk
		want error
	}{
		{"control: well formed", build(nil, nil), nil},
		{"control: pretty-printed, escaped, reordered", rawClaims("{\n  \"iat\" : 1793534400,\n  \"sw\\u006eame\": \"acme-fw\",\n  " +
			strings.ReplaceAll(strings.Replace(base, `"swname":"acme-fw",`, "", 1), `",`, "\",\n  ") + "\n}\n"), nil},
		{"alg none", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			h := header(f.tb, key)
			h["alg"] = "none"
			return []byte(b64.EncodeToString(mustJSON(f.tb, h)) + "." +
				b64.EncodeToString(mustJSON(f.tb, claims("sensor-1", nonce, t0))) + ".")
		}, attest.ErrMalformed},
		{"HS256 keyed with the public key", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			h := header(f.tb, key)
			h["alg"] = "HS256"
			input := b64.EncodeToString(mustJSON(f.tb, h)) + "." + b64.EncodeToString(mustJSON(f.tb, claims("sensor-1", nonce, t0)))
			spki, err := x509.MarshalPKIXPublicKey(key.Public())
			if err != nil {
				f.tb.Fatal(err)
			}
			mac := hmac.New(sha256.New, spki)
			mac.Write([]byte(input))
			return []byte(input + "." + b64.EncodeToString(mac.Sum(nil)))
		}, attest.ErrMalformed},
		{"RS256", build(set("alg", "RS256"), nil), attest.ErrMalformed},
		{"typ JWT", build(set("typ", "JWT"), nil), attest.ErrMalformed},
		{"typ with application/ prefix", build(set("typ", "application/eat+jwt"), nil), attest.ErrMalformed},
		{"no typ", build(del("typ"), nil), attest.ErrMalformed},
		{"no kid", build(del("kid"), nil), attest.ErrMalformed},
		{"embedded jwk", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
				(&jose.SignerOptions{EmbedJWK: true}).WithType(attest.TokenType))
			if err != nil {
				f.tb.Fatal(err)
			}
			jws, err := s.Sign(mustJSON(f.tb, claims("sensor-1", nonce, t0)))
			if err != nil {
				f.tb.Fatal(err)
			}
			out, err := jws.CompactSerialize()
			if err != nil {
				f.tb.Fatal(err)
			}
			return []byte(out)
		}, attest.ErrMalformed},
		{"x5u header", build(set("x5u", "https://attacker.example/cert.pem"), nil), attest.ErrMalformed},
		{"crit header", build(set("crit", []string{"b64"}), nil), attest.ErrMalformed},
		{"JSON serialization", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			parts := strings.Split(string(build(nil, nil)(f, key, nonce)), ".")
			return mustJSON(f.tb, map[string]string{"protected": parts[0], "payload": parts[1], "signature": parts[2]})
		}, attest.ErrMalformed},
		{"whitespace", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			return append([]byte(" "), build(nil, nil)(f, key, nonce)...)
		}, attest.ErrMalformed},
		{"padded base64", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			return append(build(nil, nil)(f, key, nonce), '=')
		}, attest.ErrMalformed},
		{"non-canonical base64 (spare bits set)", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			tok := build(nil, nil)(f, key, nonce)
			const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
			last := strings.IndexByte(alphabet, tok[len(tok)-1])
			tok[len(tok)-1] = alphabet[last^1] // 64 bytes end in a character with 4 spare bits
			return tok
		}, attest.ErrMalformed},
		{"unknown claim", build(nil, set("exp", t0.Add(time.Hour).Unix())), attest.ErrMalformed},
		{"ueid (not in the profile)", build(nil, set("ueid", "AQIDBAUGBwgJ")), attest.ErrMalformed},
		{"duplicate claim", rawClaims(`{` + base + `,"iat":1793534400,"sub":"sensor-2"}`), attest.ErrMalformed},
		{"duplicate claim, escaped name", rawClaims(`{` + base + `,"iat":1793534400,"s\u0075b":"sensor-2"}`), attest.ErrMalformed},
		{"trailing data", rawClaims(`{` + base + `,"iat":1793534400}{}`), attest.ErrMalformed},
		{"floating-point iat", rawClaims(`{` + base + `,"iat":1793534400.5}`), attest.ErrMalformed},
		{"exponent iat", rawClaims(`{` + base + `,"iat":1.7935344e9}`), attest.ErrMalformed},
		{"string iat", build(nil, set("iat", "1793534400")), attest.ErrMalformed},
		{"no iat", build(nil, del("iat")), attest.ErrMalformed},
		{"null sub", build(nil, set("sub", nil)), attest.ErrMalformed},
		{"invalid sub", build(nil, set("sub", "sensor/1")), attest.ErrMalformed},
		{"no nonce", build(nil, del("eat_nonce")), attest.ErrMalformed},
		{"nonce array", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			return build(nil, set("eat_nonce", []string{b64.EncodeToString(nonce), b64.EncodeToString(nonce)}))(f, key, nonce)
		}, attest.ErrMalformed},
		{"short nonce", build(nil, set("eat_nonce", b64.EncodeToString(make([]byte, 8)))), attest.ErrMalformed},
		{"other profile", build(nil, set("eat_profile", "urn:ietf:rfc:rfc9711")), attest.ErrMalformed},
		{"no profile", build(nil, del("eat_profile")), attest.ErrMalformed},
		{"swversion without scheme", build(nil, set("swversion", []any{"42"})), attest.ErrMalformed},
		{"swversion semver", build(nil, set("swversion", []any{"1.2.3", 16384})), attest.ErrMalformed},
		{"swversion not numeric", build(nil, set("swversion", []any{"1.2-rc1", 1})), attest.ErrMalformed},
		{"no swname", build(nil, del("swname")), attest.ErrMalformed},
		{"swname too long", build(nil, set("swname", strings.Repeat("x", limits.AttestationText+1))), attest.ErrMalformed},
		{"digest SHA-1", build(nil, set("d2c_image_digest", []any{"SHA-1", b64.EncodeToString(goodDigest[:20])})), attest.ErrMalformed},
		{"digest short", build(nil, set("d2c_image_digest", []any{"SHA-256", b64.EncodeToString(goodDigest[:31])})), attest.ErrMalformed},
		{"digest bare", build(nil, set("d2c_image_digest", b64.EncodeToString(goodDigest[:]))), attest.ErrMalformed},
		{"dbgstat as CBOR integer", build(nil, set("dbgstat", 1)), attest.ErrMalformed},
		{"dbgstat unknown", build(nil, set("dbgstat", "off")), attest.ErrMalformed},
		{"oemboot without oemid", build(nil, set("oemboot", true)), attest.ErrMalformed},
		{"oemid random form", build(nil, func(m map[string]any) {
			m["oemboot"], m["oemid"] = true, b64.EncodeToString(make([]byte, 16))
		}), attest.ErrMalformed},
		{"negative bootcount", build(nil, set("bootcount", -1)), attest.ErrMalformed},
		{"not JSON", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			return signRaw(f.tb, key, mustJSON(f.tb, header(f.tb, key)), []byte("not json"))
		}, attest.ErrMalformed},
		{"invalid UTF-8", rawClaims(`{` + base + `,"iat":1793534400,"dbgstat":"dis` + "\xff" + `abled"}`), attest.ErrMalformed},
		{"tampered payload", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			parts := strings.Split(string(build(nil, nil)(f, key, nonce)), ".")
			c := claims("sensor-1", nonce, t0)
			c["swversion"] = []any{"43", 1}
			parts[1] = b64.EncodeToString(mustJSON(f.tb, c))
			return []byte(strings.Join(parts, "."))
		}, attest.ErrSignature},
		{"tampered signature", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			tok := build(nil, nil)(f, key, nonce)
			i := len(tok) - 10
			tok[i] ^= 'A' ^ 'B'
			if !isB64(tok[i]) {
				tok[i] = 'A'
			}
			return tok
		}, attest.ErrSignature},
		{"ES256 header on an Ed25519 key", func(f *fixture, _ crypto.Signer, nonce []byte) []byte {
			key := f.enroll("sensor-1", identity.Ed25519)
			return build(set("alg", "ES256"), nil)(f, key, nonce)
		}, attest.ErrSignature},
		{"oversized", func(f *fixture, key crypto.Signer, nonce []byte) []byte {
			return build(nil, set("padding", strings.Repeat("x", limits.AttestationToken)))(f, key, nonce)
		}, attest.ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "sensor-1")
			nonce := f.challenge("sensor-1")
			tok := tc.make(f, f.key("sensor-1"), nonce)
			_, err := f.verify(tok)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			mustRefuse(t, err, tc.want)
			// A token refused before its nonce is checked leaves the
			// challenge usable.
			if _, err := f.verify(f.sign("sensor-1", evidence(nonce))); err != nil {
				t.Fatalf("challenge burnt by a refused token: %v", err)
			}
		})
	}
}

func isB64(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

func TestSignRefusesInvalidEvidence(t *testing.T) {
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	for name, edit := range map[string]func(*attest.Evidence){
		"short nonce":             func(ev *attest.Evidence) { ev.Nonce = ev.Nonce[:15] },
		"long nonce":              func(ev *attest.Evidence) { ev.Nonce = make([]byte, 65) },
		"no software name":        func(ev *attest.Evidence) { ev.SoftwareName = "" },
		"control character":       func(ev *attest.Evidence) { ev.SoftwareName = "fw\n" },
		"version with letters":    func(ev *attest.Evidence) { ev.SoftwareVersion = "v1" },
		"version leading zero":    func(ev *attest.Evidence) { ev.SoftwareVersion = "1.02" },
		"version empty part":      func(ev *attest.Evidence) { ev.SoftwareVersion = "1..2" },
		"zero digest":             func(ev *attest.Evidence) { ev.ImageDigest = [32]byte{} },
		"debug status out of set": func(ev *attest.Evidence) { ev.DebugStatus = 6 },
		"oemboot without oemid":   func(ev *attest.Evidence) { ev.SecureBoot = &yes },
		"permanent debug without oemid": func(ev *attest.Evidence) {
			ev.DebugStatus = attest.DebugDisabledPermanently
		},
		"OUI of 4 bytes": func(ev *attest.Evidence) { ev.OEM.OUI = []byte{1, 2, 3, 4} },
		"PEN and OUI":    func(ev *attest.Evidence) { ev.OEM = attest.OEMID{PEN: 1, OUI: []byte{1, 2, 3}} },
	} {
		t.Run(name, func(t *testing.T) {
			ev := evidence(bytes.Repeat([]byte{1}, 32))
			edit(&ev)
			_, err := attest.Sign(key, "sensor-1", ev, t0)
			mustRefuse(t, err, attest.ErrMalformed)
		})
	}
	if _, err := attest.Sign(key, "sensor/1", evidence(bytes.Repeat([]byte{1}, 32)), t0); !errors.Is(err, identity.ErrInvalidDeviceID) {
		t.Errorf("invalid device ID: %v", err)
	}
	if _, err := attest.Sign(key, "sensor-1", evidence(bytes.Repeat([]byte{1}, 32)), time.Unix(0, 0)); err == nil {
		t.Error("signed at the epoch")
	}
}

func TestNewVerifierConfig(t *testing.T) {
	f := newFixture(t)
	good := attest.VerifierConfig{Certificates: attest.CertificatesFunc(f.lookup), CertPolicy: identity.DeviceCertPolicy{Roots: f.roots}}
	if _, err := attest.NewVerifier(good); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(*attest.VerifierConfig){
		"no certificates":  func(c *attest.VerifierConfig) { c.Certificates = nil },
		"no roots":         func(c *attest.VerifierConfig) { c.CertPolicy.Roots = nil },
		"negative TTL":     func(c *attest.VerifierConfig) { c.NonceTTL = -time.Second },
		"TTL over maximum": func(c *attest.VerifierConfig) { c.NonceTTL = attest.MaxNonceTTL + time.Second },
		"nonce too short":  func(c *attest.VerifierConfig) { c.NonceSize = 8 },
		"nonce too long":   func(c *attest.VerifierConfig) { c.NonceSize = 65 },
		"negative skew":    func(c *attest.VerifierConfig) { c.ClockSkew = -time.Second },
	} {
		t.Run(name, func(t *testing.T) {
			c := good
			edit(&c)
			if _, err := attest.NewVerifier(c); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	v, err := attest.NewVerifier(good)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Challenge(context.Background(), "bad/id"); !errors.Is(err, identity.ErrInvalidDeviceID) {
		t.Errorf("challenge for an invalid device ID: %v", err)
	}
	n, err := v.Challenge(context.Background(), "sensor-1")
	if err != nil || len(n) != attest.DefaultNonceSize {
		t.Errorf("challenge: %d bytes, %v", len(n), err)
	}
}

func TestMemoryNonceStore(t *testing.T) {
	ctx := context.Background()
	exp := t0.Add(time.Minute)
	t.Run("per-device bound evicts the oldest", func(t *testing.T) {
		s := attest.NewMemoryNonceStore(2, 10)
		for _, n := range []string{"n1", "n2", "n3"} {
			if err := s.Issue(ctx, "a", n, t0, exp); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Issue(ctx, "b", "m1", t0, exp); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Consume(ctx, "a", "n1", t0); !errors.Is(err, attest.ErrReplay) {
			t.Errorf("evicted nonce: %v", err)
		}
		for _, n := range []string{"n2", "n3"} {
			if _, err := s.Consume(ctx, "a", n, t0); err != nil {
				t.Errorf("%s: %v", n, err)
			}
		}
		if s.Len() != 1 {
			t.Errorf("Len %d, want 1", s.Len())
		}
	})
	t.Run("total bound refuses, expiry frees", func(t *testing.T) {
		s := attest.NewMemoryNonceStore(1, 3)
		for i, d := range []string{"a", "b", "c"} {
			if err := s.Issue(ctx, d, "n"+d, t0.Add(time.Duration(i)*time.Second), exp); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Issue(ctx, "d", "nd", t0, exp); !errors.Is(err, attest.ErrTooManyChallenges) {
			t.Fatalf("over the total bound: %v", err)
		}
		if err := s.Issue(ctx, "d", "nd", exp, exp.Add(time.Minute)); err != nil {
			t.Fatalf("after expiry: %v", err)
		}
		if s.Len() != 1 {
			t.Errorf("Len %d, want 1 after the sweep", s.Len())
		}
	})
	t.Run("wrong device leaves the nonce", func(t *testing.T) {
		s := attest.NewMemoryNonceStore(0, 0)
		if err := s.Issue(ctx, "a", "n", t0, exp); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Consume(ctx, "b", "n", t0); !errors.Is(err, attest.ErrWrongDevice) {
			t.Fatalf("wrong device: %v", err)
		}
		if issued, err := s.Consume(ctx, "a", "n", t0); err != nil || !issued.Equal(t0) {
			t.Fatalf("right device: %v, %v", issued, err)
		}
	})
	t.Run("duplicate issue", func(t *testing.T) {
		s := attest.NewMemoryNonceStore(0, 0)
		if err := s.Issue(ctx, "a", "n", t0, exp); err != nil {
			t.Fatal(err)
		}
		if err := s.Issue(ctx, "b", "n", t0, exp); err == nil {
			t.Fatal("a nonce issued twice")
		}
	})
	t.Run("context", func(t *testing.T) {
		s := attest.NewMemoryNonceStore(0, 0)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.Issue(cctx, "a", "n", t0, exp); !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	})
}

// TestNoKeyFromToken checks that a key or certificate carried in a token is
// never used: a jwk header fails even when it is the device's own key.
func TestNoKeyFromToken(t *testing.T) {
	f := newFixture(t, "sensor-1")
	key := f.key("sensor-1")
	h := header(t, key)
	h["jwk"] = json.RawMessage(mustJSON(t, jose.JSONWebKey{Key: key.Public()}))
	tok := signRaw(t, key, mustJSON(t, h), mustJSON(t, claims("sensor-1", f.challenge("sensor-1"), t0)))
	_, err := f.verify(tok)
	mustRefuse(t, err, attest.ErrMalformed)
}

func TestDebugStatusString(t *testing.T) {
	for d, want := range map[attest.DebugStatus]string{
		attest.DebugNotReported: "not-reported", attest.DebugEnabled: "enabled", attest.DebugDisabled: "disabled",
		attest.DebugDisabledSinceBoot: "disabled-since-boot", attest.DebugDisabledPermanently: "disabled-permanently",
		attest.DebugDisabledFullyAndPermanently: "disabled-fully-and-permanently", 9: "DebugStatus(9)",
	} {
		if got := d.String(); got != want {
			t.Errorf("%d: %q, want %q", d, got, want)
		}
	}
}
