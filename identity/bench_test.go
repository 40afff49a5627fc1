// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// The benchmarks measure what a fleet pays per device: certificate issuance
// on the CA, tokens on the registrar, and whole enrollments and renewals over
// HTTPS on 127.0.0.1 with every state file fsynced, next to the primitives
// they are built from. Figures and the commands that produced them are in
// docs/performance.md. Run them with:
//
//	go test ./identity/ -run '^$' -bench . -benchtime 2s

const benchDeviceID = "bench-1"

// enrollBench runs one first enrollment, from the token to the committed
// identity, in a new store under dir.
func enrollBench(b *testing.B, f *fleet, dir string) (*Store, *Identity) {
	s, err := OpenStore(dir, StoreConfig{Time: f.clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	id, err := s.Enroll(b.Context(), f.client(), EnrollRequest{DeviceID: benchDeviceID, Auth: EnrollAuth{Token: f.token(benchDeviceID)}})
	if err != nil {
		b.Fatal(err)
	}
	return s, id
}

func reportPerSecond(b *testing.B, unit string) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, unit)
	}
}

// BenchmarkIssueDevice measures certificate issuance as the registrar does
// it: parse the CSR and check its signature, then sign the certificate.
func BenchmarkIssueDevice(b *testing.B) {
	clock := newFakeClock()
	ca, err := InitCA(filepath.Join(b.TempDir(), "ca"), CAConfig{Time: clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	key, err := GenerateKey(ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	der, err := NewCSR(key, benchDeviceID)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		csr, err := ParseCSR(der)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ca.IssueDevice(csr, benchDeviceID); err != nil {
			b.Fatal(err)
		}
	}
	reportPerSecond(b, "certs/s")
}

// BenchmarkRawECDSASign is the P-256 signature alone, for comparison with
// BenchmarkIssueDevice.
func BenchmarkRawECDSASign(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("d2c"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
	reportPerSecond(b, "sigs/s")
}

// BenchmarkRawECDSAVerify is the P-256 verification alone, for comparison
// with BenchmarkTokenVerify.
func BenchmarkRawECDSAVerify(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("d2c"))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
			b.Fatal("signature does not verify")
		}
	}
	reportPerSecond(b, "verifies/s")
}

func BenchmarkTokenIssue(b *testing.B) {
	key, err := GenerateKey(ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	ti := TokenIssuer{Key: key, Time: newFakeClock().Now}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ti.Issue(benchDeviceID); err != nil {
			b.Fatal(err)
		}
	}
	reportPerSecond(b, "tokens/s")
}

func BenchmarkTokenVerify(b *testing.B) {
	key, err := GenerateKey(ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	clock := newFakeClock()
	tok, err := TokenIssuer{Key: key, Time: clock.Now}.Issue(benchDeviceID)
	if err != nil {
		b.Fatal(err)
	}
	tv := TokenVerifier{Keys: []crypto.PublicKey{key.Public()}, Time: clock.Now}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tv.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
	reportPerSecond(b, "tokens/s")
}

// BenchmarkTLSHandshake is one TLS 1.3 handshake with the registrar's
// server (P-256 certificate, no client certificate), the transport part of
// each EST request.
func BenchmarkTLSHandshake(b *testing.B) {
	f := newFleet(b, nil)
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Root())
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "127.0.0.1", Time: f.clock.Now}
	addr := f.server.Listener.Addr().String()
	b.ReportAllocs()
	for b.Loop() {
		conn, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := conn.Close(); err != nil {
			b.Fatal(err)
		}
	}
	reportPerSecond(b, "handshakes/s")
}

// BenchmarkAtomicWriteFile is one durable state write (temp file, fsync,
// rename, directory fsync); an enrollment does five.
func BenchmarkAtomicWriteFile(b *testing.B) {
	path := filepath.Join(b.TempDir(), "x.pem")
	data := []byte(strings.Repeat("x", 1024))
	b.ReportAllocs()
	for b.Loop() {
		if err := atomicfile.WriteFile(nil, path, data); err != nil {
			b.Fatal(err)
		}
	}
	reportPerSecond(b, "writes/s")
}

// BenchmarkUsedTokensConsume is the registrar's single-use record of a
// token with n unexpired token IDs already recorded: each use rewrites and
// fsyncs the whole set.
func BenchmarkUsedTokensConsume(b *testing.B) {
	for _, n := range []int{0, 10_000, 100_000} {
		b.Run("entries="+strconv.Itoa(n), func(b *testing.B) {
			clock := newFakeClock()
			u, err := OpenUsedTokens(filepath.Join(b.TempDir(), "used.state"), clock.Now)
			if err != nil {
				b.Fatal(err)
			}
			exp := clock.Now().Add(time.Hour)
			for i := range n {
				u.used[fmt.Sprintf("%022d", i)] = exp.Unix()
			}
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				i++
				jti := fmt.Sprintf("new-%018d", i)
				if err := u.Consume(b.Context(), jti, exp); err != nil {
					b.Fatal(err)
				}
				delete(u.used, jti) // keep the set at n entries
			}
		})
	}
}

// BenchmarkEnrollRoundTrip is a complete first enrollment of a new device:
// token issuance, then Store.Enroll against the registrar over HTTPS on
// 127.0.0.1: cacerts (bootstrap by fingerprint), key generation, CSR,
// simpleenroll (token check, durable single-use record, issuance), and the
// device's verification and fsynced writes. The fake clock advances 10 s per
// enrollment so that expired token IDs leave the registrar's used set, which
// stays near 370 entries, as at one enrollment every 10 s.
func BenchmarkEnrollRoundTrip(b *testing.B) {
	f := newFleet(b, nil)
	dir := b.TempDir()
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		i++
		enrollBench(b, f, filepath.Join(dir, strconv.Itoa(i)))
		f.clock.Advance(10 * time.Second)
	}
	reportPerSecond(b, "enrollments/s")
}

// BenchmarkRenewRoundTrip is a renewal of an enrolled device: key
// generation, CSR, simplereenroll authenticated by the current certificate
// over mutual TLS (chain and revocation check on the registrar), issuance,
// verification, fsynced writes and removal of the old generation.
func BenchmarkRenewRoundTrip(b *testing.B) {
	f := newFleet(b, nil)
	store, _ := enrollBench(b, f, filepath.Join(b.TempDir(), "device"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := store.Renew(b.Context(), f.client(), RenewOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	reportPerSecond(b, "renewals/s")
}
