// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package tpm

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"path/filepath"
	"testing"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
)

// The benchmarks compare a signature by a TPM key (here swtpm, a software
// TPM on this machine, over a loopback socket: a discrete TPM on a device
// is far slower, tens to hundreds of milliseconds per ECDSA signature) with
// one by a file key, the store's default. Run them with:
//
//	go test ./identity/tpm/ -run '^$' -bench . -benchtime 2s

func benchSign(b *testing.B, keys ...crypto.Signer) {
	digest := sha256.Sum256([]byte("d2c"))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := keys[i%len(keys)].Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
		i++
	}
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, "sigs/s")
	}
}

// BenchmarkSignTPM is one TPM2_Sign with the key kept loaded: the cost of
// each signature of a device whose key is in the TPM.
func BenchmarkSignTPM(b *testing.B) {
	ks := openTest(b, testpeer.SWTPM(b))
	k, err := ks.Create(b.Context(), "bench", identity.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	benchSign(b, k)
}

// BenchmarkSignTPMReload alternates two keys, so that each signature also
// flushes one key and loads the other (TPM2_FlushContext, TPM2_Load).
func BenchmarkSignTPMReload(b *testing.B) {
	ks := openTest(b, testpeer.SWTPM(b))
	k1, err := ks.Create(b.Context(), "bench-1", identity.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	k2, err := ks.Create(b.Context(), "bench-2", identity.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	benchSign(b, k1, k2)
}

// BenchmarkSignFile is the same signature by a software key read from a
// PKCS#8 file, the store's default without a Keystore.
func BenchmarkSignFile(b *testing.B) {
	path := filepath.Join(b.TempDir(), "key.pem")
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	if err := identity.WriteKeyFile(path, key); err != nil {
		b.Fatal(err)
	}
	k, err := identity.ReadKeyFile(path)
	if err != nil {
		b.Fatal(err)
	}
	benchSign(b, k)
}
