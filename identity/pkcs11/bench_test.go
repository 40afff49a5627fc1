// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build cgo

package pkcs11_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"testing"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
)

// The cost of one device signature (a SHA-256 digest signed with ECDSA
// P-256), with the key in a PKCS#11 token (softhsm2, in process) next to
// a software key as the identity store keeps it in a file. Run with:
//
//	go test ./identity/pkcs11/ -run '^$' -bench Sign -benchtime 2s

func BenchmarkSignFile(b *testing.B) {
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	benchSign(b, key)
}

func BenchmarkSignPKCS11(b *testing.B) {
	ks := openKeystore(b, testpeer.SoftHSM(b))
	key, err := ks.Create(b.Context(), "bench-00000001", identity.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ks.Delete(context.Background(), "bench-00000001") })
	benchSign(b, key)
}

func benchSign(b *testing.B, key crypto.Signer) {
	digest := sha256.Sum256([]byte("a 150-byte telemetry record would be hashed to this digest"))
	for b.Loop() {
		if _, err := key.Sign(nil, digest[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, "sign/s")
	}
}
