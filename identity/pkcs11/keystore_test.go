// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/pkcs11"
	"github.com/d2c-iot/d2c/internal/testpeer"
)

// TestCreateOpenDelete: a key is created in the token, found again by its
// label, replaced (with whatever else was under the label) by a second
// Create, and destroyed by Delete; a second Delete is not an error.
func TestCreateOpenDelete(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	ks := openKeystore(t, tok)
	ctx := t.Context()
	const label = "cod-00000001"

	k1, err := ks.Create(ctx, label, identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	pub1 := k1.Public().(*ecdsa.PublicKey)
	opened, err := ks.Open(ctx, label)
	if err != nil {
		t.Fatal(err)
	}
	if !pub1.Equal(opened.Public()) {
		t.Fatal("Open returned another key than Create")
	}
	digest := sha256.Sum256([]byte("opened key signs"))
	sig, err := opened.Sign(nil, digest[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(pub1, digest[:], sig) {
		t.Fatalf("signature of the opened key: %v", err)
	}

	// Anything left under the label (here a data object, as a crash or
	// another tool might leave) is replaced by the next Create.
	raw := rawSession(t, tok)
	raw.create(t, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_VALUE, []byte("stale")),
	})
	if n := len(raw.find(t, label)); n != 3 {
		t.Fatalf("%d objects under the label before replacing, want 3", n)
	}
	k2, err := ks.Create(ctx, label, identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if pub1.Equal(k2.Public()) {
		t.Fatal("the replacing key is the old key")
	}
	if n := len(raw.find(t, label)); n != 2 {
		t.Fatalf("%d objects under the label after replacing, want 2 (one key pair)", n)
	}
	if opened, err := ks.Open(ctx, label); err != nil || !k2.Public().(*ecdsa.PublicKey).Equal(opened.Public()) {
		t.Fatalf("Open after replacing: %v", err)
	}

	if err := ks.Delete(ctx, label); err != nil {
		t.Fatal(err)
	}
	if n := len(raw.find(t, label)); n != 0 {
		t.Fatalf("%d objects under the label after Delete", n)
	}
	if _, err := ks.Open(ctx, label); !errors.Is(err, pkcs11.ErrNoKey) {
		t.Fatalf("Open after Delete: %v, want ErrNoKey", err)
	}
	if err := ks.Delete(ctx, label); err != nil {
		t.Fatalf("Delete of a missing key: %v", err)
	}
}

// TestCreateRefusals: Ed25519 (which the keystore does not make), bad
// labels and a cancelled context are refused before the token is
// touched.
func TestCreateRefusals(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	ks := openKeystore(t, tok)
	raw := rawSession(t, tok)
	if _, err := ks.Create(t.Context(), "refused-ed25519", identity.Ed25519); !errors.Is(err, identity.ErrUnsupportedKey) || !strings.Contains(err.Error(), "ECDSA P-256") {
		t.Fatalf("Ed25519: %v, want ErrUnsupportedKey", err)
	}
	if n := len(raw.find(t, "refused-ed25519")); n != 0 {
		t.Fatalf("a refused Create left %d objects", n)
	}
	for _, label := range []string{"", strings.Repeat("x", 129), "nul\x00label", "\xff"} {
		if _, err := ks.Create(t.Context(), label, identity.ECDSAP256); err == nil {
			t.Errorf("label %q accepted", label)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := ks.Create(ctx, "refused-ctx", identity.ECDSAP256); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

// TestSign: the signer returns ASN.1 DER signatures that crypto/ecdsa
// verifies, randomized, for SHA-256 and SHA-384 digests; it refuses a
// digest that does not match its hash, and a message passed without one.
func TestSign(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	ks := openKeystore(t, tok)
	k, err := ks.Create(t.Context(), "sign-00000001", identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ks.Delete(context.Background(), "sign-00000001") })
	pub := k.Public().(*ecdsa.PublicKey)

	d256 := sha256.Sum256([]byte("telemetry record"))
	sig1, err := k.Sign(nil, d256[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	sig2, err := k.Sign(nil, d256[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub, d256[:], sig1) || !ecdsa.VerifyASN1(pub, d256[:], sig2) {
		t.Fatal("signature does not verify with the public key (not ASN.1 DER?)")
	}
	if bytes.Equal(sig1, sig2) {
		t.Fatal("two signatures of one digest are equal: the token's nonce is not random")
	}
	other := sha256.Sum256([]byte("another record"))
	if ecdsa.VerifyASN1(pub, other[:], sig1) {
		t.Fatal("signature verifies for another digest")
	}
	d384 := sha512.Sum384([]byte("telemetry record"))
	if sig, err := k.Sign(nil, d384[:], crypto.SHA384); err != nil || !ecdsa.VerifyASN1(pub, d384[:], sig) {
		t.Fatalf("SHA-384 digest: %v", err)
	}

	if _, err := k.Sign(nil, d256[:], crypto.SHA384); err == nil {
		t.Error("a 32-byte digest signed as SHA-384")
	}
	if _, err := k.Sign(nil, []byte("a message, not a digest"), crypto.Hash(0)); err == nil {
		t.Error("a message signed without a hash")
	}
	if _, err := k.Sign(nil, d256[:], nil); err == nil {
		t.Error("nil opts accepted")
	}
}

// TestKeyNotExportable: the private key's attributes make the token refuse
// every export attempt through the raw PKCS#11 API, by a caller logged in
// with the user PIN: reading CKA_VALUE, wrapping it under a key of the
// caller's choice, and turning the protecting attributes off.
func TestKeyNotExportable(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	ks := openKeystore(t, tok)
	const label = "export-00000001"
	k, err := ks.Create(t.Context(), label, identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ks.Delete(context.Background(), label) })
	raw := rawSession(t, tok)
	priv := raw.privateKey(t, label)

	want := map[uint]bool{
		p11.CKA_TOKEN: true, p11.CKA_PRIVATE: true, p11.CKA_SENSITIVE: true, p11.CKA_ALWAYS_SENSITIVE: true,
		p11.CKA_NEVER_EXTRACTABLE: true, p11.CKA_LOCAL: true, p11.CKA_SIGN: true,
		p11.CKA_EXTRACTABLE: false, p11.CKA_DERIVE: false, p11.CKA_DECRYPT: false, p11.CKA_UNWRAP: false,
	}
	var tmpl []*p11.Attribute
	for a := range want {
		tmpl = append(tmpl, p11.NewAttribute(a, nil))
	}
	attrs, err := raw.ctx.GetAttributeValue(raw.sh, priv, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range attrs {
		if got := len(a.Value) == 1 && a.Value[0] != 0; got != want[a.Type] {
			t.Errorf("attribute 0x%x is %v, want %v", a.Type, got, want[a.Type])
		}
	}
	idAttr, err := raw.ctx.GetAttributeValue(raw.sh, priv, []*p11.Attribute{p11.NewAttribute(p11.CKA_ID, nil)})
	if wantID := sha256.Sum256([]byte("d2c key id\x00" + label)); err != nil || !bytes.Equal(idAttr[0].Value, wantID[:16]) {
		t.Errorf("CKA_ID %x, %v: not derived from the label as documented", idAttr[0].Value, err)
	}

	// The key export attempts, each refused by the key's attributes.
	if _, err := raw.ctx.GetAttributeValue(raw.sh, priv, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)}); !errors.Is(err, p11.Error(p11.CKR_ATTRIBUTE_SENSITIVE)) {
		t.Errorf("reading CKA_VALUE: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
	}
	wrapKey, err := raw.ctx.GenerateKey(raw.sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_TOKEN, false),
		p11.NewAttribute(p11.CKA_WRAP, true),
		p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.ctx.WrapKey(raw.sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}, wrapKey, priv); !errors.Is(err, p11.Error(p11.CKR_KEY_UNEXTRACTABLE)) {
		t.Errorf("wrapping the key: %v, want CKR_KEY_UNEXTRACTABLE", err)
	}
	for _, a := range []*p11.Attribute{p11.NewAttribute(p11.CKA_EXTRACTABLE, true), p11.NewAttribute(p11.CKA_SENSITIVE, false)} {
		if err := raw.ctx.SetAttributeValue(raw.sh, priv, []*p11.Attribute{a}); err == nil {
			t.Errorf("attribute 0x%x could be changed", a.Type)
		}
	}
	// The key still works.
	d := sha256.Sum256([]byte("still here"))
	if sig, err := k.Sign(nil, d[:], crypto.SHA256); err != nil || !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("sign after the export attempts: %v", err)
	}
}

// TestOpenRefusesExportableKey: a key pair under the label that could
// leave the token (made outside this package, extractable and not
// sensitive) is never used as a device key.
func TestOpenRefusesExportableKey(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	ks := openKeystore(t, tok)
	const label = "soft-00000001"
	raw := rawSession(t, tok)
	id := sha256.Sum256([]byte("d2c key id\x00" + label))
	p256 := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07} // OID 1.2.840.10045.3.1.7
	_, _, err := raw.ctx.GenerateKeyPair(raw.sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_EC_KEY_PAIR_GEN, nil)},
		[]*p11.Attribute{
			p11.NewAttribute(p11.CKA_TOKEN, true), p11.NewAttribute(p11.CKA_VERIFY, true),
			p11.NewAttribute(p11.CKA_EC_PARAMS, p256), p11.NewAttribute(p11.CKA_LABEL, label), p11.NewAttribute(p11.CKA_ID, id[:16]),
		},
		[]*p11.Attribute{
			p11.NewAttribute(p11.CKA_TOKEN, true), p11.NewAttribute(p11.CKA_PRIVATE, true), p11.NewAttribute(p11.CKA_SIGN, true),
			p11.NewAttribute(p11.CKA_SENSITIVE, false), p11.NewAttribute(p11.CKA_EXTRACTABLE, true),
			p11.NewAttribute(p11.CKA_LABEL, label), p11.NewAttribute(p11.CKA_ID, id[:16]),
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ks.Delete(context.Background(), label) })
	if _, err := ks.Open(t.Context(), label); !errors.Is(err, pkcs11.ErrNotHardwareKey) {
		t.Fatalf("Open of an exportable key: %v, want ErrNotHardwareKey", err)
	}
}

// TestOpenErrors: a wrong PIN, a missing token and a closed keystore are
// errors that never show the PIN.
func TestOpenErrors(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	cfg := config(tok)
	cfg.PIN = "wrong-pin-31337"
	_, err := pkcs11.Open(cfg)
	if err == nil || !strings.Contains(err.Error(), "CKR_PIN_INCORRECT") || strings.Contains(err.Error(), cfg.PIN) {
		t.Fatalf("wrong PIN: %v", err)
	}
	cfg = config(tok)
	cfg.TokenLabel = "no-such-token"
	if _, err := pkcs11.Open(cfg); err == nil || strings.Contains(err.Error(), tok.PIN) {
		t.Fatalf("missing token: %v", err)
	}
	// The PIN from a file.
	cfg = config(tok)
	cfg.PINFile = filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(cfg.PINFile, []byte(cfg.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.PIN = ""
	ks, err := pkcs11.Open(cfg)
	if err != nil {
		t.Fatalf("PIN file: %v", err)
	}
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ks.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := ks.Create(t.Context(), "closed", identity.ECDSAP256); !errors.Is(err, pkcs11.ErrClosed) {
		t.Fatalf("Create after Close: %v", err)
	}
	if _, err := ks.Open(t.Context(), "closed"); !errors.Is(err, pkcs11.ErrClosed) {
		t.Fatalf("Open after Close: %v", err)
	}
}

// TestEnrollMutualTLSRenew: a device store whose keys live in the token
// enrolls with the registrar, proves its key in a TLS 1.3 handshake
// requiring a client certificate, survives a reopen of the token, and
// renews: the old key is destroyed in the token.
func TestEnrollMutualTLSRenew(t *testing.T) {
	f := newFleet(t)
	tok := testpeer.SoftHSM(t)
	ks := openKeystore(t, tok)
	dir := filepath.Join(t.TempDir(), "device")
	store, err := identity.OpenStore(dir, identity.StoreConfig{Keys: ks, KeyLabelPrefix: "enroll"})
	if err != nil {
		t.Fatal(err)
	}
	id, err := store.Enroll(t.Context(), f.est, identity.EnrollRequest{DeviceID: "hsm-1", Auth: identity.EnrollAuth{Token: f.token(t, "hsm-1")}})
	if err != nil {
		t.Fatal(err)
	}
	noKeyFiles(t, dir)
	if cn, err := f.handshake(t, id); err != nil || cn != "hsm-1" {
		t.Fatalf("mutual TLS with the token key: server saw %q, %v", cn, err)
	}

	// Reopened (store and token), the identity comes from the token.
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	ks = openKeystore(t, tok)
	store, err = identity.OpenStore(dir, identity.StoreConfig{Keys: ks, KeyLabelPrefix: "enroll"})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := store.Current()
	if err != nil || !cur.Certificate().Equal(id.Certificate()) {
		t.Fatalf("Current after reopening: %v", err)
	}
	if cn, err := f.handshake(t, cur); err != nil || cn != "hsm-1" {
		t.Fatalf("mutual TLS after reopening: %q, %v", cn, err)
	}

	renewed, err := store.Renew(t.Context(), f.est, identity.RenewOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Generation != 2 || renewed.Key.Public().(*ecdsa.PublicKey).Equal(id.Key.Public()) {
		t.Fatalf("renewal kept the key (generation %d)", renewed.Generation)
	}
	if _, err := ks.Open(t.Context(), "enroll-00000001"); !errors.Is(err, pkcs11.ErrNoKey) {
		t.Fatalf("old key after renewal: %v, want ErrNoKey", err)
	}
	raw := rawSession(t, tok)
	if n := len(raw.find(t, "enroll-00000001")); n != 0 {
		t.Fatalf("%d objects of the old key remain in the token", n)
	}
	if cn, err := f.handshake(t, renewed); err != nil || cn != "hsm-1" {
		t.Fatalf("mutual TLS after renewal: %q, %v", cn, err)
	}
	noKeyFiles(t, dir)
	if err := ks.Delete(t.Context(), "enroll-00000002"); err != nil {
		t.Fatal(err)
	}
}

// TestTokenKilled: the token goes away under a running device, twice:
// the keystore is closed while signatures are in flight, then the token's
// storage is deleted. Every failure reaches the caller (wrapping
// identity.ErrKeystore), every signature made verifies, and the store
// never falls back to a key file.
func TestTokenKilled(t *testing.T) {
	f := newFleet(t)
	tok := testpeer.SoftHSM(t)
	ks, err := pkcs11.Open(config(tok))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ks.Close() })
	dir := filepath.Join(t.TempDir(), "device")
	store, err := identity.OpenStore(dir, identity.StoreConfig{Keys: ks})
	if err != nil {
		t.Fatal(err)
	}
	id, err := store.Enroll(t.Context(), f.est, identity.EnrollRequest{DeviceID: "hsm-kill", Auth: identity.EnrollAuth{Token: f.token(t, "hsm-kill")}})
	if err != nil {
		t.Fatal(err)
	}
	pub := id.Key.Public().(*ecdsa.PublicKey)

	// 1. Closed mid-signing: signers running on two goroutines.
	var signed atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				d := sha256.Sum256(fmt.Appendf(nil, "record %d.%d", i, n))
				sig, err := id.Key.Sign(nil, d[:], crypto.SHA256)
				if err != nil {
					errs[i] = err
					return
				}
				if !ecdsa.VerifyASN1(pub, d[:], sig) {
					errs[i] = errors.New("a signature made while closing does not verify")
					return
				}
				signed.Add(1)
			}
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); signed.Load() < 20 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for _, err := range errs {
		if !errors.Is(err, identity.ErrKeystore) || !errors.Is(err, pkcs11.ErrClosed) {
			t.Fatalf("signer after Close: %v, want ErrKeystore and ErrClosed", err)
		}
	}
	if _, err := store.Current(); !errors.Is(err, identity.ErrKeystore) {
		t.Fatalf("Current with the keystore closed: %v, want ErrKeystore", err)
	}
	if _, err := store.Renew(t.Context(), f.est, identity.RenewOptions{}); !errors.Is(err, identity.ErrKeystore) {
		t.Fatalf("Renew with the keystore closed: %v, want ErrKeystore", err)
	}
	if _, err := f.handshake(t, id); err == nil {
		t.Fatal("TLS handshake succeeded with a closed keystore")
	}
	noKeyFiles(t, dir)

	// 2. The token's storage deleted under an open keystore.
	ks = openKeystore(t, tok)
	store, err = identity.OpenStore(dir, identity.StoreConfig{Keys: ks})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := store.Current()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(tok.Dir); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("after the token is gone"))
	if _, err := cur.Key.Sign(nil, d[:], crypto.SHA256); !errors.Is(err, identity.ErrKeystore) {
		t.Fatalf("sign with the token gone: %v, want ErrKeystore", err)
	}
	if _, err := store.Current(); !errors.Is(err, identity.ErrKeystore) {
		t.Fatalf("Current with the token gone: %v, want ErrKeystore", err)
	}
	if _, err := store.Renew(t.Context(), f.est, identity.RenewOptions{}); !errors.Is(err, identity.ErrKeystore) {
		t.Fatalf("Renew with the token gone: %v, want ErrKeystore", err)
	}
	if _, err := f.handshake(t, cur); err == nil {
		t.Fatal("TLS handshake succeeded with the token gone")
	}
	noKeyFiles(t, dir)
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := pkcs11.Open(config(tok)); err == nil || !strings.Contains(err.Error(), tok.Label) {
		t.Fatalf("Open of a deleted token: %v", err)
	}
}

func noKeyFiles(t *testing.T, dir string) {
	t.Helper()
	if m, _ := filepath.Glob(filepath.Join(dir, "key-*.pem")); len(m) != 0 {
		t.Fatalf("a software key file appeared: %v", m)
	}
}

// fleet is a minimal cloud half built from the public API: a CA, a token
// issuer, and a registrar over HTTPS on 127.0.0.1.
type fleet struct {
	ca         *identity.CA
	issuer     identity.TokenIssuer
	est        identity.ESTClient
	serverCert tls.Certificate
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{Fleet: "pkcs11 test fleet"})
	if err != nil {
		t.Fatal(err)
	}
	tokenKey, err := identity.ReadKeyFile(filepath.Join(dir, "ca", identity.CATokenKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	used, err := identity.OpenUsedTokens(filepath.Join(dir, "used-tokens.state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, UsedTokens: used})
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.IssueServer(srvKey.Public(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{ca: ca, issuer: identity.TokenIssuer{Key: tokenKey},
		serverCert: tls.Certificate{Certificate: [][]byte{srvCert.Raw, ca.Issuing().Raw}, PrivateKey: srvKey}}
	srv := httptest.NewUnstartedServer(reg)
	srv.TLS = reg.TLSConfig(f.serverCert)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	fp := sha256.Sum256(ca.Root().Raw)
	f.est = identity.ESTClient{URL: srv.URL, BootstrapFingerprint: fp[:]}
	return f
}

func (f *fleet) token(t *testing.T, id string) string {
	t.Helper()
	tok, err := f.issuer.Issue(id)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// handshake runs a TLS 1.3 handshake between the device identity and a
// server on 127.0.0.1 that requires a client certificate from the fleet,
// and returns the device ID the server authenticated. The device's
// CertificateVerify is signed by its key.
func (f *fleet) handshake(t *testing.T, id *identity.Identity) (string, error) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Root())
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{f.serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type result struct {
		cn  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			done <- result{err: fmt.Errorf("server: %w", err)}
			return
		}
		st := tc.ConnectionState()
		if st.Version != tls.VersionTLS13 {
			done <- result{err: fmt.Errorf("server: TLS version %x", st.Version)}
			return
		}
		_, _ = tc.Write([]byte("ok"))
		done <- result{cn: st.PeerCertificates[0].Subject.CommonName}
	}()
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(dialer, "tcp", l.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{id.TLSCertificate()},
		RootCAs:      roots,
		ServerName:   "127.0.0.1",
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		l.Close()
		<-done
		return "", fmt.Errorf("client: %w", err)
	}
	defer c.Close()
	// In TLS 1.3 the client finishes first; reading waits for the
	// server's verdict on the client certificate.
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2)
	_, rerr := c.Read(buf)
	r := <-done
	if r.err != nil {
		return "", r.err
	}
	if rerr != nil {
		return "", fmt.Errorf("client: %w", rerr)
	}
	return r.cn, nil
}

// rawToken is a session on the token through the plain PKCS#11 API, opened
// the way any program holding the user PIN could, to look at and attack
// the objects the keystore made. It shares the module already loaded by
// the test's keystore (which must be open) and never finalizes it.
type rawToken struct {
	ctx *p11.Ctx
	sh  p11.SessionHandle
}

func rawSession(t *testing.T, tok testpeer.SoftHSMToken) *rawToken {
	t.Helper()
	ctx := p11.New(tok.Module)
	if ctx == nil {
		t.Fatal("cannot load the PKCS#11 module")
	}
	if err := ctx.Initialize(); !errors.Is(err, p11.Error(p11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		if err == nil {
			_ = ctx.Finalize()
		}
		ctx.Destroy()
		t.Fatalf("rawSession: the module should be loaded by an open keystore: Initialize: %v", err)
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if info, err := ctx.GetTokenInfo(s); err != nil || info.Label != tok.Label {
			continue
		}
		sh, err := ctx.OpenSession(s, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		if err := ctx.Login(sh, p11.CKU_USER, tok.PIN); err != nil && !errors.Is(err, p11.Error(p11.CKR_USER_ALREADY_LOGGED_IN)) {
			t.Fatal(err)
		}
		r := &rawToken{ctx: ctx, sh: sh}
		t.Cleanup(func() {
			_ = ctx.CloseSession(sh)
			ctx.Destroy()
		})
		return r
	}
	ctx.Destroy()
	t.Fatalf("rawSession: no token %q", tok.Label)
	return nil
}

// find returns every object labelled label.
func (r *rawToken) find(t *testing.T, label string, more ...*p11.Attribute) []p11.ObjectHandle {
	t.Helper()
	if err := r.ctx.FindObjectsInit(r.sh, append([]*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, label)}, more...)); err != nil {
		t.Fatal(err)
	}
	hs, _, err := r.ctx.FindObjects(r.sh, 100)
	if ferr := r.ctx.FindObjectsFinal(r.sh); err == nil {
		err = ferr
	}
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

// privateKey returns the one private key labelled label.
func (r *rawToken) privateKey(t *testing.T, label string) p11.ObjectHandle {
	t.Helper()
	hs := r.find(t, label, p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY))
	if len(hs) != 1 {
		t.Fatalf("%d private keys labelled %q, want 1", len(hs), label)
	}
	return hs[0]
}

func (r *rawToken) create(t *testing.T, tmpl []*p11.Attribute) {
	t.Helper()
	if _, err := r.ctx.CreateObject(r.sh, tmpl); err != nil {
		t.Fatal(err)
	}
}
