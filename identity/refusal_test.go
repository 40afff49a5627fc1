// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// stateOf hashes every file under the given directories, so a test can
// assert that a refused request changed nothing.
func stateOf(t testing.TB, dirs ...string) string {
	t.Helper()
	var lines []string
	for _, d := range dirs {
		err := filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			lines = append(lines, p+" "+base64.StdEncoding.EncodeToString(sum[:]))
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// registrarState is everything a request could change on the cloud side.
func (f *fleet) registrarState() string {
	return stateOf(f.t, f.caDir, filepath.Dir(f.used.path))
}

// post sends a raw EST request to the fleet registrar, trusting its root.
func (f *fleet) post(path, contentType string, body []byte, user, pass string, clientCert *tls.Certificate) (int, string, string) {
	f.t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(f.ca.Root())
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13, Time: f.clock.Now}
	if clientCert != nil {
		tc.Certificates = []tls.Certificate{*clientCert}
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(f.t.Context(), http.MethodPost, f.server.URL+path, bytes.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if user != "" || pass != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := hc.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get(errorCodeHeader), string(b)
}

// mustCSR signs tmpl with a new key and returns the DER request.
func mustCSR(t *testing.T, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	k, err := GenerateKey(ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func csrBody(t *testing.T, id string) []byte {
	t.Helper()
	k, err := GenerateKey(ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	der, err := NewCSR(k, id)
	if err != nil {
		t.Fatal(err)
	}
	return base64Body(der)
}

func TestTokenReuseRefused(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token("cam-1")
	first := f.device()
	if _, err := first.Enroll(t.Context(), f.client(), EnrollRequest{DeviceID: "cam-1", Auth: EnrollAuth{Token: tok}}); err != nil {
		t.Fatal(err)
	}
	for _, restart := range []bool{false, true} {
		if restart {
			f.restartRegistrar()
		}
		before := f.registrarState()
		second := f.device()
		_, err := second.Enroll(t.Context(), f.client(), EnrollRequest{DeviceID: "cam-1", Auth: EnrollAuth{Token: tok}})
		if !errors.Is(err, ErrTokenReused) {
			t.Fatalf("restart=%v: second use: %v, want ErrTokenReused", restart, err)
		}
		var se *ServerError
		if !errors.As(err, &se) || se.Status != http.StatusUnauthorized {
			t.Fatalf("restart=%v: %v, want HTTP 401", restart, err)
		}
		if after := f.registrarState(); after != before {
			t.Errorf("restart=%v: refused request changed registrar state", restart)
		}
		if _, err := second.Current(); !errors.Is(err, ErrNoIdentity) {
			t.Errorf("restart=%v: refused device has an identity: %v", restart, err)
		}
		assertNoKeyFiles(t, second.Dir())
	}
}

// assertNoKeyFiles checks that a refused enrollment left no key behind.
func assertNoKeyFiles(t *testing.T, dir string) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "key-*"))
	if len(m) != 0 {
		t.Errorf("refused enrollment left key files %v", m)
	}
}

func TestEnrollRefusals(t *testing.T) {
	f := newFleet(t, nil)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherIssuer := TokenIssuer{Key: otherKey, Time: f.clock.Now}

	tests := []struct {
		name   string
		id     string
		token  func() string
		csrID  string
		status int
		want   error
	}{
		{"token expired", "dev-a", func() string {
			tok := f.token("dev-a")
			f.clock.Advance(DefaultTokenTTL + 2*tokenLeeway)
			return tok
		}, "dev-a", 401, ErrTokenExpired},
		{"token for A presented by B", "dev-b", func() string { return f.token("dev-a") }, "dev-b", 401, ErrNotAuthorized},
		{"CSR for another CN than the token", "dev-a", func() string { return f.token("dev-a") }, "dev-b", 403, ErrNotAuthorized},
		{"token by an unknown key", "dev-a", func() string {
			tok, err := otherIssuer.Issue("dev-a")
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}, "dev-a", 401, ErrTokenInvalid},
		{"unknown key posing as the fleet key ID", "dev-a", func() string {
			return signWith(t, jose.ES256, otherKey, f.issuer.Key, claimsFor(f, "dev-a"))
		}, "dev-a", 401, ErrTokenInvalid},
		{"alg none", "dev-a", func() string { return unsignedToken(f, "dev-a") }, "dev-a", 401, ErrTokenInvalid},
		{"HS256 keyed with the public key", "dev-a", func() string {
			pub, _ := x509.MarshalPKIXPublicKey(f.issuer.Key.Public())
			return signWith(t, jose.HS256, pub, f.issuer.Key, claimsFor(f, "dev-a"))
		}, "dev-a", 401, ErrTokenInvalid},
		{"garbage token", "dev-a", func() string { return "not.a.token" }, "dev-a", 401, ErrTokenInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := f.clock.Now()
			tok := tt.token()
			defer f.clock.Set(start)
			before := f.registrarState()
			status, code, msg := f.post(ESTSimpleEnroll, mediaPKCS10, csrBody(t, tt.csrID), tt.id, tok, nil)
			if status != tt.status || errorForCode(code) != tt.want {
				t.Fatalf("got %d %q (%s), want %d %v", status, code, strings.TrimSpace(msg), tt.status, tt.want)
			}
			if after := f.registrarState(); after != before {
				t.Error("refused request changed registrar state")
			}
			// The token, if any, is still unused: a legitimate retry works
			// unless the token itself was the problem.
		})
	}
}

func claimsFor(f *fleet, id string) jwt.Claims {
	now := f.clock.Now()
	return jwt.Claims{Issuer: "d2c", Subject: id, Audience: jwt.Audience{TokenAudience}, ID: "forged-" + id,
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Hour))}
}

// signWith signs claims with key under alg, claiming the key ID of kidOf.
func signWith(t *testing.T, alg jose.SignatureAlgorithm, key any, kidOf interface{ Public() crypto.PublicKey }, c jwt.Claims) string {
	t.Helper()
	kid, err := KeyID(kidOf.Public())
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key},
		(&jose.SignerOptions{}).WithType(TokenType).WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(c).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func unsignedToken(f *fleet, id string) string {
	kid, _ := KeyID(f.issuer.Key.Public())
	h, _ := json.Marshal(map[string]string{"alg": "none", "typ": TokenType, "kid": kid})
	c, _ := json.Marshal(claimsFor(f, id))
	enc := base64.RawURLEncoding.EncodeToString
	return enc(h) + "." + enc(c) + "."
}

func TestMalformedRequestsRefused(t *testing.T) {
	f := newFleet(t, nil)
	good := csrBody(t, "dev-m")
	tests := []struct {
		name, contentType string
		body              []byte
		status            int
	}{
		{"truncated CSR", mediaPKCS10, good[:len(good)/2], 400},
		{"garbage", mediaPKCS10, []byte("this is not base64 DER!!"), 400},
		{"base64 of garbage", mediaPKCS10, []byte(base64.StdEncoding.EncodeToString([]byte("garbage"))), 400},
		{"empty", mediaPKCS10, nil, 400},
		{"oversized", mediaPKCS10, bytes.Repeat([]byte("A"), 1<<20), 413},
		{"wrong content type", "application/json", good, 415},
		{"CSR with a broken signature", mediaPKCS10, tamperCSR(t, good), 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := f.token("dev-m")
			before := f.registrarState()
			status, _, msg := f.post(ESTSimpleEnroll, tt.contentType, tt.body, "dev-m", tok, nil)
			if status != tt.status {
				t.Fatalf("status %d (%s), want %d", status, strings.TrimSpace(msg), tt.status)
			}
			if after := f.registrarState(); after != before {
				t.Error("refused request changed registrar state")
			}
			// The token was not consumed by the refusal.
			if status, _, msg := f.post(ESTSimpleEnroll, mediaPKCS10, csrBody(t, "dev-m"), "dev-m", tok, nil); status != 200 {
				t.Fatalf("token unusable after a refused request: %d %s", status, msg)
			}
		})
	}
}

// tamperCSR flips a byte of the signature at the end of a base64 CSR.
func tamperCSR(t *testing.T, b64 []byte) []byte {
	der, err := base64.StdEncoding.DecodeString(string(b64))
	if err != nil {
		t.Fatal(err)
	}
	der[len(der)-3] ^= 0x55
	return base64Body(der)
}

func TestRenewalRefusals(t *testing.T) {
	f := newFleet(t, nil)
	storeA, idA := f.enroll("dev-a")
	_, idB := f.enroll("dev-b")

	t.Run("CSR for another device", func(t *testing.T) {
		cert := idA.TLSCertificate()
		before := f.registrarState()
		status, code, _ := f.post(ESTSimpleReenroll, mediaPKCS10, csrBody(t, "dev-b"), "", "", &cert)
		if status != 403 || code != "not-authorized" {
			t.Fatalf("got %d %q, want 403 not-authorized", status, code)
		}
		if f.registrarState() != before {
			t.Error("state changed")
		}
	})
	// RFC 7030 4.2.2: the renewal request's subject and subjectAltName
	// must be identical to the certificate's. A request with only CN=id
	// (the CA issues O=<fleet>, CN=id) or with another SAN is refused.
	for name, der := range map[string][]byte{
		"renewal CSR with another subject": mustCSR(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-a"}, URIs: idA.Certificate().URIs}),
		"renewal CSR without the SAN":      mustCSR(t, &x509.CertificateRequest{RawSubject: idA.Certificate().RawSubject}),
		"renewal CSR with another SAN": mustCSR(t, &x509.CertificateRequest{RawSubject: idA.Certificate().RawSubject,
			URIs: []*url.URL{{Scheme: "urn", Opaque: "d2c:device:dev-a"}, {Scheme: "urn", Opaque: "d2c:device:dev-a2"}}}),
	} {
		t.Run(name, func(t *testing.T) {
			cert := idA.TLSCertificate()
			before := f.registrarState()
			status, code, _ := f.post(ESTSimpleReenroll, mediaPKCS10, base64Body(der), "", "", &cert)
			if status != 403 || code != "not-authorized" {
				t.Fatalf("got %d %q, want 403 not-authorized", status, code)
			}
			if f.registrarState() != before {
				t.Error("state changed")
			}
		})
	}
	t.Run("renewal CSR identical in subject and SAN", func(t *testing.T) {
		k, err := GenerateKey(ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		der, err := NewRenewalCSR(k, idA.Certificate())
		if err != nil {
			t.Fatal(err)
		}
		csr, err := ParseCSR(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkRenewalCSR(csr, idA.Certificate()); err != nil {
			t.Fatal(err)
		}
		cert := idA.TLSCertificate()
		if status, code, _ := f.post(ESTSimpleReenroll, mediaPKCS10, base64Body(der), "", "", &cert); status != 200 {
			t.Fatalf("got %d %q, want 200", status, code)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		status, _, _ := f.post(ESTSimpleReenroll, mediaPKCS10, csrBody(t, "dev-a"), "", "", nil)
		if status != 401 {
			t.Fatalf("got %d, want 401", status)
		}
	})
	t.Run("certificate of another fleet", func(t *testing.T) {
		other := newFleet(t, nil)
		_, idX := other.enroll("dev-a")
		cert := idX.TLSCertificate()
		status, code, _ := f.post(ESTSimpleReenroll, mediaPKCS10, csrBody(t, "dev-a"), "", "", &cert)
		if status != 401 || code != "untrusted" {
			t.Fatalf("got %d %q, want 401 untrusted", status, code)
		}
	})
	t.Run("expired certificate", func(t *testing.T) {
		f.clock.Advance(91 * 24 * time.Hour)
		defer f.clock.Advance(-91 * 24 * time.Hour)
		_, err := storeA.Renew(t.Context(), f.client(), RenewOptions{})
		if !errors.Is(err, ErrCertExpired) {
			t.Fatalf("device renew after expiry: %v, want ErrCertExpired", err)
		}
		// Even if the device opts in, the registrar refuses by default.
		_, err = storeA.Renew(t.Context(), f.client(), RenewOptions{AllowExpired: true})
		if !errors.Is(err, ErrCertExpired) {
			t.Fatalf("registrar accepted an expired certificate: %v", err)
		}
		if cur, err := storeA.Current(); err != nil || cur.Generation != idA.Generation {
			t.Fatalf("refused renewal changed the identity: %v", err)
		}
	})
	t.Run("expired certificate within opt-in grace", func(t *testing.T) {
		g := newFleet(t, func(c *RegistrarConfig) { c.RenewExpiredWithin = 30 * 24 * time.Hour })
		s, id := g.enroll("dev-g")
		g.clock.Advance(95 * 24 * time.Hour)
		renewed, err := s.Renew(t.Context(), g.client(), RenewOptions{AllowExpired: true})
		if err != nil {
			t.Fatal(err)
		}
		if renewed.Generation == id.Generation || !renewed.Certificate().NotAfter.After(g.clock.Now()) {
			t.Fatal("opt-in renewal after expiry did not produce a valid certificate")
		}
		g.clock.Advance(200 * 24 * time.Hour) // past the grace window
		if _, err := s.Renew(t.Context(), g.client(), RenewOptions{AllowExpired: true}); !errors.Is(err, ErrCertExpired) {
			t.Fatalf("renewal past the grace window: %v, want ErrCertExpired", err)
		}
	})
	_ = idB
}

func TestWrongTrustAnchorRefused(t *testing.T) {
	f := newFleet(t, nil)
	other := newFleet(t, nil)

	t.Run("wrong bootstrap fingerprint", func(t *testing.T) {
		s := f.device()
		c := f.client()
		c.BootstrapFingerprint = other.fingerprint()
		_, err := s.Enroll(t.Context(), c, EnrollRequest{DeviceID: "dev-w", Auth: EnrollAuth{Token: f.token("dev-w")}})
		if !errors.Is(err, ErrUntrusted) {
			t.Fatalf("got %v, want ErrUntrusted", err)
		}
		if _, err := s.Anchors(); !errors.Is(err, ErrNoIdentity) {
			t.Errorf("anchors saved despite refusal: %v", err)
		}
		assertNoKeyFiles(t, s.Dir())
	})
	t.Run("anchors of another fleet", func(t *testing.T) {
		c := f.client()
		c.Anchors = []*x509.Certificate{other.ca.Root()}
		if _, err := c.CACerts(t.Context()); !errors.Is(err, ErrUntrusted) {
			t.Fatalf("got %v, want ErrUntrusted", err)
		}
	})
	t.Run("impostor server with the fleet's public CA certificates", func(t *testing.T) {
		// An attacker can copy the fleet's public cacerts, but cannot make
		// its TLS certificate chain to the pinned root.
		c := other.client()
		c.BootstrapFingerprint = f.fingerprint()
		if _, err := c.CACerts(t.Context()); !errors.Is(err, ErrUntrusted) {
			t.Fatalf("got %v, want ErrUntrusted", err)
		}
	})
	t.Run("no anchor at all", func(t *testing.T) {
		c := ESTClient{URL: f.server.URL}
		if _, err := c.CACerts(t.Context()); !errors.Is(err, ErrNoTrustAnchor) {
			t.Fatalf("got %v, want ErrNoTrustAnchor", err)
		}
		c.URL = strings.Replace(f.server.URL, "https", "http", 1)
		c.Anchors = []*x509.Certificate{f.ca.Root()}
		if _, err := c.CACerts(t.Context()); err == nil {
			t.Fatal("plain http accepted")
		}
	})
}

func TestKeyFilePermissionsRefused(t *testing.T) {
	f := newFleet(t, nil)
	s, id := f.enroll("dev-p")
	keyPath := s.keyPath(id.Generation)
	if st, err := os.Stat(keyPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600 (%v)", st.Mode().Perm(), err)
	}
	if st, err := os.Stat(s.Dir()); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("store mode %v, want 0700 (%v)", st.Mode().Perm(), err)
	}
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Current(); !errors.Is(err, ErrKeyPermissions) {
		t.Fatalf("Current with a 0644 key: %v, want ErrKeyPermissions", err)
	}
	if _, err := ReadKeyFile(keyPath); !errors.Is(err, ErrKeyPermissions) {
		t.Fatalf("ReadKeyFile 0644: %v, want ErrKeyPermissions", err)
	}
	if err := os.Chmod(s.Dir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(s.Dir(), StoreConfig{}); !errors.Is(err, ErrKeyPermissions) {
		t.Fatalf("OpenStore on a 0755 directory: %v, want ErrKeyPermissions", err)
	}
}
