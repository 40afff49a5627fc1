// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package attest_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/attest"
	"github.com/d2c-iot/d2c/internal/fuzzcorpus"
)

// FuzzVerify feeds tokens to a verifier that has issued one fixed nonce to
// the device with the fixed key below, at a fixed time, so that the tokens
// in the committed corpus (testdata/fuzz/FuzzVerify, regenerated with
// go test -run TestWriteFuzzCorpus -update) stay valid. Run it with:
//
//	go test ./identity/attest/ -run '^$' -fuzz '^FuzzVerify$' -fuzztime 20s -fuzzminimizetime 200x

var updateCorpus = flag.Bool("update", false, "rewrite the committed fuzz corpus")

// fuzzKeyPEM is a throwaway P-256 key, fixed so that the committed tokens
// verify. It signs nothing outside these tests.
const fuzzKeyPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgS1bpzeRExryab9J6
aqMy2GI766xFOgrmmRFJXb48TAehRANCAATMsbiM4Jdh+BpfUzV9zlH1NHBHCpX2
/z/D1x0Fa5OJ8kSi2svtSyonBHtcuV+LwIoKvSikIufOPKnQpE8h/ayE
-----END PRIVATE KEY-----
`

// fuzzNonce is the one nonce the fuzz verifier has issued.
var fuzzNonce = []byte("d2c-fuzz-nonce: 32 fixed bytes..")

const fuzzDevice = "sensor-1"

type fuzzEnv struct {
	f   *fixture
	key crypto.Signer
}

func newFuzzEnv(tb testing.TB) *fuzzEnv {
	tb.Helper()
	f := newFixture(tb)
	key, err := identity.ParsePrivateKey([]byte(fuzzKeyPEM))
	if err != nil {
		tb.Fatal(err)
	}
	der, err := identity.NewCSR(key, fuzzDevice)
	if err != nil {
		tb.Fatal(err)
	}
	csr, err := identity.ParseCSR(der)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := f.ca.IssueDevice(csr, fuzzDevice)
	if err != nil {
		tb.Fatal(err)
	}
	f.certs[fuzzDevice] = [][]*x509.Certificate{{cert, f.ca.Issuing()}}
	f.keys[fuzzDevice] = key
	return &fuzzEnv{f: f, key: key}
}

// verify checks tok with a fresh verifier whose store holds fuzzNonce, one
// minute after it was issued, accepting any image.
func (e *fuzzEnv) verify(tb testing.TB, tok []byte) (*attest.Result, error) {
	ctx := context.Background()
	store := attest.NewMemoryNonceStore(0, 0)
	if err := store.Issue(ctx, fuzzDevice, b64.EncodeToString(fuzzNonce), t0, t0.Add(attest.DefaultNonceTTL)); err != nil {
		tb.Fatal(err)
	}
	v, err := attest.NewVerifier(attest.VerifierConfig{
		Certificates: attest.CertificatesFunc(e.f.lookup),
		CertPolicy:   identity.DeviceCertPolicy{Roots: e.f.roots, Revocations: e.f.ca},
		Nonces:       store,
		Time:         func() time.Time { return t0.Add(time.Minute) },
	})
	if err != nil {
		tb.Fatal(err)
	}
	return v.Verify(ctx, tok, attest.Policy{AllowDigest: func(string, [32]byte) bool { return true }})
}

// seeds returns named tokens: valid ones and near misses.
func (e *fuzzEnv) seeds(tb testing.TB) map[string][]byte {
	tb.Helper()
	sign := func(ev attest.Evidence) []byte {
		tok, err := attest.Sign(e.key, fuzzDevice, ev, t0)
		if err != nil {
			tb.Fatal(err)
		}
		return tok
	}
	yes, boots := true, uint64(3)
	full := evidence(fuzzNonce)
	full.SoftwareVersion = "1.4.2"
	full.DebugStatus = attest.DebugDisabledPermanently
	full.SecureBoot = &yes
	full.OEM = attest.OEMID{OUI: []byte{0, 0x1b, 0x63}}
	full.BootCount = &boots
	valid := sign(evidence(fuzzNonce))
	parts := strings.Split(string(valid), ".")
	c := claims(fuzzDevice, fuzzNonce, t0)
	c["exp"] = t0.Unix()
	h := header(tb, e.key)
	h["typ"] = "JWT"
	return map[string][]byte{
		"valid":         valid,
		"valid-full":    sign(full),
		"other-nonce":   sign(evidence(bytes.Repeat([]byte{9}, 16))),
		"alg-none":      []byte(strings.Join([]string{b64.EncodeToString([]byte(`{"alg":"none","kid":"x","typ":"eat+jwt"}`)), parts[1], ""}, ".")),
		"wrong-typ":     signRaw(tb, e.key, mustJSON(tb, h), mustJSON(tb, claims(fuzzDevice, fuzzNonce, t0))),
		"unknown-claim": signRaw(tb, e.key, mustJSON(tb, header(tb, e.key)), mustJSON(tb, c)),
		"tampered":      []byte(parts[0] + "." + b64.EncodeToString(mustJSON(tb, claims(fuzzDevice, fuzzNonce, t0.Add(time.Second)))) + "." + parts[2]),
		"truncated":     valid[:len(valid)/2],
		"garbage":       []byte("eyJ.not.a-token"),
	}
}

func FuzzVerify(f *testing.F) {
	env := newFuzzEnv(f)
	for _, tok := range env.seeds(f) {
		f.Add(tok)
	}
	f.Fuzz(func(t *testing.T, tok []byte) {
		res, err := env.verify(t, tok)
		if err != nil {
			for _, s := range []error{attest.ErrMalformed, attest.ErrTooLarge, attest.ErrSignature, attest.ErrUnknownDevice,
				attest.ErrWrongDevice, attest.ErrReplay, attest.ErrExpired, attest.ErrPolicy,
				identity.ErrRevoked, identity.ErrUntrusted, identity.ErrCertExpired} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error %q wraps no sentinel", err)
		}
		if res.DeviceID != fuzzDevice || !bytes.Equal(res.Evidence.Nonce, fuzzNonce) {
			t.Fatalf("accepted %+v", res)
		}
		// What was accepted signs and verifies again to the same evidence.
		again, err := attest.Sign(env.key, fuzzDevice, res.Evidence, res.IssuedAt)
		if err != nil {
			t.Fatalf("accepted evidence does not sign: %v", err)
		}
		res2, err := env.verify(t, again)
		if err != nil {
			t.Fatalf("re-signed evidence refused: %v", err)
		}
		if !reflect.DeepEqual(res.Evidence, res2.Evidence) {
			t.Fatalf("evidence changed: %+v, then %+v", res.Evidence, res2.Evidence)
		}
	})
}

// TestFuzzSeeds checks what each seed, generated and committed, is expected
// to do, so that the corpus keeps reaching past the parser; with -update it
// first rewrites the committed corpus.
func TestFuzzSeeds(t *testing.T) {
	env := newFuzzEnv(t)
	want := map[string]error{
		"valid": nil, "valid-full": nil, "other-nonce": attest.ErrReplay, "alg-none": attest.ErrMalformed,
		"wrong-typ": attest.ErrMalformed, "unknown-claim": attest.ErrMalformed, "tampered": attest.ErrSignature,
		"truncated": attest.ErrMalformed, "garbage": attest.ErrMalformed,
	}
	seeds := env.seeds(t)
	dir := filepath.Join("testdata", "fuzz", "FuzzVerify")
	if *updateCorpus { // go test ./identity/attest/ -run '^TestFuzzSeeds$' -update
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, tok := range seeds {
			if err := os.WriteFile(filepath.Join(dir, name), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", tok), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var s string
		if _, err := fmt.Sscanf(strings.TrimPrefix(string(b), "go test fuzz v1\n"), "[]byte(%q)", &s); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		seeds["committed/"+filepath.Base(file)] = []byte(s)
		want["committed/"+filepath.Base(file)] = want[filepath.Base(file)]
	}
	if len(files) < len(want)/2 {
		t.Fatalf("%d committed seeds", len(files))
	}
	for name, tok := range seeds {
		_, err := env.verify(t, tok)
		if w := want[name]; w == nil && err != nil || w != nil && !errors.Is(err, w) {
			t.Errorf("%s: %v, want %v", name, err, w)
		}
	}
}

// TestFuzzCorporaPresent fails if a fuzz target has no committed corpus.
func TestFuzzCorporaPresent(t *testing.T) {
	fuzzcorpus.Check(t, ".")
}
