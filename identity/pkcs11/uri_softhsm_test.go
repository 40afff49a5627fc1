// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build cgo

package pkcs11_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/pkcs11"
	"github.com/d2c-iot/d2c/internal/testpeer"
)

// tokenURI returns the PKCS#11 URI of the key label in tok, with the PIN
// in a file of the given mode.
func tokenURI(t *testing.T, tok testpeer.SoftHSMToken, label string, pinMode os.FileMode) string {
	t.Helper()
	pinFile := filepath.Join(t.TempDir(), "token.pin")
	if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), pinMode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pinFile, pinMode); err != nil {
		t.Fatal(err)
	}
	return "pkcs11:token=" + url.PathEscape(tok.Label) + ";object=" + url.PathEscape(label) +
		"?module-path=" + url.PathEscape(tok.Module) + "&pin-source=file:" + url.PathEscape(pinFile)
}

// TestOpenURI: the key a URI names signs, and stops signing once closed;
// a PIN file open to others, a missing key and a wrong PIN are refused.
func TestOpenURI(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	ks := openKeystore(t, tok)
	made, err := ks.Create(t.Context(), "uri-key", identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}

	key, closeKey, err := pkcs11.OpenURI(t.Context(), tokenURI(t, tok, "uri-key", 0o600))
	if err != nil {
		t.Fatal(err)
	}
	if !made.Public().(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("OpenURI returned another key")
	}
	digest := sha256.Sum256([]byte("signed through a URI"))
	sig, err := key.Sign(nil, digest[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(made.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatalf("signature: %v", err)
	}
	if err := closeKey(); err != nil {
		t.Fatal(err)
	}
	if _, err := key.Sign(nil, digest[:], crypto.SHA256); !errors.Is(err, pkcs11.ErrClosed) || !errors.Is(err, identity.ErrKeystore) {
		t.Fatalf("signature after close: %v, want ErrClosed and identity.ErrKeystore", err)
	}

	// The id, when given, must be the key's CKA_ID as well.
	for _, tc := range []struct {
		id   string
		want error
	}{
		{";id=" + pctEncode(d2cKeyID("uri-key")), nil},
		{";id=%01", pkcs11.ErrNoKey},
	} {
		uri := strings.Replace(tokenURI(t, tok, "uri-key", 0o600), "?", tc.id+"?", 1)
		_, closeKey, err := pkcs11.OpenURI(t.Context(), uri)
		if !errors.Is(err, tc.want) {
			t.Errorf("id%s: %v, want %v", tc.id, err, tc.want)
		}
		if err == nil {
			_ = closeKey()
		}
	}

	// The token's login is shared by every session of the process, so a
	// wrong PIN shows only once no keystore is open.
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	wrong := tok
	wrong.PIN = "not-the-pin"
	for _, tc := range []struct {
		name, uri string
		want      error
	}{
		{"PIN file readable by the group", tokenURI(t, tok, "uri-key", 0o640), identity.ErrKeyPermissions},
		{"missing key", tokenURI(t, tok, "no-such-key", 0o600), pkcs11.ErrNoKey},
		{"wrong PIN", tokenURI(t, wrong, "uri-key", 0o600), nil},
		{"pin-value", "pkcs11:token=x;object=y?module-path=/m.so&pin-value=1", pkcs11.ErrUnsupportedURI},
	} {
		_, closeKey, err := pkcs11.OpenURI(t.Context(), tc.uri)
		if err == nil {
			_ = closeKey()
			t.Errorf("%s: accepted", tc.name)
		} else if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestCreateNew: CreateNew makes a key under a free label, and refuses,
// destroying nothing, a label that holds a key or any other object.
func TestCreateNew(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	ks := openKeystore(t, tok)
	ctx := t.Context()
	k, err := ks.CreateNew(ctx, "ca-key", identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.CreateNew(ctx, "ca-key", identity.ECDSAP256); !errors.Is(err, pkcs11.ErrKeyExists) {
		t.Fatalf("second CreateNew: %v, want ErrKeyExists", err)
	}
	still, err := ks.Open(ctx, "ca-key")
	if err != nil || !k.Public().(*ecdsa.PublicKey).Equal(still.Public()) {
		t.Fatalf("the first key after a refused CreateNew: %v", err)
	}

	raw := rawSession(t, tok)
	raw.create(t, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_LABEL, "taken"),
		p11.NewAttribute(p11.CKA_VALUE, []byte("someone else's")),
	})
	if _, err := ks.CreateNew(ctx, "taken", identity.ECDSAP256); !errors.Is(err, pkcs11.ErrKeyExists) {
		t.Fatalf("CreateNew over a data object: %v, want ErrKeyExists", err)
	}
	if n := len(raw.find(t, "taken")); n != 1 {
		t.Fatalf("%d objects under the refused label, want the 1 data object", n)
	}
	if _, err := ks.CreateNew(ctx, "ca-key-2", identity.Ed25519); !errors.Is(err, identity.ErrUnsupportedKey) {
		t.Fatalf("Ed25519: %v", err)
	}
}

// TestOpenURIForeignKey: OpenURI opens a key pair that another tool
// generated in the token (here through the raw PKCS#11 API, as
// "pkcs11-tool --keypairgen --sensitive --label ts-1 --id 01" does), by its
// label alone or with its id, and still refuses one that could be
// exported.
func TestOpenURIForeignKey(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	ks := openKeystore(t, tok)
	raw := rawSession(t, tok)
	p256 := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07} // OID 1.2.840.10045.3.1.7
	generate := func(label string, extractable bool) {
		t.Helper()
		_, _, err := raw.ctx.GenerateKeyPair(raw.sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_EC_KEY_PAIR_GEN, nil)},
			[]*p11.Attribute{
				p11.NewAttribute(p11.CKA_TOKEN, true),
				p11.NewAttribute(p11.CKA_EC_PARAMS, p256),
				p11.NewAttribute(p11.CKA_VERIFY, true),
				p11.NewAttribute(p11.CKA_LABEL, label),
				p11.NewAttribute(p11.CKA_ID, []byte{1}),
			},
			[]*p11.Attribute{
				p11.NewAttribute(p11.CKA_TOKEN, true),
				p11.NewAttribute(p11.CKA_PRIVATE, true),
				p11.NewAttribute(p11.CKA_SIGN, true),
				p11.NewAttribute(p11.CKA_SENSITIVE, true),
				p11.NewAttribute(p11.CKA_EXTRACTABLE, extractable),
				p11.NewAttribute(p11.CKA_LABEL, label),
				p11.NewAttribute(p11.CKA_ID, []byte{1}),
			})
		if err != nil {
			t.Fatal(err)
		}
	}
	generate("ts-1", false)
	generate("exportable", true)
	if _, err := ks.Open(t.Context(), "ts-1"); !errors.Is(err, pkcs11.ErrNoKey) {
		t.Fatalf("Keystore.Open of a key it did not make: %v, want ErrNoKey", err)
	}
	for _, uri := range []string{tokenURI(t, tok, "ts-1", 0o600), strings.Replace(tokenURI(t, tok, "ts-1", 0o600), "?", ";id=%01?", 1)} {
		key, closeKey, err := pkcs11.OpenURI(t.Context(), uri)
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		digest := sha256.Sum256([]byte("timestamp"))
		sig, err := key.Sign(nil, digest[:], crypto.SHA256)
		if err != nil || !ecdsa.VerifyASN1(key.Public().(*ecdsa.PublicKey), digest[:], sig) {
			t.Fatalf("signature: %v", err)
		}
		if err := closeKey(); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := pkcs11.OpenURI(t.Context(), tokenURI(t, tok, "exportable", 0o600)); !errors.Is(err, pkcs11.ErrNotHardwareKey) {
		t.Fatalf("an extractable key: %v, want ErrNotHardwareKey", err)
	}
}

// d2cKeyID is the CKA_ID the keystore gives the key under label, as the
// package documentation states it.
func d2cKeyID(label string) []byte {
	sum := sha256.Sum256([]byte("d2c key id\x00" + label))
	return sum[:16]
}

// pctEncode percent-encodes every byte of b.
func pctEncode(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		fmt.Fprintf(&s, "%%%02x", c)
	}
	return s.String()
}
