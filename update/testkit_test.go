// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"

	"github.com/d2c-iot/d2c/identity"
)

// The test kit: a fixed fleet repository (keys, clock, hardware class)
// shared by the attack tests, the fuzz targets and the benchmarks. The keys
// and the clock are fixed so that the committed fuzz corpora keep
// verifying whatever the real time. They sign nothing outside these tests.

// tkTime is the trusted time of the tests.
var tkTime = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

const (
	tkHW       = "rpi4-arm64"
	tkArtifact = "hello world\n"
	tkRootTTL  = 365 * 24 * time.Hour
	tkRelTTL   = 30 * 24 * time.Hour
	tkTSTTL    = 24 * time.Hour
)

// Throwaway keys: root A (P-256), B (Ed25519), C (P-256), D (Ed25519);
// release 1 (P-256), 2 (Ed25519); timestamp 1 (Ed25519), 2 (P-256); an
// attacker's key (P-256).
const (
	tkRootAPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgGUY4wMO1lZBdyh5j
h0rGBRIC0eb5TjyI6+CKZvFi41ihRANCAARG9dGT2k56BNM1OmxSi6N7OrRUwEs3
9FZ/8j5Hx8MVNX2HykZt5QnUbRBYQPz48Pao9BsTcCTTr7tnWC2luZih
-----END PRIVATE KEY-----
`
	tkRootBPEM = `-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICgkkQyZjoKhNVh/kyrzTEj7yLihQzw273qtZWGxUuxJ
-----END PRIVATE KEY-----
`
	tkRootCPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgcWr5gph6Oip3zbLt
BE3T59BTvbDbaWNKDZvHPpeje6WhRANCAASkp8ahaCriyKyBlRI89ElTJYsWXRWN
W7PAKGcoKNFsMq5xCyx1cmEFk2/i3a440k206mgbVSLDbUWoUMoY4rvV
-----END PRIVATE KEY-----
`
	tkRootDPEM = `-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIA3o9u4iKKpk2EcbOIifqsjUjshVsJxjV/f0H9qQKtjZ
-----END PRIVATE KEY-----
`
	tkRelease1PEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgCrl533QaszMVavLK
P8Ha3/c5IrKfVwyyZZyY3nssaxmhRANCAAS8Ts6EWS6R6Th+uIzQtEX6dMQlGxZw
uh3GFxKiemSustyxh6YdBWwVdDKVr/FiLeeca0d4gOVIKlTkwJ9ZMqaL
-----END PRIVATE KEY-----
`
	tkRelease2PEM = `-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIPh5SIcgqO2YU/zz3R3RiL1mvgMmWmHadXCTgYcOSR7z
-----END PRIVATE KEY-----
`
	tkTimestamp1PEM = `-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIEAOHMrdeyTcZa1i0rVW6atiVXno3aoQsTe8LLALDexq
-----END PRIVATE KEY-----
`
	tkTimestamp2PEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgaWHtsfcNEQUWg0ey
CAB0u7uPpqEIW/wVZARe03ER2MyhRANCAAQ249ZQebBbw0XVExx5VxqtN5sMRrn7
XuqCYblRcLHwweMhUnEp8u5yBLZFK0QnC1Ev1rNNju2rdOQOzgjfkdJC
-----END PRIVATE KEY-----
`
	tkAttackerPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKJqsiz7wAVuJypNQ
LJOHWSqwbJ8+qegllQ9TOKrD2tahRANCAAR1aVCG+CpnQUoHXIDAyH1OHo5xBYl2
S1dn7ayXaoZ186+CSNlzyLGgpm0ChGG9slApgt3zPSZQ5/kGowgN18y+
-----END PRIVATE KEY-----
`
)

type tkKeys struct {
	rootA, rootB, rootC, rootD, release1, release2, ts1, ts2, attacker crypto.Signer
}

func tkKey(tb testing.TB, pemText string) crypto.Signer {
	tb.Helper()
	k, err := identity.ParsePrivateKey([]byte(pemText))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func tkFixedKeys(tb testing.TB) tkKeys {
	return tkKeys{
		rootA: tkKey(tb, tkRootAPEM), rootB: tkKey(tb, tkRootBPEM), rootC: tkKey(tb, tkRootCPEM), rootD: tkKey(tb, tkRootDPEM),
		release1: tkKey(tb, tkRelease1PEM), release2: tkKey(tb, tkRelease2PEM),
		ts1: tkKey(tb, tkTimestamp1PEM), ts2: tkKey(tb, tkTimestamp2PEM),
		attacker: tkKey(tb, tkAttackerPEM),
	}
}

func tkID(tb testing.TB, s crypto.Signer) string {
	tb.Helper()
	id, err := keyID(s.Public())
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// tkRepo is an in-memory repository: the cloud half of the tests.
type tkRepo struct {
	tb               testing.TB
	k                tkKeys
	roots            [][]byte // roots[v-1] is root version v, signed
	root             *Root
	rootSigners      []crypto.Signer
	release          *Release
	releaseBytes     []byte
	releaseSigners   []crypto.Signer
	timestamp        *Timestamp
	timestampBytes   []byte
	timestampSigners []crypto.Signer
}

// newTkRepo returns a repository at root version 1 (root keys A, B, C,
// threshold 2; release key 1; timestamp key 1) with release version 1
// (security counter 1) named by timestamp version 1.
func newTkRepo(tb testing.TB) *tkRepo {
	tb.Helper()
	k := tkFixedKeys(tb)
	r := &tkRepo{tb: tb, k: k, rootSigners: []crypto.Signer{k.rootA, k.rootB},
		releaseSigners: []crypto.Signer{k.release1}, timestampSigners: []crypto.Signer{k.ts1}}
	root := &Root{Version: 1, Expires: tkTime.Add(tkRootTTL)}
	r.ok(root.SetRole(RoleRoot, 2, k.rootA.Public(), k.rootB.Public(), k.rootC.Public()))
	r.ok(root.SetRole(RoleRelease, 1, k.release1.Public()))
	r.ok(root.SetRole(RoleTimestamp, 1, k.ts1.Public()))
	r.root = root
	r.roots = append(r.roots, r.must(root.Sign(r.rootSigners...)))
	r.publish(r.newRelease(1, 1))
	return r
}

func (r *tkRepo) ok(err error) {
	r.tb.Helper()
	if err != nil {
		r.tb.Fatal(err)
	}
}

func (r *tkRepo) must(b []byte, err error) []byte {
	r.tb.Helper()
	r.ok(err)
	return b
}

// newRelease returns release metadata for the test hardware class with one
// artifact holding tkArtifact.
func (r *tkRepo) newRelease(version, securityCounter uint64) *Release {
	r.tb.Helper()
	a, err := NewArtifact("rootfs.img", fmt.Sprintf("https://cdn.example/rootfs-%d.img", version), strings.NewReader(tkArtifact), nil)
	r.ok(err)
	return &Release{Version: version, SecurityCounter: securityCounter, HardwareClass: tkHW,
		Artifacts: []Artifact{a}, Expires: tkTime.Add(tkRelTTL)}
}

// publish signs rel with the release signers and a new timestamp naming it.
func (r *tkRepo) publish(rel *Release) {
	r.tb.Helper()
	r.release, r.releaseBytes = rel, r.must(rel.Sign(r.releaseSigners...))
	v := uint64(1)
	if r.timestamp != nil {
		v = r.timestamp.Version + 1
	}
	r.timestampBytes = r.timestampFor(r.releaseBytes, v)
	ts, err := NewTimestamp(v, tkTime.Add(tkTSTTL), r.releaseBytes)
	r.ok(err)
	r.timestamp = ts
}

// timestampFor returns timestamp metadata of version v naming release
// (any bytes: a test may name a forged release, as a thief of the online
// timestamp key would), signed by signers or else the timestamp signers.
func (r *tkRepo) timestampFor(release []byte, v uint64, signers ...crypto.Signer) []byte {
	r.tb.Helper()
	if len(signers) == 0 {
		signers = r.timestampSigners
	}
	ts := &Timestamp{Version: v, Expires: tkTime.Add(tkTSTTL), Release: MetaRef{Version: r.release.Version, Length: int64(len(release)), SHA256: sha256.Sum256(release)}}
	if e, err := parseEnvelope(release, RoleRelease, len(release)); err == nil {
		if rel, err := decodeRelease(e.payload); err == nil {
			ts.Release.Version = rel.Version
		}
	}
	return r.must(ts.Sign(signers...))
}

// rotate signs the next root version, changed by edit, with signers (or
// else the current and the new root signers) and makes it current.
func (r *tkRepo) rotate(edit func(next *Root), signers ...crypto.Signer) []byte {
	r.tb.Helper()
	next := r.root.Next(tkTime.Add(tkRootTTL))
	if edit != nil {
		edit(next)
	}
	b := r.signRoot(next, signers...)
	r.roots = append(r.roots, b)
	r.root = next
	return b
}

// signRoot signs root with signers, even below its own threshold (which
// Root.Sign refuses), for the attacks.
func (r *tkRepo) signRoot(root *Root, signers ...crypto.Signer) []byte {
	r.tb.Helper()
	payload, err := root.encode()
	r.ok(err)
	return signRaw(r.tb, RoleRoot, payload, signers...)
}

// trusted returns a device's Trusted at root version 1.
func (r *tkRepo) trusted(floors Floors) *Trusted {
	r.tb.Helper()
	t, err := NewTrusted(r.roots[0], floors, tkTime, tkHW)
	r.ok(err)
	return t
}

// stateOf summarizes everything a refused update must leave unchanged.
func stateOf(t *Trusted) string {
	sum := sha256.Sum256(t.RootBytes())
	s := fmt.Sprintf("root v%d %x floors %+v walked %d", t.Root().Version, sum[:8], t.Floors(), t.walked)
	if ts := t.Timestamp(); ts != nil {
		s += fmt.Sprintf(" timestamp %+v", *ts)
	}
	if rel := t.Release(); rel != nil {
		s += fmt.Sprintf(" release v%d", rel.Version)
	}
	return s
}

// signRaw signs any payload for role with signers: metadata the package
// would refuse to write (the payload is not validated).
func signRaw(tb testing.TB, role Role, payload []byte, signers ...crypto.Signer) []byte {
	tb.Helper()
	b, err := sign(role, payload, 1<<20, signers)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// signWithHeader signs payload with one signer under an arbitrary
// protected header (alg chosen by the key), for kid spoofing and header
// tests.
func signWithHeader(tb testing.TB, payload []byte, s crypto.Signer, extra map[jose.HeaderKey]any) []byte {
	tb.Helper()
	alg, err := keyAlg(s.Public())
	if err != nil {
		tb.Fatal(err)
	}
	opts := &jose.SignerOptions{ExtraHeaders: extra}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: cryptosigner.Opaque(s)}, opts)
	if err != nil {
		tb.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		tb.Fatal(err)
	}
	out, err := generalSerialization(jws)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// payloadOf returns the payload of a signed document, unverified.
func payloadOf(tb testing.TB, b []byte) []byte {
	tb.Helper()
	var w jwsJSON
	if err := json.Unmarshal(b, &w); err != nil {
		tb.Fatal(err)
	}
	p, err := b64.DecodeString(w.Payload)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// withPayload replaces the payload of a signed document, keeping its
// signatures (which then no longer cover it).
func withPayload(tb testing.TB, b, payload []byte) []byte {
	tb.Helper()
	var w jwsJSON
	if err := json.Unmarshal(b, &w); err != nil {
		tb.Fatal(err)
	}
	w.Payload = b64.EncodeToString(payload)
	out, err := json.Marshal(w)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// mergeSignatures returns doc a with the signatures of b appended (both
// over the same payload).
func mergeSignatures(tb testing.TB, a, b []byte) []byte {
	tb.Helper()
	var wa, wb jwsJSON
	if err := json.Unmarshal(a, &wa); err != nil {
		tb.Fatal(err)
	}
	if err := json.Unmarshal(b, &wb); err != nil {
		tb.Fatal(err)
	}
	if wa.Payload != wb.Payload {
		tb.Fatal("mergeSignatures: payloads differ")
	}
	wa.Signatures = append(wa.Signatures, wb.Signatures...)
	out, err := json.Marshal(wa)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

var _ = bytes.Equal
