// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/internal/fuzzcorpus"
)

// The fuzz targets below cover every parser of metadata bytes that reach a
// device: the pinned root (FuzzNewTrusted), root rotations
// (FuzzUpdateRoot), timestamps (FuzzUpdateTimestamp), releases past the
// hash check (FuzzVerifyRelease), the whole sequence (FuzzTrustedSequence)
// and the strict JSON decoders under the signatures (FuzzDecodePayload).
// Each has seeds built from the test kit's fixed repository and a
// committed corpus in testdata/fuzz/<target>/; TestFuzzCorporaPresent
// fails if a target has none. Run one with, e.g.:
//
//	go test ./update -run '^$' -fuzz '^FuzzUpdateTimestamp$' -fuzztime 20s -fuzzminimizetime 200x
//
// Regenerate the committed seeds with:
//
//	go test ./update -run '^TestFuzzCorporaPresent$' -update-fuzz-seeds
//
// The keys and the clock are fixed (testkit_test.go), so the committed
// metadata keeps verifying whatever the real time. Every target checks,
// besides the absence of panics, that a refusal leaves the Trusted state
// unchanged and that what is accepted obeys the floors.

var fzUpdateSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite the seed corpora of the update fuzz targets in testdata/fuzz")

type fzNamed struct {
	name   string
	values [][]byte
}

func one(name string, b []byte) fzNamed { return fzNamed{name, [][]byte{b}} }

// fzFixture is the fuzzers' repository: root 1 (A, B, C threshold 2),
// root 2 (signed by A, B), release 1 and timestamp 1.
type fzFixture struct {
	r     *tkRepo
	root1 []byte
	root2 []byte
}

func newFzFixture(tb testing.TB) *fzFixture {
	r := newTkRepo(tb)
	f := &fzFixture{r: r, root1: r.roots[0]}
	f.root2 = r.rotate(nil, r.k.rootA, r.k.rootB)
	return f
}

func fzRootSeeds(tb testing.TB, f *fzFixture) []fzNamed {
	r := f.r
	alg := func(name string) []byte {
		b, _ := rawJWSFor(tb, payloadOf(tb, f.root1), map[string]any{"alg": name, "kid": tkID(tb, r.k.rootA), "typ": RoleRoot.MediaType()})
		return b
	}
	return []fzNamed{
		one("valid-root-1", f.root1),
		one("valid-root-2", f.root2),
		one("release-as-root", r.releaseBytes),
		one("below-threshold", signRaw(tb, RoleRoot, payloadOf(tb, f.root1), r.k.rootA)),
		one("alg-none", alg("none")),
		one("duplicate-member", signRaw(tb, RoleRoot, []byte(strings.Replace(string(payloadOf(tb, f.root1)), `"version":1`, `"version":1,"version":2`, 1)), r.k.rootA, r.k.rootB)),
		one("truncated", f.root1[:len(f.root1)/2]),
		one("garbage", []byte(`{"payload":"e30","signatures":[]}`)),
	}
}

func fzRotationSeeds(tb testing.TB, f *fzFixture) []fzNamed {
	r := f.r
	next := r.root.Next(tkTime.Add(tkRootTTL)) // version 3
	return []fzNamed{
		one("valid-root-2", f.root2),
		one("skips-a-version", r.must(next.Sign(r.k.rootA, r.k.rootB))),
		one("below-threshold", signRaw(tb, RoleRoot, payloadOf(tb, f.root2), r.k.rootA)),
		one("unknown-key", signRaw(tb, RoleRoot, payloadOf(tb, f.root2), r.k.rootA, r.k.rootB, r.k.attacker)),
		one("same-root", f.root1),
		one("tampered", tamperVersion(tb, f.root2, `"version":2`, `"version":7`)),
	}
}

func fzTimestampSeeds(tb testing.TB, f *fzFixture) []fzNamed {
	r := f.r
	hdr := map[string]any{"alg": "HS256", "kid": tkID(tb, r.k.ts1), "typ": RoleTimestamp.MediaType()}
	hs, _ := rawJWSFor(tb, payloadOf(tb, r.timestampBytes), hdr)
	return []fzNamed{
		one("valid", r.timestampBytes),
		one("valid-two-signatures", mergeSignatures(tb, r.timestampBytes, r.timestampBytes)),
		one("release-as-timestamp", r.releaseBytes),
		one("attacker", r.timestampFor(r.releaseBytes, 2, r.k.attacker)),
		one("hs256", hs),
		one("kid-spoof", signWithHeader(tb, payloadOf(tb, r.timestampBytes), r.k.attacker, map[jose.HeaderKey]any{"kid": tkID(tb, r.k.ts1), "typ": RoleTimestamp.MediaType()})),
		one("tampered", tamperVersion(tb, r.timestampBytes, `"version":1,"expires"`, `"version":2,"expires"`)),
	}
}

func fzReleaseSeeds(tb testing.TB, f *fzFixture) []fzNamed {
	r := f.r
	two := r.newRelease(1, 1)
	b, err := NewArtifact("kernel", "kernel-1", bytes.NewReader([]byte("k")), nil)
	r.ok(err)
	two.Artifacts = append(two.Artifacts, b)
	other := r.newRelease(1, 1)
	other.HardwareClass = "other-board"
	return []fzNamed{
		one("valid", r.releaseBytes),
		one("valid-two-artifacts", r.must(two.Sign(r.k.release1))),
		one("wrong-hardware", r.must(other.Sign(r.k.release1))),
		one("attacker", r.must(r.newRelease(1, 1).Sign(r.k.attacker))),
		one("timestamp-as-release", r.timestampBytes),
		one("duplicate-member", signRaw(tb, RoleRelease, []byte(strings.Replace(string(payloadOf(tb, r.releaseBytes)), `"version":1`, `"version":1,"version":1`, 1)), r.k.release1)),
		one("tampered", tamperVersion(tb, r.releaseBytes, `"security_counter":1`, `"security_counter":2`)),
	}
}

func fzSequenceSeeds(tb testing.TB, f *fzFixture) []fzNamed {
	r := f.r
	return []fzNamed{
		{"valid", [][]byte{f.root2, r.timestampBytes, r.releaseBytes}},
		{"valid-no-rotation", [][]byte{nil, r.timestampBytes, r.releaseBytes}},
		{"mix-and-match", [][]byte{nil, r.timestampBytes, r.must(r.newRelease(2, 1).Sign(r.k.release1))}},
		{"swapped", [][]byte{r.timestampBytes, r.releaseBytes, f.root2}},
	}
}

func fzPayloadSeeds(tb testing.TB, f *fzFixture) []fzNamed {
	r := f.r
	return []fzNamed{
		one("valid-root", payloadOf(tb, f.root1)),
		one("valid-release", payloadOf(tb, r.releaseBytes)),
		one("valid-timestamp", payloadOf(tb, r.timestampBytes)),
		one("valid-timestamp-rollout", fzWithRollout(tb, payloadOf(tb, r.timestampBytes), "")),
		one("timestamp-rollout-groups-empty", fzWithRollout(tb, payloadOf(tb, r.timestampBytes), `"groups":[]`)),
		one("member-case", bytes.Replace(payloadOf(tb, r.timestampBytes), []byte(`"version"`), []byte(`"VERSION"`), 1)),
		one("duplicate", bytes.Replace(payloadOf(tb, r.releaseBytes), []byte(`"version":1`), []byte(`"version":1,"version":1`), 1)),
		one("empty", nil),
		one("valid-release-deltas", fzWithDeltas(tb, payloadOf(tb, r.releaseBytes), "")),
		one("release-deltas-empty", fzWithDeltas(tb, payloadOf(tb, r.releaseBytes), `"deltas":[]`)),
		one("release-deltas-null", fzWithDeltas(tb, payloadOf(tb, r.releaseBytes), `"deltas":null`)),
		one("valid-release-facts", fzWithFacts(tb, payloadOf(tb, r.releaseBytes))),
		one("release-sbom-null", bytes.Replace(fzWithFacts(tb, payloadOf(tb, r.releaseBytes)), []byte(`"sbom":{`), []byte(`"sbom":null,"x":{`), 1)),
	}
}

// fzWithRollout returns a timestamp payload with a cohort rule (two
// groups); groups, if not empty, replaces its "groups" member.
func fzWithRollout(tb testing.TB, payload []byte, groups string) []byte {
	ts, err := decodeTimestamp(payload)
	if err != nil {
		tb.Fatal(err)
	}
	ts.Rollout = &Rollout{Salt: [16]byte{1, 2, 3}, Share: 1250, Groups: []string{"beta", "lab"}}
	b, err := ts.encode()
	if err != nil {
		tb.Fatal(err)
	}
	if groups != "" {
		b = bytes.Replace(b, []byte(`"groups":["beta","lab"]`), []byte(groups), 1)
	}
	return b
}

// fzWithFacts returns a release payload with an SBOM and a support end.
func fzWithFacts(tb testing.TB, payload []byte) []byte {
	rel, err := decodeRelease(payload)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := withFacts(rel).encode()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// fzWithDeltas returns a release payload with a "deltas" member: a valid
// one, or, with member set, that member in its place.
func fzWithDeltas(tb testing.TB, payload []byte, member string) []byte {
	rel, err := decodeRelease(payload)
	if err != nil {
		tb.Fatal(err)
	}
	rel.Version = 3
	rel.Deltas = []Delta{{Artifact: rel.Artifacts[0].Name, FromVersion: 2, FromLength: 12, FromSHA256: sha256.Sum256([]byte("base")),
		Length: 40, SHA256: sha256.Sum256([]byte("delta")), URI: "rootfs-3.from-2.delta"}}
	b, err := rel.encode()
	if err != nil {
		tb.Fatal(err)
	}
	if member != "" {
		i := bytes.Index(b, []byte(`,"deltas":`))
		b = append(append(b[:i+1:i+1], member...), '}')
	}
	return b
}

// rawJWSFor is rawJWS for any testing.TB, with an empty signature.
func rawJWSFor(tb testing.TB, payload []byte, header map[string]any) ([]byte, string) {
	h, err := json.Marshal(header)
	if err != nil {
		tb.Fatal(err)
	}
	out, err := json.Marshal(jwsJSON{Payload: b64.EncodeToString(payload), Signatures: []jwsSigJSON{{Protected: b64.EncodeToString(h), Signature: "AAAA"}}})
	if err != nil {
		tb.Fatal(err)
	}
	return out, ""
}

func fzAllSeeds(tb testing.TB) map[string][]fzNamed {
	f := newFzFixture(tb)
	return map[string][]fzNamed{
		"FuzzNewTrusted":      fzRootSeeds(tb, f),
		"FuzzUpdateRoot":      fzRotationSeeds(tb, f),
		"FuzzUpdateTimestamp": fzTimestampSeeds(tb, f),
		"FuzzVerifyRelease":   fzReleaseSeeds(tb, f),
		"FuzzTrustedSequence": fzSequenceSeeds(tb, f),
		"FuzzDecodePayload":   fzPayloadSeeds(tb, f),
	}
}

// fzTrusted returns a Trusted at root 1 to copy in each iteration (a
// NewTrusted per input would spend most of the time verifying root 1).
func fzTrusted(tb testing.TB, fx *fzFixture, floors Floors) *Trusted {
	tr, err := NewTrusted(fx.root1, floors, tkTime, tkHW)
	if err != nil {
		tb.Fatal(err)
	}
	return tr
}

// fzCopy returns an independent Trusted: its methods replace the root,
// timestamp and release pointers and never write through them.
func fzCopy(t *Trusted) *Trusted {
	c := *t
	return &c
}

// fzCheck asserts a refusal left tr as it was, and that an acceptance
// kept the security-counter floor.
func fzCheck(t *testing.T, tr *Trusted, before string, sc uint64, err error) {
	t.Helper()
	if err != nil {
		if after := stateOf(tr); after != before {
			t.Fatalf("refusal (%v) changed the state:\n before %s\n after  %s", err, before, after)
		}
		if !strings.HasPrefix(err.Error(), "update: ") {
			t.Fatalf("error without the package prefix: %v", err)
		}
	}
	if tr.Floors().SecurityCounter != sc {
		t.Fatalf("security counter floor moved: %+v", tr.Floors())
	}
}

func FuzzNewTrusted(f *testing.F) {
	fx := newFzFixture(f)
	for _, s := range fzRootSeeds(f, fx) {
		f.Add(s.values[0])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := NewTrusted(b, Floors{SecurityCounter: 3}, tkTime, tkHW)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "update: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			return
		}
		if err := tr.Root().validate(); err != nil {
			t.Fatalf("accepted an invalid root: %v", err)
		}
		if !bytes.Equal(tr.RootBytes(), b) {
			t.Fatal("RootBytes differ from the input")
		}
	})
}

func FuzzUpdateRoot(f *testing.F) {
	fx := newFzFixture(f)
	for _, s := range fzRotationSeeds(f, fx) {
		f.Add(s.values[0])
	}
	base := fzTrusted(f, fx, Floors{TimestampVersion: 5, ReleaseVersion: 5, SecurityCounter: 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		tr := fzCopy(base)
		before := stateOf(tr)
		root, err := tr.UpdateRoot(b)
		fzCheck(t, tr, before, 3, err)
		if err == nil && (root.Version != 2 || !bytes.Equal(tr.RootBytes(), b)) {
			t.Fatalf("accepted root version %d", root.Version)
		}
	})
}

func FuzzUpdateTimestamp(f *testing.F) {
	fx := newFzFixture(f)
	for _, s := range fzTimestampSeeds(f, fx) {
		f.Add(s.values[0])
	}
	base := fzTrusted(f, fx, Floors{SecurityCounter: 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		tr := fzCopy(base)
		before := stateOf(tr)
		ts, err := tr.UpdateTimestamp(b)
		fzCheck(t, tr, before, 3, err)
		if err == nil && (!tkTime.Before(ts.Expires) || tr.Floors().TimestampVersion != ts.Version) {
			t.Fatalf("accepted %+v with floors %+v", ts, tr.Floors())
		}
	})
}

// FuzzVerifyRelease fuzzes the release checks past the hash comparison
// with the timestamp (which no mutation gets through): signatures, strict
// decoding, content checks.
func FuzzVerifyRelease(f *testing.F) {
	fx := newFzFixture(f)
	for _, s := range fzReleaseSeeds(f, fx) {
		f.Add(s.values[0])
	}
	base := fzTrusted(f, fx, Floors{SecurityCounter: 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		tr := fzCopy(base)
		rel, err := tr.verifyRelease(b)
		if err == nil {
			err = tr.checkRelease(rel)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "update: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			return
		}
		if rel.HardwareClass != tkHW || rel.SecurityCounter < 1 || rel.validate() != nil {
			t.Fatalf("accepted %+v", rel)
		}
	})
}

func FuzzTrustedSequence(f *testing.F) {
	fx := newFzFixture(f)
	for _, s := range fzSequenceSeeds(f, fx) {
		f.Add(s.values[0], s.values[1], s.values[2])
	}
	base := fzTrusted(f, fx, Floors{TimestampVersion: 1, ReleaseVersion: 1, SecurityCounter: 1})
	f.Fuzz(func(t *testing.T, root, ts, rel []byte) {
		tr := fzCopy(base)
		if len(root) > 0 {
			before := stateOf(tr)
			_, err := tr.UpdateRoot(root)
			fzCheck(t, tr, before, 1, err)
		}
		floors := tr.Floors()
		before := stateOf(tr)
		gotTS, err := tr.UpdateTimestamp(ts)
		fzCheck(t, tr, before, 1, err)
		if err != nil {
			return
		}
		if gotTS.Version < floors.TimestampVersion || gotTS.Release.Version < floors.ReleaseVersion {
			t.Fatalf("timestamp %+v below floors %+v", gotTS, floors)
		}
		before = stateOf(tr)
		gotRel, err := tr.UpdateRelease(rel)
		fzCheck(t, tr, before, 1, err)
		if err != nil {
			return
		}
		if sha256.Sum256(rel) != gotTS.Release.SHA256 || gotRel.Version != gotTS.Release.Version || gotRel.HardwareClass != tkHW {
			t.Fatalf("release %+v does not match timestamp %+v", gotRel, gotTS)
		}
	})
}

// FuzzDecodePayload: whatever a decoder accepts re-encodes to a payload
// that decodes to the same document.
func FuzzDecodePayload(f *testing.F) {
	fx := newFzFixture(f)
	for _, s := range fzPayloadSeeds(f, fx) {
		f.Add(s.values[0])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if root, err := decodeRoot(b); err == nil {
			re, err := root.encode()
			if err != nil {
				t.Fatalf("accepted root does not encode: %v", err)
			}
			again, err := decodeRoot(re)
			if err != nil {
				t.Fatalf("re-encoded root refused: %v", err)
			}
			if re2, _ := again.encode(); !bytes.Equal(re, re2) {
				t.Fatal("root round trip differs")
			}
		}
		if rel, err := decodeRelease(b); err == nil {
			re, err := rel.encode()
			if err != nil {
				t.Fatalf("accepted release does not encode: %v", err)
			}
			again, err := decodeRelease(re)
			// By value: Sprint would print the SBOM pointer's address.
			if err != nil || !reflect.DeepEqual(again, rel) {
				t.Fatalf("release round trip: %v", err)
			}
		}
		if ts, err := decodeTimestamp(b); err == nil {
			re, err := ts.encode()
			if err != nil {
				t.Fatalf("accepted timestamp does not encode: %v", err)
			}
			again, err := decodeTimestamp(re)
			if err != nil || !reflect.DeepEqual(again, ts) {
				t.Fatalf("timestamp round trip: %v", err)
			}
		}
	})
}

// TestFuzzCorporaPresent fails if a fuzz target of this package has no
// committed seed corpus, or a corpus file is not a `go test fuzz v1` file
// with one value per argument. With -update-fuzz-seeds it first rewrites
// the corpora of the targets of this file.
func TestFuzzCorporaPresent(t *testing.T) {
	if *fzUpdateSeeds {
		for target, seeds := range fzAllSeeds(t) {
			dir := filepath.Join("testdata", "fuzz", target)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, s := range seeds {
				body := "go test fuzz v1\n"
				for _, v := range s.values {
					body += fmt.Sprintf("[]byte(%q)\n", v)
				}
				if err := os.WriteFile(filepath.Join(dir, s.name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	fuzzcorpus.Check(t, ".")
}

// fzReadCorpusFile returns the []byte values of a committed corpus file.
func fzReadCorpusFile(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	var out [][]byte
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l, "[]byte(") || !strings.HasSuffix(l, ")") {
			t.Fatalf("%s: not a []byte value: %s", path, l)
		}
		v, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(l, "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, []byte(v))
	}
	return out
}

// TestFuzzSeedsGenuine checks that the committed seeds still mean what
// their names say: those named valid* are accepted (so the fuzzers start
// from inputs that reach the end of the checks), the others refused.
func TestFuzzSeedsGenuine(t *testing.T) {
	fx := newFzFixture(t)
	for _, target := range []string{"FuzzNewTrusted", "FuzzUpdateRoot", "FuzzUpdateTimestamp", "FuzzVerifyRelease", "FuzzTrustedSequence", "FuzzDecodePayload"} {
		files, err := filepath.Glob(filepath.Join("testdata", "fuzz", target, "*"))
		if err != nil || len(files) == 0 {
			t.Fatalf("%s: no corpus (%v)", target, err)
		}
		for _, file := range files {
			name := filepath.Base(file)
			v := fzReadCorpusFile(t, file)
			tr, err := NewTrusted(fx.root1, Floors{TimestampVersion: 1, ReleaseVersion: 1, SecurityCounter: 1}, tkTime, tkHW)
			if err != nil {
				t.Fatal(err)
			}
			switch target {
			case "FuzzNewTrusted":
				_, err = NewTrusted(v[0], Floors{}, tkTime, tkHW)
			case "FuzzUpdateRoot":
				_, err = tr.UpdateRoot(v[0])
			case "FuzzUpdateTimestamp":
				_, err = tr.UpdateTimestamp(v[0])
			case "FuzzVerifyRelease":
				var rel *Release
				if rel, err = tr.verifyRelease(v[0]); err == nil {
					err = tr.checkRelease(rel)
				}
			case "FuzzTrustedSequence":
				if len(v[0]) > 0 {
					_, err = tr.UpdateRoot(v[0])
				}
				if err == nil {
					_, err = tr.UpdateTimestamp(v[1])
				}
				if err == nil {
					_, err = tr.UpdateRelease(v[2])
				}
			case "FuzzDecodePayload":
				_, err1 := decodeRoot(v[0])
				_, err2 := decodeRelease(v[0])
				_, err3 := decodeTimestamp(v[0])
				if err1 != nil && err2 != nil && err3 != nil {
					err = err1
				}
			}
			if want := strings.HasPrefix(name, "valid"); want != (err == nil) {
				t.Errorf("%s/%s: accepted %v (err %v), want accepted %v", target, name, err == nil, err, want)
			}
		}
	}
}
