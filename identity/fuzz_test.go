// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/d2c-iot/d2c/internal/fuzzcorpus"
	"github.com/d2c-iot/d2c/internal/limits"
)

// The fuzz targets below cover every parser of bytes that come from outside
// the process. Each has seeds built here from real values (f.Add) and a
// committed corpus in testdata/fuzz/<target>/; TestFuzzCorporaPresent fails
// if a target's corpus directory is empty or malformed. Run one with, e.g.:
//
//	go test ./identity/ -run '^$' -fuzz '^FuzzDecodeCertsOnly$' -fuzztime 20s -fuzzminimizetime 200x
//
// This test binary is large, so each execution is slow (a few thousand per
// second on 2 cores); with the default minimization budget (60 s per new
// input) a short run spends most of its time minimizing and shows 0
// execs/sec. -fuzzminimizetime 200x bounds that.

// fuzzTime is the fixed clock of the fuzz targets: tokens in the committed
// corpora stay valid because nothing depends on the real time.
var fuzzTime = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func fuzzNow() time.Time { return fuzzTime }

// fuzzTokenKeyPEM is a throwaway P-256 key, fixed so that the tokens in the
// committed corpora (FuzzTokenVerify, FuzzRegistrarRequest) verify. It signs
// nothing outside these tests.
const fuzzTokenKeyPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgwZH5xZy0v/81II6V
4BQns38sxePWZKVdE2uaO6ssmGShRANCAARiKz4YATnWEZQdVWBQv8o+S9Z6k7GR
S1QLSrOn7kCLFpbwHnyQF78+BNssekh/CdNbkAn8gb0pNN2UIsjiHxnQ
-----END PRIVATE KEY-----
`

// fuzzDeviceID is the device the seeds enroll.
const fuzzDeviceID = "sensor-1"

func fuzzTokenKey(tb testing.TB) crypto.Signer {
	tb.Helper()
	k, err := ParsePrivateKey([]byte(fuzzTokenKeyPEM))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func fuzzTokenVerifier(tb testing.TB) TokenVerifier {
	return TokenVerifier{Keys: []crypto.PublicKey{fuzzTokenKey(tb).Public()}, Time: fuzzNow}
}

// fuzzPKI is a throwaway CA on the fixed clock, a device key and its CSR,
// and a certificate issued for it: real values to seed the fuzzers with.
type fuzzPKI struct {
	ca         *CA
	deviceKey  crypto.Signer
	csr        []byte // DER
	deviceCert *x509.Certificate
}

func newFuzzPKI(tb testing.TB) *fuzzPKI {
	tb.Helper()
	ca, err := InitCA(filepath.Join(tb.TempDir(), "ca"), CAConfig{Fleet: "fuzz fleet", Time: fuzzNow})
	if err != nil {
		tb.Fatal(err)
	}
	key, err := GenerateKey(ECDSAP256)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := NewCSR(key, fuzzDeviceID)
	if err != nil {
		tb.Fatal(err)
	}
	csr, err := ParseCSR(der)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := ca.IssueDevice(csr, fuzzDeviceID)
	if err != nil {
		tb.Fatal(err)
	}
	return &fuzzPKI{ca: ca, deviceKey: key, csr: der, deviceCert: cert}
}

// fuzzToken issues a token for id with the fixed key at time at.
func fuzzToken(tb testing.TB, id string, at time.Time, issuer string) string {
	tb.Helper()
	tok, err := TokenIssuer{Key: fuzzTokenKey(tb), Time: func() time.Time { return at }, Issuer: issuer}.Issue(id)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// fuzzOneLine removes the line breaks of base64 text: senders may or may not
// fold it (RFC 2045), and the decoders must accept both.
func fuzzOneLine(b []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r"), nil), []byte("\n"), nil)
}

// fuzzErrIs fails unless err wraps one of the sentinels.
func fuzzErrIs(t *testing.T, err error, sentinels ...error) {
	t.Helper()
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("error %q wraps none of %v", err, sentinels)
}

func fuzzSameRaw(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return bytes.Equal(x.Raw, y.Raw) })
}

func FuzzDecodeCertsOnly(f *testing.F) {
	p := newFuzzPKI(f)
	for _, certs := range [][]*x509.Certificate{p.ca.Chain(), {p.deviceCert}, {p.deviceCert, p.ca.Issuing(), p.ca.Root()}} {
		b, err := EncodeCertsOnly(certs...)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(fuzzOneLine(b))
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte("MAA="))
	f.Add([]byte("not base64 at all"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		certs, err := DecodeCertsOnly(body)
		if err != nil {
			fuzzErrIs(t, err, ErrMalformed, ErrTooLarge)
			if certs != nil {
				t.Fatal("certificates returned with an error")
			}
			return
		}
		if len(certs) == 0 || len(certs) > limits.CertsPerBundle {
			t.Fatalf("%d certificates accepted, want 1 to %d", len(certs), limits.CertsPerBundle)
		}
		for i, c := range certs {
			if c == nil || len(c.Raw) == 0 {
				t.Fatalf("certificate %d is empty", i)
			}
		}
		again, err := EncodeCertsOnly(certs...)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back, err := DecodeCertsOnly(again)
		if err != nil {
			t.Fatalf("decode re-encoded body: %v", err)
		}
		if !fuzzSameRaw(certs, back) {
			t.Fatal("re-encoding changed the certificates")
		}
	})
}

func FuzzParseCertificatesPEM(f *testing.F) {
	p := newFuzzPKI(f)
	chain := EncodeCertificatesPEM(p.deviceCert, p.ca.Issuing(), p.ca.Root())
	f.Add(chain)
	f.Add(EncodeCertificatesPEM(p.ca.Root()))
	f.Add(append(slices.Clone(chain), "\n\n"...))
	f.Add(chain[:len(chain)/2])
	f.Add(append(slices.Clone(chain), "trailing"...))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{0x30, 0}}))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := ParseCertificatesPEM(data)
		if err != nil {
			fuzzErrIs(t, err, ErrMalformed, ErrTooLarge)
			return
		}
		if len(certs) == 0 || len(certs) > limits.CertsPerBundle {
			t.Fatalf("%d certificates accepted, want 1 to %d", len(certs), limits.CertsPerBundle)
		}
		back, err := ParseCertificatesPEM(EncodeCertificatesPEM(certs...))
		if err != nil {
			t.Fatalf("parse re-encoded PEM: %v", err)
		}
		if !fuzzSameRaw(certs, back) {
			t.Fatal("re-encoding changed the certificates")
		}
	})
}

func FuzzParsePrivateKey(f *testing.F) {
	for _, kt := range []KeyType{ECDSAP256, Ed25519} {
		k, err := GenerateKey(kt)
		if err != nil {
			f.Fatal(err)
		}
		b, err := MarshalPrivateKey(k)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	if b, err := x509.MarshalPKCS8PrivateKey(p384); err == nil {
		f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: b}))
	}
	if b, err := x509.MarshalECPrivateKey(p384); err == nil {
		f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b}))
	}
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("garbage"))
	msg := []byte("d2c fuzz")
	digest := sha256.Sum256(msg)
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParsePrivateKey(data)
		if err != nil {
			fuzzErrIs(t, err, ErrMalformed, ErrTooLarge, ErrUnsupportedKey)
			return
		}
		kt, err := keyTypeOf(k.Public())
		if err != nil {
			t.Fatalf("accepted a key outside policy: %v", err)
		}
		again, err := MarshalPrivateKey(k)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back, err := ParsePrivateKey(again)
		if err != nil {
			t.Fatalf("parse re-encoded key: %v", err)
		}
		if eq, ok := k.(interface{ Equal(crypto.PrivateKey) bool }); !ok || !eq.Equal(back) {
			t.Fatal("re-encoding changed the key")
		}
		// The public key must belong to the private key: sign and verify.
		switch kt {
		case ECDSAP256:
			sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
			if err != nil || !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), digest[:], sig) {
				t.Fatalf("ECDSA key does not verify its own signature: %v", err)
			}
		case Ed25519:
			sig, err := k.Sign(nil, msg, crypto.Hash(0))
			if err != nil || !ed25519.Verify(k.Public().(ed25519.PublicKey), msg, sig) {
				t.Fatalf("Ed25519 key does not verify its own signature: %v", err)
			}
		}
	})
}

func FuzzParseCSR(f *testing.F) {
	p := newFuzzPKI(f)
	f.Add(p.csr)
	f.Add(p.csr[:len(p.csr)/2])
	edKey, err := GenerateKey(Ed25519)
	if err != nil {
		f.Fatal(err)
	}
	if der, err := NewCSR(edKey, "gateway_2.b"); err == nil {
		f.Add(der)
	}
	// Valid signature, but asks for more than a device ID.
	greedy, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: fuzzDeviceID},
		DNSNames:       []string{"broker.example.com"},
		EmailAddresses: []string{"a@example.com"},
		URIs:           []*url.URL{{Scheme: "urn", Opaque: "d2c:device:other"}},
	}, p.deviceKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(greedy)
	// Signature broken: last byte flipped.
	broken := slices.Clone(p.csr)
	broken[len(broken)-1] ^= 1
	f.Add(broken)
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := ParseCSR(der)
		if err != nil {
			fuzzErrIs(t, err, ErrMalformed)
			return
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR whose signature does not verify: %v", err)
		}
		for _, id := range []string{csr.Subject.CommonName, fuzzDeviceID} {
			err := checkCSRFor(csr, id)
			if err != nil {
				fuzzErrIs(t, err, ErrNotAuthorized)
				continue
			}
			if csr.Subject.CommonName != id || len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
				t.Fatalf("checkCSRFor(%q) accepted CN %q with names %v %v %v", id, csr.Subject.CommonName,
					csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
			}
			for _, u := range csr.URIs {
				if u.String() != DeviceURI(id) {
					t.Fatalf("checkCSRFor(%q) accepted URI %q", id, u)
				}
			}
			if ValidateDeviceID(id) != nil {
				continue
			}
			if _, err := keyTypeOf(csr.PublicKey); err != nil {
				continue
			}
			// What the registrar would do next: the certificate takes its
			// names from id, and certifies the CSR's key.
			cert, err := p.ca.IssueDevice(csr, id)
			if err != nil {
				t.Fatalf("IssueDevice after a passing check: %v", err)
			}
			if got, err := deviceIDOf(cert); err != nil || got != id || !publicKeysEqual(csr.PublicKey, cert.PublicKey) {
				t.Fatalf("issued certificate names %q (%v), want %q and the CSR key", got, err, id)
			}
		}
	})
}

// fuzzJWSDecode decodes a JWS compact segment as go-jose does (trailing '='
// tolerated).
func fuzzJWSDecode(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// checkTokenIndependently re-verifies an accepted token without go-jose:
// ES256 over the signing input with the fixed key, the header and the
// claims. Any token that passes was signed by the fixed key, which only
// these tests hold, so a token built by the fuzzer can never pass.
func checkTokenIndependently(t *testing.T, raw string, tok Token, pub *ecdsa.PublicKey) {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("accepted a token with %d segments", len(parts))
	}
	hdr, err1 := fuzzJWSDecode(parts[0])
	payload, err2 := fuzzJWSDecode(parts[1])
	sig, err3 := fuzzJWSDecode(parts[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatalf("accepted a token whose segments do not decode: %v", err)
	}
	// The signature covers the canonical encoding of what was decoded.
	input := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(input))
	if len(sig) != 64 || !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		t.Fatal("accepted a token that does not verify under ES256 with the fixed key")
	}
	var h struct {
		Alg, Typ, Kid string
	}
	if err := json.Unmarshal(hdr, &h); err != nil {
		t.Fatalf("accepted header %q: %v", hdr, err)
	}
	kid, _ := KeyID(pub)
	if h.Alg != "ES256" || h.Typ != TokenType || h.Kid != kid {
		t.Fatalf("accepted header %+v", h)
	}
	var c jwt.Claims
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatalf("accepted claims %q: %v", payload, err)
	}
	if c.Subject != tok.DeviceID || c.ID != tok.ID || c.Expiry == nil || !c.Expiry.Time().Equal(tok.Expiry) {
		t.Fatalf("Verify returned %+v for claims %s", tok, payload)
	}
	if c.Issuer != "d2c" || !slices.Contains(c.Audience, TokenAudience) || ValidateDeviceID(c.Subject) != nil {
		t.Fatalf("accepted claims %s", payload)
	}
	if c.IssuedAt == nil || c.Expiry.Time().Sub(c.IssuedAt.Time()) > MaxTokenTTL || fuzzTime.After(c.Expiry.Time().Add(tokenLeeway)) {
		t.Fatalf("accepted claims %s at %v", payload, fuzzTime)
	}
}

func FuzzTokenVerify(f *testing.F) {
	key := fuzzTokenKey(f)
	tv := fuzzTokenVerifier(f)
	valid := fuzzToken(f, fuzzDeviceID, fuzzTime, "")
	f.Add(valid)
	f.Add(valid[:len(valid)-10])
	f.Add(valid + "=")
	f.Add(fuzzToken(f, fuzzDeviceID, fuzzTime.Add(-3*time.Hour), ""))   // expired
	f.Add(fuzzToken(f, fuzzDeviceID, fuzzTime.Add(10*time.Minute), "")) // not yet valid
	f.Add(fuzzToken(f, fuzzDeviceID, fuzzTime, "another issuer"))
	other, err := GenerateKey(ECDSAP256)
	if err != nil {
		f.Fatal(err)
	}
	if tok, err := (TokenIssuer{Key: other, Time: fuzzNow}).Issue(fuzzDeviceID); err == nil {
		f.Add(tok) // unknown kid
	}
	// Our kid, another key's signature.
	kid, _ := KeyID(key.Public())
	if s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: cryptosigner.Opaque(other)},
		(&jose.SignerOptions{}).WithType(TokenType).WithHeader(jose.HeaderKey("kid"), kid)); err == nil {
		if tok, err := jwt.Signed(s).Claims(jwt.Claims{Subject: fuzzDeviceID, ID: "x", Issuer: "d2c",
			Audience: jwt.Audience{TokenAudience}, IssuedAt: jwt.NewNumericDate(fuzzTime),
			Expiry: jwt.NewNumericDate(fuzzTime.Add(time.Hour))}).Serialize(); err == nil {
			f.Add(tok)
		}
	}
	f.Add("eyJhbGciOiJub25lIiwidHlwIjoiZDJjLWVucm9sbCtqd3QifQ.eyJzdWIiOiJzZW5zb3ItMSJ9.")
	f.Add("a.b.c")
	f.Add("")
	pub := key.Public().(*ecdsa.PublicKey)
	f.Fuzz(func(t *testing.T, raw string) {
		tok, err := tv.Verify(raw)
		if testing.Verbose() {
			t.Logf("Verify: %+v, %v", tok, err)
		}
		if err != nil {
			fuzzErrIs(t, err, ErrTokenInvalid, ErrTokenExpired)
			return
		}
		checkTokenIndependently(t, raw, tok, pub)
	})
}

// registrarOracle says, from the request's parts and with the package's
// building blocks, whether the registrar must issue a certificate: a valid
// CSR for the token's device, a valid token presented by that device, and
// a jti not used yet.
func registrarOracle(tv TokenVerifier, used map[string]int64, body []byte, contentType, authorization string) (Token, *x509.CertificateRequest, bool) {
	if len(body) > limits.ESTRequestBody || len(authorization) > limits.AuthorizationHeader {
		return Token{}, nil, false
	}
	if mt, _, err := mime.ParseMediaType(contentType); err != nil || mt != mediaPKCS10 {
		return Token{}, nil, false
	}
	der, err := decodeBase64(body)
	if err != nil {
		return Token{}, nil, false
	}
	csr, err := ParseCSR(der)
	if err != nil {
		return Token{}, nil, false
	}
	user, pass, ok := (&http.Request{Header: http.Header{"Authorization": {authorization}}}).BasicAuth()
	if !ok {
		return Token{}, nil, false
	}
	tok, err := tv.Verify(pass)
	if err != nil || user != tok.DeviceID {
		return Token{}, nil, false
	}
	if checkCSRFor(csr, tok.DeviceID) != nil {
		return Token{}, nil, false
	}
	if _, err := keyTypeOf(csr.PublicKey); err != nil {
		return Token{}, nil, false
	}
	if _, ok := used[tok.ID]; ok {
		return Token{}, nil, false
	}
	return tok, csr, true
}

func fuzzBasicAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func FuzzRegistrarRequest(f *testing.F) {
	p := newFuzzPKI(f)
	key := fuzzTokenKey(f)
	tv := fuzzTokenVerifier(f)
	dir := f.TempDir()
	statePath := filepath.Join(dir, "used-tokens.state")

	// The baseline state: one token already used.
	usedTok := fuzzToken(f, fuzzDeviceID, fuzzTime, "")
	usedClaims, err := tv.Verify(usedTok)
	if err != nil {
		f.Fatal(err)
	}
	u, err := OpenUsedTokens(statePath, fuzzNow)
	if err != nil {
		f.Fatal(err)
	}
	if err := u.Consume(f.Context(), usedClaims.ID, usedClaims.Expiry); err != nil {
		f.Fatal(err)
	}
	baselineUsed := u.used
	// Reopening folds the journal into the snapshot: the baseline is that
	// one file.
	u.Close()
	if u, err = OpenUsedTokens(statePath, fuzzNow); err != nil {
		f.Fatal(err)
	}
	u.Close()
	baseline, err := os.ReadFile(statePath)
	if err != nil {
		f.Fatal(err)
	}
	journalPath := statePath + ".journal"

	body := base64Body(p.csr)
	tok := fuzzToken(f, fuzzDeviceID, fuzzTime, "")
	f.Add(body, mediaPKCS10, fuzzBasicAuth(fuzzDeviceID, tok), false)
	f.Add(fuzzOneLine(body), mediaPKCS10+"; charset=binary", fuzzBasicAuth(fuzzDeviceID, tok), true)
	f.Add(body, mediaPKCS10, fuzzBasicAuth(fuzzDeviceID, usedTok), true) // reused
	f.Add(body, mediaPKCS10, fuzzBasicAuth("sensor-2", tok), true)       // wrong user
	f.Add(body, mediaPKCS10, fuzzBasicAuth("sensor-2", fuzzToken(f, "sensor-2", fuzzTime, "")), false)
	f.Add(body, mediaPKCS10, fuzzBasicAuth(fuzzDeviceID, fuzzToken(f, fuzzDeviceID, fuzzTime.Add(-3*time.Hour), "")), false)
	f.Add(body, "application/pkcs7-mime", fuzzBasicAuth(fuzzDeviceID, tok), false)
	f.Add(body, mediaPKCS10, "Bearer "+tok, false)
	f.Add(body[:len(body)/2], mediaPKCS10, fuzzBasicAuth(fuzzDeviceID, tok), true)
	f.Add(bytes.Repeat([]byte("A"), limits.ESTRequestBody+4), mediaPKCS10, fuzzBasicAuth(fuzzDeviceID, tok), false)
	f.Add([]byte("garbage"), "", "", false)

	// Each input starts from the same state, the baseline file or none;
	// the file is rewritten only when the last input changed it.
	stateIs := "baseline"
	f.Fuzz(func(t *testing.T, body []byte, contentType, authorization string, stateExists bool) {
		used := map[string]int64{}
		if stateIs == "changed" {
			if err := os.Remove(journalPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Fatal(err)
			}
		}
		switch {
		case stateExists && stateIs != "baseline":
			if err := os.WriteFile(statePath, baseline, 0o600); err != nil {
				t.Fatal(err)
			}
			stateIs = "baseline"
		case !stateExists && stateIs != "none":
			if err := os.Remove(statePath); err != nil {
				t.Fatal(err)
			}
			stateIs = "none"
		}
		if stateExists {
			used = baselineUsed
		}
		store, err := OpenUsedTokens(statePath, fuzzNow)
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		reg, err := NewRegistrar(RegistrarConfig{CA: p.ca, TokenKeys: []crypto.PublicKey{key.Public()}, UsedTokens: store})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodPost, "https://est.test"+ESTSimpleEnroll, bytes.NewReader(body))
		req.TLS = &tls.ConnectionState{}
		req.Header.Set("Content-Type", contentType)
		req.Header.Set("Authorization", authorization)
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, req)

		want, csr, valid := registrarOracle(tv, used, body, contentType, authorization)
		if testing.Verbose() {
			t.Logf("status %d, valid %v", rec.Code, valid)
		}
		switch {
		case rec.Code >= 500:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		case rec.Code == http.StatusOK && !valid:
			t.Fatalf("status 200 for a request that is not a valid CSR with a valid unused token")
		case rec.Code != http.StatusOK && valid:
			t.Fatalf("status %d for a valid request: %s", rec.Code, rec.Body)
		}

		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if p := filepath.Join(dir, e.Name()); p != statePath && p != journalPath {
				t.Fatalf("registrar left files behind: %v", entries)
			}
		}
		if rec.Code == http.StatusOK {
			stateIs = "changed"
		}
		if rec.Code != http.StatusOK {
			// A refusal changes no state.
			got, err := os.ReadFile(statePath)
			switch {
			case !stateExists && !errors.Is(err, fs.ErrNotExist):
				t.Fatalf("refused request (%d) created the used-token state (%v)", rec.Code, err)
			case stateExists && (err != nil || !bytes.Equal(got, baseline)):
				t.Fatalf("refused request (%d) changed the used-token state (%v)", rec.Code, err)
			}
			if _, err := os.Stat(journalPath); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("refused request (%d) wrote the used-token journal (%v)", rec.Code, err)
			}
			return
		}

		// Issued: the response is the certificate for the CSR's key and the
		// token's device, and the token is now used, durably.
		if mt, _, _ := mime.ParseMediaType(rec.Header().Get("Content-Type")); mt != mediaPKCS7 {
			t.Fatalf("Content-Type %q", rec.Header().Get("Content-Type"))
		}
		certs, err := DecodeCertsOnly(rec.Body.Bytes())
		if err != nil || len(certs) != 1 {
			t.Fatalf("response: %d certificates, %v", len(certs), err)
		}
		if id, err := deviceIDOf(certs[0]); err != nil || id != want.DeviceID || !publicKeysEqual(certs[0].PublicKey, csr.PublicKey) {
			t.Fatalf("issued certificate for %q (%v), want %q and the CSR key", id, err, want.DeviceID)
		}
		if err := certs[0].CheckSignatureFrom(p.ca.Issuing()); err != nil {
			t.Fatalf("issued certificate not signed by the issuing CA: %v", err)
		}
		after, err := OpenUsedTokens(statePath, fuzzNow)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := after.used[want.ID]; !ok || len(after.used) != len(used)+1 {
			t.Fatalf("used tokens after issuance: %d entries, jti recorded %v", len(after.used), ok)
		}
	})
}

// validDeviceIDByte is the reference for ValidateDeviceID, written apart
// from it.
func validDeviceIDByte(c byte, first bool) bool {
	return strings.IndexByte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", c) >= 0 ||
		!first && strings.IndexByte("._-", c) >= 0
}

func FuzzValidateDeviceID(f *testing.F) {
	for _, s := range []string{fuzzDeviceID, "A", "gateway_2.b-3", "", ".hidden", "-x", "a/b", "a+b", "#", "a\x00b",
		"a:b", "$SYS", "a b", "é", strings.Repeat("x", 64), strings.Repeat("x", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateDeviceID(id)
		want := len(id) >= 1 && len(id) <= limits.DeviceIDMaxLen
		for i := 0; i < len(id) && want; i++ {
			want = validDeviceIDByte(id[i], i == 0)
		}
		if err != nil {
			fuzzErrIs(t, err, ErrInvalidDeviceID)
			if want {
				t.Fatalf("refused %q: %v", id, err)
			}
			return
		}
		if !want {
			t.Fatalf("accepted %q", id)
		}
		if len(id) < 1 || len(id) > 64 || strings.ContainsAny(id, "/+#\x00: $") || id[0] == '.' {
			t.Fatalf("accepted %q, unsafe as a topic level, URN or file name", id)
		}
		// The URI SAN must survive url.Parse, as checkCSRFor compares it.
		if u, err := url.Parse(DeviceURI(id)); err != nil || u.String() != DeviceURI(id) {
			t.Fatalf("device URI %q does not round-trip: %v", DeviceURI(id), err)
		}
	})
}

// TestFuzzCorporaPresent fails if a fuzz target of this package has no
// committed seed corpus, or a corpus file is not a `go test fuzz v1` file
// with one value per argument: a glob that matches nothing would otherwise
// pass silently. The targets are found in the source, so a new one without
// a corpus fails here.
func TestFuzzCorporaPresent(t *testing.T) {
	fuzzcorpus.Check(t, ".")
}
