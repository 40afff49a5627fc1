// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package attest_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/attest"
)

// BenchmarkSign measures the device half: claims encoding and one
// signature (compare with the raw primitive in docs/performance.md).
func BenchmarkSign(b *testing.B) {
	for _, kt := range []identity.KeyType{identity.ECDSAP256, identity.Ed25519} {
		b.Run(kt.String(), func(b *testing.B) {
			key, err := identity.GenerateKey(kt)
			if err != nil {
				b.Fatal(err)
			}
			ev := evidence(make([]byte, attest.DefaultNonceSize))
			b.ReportAllocs()
			var n int
			for b.Loop() {
				tok, err := attest.Sign(key, "sensor-1", ev, t0)
				if err != nil {
					b.Fatal(err)
				}
				n = len(tok)
			}
			b.ReportMetric(float64(n), "bytes/token")
		})
		// The raw signature over a token-sized message, for reference.
		b.Run(kt.String()+"-raw", func(b *testing.B) {
			key, err := identity.GenerateKey(kt)
			if err != nil {
				b.Fatal(err)
			}
			msg := make([]byte, 500)
			for b.Loop() {
				var err error
				if kt == identity.Ed25519 {
					_, err = key.Sign(rand.Reader, msg, crypto.Hash(0))
				} else {
					h := sha256.Sum256(msg)
					_, err = key.Sign(rand.Reader, h[:], crypto.SHA256)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerify measures the cloud half per token: parsing, the token
// signature, the certificate chain (two signatures) and revocation check,
// and the nonce store. Issuing the challenge and signing are not timed.
func BenchmarkVerify(b *testing.B) {
	for _, kt := range []identity.KeyType{identity.ECDSAP256, identity.Ed25519} {
		b.Run(kt.String(), func(b *testing.B) {
			f := newFixture(b)
			f.enroll("sensor-1", kt)
			ctx, policy := context.Background(), goodPolicy()
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				tok := f.attest("sensor-1")
				b.StartTimer()
				if _, err := f.v.Verify(ctx, tok, policy); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
