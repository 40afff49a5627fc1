// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/limits"
)

// TestUpdateCycle walks the legitimate path: two root rotations (root keys
// and release key replaced), a timestamp, a release; the floors rise, the
// newest root is the one to persist, and the next cycle accepts the same
// timestamp again (a re-fetch is not a rollback).
func TestUpdateCycle(t *testing.T) {
	r := newTkRepo(t)
	// v2: root keys A, B, C (2) -> B, C, D (2), signed by A, B (old) and
	// B, C (new). v3: release key 1 -> 2, signed by B, C.
	root2 := r.rotate(func(n *Root) {
		r.ok(n.SetRole(RoleRoot, 2, r.k.rootB.Public(), r.k.rootC.Public(), r.k.rootD.Public()))
	}, r.k.rootA, r.k.rootB, r.k.rootC)
	root3 := r.rotate(func(n *Root) { r.ok(n.SetRole(RoleRelease, 1, r.k.release2.Public())) }, r.k.rootB, r.k.rootC)
	r.releaseSigners = []crypto.Signer{r.k.release2}
	r.publish(r.newRelease(4, 2))

	tr := r.trusted(Floors{TimestampVersion: 1, ReleaseVersion: 1, SecurityCounter: 1})
	for _, b := range [][]byte{root2, root3} {
		if _, err := tr.UpdateRoot(b); err != nil {
			t.Fatal(err)
		}
	}
	if got := tr.Root(); got.Version != 3 || !bytes.Equal(tr.RootBytes(), root3) {
		t.Fatalf("trusted root version %d", got.Version)
	}
	// The release-key rotation reset the release floor (fast-forward
	// recovery); the timestamp floor and the security counter stay.
	if f := tr.Floors(); f != (Floors{TimestampVersion: 1, ReleaseVersion: 0, SecurityCounter: 1}) {
		t.Fatalf("floors after rotation %+v", f)
	}
	ts, err := tr.UpdateTimestamp(r.timestampBytes)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := tr.UpdateRelease(r.releaseBytes)
	if err != nil {
		t.Fatal(err)
	}
	if ts.Version != 2 || rel.Version != 4 || rel.SecurityCounter != 2 || rel.HardwareClass != tkHW {
		t.Fatalf("timestamp %+v release %+v", ts, rel)
	}
	if f := tr.Floors(); f != (Floors{TimestampVersion: 2, ReleaseVersion: 4, SecurityCounter: 1}) {
		t.Fatalf("floors %+v", f)
	}
	if newer, err := rel.Newer(3); !newer || err != nil {
		t.Fatalf("Newer(3) = %v, %v", newer, err)
	}
	if newer, err := rel.Newer(4); newer || err != nil {
		t.Fatalf("Newer(4) = %v, %v", newer, err)
	}
	if _, err := rel.Newer(5); !errors.Is(err, ErrRollback) {
		t.Fatalf("Newer(5) = %v, want ErrRollback", err)
	}
	a, ok := rel.Artifact("rootfs.img")
	if !ok || a.Length != int64(len(tkArtifact)) || a.SHA256 != sha256.Sum256([]byte(tkArtifact)) {
		t.Fatalf("artifact %+v", a)
	}
	// Same release again within the cycle: fine.
	if _, err := tr.UpdateRelease(r.releaseBytes); err != nil {
		t.Fatal(err)
	}

	// Next cycle from the persisted root and floors: the same timestamp,
	// re-fetched, is accepted.
	tr2, err := NewTrusted(tr.RootBytes(), tr.Floors(), tkTime.Add(time.Hour), tkHW)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr2.UpdateTimestamp(r.timestampBytes); err != nil {
		t.Fatal(err)
	}
	if _, err := tr2.UpdateRelease(r.releaseBytes); err != nil {
		t.Fatal(err)
	}
}

// TestTrustedReturnsCopies: what a Trusted returns cannot change it.
func TestTrustedReturnsCopies(t *testing.T) {
	r := newTkRepo(t)
	tr := r.trusted(Floors{})
	before := stateOf(tr)
	root := tr.Root()
	root.Version = 99
	delete(root.Keys, tkID(t, r.k.rootA))
	rk := root.Roles[RoleRoot]
	rk.KeyIDs[0] = "x"
	if k, ok := root.Keys[tkID(t, r.k.rootB)].(ed25519.PublicKey); ok {
		k[0] ^= 1
	}
	tr.RootBytes()[0] = 'x'
	if _, err := tr.UpdateTimestamp(r.timestampBytes); err != nil {
		t.Fatal(err)
	}
	rel, err := tr.UpdateRelease(r.releaseBytes)
	if err != nil {
		t.Fatal(err)
	}
	rel.Artifacts[0].Name = "x"
	tr.Release().Artifacts[0].Length = 0
	if got := tr.Release().Artifacts[0]; got.Name != "rootfs.img" || got.Length != int64(len(tkArtifact)) {
		t.Fatalf("release changed through a copy: %+v", got)
	}
	tr2, err := NewTrusted(tr.RootBytes(), Floors{}, tkTime, tkHW)
	if err != nil {
		t.Fatal(err)
	}
	if stateOf(tr2) != before {
		t.Fatalf("root changed through a copy")
	}
	if _, err := tr2.UpdateRoot(r.rotate(nil, r.k.rootA, r.k.rootB)); err != nil {
		t.Fatal(err)
	}
}

func TestRootChainBound(t *testing.T) {
	r := newTkRepo(t)
	tr := r.trusted(Floors{})
	tr.walked = limits.UpdateRootChain
	if _, err := tr.UpdateRoot(r.rotate(nil, r.k.rootA, r.k.rootB)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
}

func TestArtifactVerifier(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789"), 10_000)
	a, err := NewArtifact("image.bin", "image.bin", bytes.NewReader(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, data []byte, want error) {
		t.Run(name, func(t *testing.T) {
			v := a.Verifier()
			_, err := io.Copy(v, bytes.NewReader(data))
			if err == nil {
				err = v.Verify()
			}
			if !errors.Is(err, want) && !(want == nil && err == nil) {
				t.Fatalf("got %v, want %v", err, want)
			}
			if v.Written() > a.Length {
				t.Fatalf("took %d bytes of %d", v.Written(), a.Length)
			}
		})
	}
	check("exact", content, nil)
	check("short", content[:len(content)-1], ErrLength)
	check("endless", append(bytes.Clone(content), 'x'), ErrEndlessData)
	flipped := bytes.Clone(content)
	flipped[5000] ^= 1
	check("tampered", flipped, ErrDigest)
}

func TestNewArtifactStreams(t *testing.T) {
	const size = 1<<20 + 17
	var last int64
	calls := 0
	a, err := NewArtifact("big.img", "https://cdn.example/big.img", io.LimitReader(zeros{}, size), func(done int64) {
		if done <= last {
			t.Errorf("progress went from %d to %d", last, done)
		}
		last = done
		calls++
	})
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(make([]byte, size))
	if a.Length != size || a.SHA256 != want || last != size || calls < 2 {
		t.Fatalf("artifact %d bytes, last progress %d after %d calls", a.Length, last, calls)
	}
	if _, err := NewArtifact("../etc", "x", strings.NewReader(""), nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := NewArtifact("a", "x", iotestErr{}, nil); err == nil {
		t.Fatal("read error not reported")
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// TestSignFormat: the profile as written: always the general
// serialization, one signature per distinct key, headers alg, kid, typ.
func TestSignFormat(t *testing.T) {
	r := newTkRepo(t)
	b := r.must(r.newRelease(2, 1).Sign(r.k.release1, r.k.release1))
	var w map[string]json.RawMessage
	if err := json.Unmarshal(b, &w); err != nil {
		t.Fatal(err)
	}
	if len(w) != 2 || w["payload"] == nil || w["signatures"] == nil {
		t.Fatalf("members %s", b)
	}
	var env jwsJSON
	r.ok(json.Unmarshal(b, &env))
	if len(env.Signatures) != 1 {
		t.Fatalf("%d signatures, want 1 (same key twice)", len(env.Signatures))
	}
	h, err := b64.DecodeString(env.Signatures[0].Protected)
	r.ok(err)
	want := `{"alg":"ES256","kid":"` + tkID(t, r.k.release1) + `","typ":"d2c-release+jws"}`
	if string(h) != want {
		t.Fatalf("protected header %s, want %s", h, want)
	}
	// Root rotation: four distinct signers, sorted by key ID.
	root2 := r.rotate(nil, r.k.rootA, r.k.rootB, r.k.rootC, r.k.rootA)
	r.ok(json.Unmarshal(root2, &env))
	if len(env.Signatures) != 3 {
		t.Fatalf("%d signatures, want 3", len(env.Signatures))
	}
}

func TestSignRefuses(t *testing.T) {
	r := newTkRepo(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	r.ok(err)
	good := func() *Release { return r.newRelease(2, 1) }
	cases := []struct {
		name string
		sign func() ([]byte, error)
	}{
		{"no-signer", func() ([]byte, error) { return good().Sign() }},
		{"p384-signer", func() ([]byte, error) { return good().Sign(p384) }},
		{"version-0", func() ([]byte, error) { rel := good(); rel.Version = 0; return rel.Sign(r.k.release1) }},
		{"no-expiry", func() ([]byte, error) { rel := good(); rel.Expires = time.Time{}; return rel.Sign(r.k.release1) }},
		{"no-artifact", func() ([]byte, error) { rel := good(); rel.Artifacts = nil; return rel.Sign(r.k.release1) }},
		{"artifact-twice", func() ([]byte, error) {
			rel := good()
			rel.Artifacts = append(rel.Artifacts, rel.Artifacts[0])
			return rel.Sign(r.k.release1)
		}},
		{"artifact-dotdot", func() ([]byte, error) { rel := good(); rel.Artifacts[0].Name = ".."; return rel.Sign(r.k.release1) }},
		{"uri-with-space", func() ([]byte, error) { rel := good(); rel.Artifacts[0].URI = "a b"; return rel.Sign(r.k.release1) }},
		{"negative-length", func() ([]byte, error) { rel := good(); rel.Artifacts[0].Length = -1; return rel.Sign(r.k.release1) }},
		{"hardware-class-empty", func() ([]byte, error) { rel := good(); rel.HardwareClass = ""; return rel.Sign(r.k.release1) }},
		{"root-without-timestamp-role", func() ([]byte, error) {
			root := &Root{Version: 1, Expires: tkTime}
			r.ok(root.SetRole(RoleRoot, 1, r.k.rootA.Public()))
			r.ok(root.SetRole(RoleRelease, 1, r.k.release1.Public()))
			return root.Sign(r.k.rootA)
		}},
		{"root-below-its-own-threshold", func() ([]byte, error) { return r.root.Next(tkTime).Sign(r.k.rootA, r.k.release1) }},
		{"root-key-id-not-thumbprint", func() ([]byte, error) {
			root := r.root.clone()
			id := tkID(t, r.k.release1)
			root.Keys[id] = r.k.release2.Public()
			return root.Sign(r.k.rootA)
		}},
		{"timestamp-of-garbage", func() ([]byte, error) {
			ts, err := NewTimestamp(1, tkTime, []byte("{}"))
			if err != nil {
				return nil, err
			}
			return ts.Sign(r.k.ts1)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if b, err := c.sign(); err == nil {
				t.Fatalf("signed %s", b)
			}
		})
	}
	root := &Root{}
	if err := root.SetRole(RoleRoot, 2, r.k.rootA.Public()); err == nil {
		t.Fatal("threshold 2 of 1 key accepted")
	}
	if err := root.SetRole("admin", 1, r.k.rootA.Public()); err == nil {
		t.Fatal("unknown role accepted")
	}
	if err := root.SetRole(RoleRoot, 1, r.k.rootA.Public(), r.k.rootA.Public()); err == nil {
		t.Fatal("duplicate key accepted")
	}
}

// TestSetRoleRevokes: replacing a role's keys drops the keys no role uses.
func TestSetRoleRevokes(t *testing.T) {
	r := newTkRepo(t)
	next := r.root.Next(tkTime.Add(tkRootTTL))
	r.ok(next.SetRole(RoleRelease, 1, r.k.release2.Public()))
	if _, ok := next.Keys[tkID(t, r.k.release1)]; ok {
		t.Fatal("revoked release key still listed")
	}
	if _, ok := r.root.Keys[tkID(t, r.k.release1)]; !ok {
		t.Fatal("Next shares maps with its source")
	}
	if next.Version != 2 {
		t.Fatalf("version %d", next.Version)
	}
}

// TestStrictJSON: the one form of each value is accepted; white space,
// member order and escapes are free; anything else is refused.
func TestStrictJSON(t *testing.T) {
	r := newTkRepo(t)
	valid := string(payloadOf(t, r.timestampBytes))
	sha := hexOf(r.timestamp.Release.SHA256)
	cases := []struct {
		name    string
		payload string
		ok      bool
	}{
		{"as-written", valid, true},
		{"white-space", " " + strings.ReplaceAll(strings.ReplaceAll(valid, `,"`, " ,\n\t\""), `":`, "\" : ") + "\n", true},
		{"member-order", `{"release":{"sha256":"` + sha + `","length":` + itoa(r.timestamp.Release.Length) + `,"version":1},"expires":"2026-11-02T12:00:00Z","version":1,"spec_version":"1.0","_type":"timestamp"}`, true},
		{"escaped-string", strings.Replace(valid, `"_type":"timestamp"`, `"_type":"time\u0073tamp"`, 1), true},
		{"duplicate-member", strings.Replace(valid, `"version":1,`, `"version":1,"version":2,`, 1), false},
		{"duplicate-nested", strings.Replace(valid, `"release":{`, `"release":{"length":1,`, 1), false},
		{"member-case", strings.Replace(valid, `"expires"`, `"Expires"`, 1), false},
		{"missing-member", strings.Replace(valid, `"version":1,`, ``, 1), false},
		{"null-member", strings.Replace(valid, `"version":1,`, `"version":null,`, 1), false},
		{"unknown-member", strings.Replace(valid, `"version":1,`, `"version":1,"x":1,`, 1), false},
		{"number-form", strings.Replace(valid, `"version":1,`, `"version":1.0,`, 1), false},
		{"exponent", strings.Replace(valid, `"version":1,`, `"version":1e0,`, 1), false},
		{"uppercase-hex", strings.Replace(valid, sha, strings.ToUpper(sha), 1), false},
		{"time-offset", strings.Replace(valid, `12:00:00Z`, `12:00:00+00:00`, 1), false},
		{"time-fraction", strings.Replace(valid, `12:00:00Z`, `12:00:00.5Z`, 1), false},
		{"trailing-data", valid + `{}`, false},
		{"trailing-garbage", valid + `x`, false},
		{"not-utf8", strings.Replace(valid, `"_type"`, "\"_type\xff\"", 1), false},
		{"deep", strings.Replace(valid, `"version":1,`, `"x":[[[[[[[[[[1]]]]]]]]]],"version":1,`, 1), false},
		{"array", `[` + valid + `]`, false},
		{"wrong-spec-version", strings.Replace(valid, `"1.0"`, `"2.0"`, 1), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts, err := decodeTimestamp([]byte(c.payload))
			if (err == nil) != c.ok {
				t.Fatalf("accepted %v (%v), want %v", err == nil, err, c.ok)
			}
			if err == nil && *ts != *r.timestamp {
				t.Fatalf("decoded %+v, want %+v", ts, r.timestamp)
			}
			if err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrWrongType) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
		})
	}
}

// TestRootValidation: roots a careless or hostile signer could write.
func TestRootValidation(t *testing.T) {
	r := newTkRepo(t)
	valid := string(payloadOf(t, r.roots[0]))
	idB := tkID(t, r.k.rootB)
	first := r.root.Roles[RoleRoot].KeyIDs[0]
	cases := map[string]string{
		"unknown-role":       strings.Replace(valid, `"timestamp":{`, `"admin":{`, 1),
		"threshold-0":        strings.Replace(valid, `"threshold":2`, `"threshold":0`, 1),
		"threshold-over":     strings.Replace(valid, `"threshold":2`, `"threshold":4`, 1),
		"key-listed-twice":   strings.Replace(valid, `"keyids":["`+first, `"keyids":["`+first+`","`+first, 1),
		"version-0":          strings.Replace(valid, `"version":1`, `"version":0`, 1),
		"key-not-on-curve":   corruptECKey(t, valid, r.k.rootA),
		"kid-not-thumbprint": strings.Replace(valid, `"`+idB+`":{`, `"`+idB[:len(idB)-1]+`A":{`, 1),
	}
	for name, payload := range cases {
		t.Run(name, func(t *testing.T) {
			if payload == valid {
				t.Fatal("case did not change the payload")
			}
			b := signRaw(t, RoleRoot, []byte(payload), r.k.rootA, r.k.rootB)
			if _, err := NewTrusted(b, Floors{}, tkTime, tkHW); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrAlgorithm) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

// corruptECKey replaces the y coordinate of key k in a root payload.
func corruptECKey(t *testing.T, payload string, k crypto.Signer) string {
	j, err := encodeJWK(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	y, _ := b64.DecodeString(j.Y)
	y[31] ^= 1
	return strings.Replace(payload, j.Y, b64.EncodeToString(y), 1)
}

func TestJWK(t *testing.T) {
	r := newTkRepo(t)
	for _, s := range []crypto.Signer{r.k.rootA, r.k.rootB} {
		j, err := encodeJWK(s.Public())
		if err != nil {
			t.Fatal(err)
		}
		pub, err := decodeJWK("k", j)
		if err != nil {
			t.Fatal(err)
		}
		if id, _ := keyID(pub); id != tkID(t, s) {
			t.Fatal("round trip changed the key")
		}
	}
	bad := []jwkJSON{
		{Kty: "EC", Crv: "P-384", X: "AA", Y: "AA"},
		{Kty: "RSA", Crv: "", X: "AA"},
		{Kty: "OKP", Crv: "Ed25519", X: "AA"},
		{Kty: "OKP", Crv: "Ed25519", X: b64.EncodeToString(make([]byte, 32)), Y: "AA"},
		{Kty: "EC", Crv: "P-256", X: b64.EncodeToString(make([]byte, 32)), Y: b64.EncodeToString(make([]byte, 32))},
		{Kty: "oct", X: "AA"},
	}
	for _, j := range bad {
		if _, err := decodeJWK("k", j); err == nil {
			t.Errorf("accepted %+v", j)
		}
	}
}

func hexOf(d [32]byte) string { return hex.EncodeToString(d[:]) }

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }
