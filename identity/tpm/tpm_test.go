// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package tpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
)

// TestCreateOpenDelete: a key is created in the TPM and saved as a TSS2
// key file (0600); opened again it is the same key; deleted, its file is
// gone and every copy of the signer refuses to sign.
func TestCreateOpenDelete(t *testing.T) {
	sw := testpeer.SWTPM(t)
	ks := openTest(t, sw)
	ctx := t.Context()
	k, err := ks.Create(ctx, "dev-00000001", identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(ks.dir, "dev-00000001.key")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(ks.dir); di.Mode().Perm() != 0o700 {
		t.Errorf("key directory mode %04o, want 0700", di.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if block, _ := pem.Decode(b); block == nil || block.Type != "TSS2 PRIVATE KEY" {
		t.Fatalf("key file is not a TSS2 key file:\n%s", b)
	}
	opened, err := ks.Open(ctx, "dev-00000001")
	if err != nil {
		t.Fatal(err)
	}
	if !opened.Public().(*ecdsa.PublicKey).Equal(k.Public()) {
		t.Fatal("opened key differs from the created one")
	}
	// Two keys, alternating: each signature loads the other key in the
	// one slot the keystore uses.
	k2, err := ks.Create(ctx, "dev-00000002", identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		for _, s := range []crypto.Signer{k, k2, opened} {
			mustVerify(t, s)
		}
	}

	if err := ks.Delete(ctx, "dev-00000001"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("key file after Delete: %v", err)
	}
	for _, s := range []crypto.Signer{k, opened} {
		if _, err := sign(s); err == nil {
			t.Fatal("a deleted key still signs")
		}
	}
	mustVerify(t, k2)
	if _, err := ks.Open(ctx, "dev-00000001"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open after Delete: %v, want fs.ErrNotExist", err)
	}
	if err := ks.Delete(ctx, "dev-00000001"); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}

	// Create replaces a key left under the same label.
	k3, err := ks.Create(ctx, "dev-00000002", identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if k3.Public().(*ecdsa.PublicKey).Equal(k2.Public()) {
		t.Fatal("Create returned the old key")
	}
	if _, err := sign(k2); err == nil {
		t.Fatal("a replaced key still signs")
	}
	mustVerify(t, k3)
	// The keystore holds at most the SRK and one key in the TPM.
	if n := transientHandles(t, ks.tpm); n != 2 {
		t.Errorf("%d transient objects loaded, want 2 (SRK and the last key)", n)
	}
	if err := ks.Delete(ctx, "dev-00000002"); err != nil {
		t.Fatal(err)
	}
	if n := transientHandles(t, ks.tpm); n != 1 {
		t.Errorf("%d transient objects loaded after Delete, want 1 (SRK)", n)
	}
	if k3, err = ks.Create(ctx, "dev-00000002", identity.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, k3)

	// Refusals.
	if _, err := ks.Create(ctx, "ed", identity.Ed25519); !errors.Is(err, identity.ErrUnsupportedKey) {
		t.Fatalf("Ed25519: %v, want ErrUnsupportedKey", err)
	}
	for _, label := range []string{"", "../x", "a/b", ".hidden", strings.Repeat("a", 200), "a\x00"} {
		if _, err := ks.Create(ctx, label, identity.ECDSAP256); err == nil {
			t.Errorf("label %q accepted", label)
		}
	}
	if entries, _ := os.ReadDir(ks.dir); len(entries) != 1 {
		t.Errorf("key directory holds %d entries, want 1", len(entries))
	}

	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := sign(k3); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sign after Close: %v, want ErrClosed", err)
	}
	if _, err := ks.Open(ctx, "dev-00000002"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Open after Close: %v, want ErrClosed", err)
	}
	if err := ks.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// swtpm has no resource manager: what a client leaves loaded stays.
	conn, err := dialStream(sw.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if n := transientHandles(t, conn); n != 0 {
		t.Errorf("%d transient objects left loaded after Close", n)
	}
}

// transientHandles counts the transient objects loaded in the TPM.
func transientHandles(t *testing.T, tp transport.TPM) int {
	t.Helper()
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapHandles,
		Property:      uint32(tpm2.TPMHTTransient) << 24,
		PropertyCount: 64,
	}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	h, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	return len(h.Handle)
}

func sign(s crypto.Signer) ([]byte, error) {
	d := sha256.Sum256([]byte("d2c"))
	return s.Sign(rand.Reader, d[:], crypto.SHA256)
}

func mustVerify(t *testing.T, s crypto.Signer) {
	t.Helper()
	d := sha256.Sum256([]byte("d2c"))
	sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature does not verify")
	}
}

// TestSign: signatures are DER ECDSA over the digest that verify with the
// public key; other hashes and wrong digest lengths are refused; the
// keystore is safe for concurrent signers.
func TestSign(t *testing.T) {
	ks := openTest(t, testpeer.SWTPM(t))
	k, err := ks.Create(t.Context(), "sign", identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("telemetry record")
	d := sha256.Sum256(msg)
	sig, err := k.Sign(nil, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pub := k.Public().(*ecdsa.PublicKey)
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatal("signature does not verify")
	}
	other := sha256.Sum256([]byte("another record"))
	if ecdsa.VerifyASN1(pub, other[:], sig) {
		t.Fatal("signature verifies for another digest")
	}
	d384 := sha512.Sum384(msg)
	if _, err := k.Sign(nil, d384[:], crypto.SHA384); err == nil {
		t.Error("SHA-384 accepted")
	}
	if _, err := k.Sign(nil, d[:20], crypto.SHA256); err == nil {
		t.Error("short digest accepted")
	}
	if _, err := k.Sign(nil, d[:], nil); err == nil {
		t.Error("nil opts accepted")
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 5 {
				sig, err := k.Sign(nil, d[:], crypto.SHA256)
				if err != nil || !ecdsa.VerifyASN1(pub, d[:], sig) {
					t.Errorf("concurrent Sign: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestKeyBoundToTPM: a key file copied to another TPM cannot be loaded
// there; the key only exists on the TPM that made it.
func TestKeyBoundToTPM(t *testing.T) {
	a := openTest(t, testpeer.SWTPM(t))
	b := openTest(t, testpeer.SWTPM(t))
	if _, err := a.Create(t.Context(), "bound", identity.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(a.dir, "bound.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.dir, "bound.key"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := b.Open(t.Context(), "bound"); err == nil {
		_, serr := sign(k)
		t.Fatalf("the key loaded on another TPM (sign: %v)", serr)
	} else {
		t.Logf("Open on another TPM: %v", err)
	}
	// Still fine on its own TPM.
	k, err := a.Open(t.Context(), "bound")
	if err != nil {
		t.Fatal(err)
	}
	mustVerify(t, k)
}

// TestKeyFileRefusals: a key file that is not what this package writes is
// refused before it reaches the TPM.
func TestKeyFileRefusals(t *testing.T) {
	ks := openTest(t, testpeer.SWTPM(t))
	if _, err := ks.Create(t.Context(), "good", identity.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(filepath.Join(ks.dir, "good.key"))
	if err != nil {
		t.Fatal(err)
	}
	blob, err := parseKeyFile(good)
	if err != nil {
		t.Fatal(err)
	}
	again, err := marshalKeyFile(blob)
	if err != nil || string(again) != string(good) {
		t.Fatalf("key file does not round-trip: %v", err)
	}
	block, _ := pem.Decode(good)
	cases := map[string][]byte{
		"empty":         nil,
		"pkcs8":         pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: block.Bytes}),
		"trailing pem":  append(append([]byte{}, good...), good...),
		"truncated der": pem.EncodeToMemory(&pem.Block{Type: keyFilePEMType, Bytes: block.Bytes[:len(block.Bytes)-5]}),
		"trailing der":  pem.EncodeToMemory(&pem.Block{Type: keyFilePEMType, Bytes: append(append([]byte{}, block.Bytes...), 0)}),
		"too large":     make([]byte, maxKeyFile+1),
	}
	for name, data := range cases {
		if err := os.WriteFile(filepath.Join(ks.dir, "bad.key"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ks.Open(t.Context(), "bad"); err == nil {
			t.Errorf("%s: key file accepted", name)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	for _, cfg := range []Config{
		{},
		{Device: "/dev/tpmrm0", Addr: "127.0.0.1:1", Dir: dir},
	} {
		if _, err := Open(cfg); err == nil {
			t.Errorf("Open(%+v) succeeded", cfg)
		}
	}
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Addr: "127.0.0.1:1", Dir: open}); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Errorf("a key directory others can read: %v", err)
	}
	if _, err := Open(Config{Device: filepath.Join(dir, "no-tpm"), Dir: filepath.Join(dir, "keys")}); err == nil {
		t.Error("a missing device opened")
	}
}
