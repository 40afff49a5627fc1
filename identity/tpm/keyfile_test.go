// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package tpm

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// keyFileVectors returns the key files in testdata: TSS2 key files made by
// swtpm instances that no longer exist (so the keys are useless, as any key
// file off its TPM). It fails if there are none.
func keyFileVectors(t testing.TB) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "*.key"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no key file vectors in testdata (%v)", err)
	}
	vectors := map[string][]byte{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		vectors[filepath.Base(p)] = b
	}
	return vectors
}

// TestKeyFileVectors: each vector parses, names a P-256 ECDSA-SHA256
// signing key, and encodes back to the same bytes.
func TestKeyFileVectors(t *testing.T) {
	for name, data := range keyFileVectors(t) {
		t.Run(name, func(t *testing.T) {
			blob, err := parseKeyFile(data)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := checkPublic(blob); err != nil {
				t.Fatal(err)
			}
			again, err := marshalKeyFile(blob)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, data) {
				t.Fatalf("re-encoded differently:\n%s", again)
			}
		})
	}
}

// FuzzParseKeyFile: no input makes the key file parser or the public
// area check panic, and what parses re-encodes to a file that parses the
// same.
func FuzzParseKeyFile(f *testing.F) {
	for _, v := range keyFileVectors(f) {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		blob, err := parseKeyFile(data)
		if err != nil {
			return
		}
		_, _ = checkPublic(blob)
		again, err := marshalKeyFile(blob)
		if err != nil {
			t.Fatal(err)
		}
		blob2, err := parseKeyFile(again)
		if err != nil {
			t.Fatalf("re-encoded file does not parse: %v", err)
		}
		if !bytes.Equal(blob2.private.Buffer, blob.private.Buffer) {
			t.Fatal("private area changed")
		}
	})
}
