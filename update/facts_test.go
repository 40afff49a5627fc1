// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

// tkSBOM is the SBOM of the facts tests.
const tkSBOM = `{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"openssl","version":"3.0.1"}]}`

// withFacts returns rel with an SBOM reference to tkSBOM and a support end.
func withFacts(rel *Release) *Release {
	rel.SBOM = &SBOMRef{Length: int64(len(tkSBOM)), SHA256: sha256.Sum256([]byte(tkSBOM)), URI: fmt.Sprintf("v%d/sbom.cdx.json", rel.Version)}
	rel.SupportUntil = time.Date(2031, 12, 31, 0, 0, 0, 0, time.UTC)
	return rel
}

// TestReleaseFacts: the SBOM reference and the support end are signed,
// verified and read back; a release without them has neither member.
func TestReleaseFacts(t *testing.T) {
	r := newTkRepo(t)
	if p := string(payloadOf(t, r.releaseBytes)); strings.Contains(p, "sbom") || strings.Contains(p, "support_until") {
		t.Fatalf("a release without facts carries the members: %s", p)
	}
	r.publish(withFacts(r.newRelease(2, 1)))
	p := string(payloadOf(t, r.releaseBytes))
	want := fmt.Sprintf(`"sbom":{"length":%d,"sha256":"%x","uri":"v2/sbom.cdx.json"},"support_until":"2031-12-31T00:00:00Z"`, len(tkSBOM), sha256.Sum256([]byte(tkSBOM)))
	if !strings.Contains(p, want) {
		t.Fatalf("payload %s\nwant it to hold %s", p, want)
	}
	tr := r.trusted(Floors{})
	if _, err := tr.UpdateTimestamp(r.timestampBytes); err != nil {
		t.Fatal(err)
	}
	rel, err := tr.UpdateRelease(r.releaseBytes)
	if err != nil {
		t.Fatal(err)
	}
	if *rel.SBOM != *r.release.SBOM || !rel.SupportUntil.Equal(r.release.SupportUntil) {
		t.Fatalf("read back %+v, %v; signed %+v, %v", rel.SBOM, rel.SupportUntil, r.release.SBOM, r.release.SupportUntil)
	}
	// VerifyRelease reads it too, without a timestamp or a clock.
	got, err := tr.Root().VerifyRelease(r.releaseBytes)
	if err != nil || *got.SBOM != *rel.SBOM {
		t.Fatalf("VerifyRelease: %+v, %v", got, err)
	}
}

// TestReleaseFactsTampered: changing the SBOM member (another digest, as a
// mirror hiding a vulnerable component would) breaks the signature, and
// VerifyRelease refuses a release not signed by the root's release keys.
func TestReleaseFactsTampered(t *testing.T) {
	r := newTkRepo(t)
	r.publish(withFacts(r.newRelease(2, 1)))
	signed := r.releaseBytes
	p := payloadOf(t, signed)
	other := sha256.Sum256([]byte("another sbom"))
	forged := bytes.Replace(p, []byte(hex.EncodeToString(r.release.SBOM.SHA256[:])), []byte(hex.EncodeToString(other[:])), 1)
	if bytes.Equal(forged, p) {
		t.Fatal("the digest is not in the payload")
	}
	tampered := withPayload(t, signed, forged)
	if _, err := r.root.VerifyRelease(tampered); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("VerifyRelease of a tampered SBOM digest: %v, want ErrBadSignature", err)
	}
	tr := r.trusted(Floors{})
	if _, err := tr.UpdateTimestamp(r.timestampFor(tampered, r.timestamp.Version)); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.UpdateRelease(tampered); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("UpdateRelease of a tampered SBOM digest: %v, want ErrBadSignature", err)
	}
	// Signed by a key the root does not trust for releases.
	if _, err := r.root.VerifyRelease(signRaw(t, RoleRelease, p, r.k.ts1)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("VerifyRelease signed by the timestamp key: %v, want ErrUnknownKey", err)
	}
	// A timestamp document is not a release.
	if _, err := r.root.VerifyRelease(r.timestampBytes); !errors.Is(err, ErrWrongType) && !errors.Is(err, ErrMalformed) {
		t.Fatalf("VerifyRelease of a timestamp: %v", err)
	}
}

// TestReleaseFactsForms: every malformed form of the two members is
// refused, signed or not (strict decoding, field rules).
func TestReleaseFactsForms(t *testing.T) {
	r := newTkRepo(t)
	r.publish(withFacts(r.newRelease(2, 1)))
	good := string(payloadOf(t, r.releaseBytes))
	digest := hex.EncodeToString(r.release.SBOM.SHA256[:])
	sbom := fmt.Sprintf(`"sbom":{"length":%d,"sha256":"%s","uri":"v2/sbom.cdx.json"}`, len(tkSBOM), digest)
	until := `"support_until":"2031-12-31T00:00:00Z"`
	if !strings.Contains(good, sbom) || !strings.Contains(good, until) {
		t.Fatalf("payload %s", good)
	}
	member := func(old, new string) string { return strings.Replace(good, old, new, 1) }
	for name, payload := range map[string]string{
		"sbom null":             member(sbom, `"sbom":null`),
		"sbom empty object":     member(sbom, `"sbom":{}`),
		"sbom array":            member(sbom, `"sbom":[]`),
		"sbom uppercase hex":    member(digest, strings.ToUpper(digest)),
		"sbom short digest":     member(digest, digest[:62]),
		"sbom length 0":         member(fmt.Sprintf(`"length":%d`, len(tkSBOM)), `"length":0`),
		"sbom negative length":  member(fmt.Sprintf(`"length":%d`, len(tkSBOM)), `"length":-1`),
		"sbom length too large": member(fmt.Sprintf(`"length":%d`, len(tkSBOM)), fmt.Sprintf(`"length":%d`, limits.UpdateSBOM+1)),
		"sbom length float":     member(fmt.Sprintf(`"length":%d`, len(tkSBOM)), fmt.Sprintf(`"length":%d.0`, len(tkSBOM))),
		"sbom empty uri":        member(`"uri":"v2/sbom.cdx.json"`, `"uri":""`),
		"sbom uri with space":   member(`"uri":"v2/sbom.cdx.json"`, `"uri":"v2/sbom cdx.json"`),
		"sbom unknown member":   member(`"uri":"v2/sbom.cdx.json"}`, `"uri":"v2/sbom.cdx.json","format":"spdx"}`),
		"sbom missing member":   member(fmt.Sprintf(`"length":%d,`, len(tkSBOM)), ``),
		"sbom twice":            member(sbom, sbom+","+sbom),
		"sbom case":             member(`"sbom":`, `"SBOM":`),
		"support_until empty":   member(until, `"support_until":""`),
		"support_until null":    member(until, `"support_until":null`),
		"support_until date":    member(until, `"support_until":"2031-12-31"`),
		"support_until offset":  member(until, `"support_until":"2031-12-31T00:00:00+01:00"`),
		"support_until millis":  member(until, `"support_until":"2031-12-31T00:00:00.000Z"`),
		"support_until number":  member(until, `"support_until":1956528000`),
		"support_until twice":   member(until, until+","+until),
	} {
		if payload == good {
			t.Fatalf("%s: the payload did not change", name)
		}
		signed := signRaw(t, RoleRelease, []byte(payload), r.releaseSigners...)
		_, err := r.root.VerifyRelease(signed)
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
		if _, err := decodeRelease([]byte(payload)); err == nil {
			t.Errorf("%s: decodeRelease accepted it", name)
		}
	}
	// Sign refuses what it would not read.
	rel := withFacts(r.newRelease(3, 1))
	rel.SBOM.Length = 0
	if _, err := rel.Sign(r.releaseSigners...); !errors.Is(err, ErrMalformed) {
		t.Errorf("Sign with an empty SBOM: %v", err)
	}
	rel = withFacts(r.newRelease(3, 1))
	rel.SupportUntil = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := rel.Sign(r.releaseSigners...); !errors.Is(err, ErrMalformed) {
		t.Errorf("Sign with support until year 10000: %v", err)
	}
}

// TestAgentReportsRunning: each Agent's first Start reports the release the
// device runs, with its facts: the factory image, then a release with an
// SBOM once installed (on trial), then confirmed, and again after a
// restart from the persistent state.
func TestAgentReportsRunning(t *testing.T) {
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	ctx := t.Context()
	running := func(want uint64, sbom string, until int64) {
		t.Helper()
		n := 0
		var last Result
		dev.reportMu.Lock()
		for _, r := range dev.reports {
			if r.Event == "running" {
				n++
				last = r
			}
		}
		dev.reportMu.Unlock()
		if n != 1 || last.Version != want || last.SBOM != sbom || last.SupportUntil != until || last.HardwareClass != repo.hardware {
			t.Fatalf("%d running reports, the last %+v; want one for version %d, sbom %q, support until %d", n, last, want, sbom, until)
		}
		dev.reportMu.Lock()
		dev.reports = nil
		dev.reportMu.Unlock()
	}
	for range 2 {
		if _, err := dev.agent.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	running(0, "", 0) // once per Agent, however often Start is called

	// Release 1 with an SBOM and a support end.
	img := image(1, 10_000)
	repo.publish(1, 1, img)
	var rel *Release
	func() {
		repo.mu.Lock()
		defer repo.mu.Unlock()
		rel, _ = decodeRelease(payloadOf(t, repo.release))
	}()
	withFacts(rel)
	rb, err := rel.Sign(repo.relKey)
	if err != nil {
		t.Fatal(err)
	}
	repo.mu.Lock()
	repo.release = rb
	repo.mu.Unlock()
	repo.stamp()
	sbom := hex.EncodeToString(rel.SBOM.SHA256[:])
	until := rel.SupportUntil.UnixMilli()

	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatalf("Update: %v, %v", ok, err)
	}
	if r := dev.lastReport(); r.Event != "installed" || r.SBOM != sbom || r.SupportUntil != until || r.HardwareClass != repo.hardware {
		t.Fatalf("installed report %+v", r)
	}
	dev.reports = nil
	dev.restart()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	running(1, sbom, until) // on trial
	if err := dev.agent.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	if r := dev.lastReport(); r.Event != "confirmed" || r.SBOM != sbom || r.SupportUntil != until || r.HardwareClass != repo.hardware {
		t.Fatalf("confirmed report %+v", r)
	}
	st := dev.agent.Status()
	if hex.EncodeToString(st.Installed.SBOM) != sbom || st.Installed.SupportUntil != until || st.Last.SBOM != sbom {
		t.Fatalf("status %+v", st)
	}
	if st.Installed.SupportEnded(rel.SupportUntil.Add(-time.Second)) || !st.Installed.SupportEnded(rel.SupportUntil) {
		t.Fatal("SupportEnded")
	}
	dev.reports = nil
	dev.restart()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	running(1, sbom, until) // from the persistent state
}

// TestInstalledStateOldForm: a state written before the release facts
// (an Installed without keys 6 and 7) still loads, with no facts.
func TestInstalledStateOldForm(t *testing.T) {
	type oldInstalled struct {
		Version         uint64 `cbor:"1,keyasint"`
		SecurityCounter uint64 `cbor:"2,keyasint"`
		Slot            string `cbor:"3,keyasint"`
		SHA256          []byte `cbor:"4,keyasint,omitempty"`
		Artifact        string `cbor:"5,keyasint,omitempty"`
	}
	type oldState struct {
		Gen       uint64       `cbor:"1,keyasint"`
		Root      []byte       `cbor:"2,keyasint"`
		Floors    Floors       `cbor:"3,keyasint"`
		Installed oldInstalled `cbor:"4,keyasint"`
		Phase     Phase        `cbor:"5,keyasint"`
	}
	dir := t.TempDir()
	s, err := newStateStore(atomicfile.OS{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	old := oldState{Gen: 1, Root: []byte("root"), Installed: oldInstalled{Version: 4, SecurityCounter: 2, Slot: "b", SHA256: []byte{1, 2}, Artifact: "image"}}
	if err := s.codec.Save(atomicfile.OS{}, filepath.Join(dir, stateNames[1]), &old); err != nil {
		t.Fatal(err)
	}
	st, found, err := s.load()
	if err != nil || !found {
		t.Fatalf("load: %v, %v", found, err)
	}
	if st.Installed.Version != 4 || st.Installed.Slot != "b" || st.Installed.SBOM != nil || st.Installed.SupportUntil != 0 {
		t.Fatalf("loaded %+v", st.Installed)
	}
}
