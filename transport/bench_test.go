// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Envelope benchmarks: the device's encode + sign (+ encrypt) of one
// envelope and the cloud's verify + classify, next to the raw P-256
// primitives and to a bare go-jose + CBOR pipeline with no d2c code. Every
// reading body is 150 bytes. The seal benchmarks report bytes on the wire
// per envelope next to the body bytes it carries. Run:
//
//	go test ./transport/ -run '^$' -bench 'Raw|Seal|Verify|GoJose' -benchtime 2s
//
// bench/transport prints the same comparisons side by side with ratios.

const (
	bnDevice = "bench-1"
	bnStream = "temp"
	bnBody   = 150
)

// bnFixture is a fleet with one P-256 device, bnDevice.
type bnFixture struct {
	f    *testFleet
	key  crypto.Signer
	body []byte
}

func newBnFixture(b *testing.B) *bnFixture {
	b.Helper()
	f := newTestFleet(b)
	key, _ := f.device(bnDevice, identity.ECDSAP256)
	body := make([]byte, bnBody)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	return &bnFixture{f: f, key: key, body: body}
}

// record is envelope seq of bnDevice with n readings.
func (bf *bnFixture) record(seq uint64, n int) Record {
	rs := make([]Reading, n)
	for i := range rs {
		rs[i] = Reading{Time: bf.f.now, Body: bf.body}
	}
	return Record{Stream: bnStream, Boot: 1, Seq: seq, Time: bf.f.now, Readings: rs}
}

func bnPerSecond(b *testing.B, per float64, unit string) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)*per/s, unit)
	}
}

// BenchmarkRawSignP256 is the device's signature primitive alone: SHA-256
// of a 150-byte body and an ECDSA P-256 signature through crypto.Signer.
func BenchmarkRawSignP256(b *testing.B) {
	bf := newBnFixture(b)
	b.ReportAllocs()
	for b.Loop() {
		d := sha256.Sum256(bf.body)
		if _, err := bf.key.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
	bnPerSecond(b, 1, "sigs/s")
}

// BenchmarkRawVerifyP256 is the cloud's verification primitive alone:
// SHA-256 of a 150-byte body and an ECDSA P-256 verification.
func BenchmarkRawVerifyP256(b *testing.B) {
	bf := newBnFixture(b)
	d := sha256.Sum256(bf.body)
	sig, err := bf.key.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		b.Fatal(err)
	}
	pub := bf.key.Public().(*ecdsa.PublicKey)
	b.ReportAllocs()
	for b.Loop() {
		d := sha256.Sum256(bf.body)
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			b.Fatal("signature does not verify")
		}
	}
	bnPerSecond(b, 1, "verifies/s")
}

// benchSeal seals envelopes of n readings with enc, and reports envelopes
// (and readings) per second and the bytes on the wire per envelope.
func benchSeal(b *testing.B, enc func(*bnFixture) *Encryption, n int) {
	bf := newBnFixture(b)
	var e *Encryption
	if enc != nil {
		e = enc(bf)
	}
	s := bf.f.sealer(bnDevice, e)
	// The first envelope of a session starts the key (one more ECDH-ES
	// and signature, once per 100,000 envelopes): outside the loop.
	first, err := s.Seal(bf.record(0, n))
	if err != nil {
		b.Fatal(err)
	}
	rec := bf.record(1, n)
	b.ReportAllocs()
	for b.Loop() {
		rec.Seq++
		if _, err := s.Seal(rec); err != nil {
			b.Fatal(err)
		}
	}
	bnPerSecond(b, 1, "envs/s")
	if n > 1 {
		bnPerSecond(b, float64(n), "readings/s")
	}
	b.ReportMetric(float64(len(first.Envelope)), "wire-B/env")
	b.ReportMetric(float64(n*bnBody), "body-B/env")
}

func bnSessionKey(bf *bnFixture) *Encryption {
	return &Encryption{CloudKey: &bf.f.cloud.PublicKey, CloudKeyID: "cloud-1"}
}

func bnPerMessage(bf *bnFixture) *Encryption {
	return &Encryption{CloudKey: &bf.f.cloud.PublicKey, CloudKeyID: "cloud-1", Mode: PerMessage}
}

// BenchmarkSealSigned: CBOR record, ES256 JWS (kid, typ), compact form.
func BenchmarkSealSigned(b *testing.B) { benchSeal(b, nil, 1) }

// BenchmarkSealSessionKey: the signed envelope in a JWE (dir, A256GCM)
// under the current session key.
func BenchmarkSealSessionKey(b *testing.B) { benchSeal(b, bnSessionKey, 1) }

// BenchmarkSealPerMessage: the signed envelope in a JWE (ECDH-ES+A256KW,
// A256GCM) to the cloud key, a fresh agreement per envelope.
func BenchmarkSealPerMessage(b *testing.B) { benchSeal(b, bnPerMessage, 1) }

// BenchmarkSealBatch100: 100 readings in one signed envelope.
func BenchmarkSealBatch100(b *testing.B) { benchSeal(b, nil, 100) }

// benchVerify verifies fresh envelopes of n readings sealed with enc: each
// iteration a new seq, so that the replay window accepts every one (it is
// classified, not short-circuited as a duplicate). Envelopes are sealed
// ahead, 512 at a time, with the timer stopped.
func benchVerify(b *testing.B, enc func(*bnFixture) *Encryption, n int) {
	bf := newBnFixture(b)
	var e *Encryption
	if enc != nil {
		e = enc(bf)
	}
	s := bf.f.sealer(bnDevice, e)
	v := bf.f.verifier(nil)
	topic := wire.TelemetryTopic(bnDevice, bnStream)
	var pool [][]byte
	var seq uint64
	refill := func() {
		pool = pool[:0]
		for range 512 {
			out, err := s.Seal(bf.record(seq, n))
			if err != nil {
				b.Fatal(err)
			}
			seq++
			if out.KeyDelivery != nil {
				if _, err := v.Verify(b.Context(), wire.KeyTopic(bnDevice), out.KeyDelivery); err != nil {
					b.Fatal(err)
				}
			}
			pool = append(pool, out.Envelope)
		}
	}
	refill()
	// The first envelope verifies the certificate chain, cached for a
	// minute of the verifier's (fixed) clock: outside the loop.
	if _, err := v.Verify(b.Context(), topic, pool[0]); err != nil {
		b.Fatal(err)
	}
	i := 1
	b.ReportAllocs()
	for b.Loop() {
		if i == len(pool) {
			b.StopTimer()
			refill()
			i = 0
			b.StartTimer()
		}
		if _, err := v.Verify(b.Context(), topic, pool[i]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	bnPerSecond(b, 1, "envs/s")
	if n > 1 {
		bnPerSecond(b, float64(n), "readings/s")
	}
}

// BenchmarkVerifySigned: parse, signature with the registered
// certificate's key (chain check cached, revocation checked), CBOR
// decode, device and stream match, replay window.
func BenchmarkVerifySigned(b *testing.B) { benchVerify(b, nil, 1) }

// BenchmarkVerifySessionKey: decrypt under the session key, then as
// VerifySigned.
func BenchmarkVerifySessionKey(b *testing.B) { benchVerify(b, bnSessionKey, 1) }

// BenchmarkVerifyPerMessage: ECDH-ES+A256KW decrypt with the cloud key,
// then as VerifySigned.
func BenchmarkVerifyPerMessage(b *testing.B) { benchVerify(b, bnPerMessage, 1) }

// BenchmarkVerifyBatch100: one signed envelope of 100 readings.
func BenchmarkVerifyBatch100(b *testing.B) { benchVerify(b, nil, 100) }

// bnJoseRecord is the record of the bare go-jose pipeline: the same fields
// as d2c's, encoded with cbor.Marshal's defaults.
type bnJoseRecord struct {
	Device   string          `cbor:"1,keyasint"`
	Stream   string          `cbor:"2,keyasint"`
	Boot     uint64          `cbor:"3,keyasint"`
	Seq      uint64          `cbor:"4,keyasint"`
	Time     int64           `cbor:"5,keyasint"`
	Readings []bnJoseReading `cbor:"6,keyasint"`
}

type bnJoseReading struct {
	_    struct{} `cbor:",toarray"`
	Time int64
	Body []byte
}

func (bf *bnFixture) joseRecord(seq uint64) bnJoseRecord {
	ms := bf.f.now.UnixMilli()
	return bnJoseRecord{Device: bnDevice, Stream: bnStream, Boot: 1, Seq: seq, Time: ms,
		Readings: []bnJoseReading{{Time: ms, Body: bf.body}}}
}

// BenchmarkGoJoseSignCBOR is the baseline of the DESIGN field notes: a
// bare cbor.Marshal + go-jose ES256 sign (the *ecdsa.PrivateKey itself, no
// kid or typ) + CompactSerialize, with no d2c code.
func BenchmarkGoJoseSignCBOR(b *testing.B) {
	bf := newBnFixture(b)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: bf.key}, nil)
	if err != nil {
		b.Fatal(err)
	}
	rec := bf.joseRecord(0)
	b.ReportAllocs()
	for b.Loop() {
		rec.Seq++
		payload, err := cbor.Marshal(rec)
		if err != nil {
			b.Fatal(err)
		}
		jws, err := signer.Sign(payload)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := jws.CompactSerialize(); err != nil {
			b.Fatal(err)
		}
	}
	bnPerSecond(b, 1, "envs/s")
}

// BenchmarkGoJoseVerifyCBOR is the receiving baseline: go-jose parse +
// ES256 verify with the known public key + cbor.Unmarshal, with no d2c code
// (no certificate, header, device or replay checks).
func BenchmarkGoJoseVerifyCBOR(b *testing.B) {
	bf := newBnFixture(b)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: bf.key}, nil)
	if err != nil {
		b.Fatal(err)
	}
	payload, err := cbor.Marshal(bf.joseRecord(1))
	if err != nil {
		b.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		b.Fatal(err)
	}
	compact, err := jws.CompactSerialize()
	if err != nil {
		b.Fatal(err)
	}
	pub := bf.key.Public()
	b.ReportAllocs()
	for b.Loop() {
		obj, err := jose.ParseSignedCompact(compact, []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			b.Fatal(err)
		}
		p, err := obj.Verify(pub)
		if err != nil {
			b.Fatal(err)
		}
		var rec bnJoseRecord
		if err := cbor.Unmarshal(p, &rec); err != nil {
			b.Fatal(err)
		}
	}
	bnPerSecond(b, 1, "envs/s")
}
