// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/pkcs11"
	"github.com/d2c-iot/d2c/internal/testpeer"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testpeer.RemoveSoftHSM()
	os.Exit(code)
}

// TestRun runs the program with each keystore, the hardware ones on
// softhsm2 and swtpm, and checks each step of its narration and what it
// leaves on disk and in the keystore.
func TestRun(t *testing.T) {
	for _, kind := range []string{"file", "pkcs11", "tpm"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			args := []string{"--keys", kind, "--dir", dir}
			var tok testpeer.SoftHSMToken
			switch kind {
			case "pkcs11":
				tok = testpeer.SoftHSM(t)
				pinFile := filepath.Join(t.TempDir(), "pin")
				if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--pkcs11-module", tok.Module, "--pkcs11-token", tok.Label, "--pkcs11-pin-file", pinFile)
			case "tpm":
				args = append(args, "--tpm-sim", testpeer.SWTPM(t).Addr)
			}
			var out bytes.Buffer
			err := run(t.Context(), args, &out)
			if kind == "pkcs11" && !withCgo {
				// Built without cgo: a clear error, never a software key.
				if err == nil || !strings.Contains(err.Error(), "built without cgo") {
					t.Fatalf("run without cgo: %v, want the no-cgo error", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("run %v: %v\noutput:\n%s", args, err, out.String())
			}
			in := map[string]string{"file": "with the key file", "pkcs11": "inside the token", "tpm": "inside the TPM"}[kind]
			steps := []string{
				"[1] Device: keystore open",
				"[2] Cloud: fleet CA, EST registrar on https://127.0.0.1:",
				"[3] Device: generated its key ",
				"certificate: CN=" + deviceID,
				"[4] Device: connected to the broker with mutual TLS 1.3; its CertificateVerify was signed " + in,
				"gateway-0001/temperature boot 1 seq 0: {\"celsius\":21.5}",
				"gateway-0001/temperature boot 1 seq 2: {\"celsius\":22.0}",
				"[5] Device: renewed",
				"[6] Device: reconnected with the new certificate",
				"cloud verified each against the renewed certificate only",
				"gateway-0001/temperature boot 2 seq 2: {\"celsius\":22.5}",
				"[7] Summary",
				"Done in",
			}
			switch kind {
			case "file":
				steps = slices.Insert(steps, 1, "keys live in PKCS#8 files")
				steps = slices.Insert(steps, 9, "old key file key-00000001.pem removed")
				steps = slices.Insert(steps, len(steps)-1, "device key is "+filepath.Join(dir, "device", "key-00000002.pem")+": software")
			case "pkcs11":
				steps = slices.Insert(steps, 1, `keys live in PKCS#11 token "`+tok.Label+`" through `+tok.Module)
				steps = slices.Insert(steps, 9, `old key "d2c-device-00000001" destroyed in the PKCS#11 token: opening it fails`)
				steps = slices.Insert(steps, len(steps)-1, "signatures made inside the PKCS#11 token", "always sensitive and never extractable", "no private key anywhere")
			case "tpm":
				steps = slices.Insert(steps, 1, "keys live in the TPM 2.0 simulator at 127.0.0.1:")
				steps = slices.Insert(steps, 9, `old key "d2c-device-00000001" destroyed in the TPM: opening it fails`)
				steps = slices.Insert(steps, len(steps)-1, "signatures made inside the TPM", "fixedTPM and fixedParent", "no private key anywhere")
			}
			checkOrder(t, out.String(), steps)
			if t.Failed() {
				return
			}

			store := filepath.Join(dir, "device")
			files := names(t, store)
			wantKey := "key-00000002.ref"
			if kind == "file" {
				wantKey = "key-00000002.pem"
			}
			for _, want := range []string{"cert-00000002.pem", wantKey} {
				if !slices.Contains(files, want) {
					t.Errorf("store has %v, want %s", files, want)
				}
			}
			for _, f := range files {
				if strings.Contains(f, "00000001") {
					t.Errorf("generation 1 left in the store: %v", files)
				}
			}
			switch kind {
			case "pkcs11":
				checkNoSoftwareKey(t, store)
				// The token holds the new key, not the old one.
				ks, err := pkcs11.Open(pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN})
				if err != nil {
					t.Fatal(err)
				}
				defer ks.Close()
				if _, err := ks.Open(t.Context(), "d2c-device-00000001"); !errors.Is(err, pkcs11.ErrNoKey) {
					t.Errorf("old key in the token: %v, want ErrNoKey", err)
				}
				if _, err := ks.Open(t.Context(), "d2c-device-00000002"); err != nil {
					t.Errorf("new key in the token: %v", err)
				}
			case "tpm":
				checkNoSoftwareKey(t, store)
				if got := names(t, filepath.Join(dir, "tpm-keys")); !slices.Equal(got, []string{"d2c-device-00000002.key"}) {
					t.Errorf("TPM key blobs: %v, want the new key's only", got)
				}
			}
		})
	}
}

// TestTPMKilled: the TPM stops answering between two readings. The next
// publish fails with identity.ErrKeystore, the program stops, and no
// software key appears: the device never falls back.
func TestTPMKilled(t *testing.T) {
	sw := testpeer.SWTPM(t)
	testHookBetweenReadings = sw.Kill
	t.Cleanup(func() { testHookBetweenReadings = nil })
	dir := t.TempDir()
	var out bytes.Buffer
	err := run(t.Context(), []string{"--keys", "tpm", "--tpm-sim", sw.Addr, "--dir", dir}, &out)
	if !errors.Is(err, identity.ErrKeystore) || !strings.Contains(err.Error(), "publish reading 2") {
		t.Fatalf("run with the TPM killed: %v, want publish reading 2 to fail with ErrKeystore\noutput:\n%s", err, out.String())
	}
	t.Logf("run: %v", err)
	checkOrder(t, out.String(), []string{"signed inside the TPM", "boot 1 seq 0: {\"celsius\":21.5}"})
	if strings.Contains(out.String(), "seq 1") || strings.Contains(out.String(), "renewed") {
		t.Errorf("the program went on after the TPM died:\n%s", out.String())
	}
	store := filepath.Join(dir, "device")
	checkNoSoftwareKey(t, store)
	if got := names(t, filepath.Join(dir, "tpm-keys")); !slices.Equal(got, []string{"d2c-device-00000001.key"}) {
		t.Errorf("TPM key blobs: %v", got)
	}
	// Without the TPM the identity is gone: a store opened without a
	// keystore finds no key, and never makes one.
	s, err := identity.OpenStore(store, identity.StoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Current(); err == nil {
		t.Error("the store has an identity without the TPM")
	}
	checkNoSoftwareKey(t, store)
}

// TestFlags: --keys is required and checked; the simulator flag is not in
// the usage.
func TestFlags(t *testing.T) {
	for _, args := range [][]string{{}, {"--keys", "floppy"}, {"--keys", "file", "extra"}, {"--keys", "pkcs11", "--pkcs11-token", "x"}} {
		var out bytes.Buffer
		if err := run(t.Context(), args, &out); err == nil {
			t.Errorf("run %q: no error", args)
		}
	}
	var out bytes.Buffer
	if err := run(t.Context(), []string{"-h"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	if u := out.String(); !strings.Contains(u, "--pkcs11-pin-file") || strings.Contains(u, "tpm-sim") {
		t.Errorf("usage:\n%s", u)
	}
}

// checkOrder checks that out contains each of want, in order.
func checkOrder(t *testing.T, out string, want []string) {
	t.Helper()
	rest := out
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Errorf("output lacks %q (after the previous step)\noutput:\n%s", w, out)
			return
		}
		rest = rest[i+len(w):]
	}
}

// checkNoSoftwareKey fails the test if a private key file appeared in dir.
func checkNoSoftwareKey(t *testing.T, dir string) {
	t.Helper()
	if m, _ := filepath.Glob(filepath.Join(dir, "key-*.pem")); len(m) != 0 {
		t.Errorf("software key files: %v", m)
	}
	if err := noPrivateKeys(dir); err != nil {
		t.Error(err)
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range entries {
		n = append(n, e.Name())
	}
	return n
}
