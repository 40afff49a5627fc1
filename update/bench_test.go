// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"io"
	"testing"
)

// Benchmarks of the device's verification path and the cloud's signing.
// BenchmarkRawVerify* are the bare signature primitives the metadata
// verification is built on, for comparison:
//
//	go test ./update -run '^$' -bench . -benchmem

func benchTrusted(b *testing.B, r *tkRepo, withTimestamp bool) *Trusted {
	b.Helper()
	tr, err := NewTrusted(r.roots[len(r.roots)-1], Floors{}, tkTime, tkHW)
	if err != nil {
		b.Fatal(err)
	}
	if withTimestamp {
		if _, err := tr.UpdateTimestamp(r.timestampBytes); err != nil {
			b.Fatal(err)
		}
	}
	return tr
}

// BenchmarkVerifyRelease: hash check, one ES256 signature, strict decode.
func BenchmarkVerifyRelease(b *testing.B) {
	r := newTkRepo(b)
	tr := benchTrusted(b, r, true)
	b.SetBytes(int64(len(r.releaseBytes)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tr.UpdateRelease(r.releaseBytes); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyReleaseEd25519: the same with an Ed25519 release key.
func BenchmarkVerifyReleaseEd25519(b *testing.B) {
	r := newTkRepo(b)
	r.rotate(func(n *Root) { r.ok(n.SetRole(RoleRelease, 1, r.k.release2.Public())) }, r.k.rootA, r.k.rootB)
	r.releaseSigners = []crypto.Signer{r.k.release2}
	r.publish(r.newRelease(2, 1))
	tr := benchTrusted(b, r, true)
	b.SetBytes(int64(len(r.releaseBytes)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tr.UpdateRelease(r.releaseBytes); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyTimestamp: one EdDSA signature, strict decode.
func BenchmarkVerifyTimestamp(b *testing.B) {
	r := newTkRepo(b)
	tr := benchTrusted(b, r, false)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tr.UpdateTimestamp(r.timestampBytes); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewTrusted: parse the root and verify its two signatures.
func BenchmarkNewTrusted(b *testing.B) {
	r := newTkRepo(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewTrusted(r.roots[0], Floors{}, tkTime, tkHW); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdateCycle: a device's whole check with no new root: root,
// timestamp, release (four signatures).
func BenchmarkUpdateCycle(b *testing.B) {
	r := newTkRepo(b)
	b.ReportAllocs()
	for b.Loop() {
		tr, err := NewTrusted(r.roots[0], Floors{}, tkTime, tkHW)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := tr.UpdateTimestamp(r.timestampBytes); err != nil {
			b.Fatal(err)
		}
		if _, err := tr.UpdateRelease(r.releaseBytes); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawVerifyES256 is the bare ECDSA P-256 verification of a
// release-sized message: the floor of BenchmarkVerifyRelease.
func BenchmarkRawVerifyES256(b *testing.B) {
	r := newTkRepo(b)
	msg := r.releaseBytes
	h := sha256.Sum256(msg)
	sig, err := r.k.release1.Sign(nil, h[:], crypto.SHA256)
	r.ok(err)
	pub := r.k.release1.Public().(*ecdsa.PublicKey)
	b.ReportAllocs()
	for b.Loop() {
		h := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(pub, h[:], sig) {
			b.Fatal("verify")
		}
	}
}

// BenchmarkRawVerifyEd25519 is the bare Ed25519 verification of a
// timestamp-sized message: the floor of BenchmarkVerifyTimestamp.
func BenchmarkRawVerifyEd25519(b *testing.B) {
	r := newTkRepo(b)
	msg := r.timestampBytes
	sig, err := r.k.ts1.Sign(nil, msg, crypto.Hash(0))
	r.ok(err)
	pub := r.k.ts1.Public().(ed25519.PublicKey)
	b.ReportAllocs()
	for b.Loop() {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("verify")
		}
	}
}

// BenchmarkSignRelease: encode, sign (ES256), and self-check.
func BenchmarkSignRelease(b *testing.B) {
	r := newTkRepo(b)
	rel := r.newRelease(2, 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rel.Sign(r.k.release1); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewArtifact: hashing an image while streaming it (SHA-256
// bound; memory flat).
func BenchmarkNewArtifact(b *testing.B) {
	const size = 8 << 20
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewArtifact("image", "image", io.LimitReader(zeros{}, size), nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkArtifactVerifier: the device's hashing writer.
func BenchmarkArtifactVerifier(b *testing.B) {
	content := bytes.Repeat([]byte{7}, 8<<20)
	a, err := NewArtifact("image", "image", bytes.NewReader(content), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(content)))
	b.ReportAllocs()
	for b.Loop() {
		v := a.Verifier()
		for off := 0; off < len(content); off += 32 << 10 {
			if _, err := v.Write(content[off:min(off+32<<10, len(content))]); err != nil {
				b.Fatal(err)
			}
		}
		if err := v.Verify(); err != nil {
			b.Fatal(err)
		}
	}
}
