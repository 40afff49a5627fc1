// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package attest_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/attest"
)

// t0 is the fixed start of every fixture clock.
var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// goodDigest is the image the default policy allows.
var goodDigest = sha256.Sum256([]byte("acme firmware 42"))

func goodPolicy() attest.Policy {
	return attest.Policy{AllowDigest: attest.AllowDigests(goodDigest)}
}

// fixture is a fleet CA, enrolled devices and a verifier on a fake clock.
type fixture struct {
	tb    testing.TB
	ca    *identity.CA
	roots *x509.CertPool

	mu    sync.Mutex
	now   time.Time
	keys  map[string]crypto.Signer
	certs map[string][][]*x509.Certificate // newest first

	nonces *attest.MemoryNonceStore
	v      *attest.Verifier
}

func newFixture(tb testing.TB, devices ...string) *fixture {
	tb.Helper()
	f := &fixture{tb: tb, now: t0, keys: map[string]crypto.Signer{}, certs: map[string][][]*x509.Certificate{}}
	ca, err := identity.InitCA(filepath.Join(tb.TempDir(), "ca"), identity.CAConfig{Time: f.clock})
	if err != nil {
		tb.Fatal(err)
	}
	f.ca = ca
	f.roots = x509.NewCertPool()
	f.roots.AddCert(ca.Root())
	for _, id := range devices {
		f.enroll(id, identity.ECDSAP256)
	}
	f.nonces = attest.NewMemoryNonceStore(0, 0)
	f.v, err = attest.NewVerifier(attest.VerifierConfig{
		Certificates: attest.CertificatesFunc(f.lookup),
		CertPolicy:   identity.DeviceCertPolicy{Roots: f.roots, Revocations: ca},
		Nonces:       f.nonces,
		Time:         f.clock,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

// enroll gives device id a new key and certificate (a renewal if it has
// one already) through a real CSR, and registers the chain.
func (f *fixture) enroll(id string, kt identity.KeyType) crypto.Signer {
	f.tb.Helper()
	key, err := identity.GenerateKey(kt)
	if err != nil {
		f.tb.Fatal(err)
	}
	der, err := identity.NewCSR(key, id)
	if err != nil {
		f.tb.Fatal(err)
	}
	csr, err := identity.ParseCSR(der)
	if err != nil {
		f.tb.Fatal(err)
	}
	cert, err := f.ca.IssueDevice(csr, id)
	if err != nil {
		f.tb.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.certs[id] = append([][]*x509.Certificate{{cert, f.ca.Issuing()}}, f.certs[id]...)
	f.keys[id] = key
	return key
}

func (f *fixture) lookup(_ context.Context, id string) ([][]*x509.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.certs[id]
	if !ok {
		return nil, fmt.Errorf("no device %q", id)
	}
	return c, nil
}

func (f *fixture) key(id string) crypto.Signer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.keys[id]
}

func (f *fixture) challenge(id string) []byte {
	f.tb.Helper()
	n, err := f.v.Challenge(context.Background(), id)
	if err != nil {
		f.tb.Fatal(err)
	}
	return n
}

// sign signs ev as device id with its current key at the fixture's time.
func (f *fixture) sign(id string, ev attest.Evidence) []byte {
	f.tb.Helper()
	tok, err := attest.Sign(f.key(id), id, ev, f.clock())
	if err != nil {
		f.tb.Fatal(err)
	}
	return tok
}

// attest runs a challenge and returns the device's answer.
func (f *fixture) attest(id string) []byte {
	f.tb.Helper()
	return f.sign(id, evidence(f.challenge(id)))
}

func (f *fixture) verify(tok []byte) (*attest.Result, error) {
	return f.v.Verify(context.Background(), tok, goodPolicy())
}

func evidence(nonce []byte) attest.Evidence {
	return attest.Evidence{Nonce: nonce, SoftwareName: "acme-fw", SoftwareVersion: "42", ImageDigest: goodDigest}
}

// mustRefuse fails unless err wraps every one of sentinels.
func mustRefuse(tb testing.TB, err error, sentinels ...error) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("accepted, want refusal wrapping %v", sentinels)
	}
	for _, s := range sentinels {
		if !errors.Is(err, s) {
			tb.Fatalf("error %q does not wrap %v", err, s)
		}
	}
}

var b64 = base64.RawURLEncoding

// claims returns the claims set Sign would write for device id, as a map to
// be altered by a test.
func claims(id string, nonce []byte, at time.Time) map[string]any {
	return map[string]any{
		"eat_profile":      attest.Profile,
		"eat_nonce":        b64.EncodeToString(nonce),
		"sub":              id,
		"iat":              at.Unix(),
		"swname":           "acme-fw",
		"swversion":        []any{"42", 1},
		"d2c_image_digest": []any{"SHA-256", b64.EncodeToString(goodDigest[:])},
	}
}

// header returns the protected header Sign would write for key.
func header(tb testing.TB, key crypto.Signer) map[string]any {
	tb.Helper()
	kid, err := identity.KeyID(key.Public())
	if err != nil {
		tb.Fatal(err)
	}
	alg := "ES256"
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		alg = "EdDSA"
	}
	return map[string]any{"alg": alg, "kid": kid, "typ": attest.TokenType}
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// signRaw builds a compact JWS over arbitrary header and payload bytes with
// key, independently of go-jose (RFC 7515 section 5.1, RFC 7518 section
// 3.4, RFC 8037 section 3.1).
func signRaw(tb testing.TB, key crypto.Signer, hdr, payload []byte) []byte {
	tb.Helper()
	input := b64.EncodeToString(hdr) + "." + b64.EncodeToString(payload)
	var sig []byte
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		h := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
		if err != nil {
			tb.Fatal(err)
		}
		sig = append(pad32(r), pad32(s)...)
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(input))
	default:
		tb.Fatalf("signRaw: %T", key)
	}
	return []byte(input + "." + b64.EncodeToString(sig))
}

func pad32(n *big.Int) []byte {
	b := make([]byte, 32)
	return n.FillBytes(b)
}
