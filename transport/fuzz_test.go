// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/fuzzcorpus"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/transport/wire"
)

// The fuzz targets below cover every parser of bytes that reach the
// transport package from the network: telemetry envelopes and session-key
// deliveries on the cloud (Verifier.Verify), the CBOR record inside them
// (codec.decodeRecord), and commands on the device (commandVerifier.verify).
// Each has seeds built here from real envelopes of a fixed test fleet
// (f.Add) and a committed corpus in testdata/fuzz/<target>/;
// TestFuzzCorporaPresent fails if a target of this package has none. Run
// one with, e.g.:
//
//	go test ./transport/ -run '^$' -fuzz '^FuzzVerifyTelemetry$' -fuzztime 20s -fuzzminimizetime 200x
//
// -fuzzminimizetime 200x bounds the time spent minimizing each new input
// (60 s by default), which otherwise dominates a short run. Regenerate the
// committed seeds with:
//
//	go test ./transport/ -run '^TestFuzzCorporaPresent$' -update-fuzz-seeds
//
// The keys, the clock and the session key are fixed (below) so that the
// committed envelopes keep verifying: the fuzzer can then only be refused,
// unless its input is one of them or an equivalent form of one (see
// fzCheckAcceptedJWS).

var fzUpdateSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite the seed corpora of the transport fuzz targets in testdata/fuzz")

// fzTime is the fixed clock of the fuzz fleet: certificates, commands and
// session keys in the committed corpora stay valid whatever the real time.
var fzTime = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func fzNow() time.Time { return fzTime }

const (
	fzDevice = "sensor-1"
	fzStream = "temp"
	fzBoot   = 7
)

// Throwaway keys, fixed so that the committed corpora verify. They sign and
// decrypt nothing outside these tests.
const (
	// fzDeviceKeyPEM is fzDevice's P-256 key.
	fzDeviceKeyPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgcruldnSp9lbUtHdu
cHnO2eEw3QglYYxFIkk/CtIYIAGhRANCAARZgm/QW2wY+e6oPQz/aGA1+aId9M+Y
cYrZPYWv4s9ne+3FgWOI6aiak5/+DsYMqgviodaaeS3vZZZbFi4mfy4i
-----END PRIVATE KEY-----
`
	// fzDeviceEdKeyPEM is fzDevice's Ed25519 key: the verifier holds a
	// certificate for each key (as after a renewal from one to the other),
	// so that both algorithms are seeded.
	fzDeviceEdKeyPEM = `-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIBF4Dz0x/5UpmiKWexD0KAFdpqb3s2bfoUT7ucAg6kYN
-----END PRIVATE KEY-----
`
	// fzCloudKeyPEM is the cloud's P-256 decryption key.
	fzCloudKeyPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQghFG2WsRlAT1ZsFEs
AcfOaG1hGbZFWoPbfj2LO/41MG+hRANCAASwNR3C+QddLWxbKFQntVADSkuXJ4kS
scNvsTw99o6mFL3athOs6peJiDSc+1/2usDAn8xsaffC44wSqLS+6aQE
-----END PRIVATE KEY-----
`
	// fzCommandKeyPEM is the fleet's command-signing key.
	fzCommandKeyPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgdhdhGzQjOQmVld0i
xSVF1qr5VRJuQ/e6mXtzyAcgZoahRANCAARwS3Ix+q1Yuyx1ipgxPHxaL4eNL+Dv
e+pspQEVH8hBkeR3gUrORFcNwqdfAFOB38PuNoHp0c8nJNGIbldTYWzi
-----END PRIVATE KEY-----
`
	// fzRogueKeyPEM signs what nobody trusts.
	fzRogueKeyPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgdUlhq8aMVpfQISU4
SrMZ+k9bpkIw1A+LKR07DGKEn5ihRANCAATjpC1uN29o4B4FUOnszGQqDGwFzk7C
XN7hDNVaYiFMWMwUj6dCIZ0A7NldVVnak7Hma+RMhUXI4tQBkBZO7k1x
-----END PRIVATE KEY-----
`
	// fzKeyDelivery is a session-key delivery of fzDevice (boot 7) to
	// fzCloudKeyPEM, made by a Sealer with CloudKeyID "cloud-1". The
	// session-key envelopes of the corpora are encrypted under its key.
	fzKeyDelivery = "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyIsImN0eSI6ImQyYy1rZXkrandzIiwiZW5jIjoiQTI1NkdDTSIsImVwayI6eyJrdHkiOiJFQyIsImNydiI6IlAtMjU2IiwieCI6InA3cEJBeHlfeGxabmV1aDc3QUwydm5TT3VheGFlaWR4R1FzY2pxWGl1WWciLCJ5IjoiQmYzc0dndUNGNlJqeWNFU1NjN2NJQmNKNnBLa3lBRkRkVUxrTUhUd1lMNCJ9LCJraWQiOiJjbG91ZC0xIn0" +
		".cBCms_vcY89JGwrkQifwfzLty5qV4YHlj6F32kaFtPCcbelvqD8Cig.pUkMXlSytLfp-1db" +
		".EjJddqK2RxnaQkU8jHvFTUSgBa8i48S0ST8TfQZlHt-Km6R-fbwcS1Tw8aG5kbX_XN3T47JJ1w_JSrLlmF9qoqDAGXHWxqeocymJNtBFlXVriHAUnGtKxdrMBAxPYtxQO_mzE4Tzyv2nx5PPNJJ-e7EQ-k-7G4pZNM9pG6v1MF1xW_8yg9a4i74pNRWJy3irK3DtARtX8LLIgM_cXkAR7bd3RtjaB_a7Ti8OSmJCG69iStLmnLeFy08_Nofv2MDu1CpCe-r5OzHBolZ8oij7p-lJpv-3mo78AalqmI_MErMV_eg8JkEmoKAN3zScJQlY7GZdZrKE51ZQRXyDgA4x1hxj42RW9eGDWLXZoQ" +
		".0O-1Yy5DZJSG0F2M_mK1Ww"
)

func fzKey(tb testing.TB, pemText string) crypto.Signer {
	tb.Helper()
	k, err := identity.ParsePrivateKey([]byte(pemText))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// fzFleet is the fixed fleet: a CA on the fixed clock (created anew, its
// keys do not matter), fzDevice's two certificates, the cloud key and a
// verifier that holds the session key of fzKeyDelivery.
type fzFleet struct {
	p256, ed crypto.Signer
	cloud    *ecdsa.PrivateKey
	v        *Verifier
	session  []KeyDelivery     // the verifier's kept deliveries of fzDevice after fzKeyDelivery
	keys     map[string][]byte // and its cache of opened session keys
	keyID    string            // the fixed session key's ID
	key      []byte            // and the key
}

func newFzFleet(tb testing.TB) *fzFleet {
	tb.Helper()
	ca, err := identity.InitCA(filepath.Join(tb.TempDir(), "ca"), identity.CAConfig{Fleet: "fuzz fleet", Time: fzNow})
	if err != nil {
		tb.Fatal(err)
	}
	f := &fzFleet{p256: fzKey(tb, fzDeviceKeyPEM), ed: fzKey(tb, fzDeviceEdKeyPEM), cloud: fzKey(tb, fzCloudKeyPEM).(*ecdsa.PrivateKey)}
	certs := &MemoryCertificates{}
	for _, k := range []crypto.Signer{f.ed, f.p256} {
		der, err := identity.NewCSR(k, fzDevice)
		if err != nil {
			tb.Fatal(err)
		}
		csr, err := identity.ParseCSR(der)
		if err != nil {
			tb.Fatal(err)
		}
		cert, err := ca.IssueDevice(csr, fzDevice)
		if err != nil {
			tb.Fatal(err)
		}
		certs.Add(cert, ca.Issuing())
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	f.v, err = NewVerifier(VerifierConfig{Certificates: certs, Policy: identity.DeviceCertPolicy{Roots: roots, Revocations: ca},
		DecryptionKey: f.cloud, Time: fzNow})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := f.v.Verify(tb.Context(), wire.KeyTopic(fzDevice), []byte(fzKeyDelivery)); err != nil {
		tb.Fatalf("the fixed key delivery no longer verifies: %v", err)
	}
	f.session = slices.Clone(f.v.memKeys.m[fzDevice])
	f.keys = maps.Clone(f.v.keyCache)
	if len(f.session) != 1 || len(f.keys) != 1 {
		tb.Fatalf("%d session keys after the fixed delivery", len(f.session))
	}
	f.keyID = f.session[0].KeyID
	f.key = f.keys[fzDevice+"\x00"+f.keyID]
	return f
}

// reset forgets what the previous input left: replay state and session
// keys, then restores the fixed session key.
func (f *fzFleet) reset() {
	f.v.Forget(context.Background(), fzDevice)
	f.v.memKeys.mu.Lock()
	f.v.memKeys.m[fzDevice] = slices.Clone(f.session)
	f.v.memKeys.mu.Unlock()
	f.v.mu.Lock()
	maps.Copy(f.v.keyCache, f.keys)
	f.v.mu.Unlock()
}

// sealer returns fzDevice's sealer with key, with enc, and in session-key
// mode already holding the fixed session key (so that it sends no new
// delivery).
func (f *fzFleet) sealer(tb testing.TB, key crypto.Signer, enc *Encryption) *Sealer {
	tb.Helper()
	s, err := NewSealer(fzDevice, key, enc, fzNow)
	if err != nil {
		tb.Fatal(err)
	}
	if enc != nil && enc.Mode == SessionKey {
		sess, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.DIRECT, Key: f.key, KeyID: f.keyID},
			(&jose.EncrypterOptions{}).WithContentType(wire.TelemetryType))
		if err != nil {
			tb.Fatal(err)
		}
		s.mu.Lock()
		s.session, s.sessionID, s.sessUses, s.sessStart = sess, f.keyID, 0, fzTime
		s.mu.Unlock()
	}
	return s
}

// fzRecords are the records the seeds carry, by seq: the only records the
// fixed keys ever signed for fzDevice, so the only ones a verifier may
// return.
func fzRecords() map[uint64]Record {
	rd := func(body string) Reading { return Reading{Time: fzTime.Add(-time.Second), Body: []byte(body)} }
	recs := map[uint64]Record{}
	for seq, readings := range map[uint64][]Reading{
		1: {rd(`{"c":21.5}`)},
		2: {rd(`{"c":21.6}`)},
		3: {rd(`{"c":21.7}`)},
		4: {rd(`{"c":21.8}`)},
		5: {rd("a"), rd(""), rd(string([]byte{0, 0xff, 0x80}))},
	} {
		recs[seq] = Record{Device: fzDevice, Stream: fzStream, Boot: fzBoot, Seq: seq, Time: fzTime, Readings: readings}
	}
	return recs
}

// fzNamed is a seed with the name of its corpus file.
type fzNamed struct {
	name string
	data []byte
}

func fzSeal(tb testing.TB, s *Sealer, rec Record) []byte {
	tb.Helper()
	out, err := s.Seal(rec)
	if err != nil {
		tb.Fatal(err)
	}
	if out.KeyDelivery != nil {
		tb.Fatal("seed sealer started a new session key")
	}
	return out.Envelope
}

// fzTelemetrySeeds are real envelopes of fzDevice on fzStream: signed
// (P-256, Ed25519, a batch), session key, per message; and broken ones.
func fzTelemetrySeeds(tb testing.TB, f *fzFleet) []fzNamed {
	tb.Helper()
	recs := fzRecords()
	enc := &Encryption{CloudKey: &f.cloud.PublicKey, CloudKeyID: "cloud-1"}
	signed := fzSeal(tb, f.sealer(tb, f.p256, nil), recs[1])
	ed := fzSeal(tb, f.sealer(tb, f.ed, nil), recs[2])
	session := fzSeal(tb, f.sealer(tb, f.p256, enc), recs[3])
	perMsg := fzSeal(tb, f.sealer(tb, f.p256, &Encryption{CloudKey: &f.cloud.PublicKey, Mode: PerMessage}), recs[4])
	batch := fzSeal(tb, f.sealer(tb, f.p256, nil), recs[5])
	other := recs[1]
	other.Stream = "hum"
	otherStream := fzSeal(tb, f.sealer(tb, f.p256, nil), other)
	return []fzNamed{
		{"signed-p256", signed},
		{"signed-ed25519", ed},
		{"session-key", session},
		{"per-message", perMsg},
		{"batch", batch},
		{"truncated", signed[:len(signed)/2]},
		{"truncated-jwe", session[:len(session)-20]},
		{"other-stream", otherStream},
		{"key-delivery-on-telemetry-topic", []byte(fzKeyDelivery)},
		{"garbage", []byte("garbage.garbage.garbage")},
	}
}

// fzErrIs fails unless err wraps one of the sentinels.
func fzErrIs(t *testing.T, err error, sentinels ...error) {
	t.Helper()
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("error %q wraps none of %v", err, sentinels)
}

// fzVerifyErrors are the sentinels a verifier refusal wraps.
var fzVerifyErrors = []error{wire.ErrMalformed, wire.ErrBadSignature, wire.ErrWrongDevice, wire.ErrUnknownDevice, wire.ErrDecrypt, wire.ErrReplay, wire.ErrDuplicate}

func fzSameRecord(a, b Record) bool {
	return a.Device == b.Device && a.Stream == b.Stream && a.Boot == b.Boot && a.Seq == b.Seq && a.Time.Equal(b.Time) &&
		slices.EqualFunc(a.Readings, b.Readings, func(x, y Reading) bool { return x.Time.Equal(y.Time) && bytes.Equal(x.Body, y.Body) })
}

// fzDecodeSegment decodes a compact JOSE segment as go-jose does:
// unpadded base64url, trailing bits not checked.
func fzDecodeSegment(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

// fzCheckAcceptedJWS re-verifies an accepted plaintext envelope without
// go-jose: exactly three segments, a header of exactly alg/kid/typ naming
// fzDevice, and a signature over the canonical signing input by one of
// fzDevice's fixed keys. An accepted input may differ from a seed only in
// ways that decode to the same bytes (base64url trailing bits: go-jose
// decodes leniently and signs the re-encoded segments), never in content.
func fzCheckAcceptedJWS(t *testing.T, env []byte, f *fzFleet, typ string) {
	t.Helper()
	parts := strings.Split(string(env), ".")
	if len(parts) != 3 {
		t.Fatalf("accepted a JWS with %d segments", len(parts))
	}
	hdr, err1 := fzDecodeSegment(parts[0])
	payload, err2 := fzDecodeSegment(parts[1])
	sig, err3 := fzDecodeSegment(parts[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatalf("accepted a JWS whose segments do not decode: %v", err)
	}
	var h map[string]any
	if err := json.Unmarshal(hdr, &h); err != nil || len(h) != 3 || h["kid"] != fzDevice || h["typ"] != typ {
		t.Fatalf("accepted header %q (%v)", hdr, err)
	}
	input := []byte(base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(payload))
	switch h["alg"] {
	case "ES256":
		d := sha256.Sum256(input)
		pub := f.p256.Public().(*ecdsa.PublicKey)
		if len(sig) != 64 || !ecdsa.Verify(pub, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			t.Fatal("accepted an ES256 JWS that does not verify with the fixed device key")
		}
	case "EdDSA":
		if !ed25519.Verify(f.ed.Public().(ed25519.PublicKey), input, sig) {
			t.Fatal("accepted an EdDSA JWS that does not verify with the fixed device key")
		}
	default:
		t.Fatalf("accepted alg %v", h["alg"])
	}
}

// FuzzVerifyTelemetry feeds bytes to Verifier.Verify on fzDevice's
// telemetry topic. It never panics; it refuses (with an error wrapping a
// transport sentinel) everything but the genuine seed envelopes and forms
// of them that decode to the same signed bytes; and what it accepts is
// one of the records the fixed keys signed.
func FuzzVerifyTelemetry(f *testing.F) {
	fl := newFzFleet(f)
	for _, s := range fzTelemetrySeeds(f, fl) {
		f.Add(s.data)
	}
	recs := fzRecords()
	topic := wire.TelemetryTopic(fzDevice, fzStream)
	f.Fuzz(func(t *testing.T, env []byte) {
		fl.reset()
		rec, err := fl.v.Verify(t.Context(), topic, env)
		if err != nil {
			fzErrIs(t, err, fzVerifyErrors...)
			if rec.Device != "" || rec.Readings != nil {
				t.Fatalf("record %+v returned with an error", rec)
			}
			return
		}
		want, ok := recs[rec.Seq]
		if !ok || !fzSameRecord(rec, want) {
			t.Fatalf("accepted a record the fixed keys never signed: %+v", rec)
		}
		if !isJWE(env) {
			fzCheckAcceptedJWS(t, env, fl, wire.TelemetryType)
		}
		// The same bytes again are a duplicate, never a second acceptance.
		if _, err := fl.v.Verify(t.Context(), topic, env); !errors.Is(err, wire.ErrDuplicate) {
			t.Fatalf("second delivery: %v, want ErrDuplicate", err)
		}
	})
}

// fzKeyDeliverySeeds: the fixed delivery; deliveries that must be refused
// on fzDevice's key topic.
func fzKeyDeliverySeeds(tb testing.TB, f *fzFleet) []fzNamed {
	tb.Helper()
	kd := []byte(fzKeyDelivery)
	// A delivery by another (unregistered) device, and one encrypted to
	// another cloud key.
	s2, err := NewSealer("sensor-2", f.p256, &Encryption{CloudKey: &f.cloud.PublicKey}, fzNow)
	if err != nil {
		tb.Fatal(err)
	}
	out2, err := s2.Seal(fzRecords()[1])
	if err != nil {
		tb.Fatal(err)
	}
	rogue := fzKey(tb, fzRogueKeyPEM).(*ecdsa.PrivateKey)
	s3, err := NewSealer(fzDevice, f.p256, &Encryption{CloudKey: &rogue.PublicKey}, fzNow)
	if err != nil {
		tb.Fatal(err)
	}
	out3, err := s3.Seal(fzRecords()[1])
	if err != nil {
		tb.Fatal(err)
	}
	session := fzSeal(tb, f.sealer(tb, f.p256, &Encryption{CloudKey: &f.cloud.PublicKey}), fzRecords()[3])
	return []fzNamed{
		{"valid", kd},
		{"truncated", kd[:len(kd)/2]},
		{"other-device", out2.KeyDelivery},
		{"other-cloud-key", out3.KeyDelivery},
		{"session-envelope-on-key-topic", session},
		{"plain-jws", fzSeal(tb, f.sealer(tb, f.p256, nil), fzRecords()[1])},
		{"garbage", []byte("a.b.c.d.e")},
	}
}

// FuzzKeyDelivery feeds bytes to Verifier.Verify on fzDevice's key
// topic. It never panics, refuses with a transport sentinel everything but
// the fixed delivery (or an equivalent form of it), and the only session
// key it ever stores is the fixed one.
func FuzzKeyDelivery(f *testing.F) {
	fl := newFzFleet(f)
	for _, s := range fzKeyDeliverySeeds(f, fl) {
		f.Add(s.data)
	}
	topic := wire.KeyTopic(fzDevice)
	f.Fuzz(func(t *testing.T, b []byte) {
		fl.v.Forget(context.Background(), fzDevice) // no session key
		rec, err := fl.v.Verify(t.Context(), topic, b)
		fl.v.memKeys.mu.Lock()
		kept := slices.Clone(fl.v.memKeys.m[fzDevice])
		fl.v.memKeys.mu.Unlock()
		fl.v.mu.Lock()
		cached := maps.Clone(fl.v.keyCache)
		fl.v.mu.Unlock()
		if err != nil {
			fzErrIs(t, err, fzVerifyErrors...)
			if len(kept) != 0 || len(cached) != 0 {
				t.Fatalf("refused delivery kept %d deliveries, cached %d keys", len(kept), len(cached))
			}
			return
		}
		if rec.Device != "" {
			t.Fatalf("a key delivery returned a record %+v", rec)
		}
		if len(kept) != 1 || kept[0].KeyID != fl.keyID || len(cached) != 1 || !bytes.Equal(cached[fzDevice+"\x00"+fl.keyID], fl.key) {
			t.Fatalf("accepted a delivery whose key is not the fixed one: %d kept, %d cached", len(kept), len(cached))
		}
	})
}

// fzRecordSeeds are CBOR records: the seeds' records, the worked example
// of docs/protocol.md, and malformed or non-canonical ones.
func fzRecordSeeds(tb testing.TB) []fzNamed {
	tb.Helper()
	c, err := newCodec()
	if err != nil {
		tb.Fatal(err)
	}
	recs := fzRecords()
	enc := func(r Record) []byte {
		b, err := c.EncodeRecord(r)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	one, batch := enc(recs[1]), enc(recs[5])
	// The worked example of docs/protocol.md (55 bytes).
	example := []byte("\xa6\x01\x69sensor-42\x02\x64temp\x03\x03\x04\x11\x05\x1b\x00\x00\x01\xa1\xee\x56\x5e\x00\x06\x81\x82\x1b\x00\x00\x01\xa1\xee\x56\x5e\x00\x4a{\"c\":21.5}")
	// Not core deterministic: boot 3 in two bytes (18 03) instead of one.
	long := bytes.Replace(example, []byte("\x03\x03"), []byte("\x03\x18\x03"), 1)
	// Keys out of order: stream (2) before device (1).
	unsorted := append([]byte("\xa6\x02\x64temp\x01\x69sensor-42"), example[1+1+10+1+5:]...)
	return []fzNamed{
		{"record", one},
		{"batch", batch},
		{"protocol-example", example},
		{"non-shortest-int", long},
		{"unsorted-keys", unsorted},
		{"duplicate-key", append([]byte("\xa7\x01\x61x"), example[1:]...)},
		{"truncated", one[:len(one)/2]},
		{"no-readings", []byte("\xa1\x06\x80")},
		{"garbage", []byte("\xff\x00garbage")},
	}
}

// FuzzDecodeRecord decodes a CBOR record. It never panics; it refuses with
// wire.ErrMalformed, or returns 1 to limits.Readings readings within the body
// limit. Re-encoding what it decoded gives the input back byte for byte
// when the input is in core deterministic encoding (what every sealer
// sends). The decoder is not a canonical-form checker: it also accepts
// non-shortest integers, map keys in any order, and absent keys (zero
// values), whose re-encoding differs. That is harmless, since the
// signature covers the bytes as sent, not a re-encoding, and no d2c code
// compares or hashes re-encoded records; so for those inputs the property
// is that the re-encoding is a fixed point that decodes to the same record.
func FuzzDecodeRecord(f *testing.F) {
	for _, s := range fzRecordSeeds(f) {
		f.Add(s.data)
	}
	c, err := newCodec()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := c.DecodeRecord(b)
		if err != nil {
			fzErrIs(t, err, wire.ErrMalformed)
			return
		}
		if n := len(rec.Readings); n == 0 || n > limits.Readings {
			t.Fatalf("decoded %d readings, want 1 to %d", n, limits.Readings)
		}
		for _, r := range rec.Readings {
			if len(r.Body) > limits.ReadingBody {
				t.Fatalf("decoded a %d-byte body", len(r.Body))
			}
		}
		re, err := c.EncodeRecord(rec)
		if err != nil {
			t.Fatalf("a decoded record does not re-encode: %v", err)
		}
		if bytes.Equal(re, b) {
			return
		}
		back, err := c.DecodeRecord(re)
		if err != nil || !fzSameRecord(rec, back) {
			t.Fatalf("re-encoding %x decodes to %+v (%v), want %+v", re, back, err, rec)
		}
		again, err := c.EncodeRecord(back)
		if err != nil || !bytes.Equal(again, re) {
			t.Fatalf("re-encoding is not stable: %x then %x", re, again)
		}
	})
}

// fzCommands are the commands the fixed command key signed for the seeds,
// by ID.
func fzCommands() map[uint64]Command {
	return map[uint64]Command{
		1000: {ID: 1000, Device: fzDevice, Name: "reboot", Body: []byte("now")},
		1001: {ID: 1001, Device: fzDevice, Name: "blink"},
	}
}

func fzCommandSeeds(tb testing.TB) []fzNamed {
	tb.Helper()
	signer := &CommandSigner{Key: fzKey(tb, fzCommandKeyPEM), Time: fzNow}
	sign := func(s *CommandSigner, c Command) []byte {
		b, err := s.Sign(c)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	cmds := fzCommands()
	valid := sign(signer, cmds[1000])
	expired := sign(&CommandSigner{Key: signer.Key, TTL: time.Minute, Time: func() time.Time { return fzTime.Add(-time.Hour) }},
		Command{ID: 999, Device: fzDevice, Name: "old"})
	rogue := sign(&CommandSigner{Key: fzKey(tb, fzRogueKeyPEM), Time: fzNow}, Command{ID: 2000, Device: fzDevice, Name: "unlock"})
	parts := strings.Split(string(valid), ".")
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"x","typ":"d2c-cmd+jws"}`)) + "." + parts[1] + "."
	return []fzNamed{
		{"valid", valid},
		{"valid-no-body", sign(signer, cmds[1001])},
		{"expired", expired},
		{"other-device", sign(signer, Command{ID: 3000, Device: "sensor-2", Name: "reboot"})},
		{"unknown-key", rogue},
		{"alg-none", []byte(none)},
		{"truncated", valid[:len(valid)/2]},
		{"garbage", []byte("garbage")},
	}
}

// FuzzCommand feeds bytes to the device's command verifier. It never
// panics, refuses with a transport sentinel everything but the genuine
// seed commands (or equivalent forms), and what it accepts is one of the
// commands the fixed key signed, for this device, unexpired.
func FuzzCommand(f *testing.F) {
	for _, s := range fzCommandSeeds(f) {
		f.Add(s.data)
	}
	cmdKey := fzKey(f, fzCommandKeyPEM)
	cv, err := newCommandVerifier(nil, filepath.Join(f.TempDir(), "commands.state"), fzDevice,
		[]crypto.PublicKey{cmdKey.Public(), fzKey(f, fzDeviceEdKeyPEM).Public()}, fzNow)
	if err != nil {
		f.Fatal(err)
	}
	cmds := fzCommands()
	f.Fuzz(func(t *testing.T, b []byte) {
		cv.mu.Lock()
		cv.last = 0
		cv.mu.Unlock()
		cmd, err := cv.verify(b)
		if err != nil {
			fzErrIs(t, err, wire.ErrMalformed, wire.ErrBadSignature, wire.ErrWrongDevice, ErrCommandExpired, ErrCommandReplayed)
			return
		}
		want, ok := cmds[cmd.ID]
		if !ok || cmd.Device != fzDevice || cmd.Name != want.Name || !bytes.Equal(cmd.Body, want.Body) ||
			!cmd.Issued.Equal(fzTime.Truncate(time.Millisecond)) || !cmd.Expires.Equal(fzTime.Add(5*time.Minute)) {
			t.Fatalf("accepted a command the fixed key never signed: %+v", cmd)
		}
		if _, err := cv.verify(b); !errors.Is(err, ErrCommandReplayed) {
			t.Fatalf("second delivery: %v, want ErrCommandReplayed", err)
		}
	})
}

// fzAllSeeds returns the committed seeds of each target of this file.
func fzAllSeeds(tb testing.TB) map[string][]fzNamed {
	fl := newFzFleet(tb)
	return map[string][]fzNamed{
		"FuzzVerifyTelemetry": fzTelemetrySeeds(tb, fl),
		"FuzzKeyDelivery":     fzKeyDeliverySeeds(tb, fl),
		"FuzzDecodeRecord":    fzRecordSeeds(tb),
		"FuzzCommand":         fzCommandSeeds(tb),
		"FuzzCommandResult":   fzCommandResultSeeds(),
	}
}

// TestFuzzCorporaPresent fails if a fuzz target of this package has no
// committed seed corpus, or a corpus file is not a `go test fuzz v1` file
// with one value per argument: a glob that matches nothing would otherwise
// pass silently. The targets are found in the source, so a new one without
// a corpus fails here. With -update-fuzz-seeds it first rewrites the
// corpora of the targets of this file.
func TestFuzzCorporaPresent(t *testing.T) {
	if *fzUpdateSeeds {
		for target, seeds := range fzAllSeeds(t) {
			dir := filepath.Join("testdata", "fuzz", target)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, s := range seeds {
				body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.data)
				if err := os.WriteFile(filepath.Join(dir, s.name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	fuzzcorpus.Check(t, ".")
}

// fzReadCorpusFile returns the one []byte value of a committed corpus file.
func fzReadCorpusFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "[]byte(") || !strings.HasSuffix(lines[1], ")") {
		t.Fatalf("%s: not a one-value corpus file", path)
	}
	v, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(v)
}

// TestFuzzSeedsGenuine checks that the committed seeds still mean what
// their names say: the genuine envelopes, delivery and commands are
// accepted (so the fuzzers start from inputs that reach the end of each
// parser), the others refused.
func TestFuzzSeedsGenuine(t *testing.T) {
	fl := newFzFleet(t)
	accepted := map[string][]string{
		"FuzzVerifyTelemetry": {"signed-p256", "signed-ed25519", "session-key", "per-message", "batch"},
		"FuzzKeyDelivery":     {"valid"},
		"FuzzCommand":         {"valid", "valid-no-body"},
		"FuzzDecodeRecord":    {"record", "batch", "protocol-example"}, // non-shortest-int and unsorted-keys are refused: only the deterministic encoding is accepted
	}
	c, err := newCodec()
	if err != nil {
		t.Fatal(err)
	}
	cv, err := newCommandVerifier(nil, filepath.Join(t.TempDir(), "commands.state"), fzDevice,
		[]crypto.PublicKey{fzKey(t, fzCommandKeyPEM).Public()}, fzNow)
	if err != nil {
		t.Fatal(err)
	}
	for target, good := range accepted {
		files, err := filepath.Glob(filepath.Join("testdata", "fuzz", target, "*"))
		if err != nil || len(files) == 0 {
			t.Fatalf("%s: no corpus (%v)", target, err)
		}
		for _, file := range files {
			name := filepath.Base(file)
			b := fzReadCorpusFile(t, file)
			fl.reset()
			cv.last = 0
			switch target {
			case "FuzzVerifyTelemetry":
				_, err = fl.v.Verify(t.Context(), wire.TelemetryTopic(fzDevice, fzStream), b)
			case "FuzzKeyDelivery":
				fl.v.Forget(context.Background(), fzDevice)
				_, err = fl.v.Verify(t.Context(), wire.KeyTopic(fzDevice), b)
			case "FuzzCommand":
				_, err = cv.verify(b)
			case "FuzzDecodeRecord":
				_, err = c.DecodeRecord(b)
			}
			if want := slices.Contains(good, name); want != (err == nil) {
				t.Errorf("%s/%s: accepted %v (err %v), want accepted %v", target, name, err == nil, err, want)
			}
		}
	}
}
