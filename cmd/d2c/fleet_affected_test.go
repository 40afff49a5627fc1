// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/update"
)

// TestFleetAffected signs three releases, two with an SBOM (the first
// names openssl 3.0.1, the second openssl 3.0.2 and, by package URL only,
// zlib 1.3), stores the update reports of devices running each, and asks
// which devices run a given component: only those whose latest "running"
// or "confirmed" report names an affected release, with a matching SBOM
// digest and hardware class, are listed. An SBOM or a release altered in
// the repository stops the command.
func TestFleetAffected(t *testing.T) {
	tmp := t.TempDir()
	keys, dir := filepath.Join(tmp, "keys"), filepath.Join(tmp, "repo")
	for _, role := range []string{"root", "release", "timestamp"} {
		d2cRun(t, "update", "keys", "gen", "--role", role, "--out", keys)
	}
	d2cRun(t, "update", "root", "init", "--repo", dir, "--root-key", filepath.Join(keys, "root.key"),
		"--release-pub", filepath.Join(keys, "release.pub"), "--timestamp-pub", filepath.Join(keys, "timestamp.pub"))
	sboms := map[int]string{
		1: `{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"openssl","version":"3.0.1"},{"name":"busybox","version":"1.36.1"}]}`,
		2: `{"bomFormat":"CycloneDX","specVersion":"1.6","components":[{"name":"openssl","version":"3.0.2","components":[{"name":"libz","purl":"pkg:generic/zlib@1.3"}]}]}`,
	}
	digest := map[int]string{}
	for v := 1; v <= 3; v++ {
		vs := string(rune('0' + v))
		img := filepath.Join(tmp, "fw-"+vs+".bin")
		if err := os.WriteFile(img, []byte("image "+vs), 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{"update", "release", "sign", "--repo", dir, "--key", filepath.Join(keys, "release.key"),
			"--version", vs, "--security-counter", "1", "--hardware-class", "hw", "--image", img,
			"--timestamp-key", filepath.Join(keys, "timestamp.key"), "--progress=false"}
		if doc, ok := sboms[v]; ok {
			sb := filepath.Join(tmp, vs, "sbom.cdx.json")
			if err := os.MkdirAll(filepath.Dir(sb), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(sb, []byte(doc), 0o644); err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256([]byte(doc))
			digest[v] = hex.EncodeToString(sum[:])
			args = append(args, "--sbom", sb, "--support-until", "2031-0"+vs+"-01")
		}
		out := d2cRun(t, args...)
		if _, ok := sboms[v]; ok && (!strings.Contains(out, "sbom: ") || !strings.Contains(out, "security support until 2031-0"+vs+"-01T00:00:00Z")) {
			t.Fatalf("release sign printed:\n%s", out)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "v1", "sbom.cdx.json")); err != nil || string(b) != sboms[1] {
		t.Fatalf("the SBOM in the repository: %q, %v", b, err)
	}

	url := sqliteURL(t)
	rs := newRecordStore(t, url)
	t0 := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	report := func(dev string, boot, seq uint64, r update.Result) transport.Record {
		r.Time = t0.UnixMilli()
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return transport.Record{Device: dev, Stream: update.ReportStream, Boot: boot, Seq: seq, Time: t0,
			Readings: []transport.Reading{{Time: t0, Body: b}}}
	}
	rs.accept(t,
		report("dev-1", 1, 1, update.Result{Event: "running", Version: 1, SBOM: digest[1], HardwareClass: "hw"}),
		report("dev-2", 1, 1, update.Result{Event: "running", Version: 2, SBOM: digest[2], HardwareClass: "hw"}),
		report("dev-3", 1, 1, update.Result{Event: "confirmed", Version: 1, SBOM: digest[1], HardwareClass: "hw"}),
		report("dev-3", 2, 1, update.Result{Event: "running", Version: 2, SBOM: digest[2], HardwareClass: "hw"}),
		report("dev-4", 1, 1, update.Result{Event: "running", Version: 1, SBOM: digest[1], HardwareClass: "other"}),
		report("dev-5", 1, 1, update.Result{Event: "running", Version: 3, HardwareClass: "hw"}),
		report("dev-5", 1, 2, update.Result{Event: "installed", Version: 1, SBOM: digest[1], HardwareClass: "hw"}),
		report("dev-6", 1, 1, update.Result{Event: "running", Version: 1}), // an agent before these reports
		report("dev-7", 1, 1, update.Result{Event: "running", Version: 1, SBOM: digest[2], HardwareClass: "hw"}),
	)

	affected := func(component string, extra ...string) (code int, stdout, stderr string) {
		t.Helper()
		var o, e bytes.Buffer
		code = run(t.Context(), append([]string{"fleet", "affected", "--component", component, "--db", url, "--repo", dir}, extra...), &o, &e)
		return code, o.String(), e.String()
	}
	devices := func(stdout string) []string {
		var out []string
		for _, l := range strings.Split(strings.TrimSpace(stdout), "\n")[1:] {
			out = append(out, strings.Fields(l)[0])
		}
		return out
	}
	code, stdout, stderr := affected("openssl@3.0.1")
	if code != exitOK || strings.Join(devices(stdout), " ") != "dev-1 dev-6" {
		t.Fatalf("openssl@3.0.1: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "2031-01-01T00:00:00Z") || !strings.Contains(stdout, digest[1][:12]) {
		t.Errorf("openssl@3.0.1: no support end or SBOM digest:\n%s", stdout)
	}
	for _, want := range []string{"without an SBOM, not assessed: 3", "dev-7 reports release 1 with SBOM " + digest[2], "2 device(s) run a release whose SBOM names openssl@3.0.1 (release(s) 1)"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	// By a package URL's name and version, in a nested component.
	if code, stdout, stderr := affected("zlib@1.3"); code != exitOK || strings.Join(devices(stdout), " ") != "dev-2 dev-3" {
		t.Fatalf("zlib@1.3: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if code, stdout, stderr := affected("openssl@9.9"); code != exitOK || len(devices(stdout)) != 0 || !strings.Contains(stderr, "no release of") {
		t.Fatalf("openssl@9.9: exit %d\n%s\n%s", code, stdout, stderr)
	}
	// --json: one object per device and line.
	code, stdout, stderr = affected("openssl@3.0.1", "--json")
	if code != exitOK {
		t.Fatalf("--json: exit %d\n%s", code, stderr)
	}
	var got []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("--json line %q: %v", l, err)
		}
		got = append(got, m)
	}
	if len(got) != 2 || got[0]["device"] != "dev-1" || got[0]["version"] != 1.0 || got[0]["sbom"] != digest[1] ||
		got[0]["support_until"] != "2031-01-01T00:00:00Z" || got[0]["reported"] != t0.UTC().Format(time.RFC3339) {
		t.Fatalf("--json: %v", got)
	}
	if code, _, _ := affected("openssl"); code != exitUsage {
		t.Errorf("--component without a version: exit %d, want %d", code, exitUsage)
	}

	// The SBOM in the repository is not the one release 2 signed.
	sb2 := filepath.Join(dir, "v2", "sbom.cdx.json")
	if err := os.WriteFile(sb2, []byte(strings.Replace(sboms[2], "3.0.2", "3.0.3", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = affected("openssl@3.0.1")
	if code != exitError || stdout != "" || !strings.Contains(stderr, "release 2: "+sb2+" holds") ||
		!strings.Contains(stderr, "the release signs") || !strings.Contains(stderr, "hint: the SBOM in the repository is not the one the release signed") {
		t.Fatalf("altered SBOM: exit %d\n%s\n%s", code, stdout, stderr)
	}
	// Missing.
	if err := os.Remove(sb2); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := affected("openssl@3.0.1"); code != exitError || stdout != "" || !strings.Contains(stderr, "release 2: SBOM: ") {
		t.Fatalf("missing SBOM: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if err := os.WriteFile(sb2, []byte(sboms[2]), 0o644); err != nil {
		t.Fatal(err)
	}
	// A release copied under another version's name.
	if err := os.Link(filepath.Join(dir, "2.release.json"), filepath.Join(dir, "7.release.json")); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := affected("openssl@3.0.1"); code != exitError || stdout != "" || !strings.Contains(stderr, "7.release.json holds release version 2") {
		t.Fatalf("a release under another name: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if err := os.Remove(filepath.Join(dir, "7.release.json")); err != nil {
		t.Fatal(err)
	}
	// After a rotation of the release key, the past releases still verify,
	// under the root that trusted their key, and the answer says so.
	keys2 := filepath.Join(tmp, "keys2")
	d2cRun(t, "update", "keys", "gen", "--role", "release", "--out", keys2)
	d2cRun(t, "update", "root", "rotate", "--repo", dir, "--old-key", filepath.Join(keys, "root.key"), "--release-pub", filepath.Join(keys2, "release.pub"))
	code, stdout, stderr = affected("openssl@3.0.1")
	if code != exitOK || strings.Join(devices(stdout), " ") != "dev-1 dev-6" ||
		!strings.Contains(stderr, "note: "+filepath.Join(dir, "1.release.json")+" is signed by release keys of root version 1, not of the newest root 2") {
		t.Fatalf("after a rotation: exit %d\n%s\n%s", code, stdout, stderr)
	}

	// A release altered in the repository (its SBOM digest changed).
	relPath := filepath.Join(dir, "1.release.json")
	signed, err := os.ReadFile(relPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(relPath, forgeSBOMDigest(t, signed, digest[1], digest[2]), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := affected("openssl@3.0.1"); code != exitError || stdout != "" || !strings.Contains(stderr, "1.release.json: update: arbitrary metadata: bad signature") {
		t.Fatalf("altered release: exit %d\n%s\n%s", code, stdout, stderr)
	}
}

// forgeSBOMDigest replaces the SBOM digest in a signed release's payload,
// keeping its signatures.
func forgeSBOMDigest(t *testing.T, signed []byte, from, to string) []byte {
	t.Helper()
	var w map[string]any
	if err := json.Unmarshal(signed, &w); err != nil {
		t.Fatal(err)
	}
	payload, err := b64url.DecodeString(w["payload"].(string))
	if err != nil {
		t.Fatal(err)
	}
	forged := bytes.Replace(payload, []byte(from), []byte(to), 1)
	if bytes.Equal(forged, payload) {
		t.Fatal("no SBOM digest in the payload")
	}
	w["payload"] = b64url.EncodeToString(forged)
	b, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDeviceUpdateSupportEnded: a release signed with an SBOM and a
// support end already past installs as any other; "device update
// --status" shows both and warns that support has ended.
func TestDeviceUpdateSupportEnded(t *testing.T) {
	repo, keys := newTestRepo(t, []byte("firmware 3"))
	tmp := t.TempDir()
	img, sb := filepath.Join(tmp, "fw4.bin"), filepath.Join(tmp, "bom.json")
	doc := `{"bomFormat":"CycloneDX","specVersion":"1.4","components":[]}`
	if err := os.WriteFile(img, []byte("firmware 4"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sb, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	sign := []string{"update", "release", "sign", "--repo", repo, "--key", filepath.Join(keys, "release.key"), "--version", "4",
		"--security-counter", "1", "--hardware-class", "hw", "--image", img, "--timestamp-key", filepath.Join(keys, "timestamp.key"),
		"--progress=false", "--sbom", sb}
	var o, e bytes.Buffer
	if code := run(t.Context(), append(sign, "--support-until", "2020-01-01"), &o, &e); code != exitOK ||
		!strings.Contains(e.String(), "warning: the release's security support ended at 2020-01-01T00:00:00Z, before it was signed") {
		t.Fatalf("release sign: exit %d\n%s\n%s", code, &o, &e)
	}
	urlFile := filepath.Join(tmp, "url")
	runInBackground(t, "update", "serve", "--repo", repo, "--listen", "127.0.0.1:0", "--url-file", urlFile)
	url := waitFile(t, urlFile)
	dev := filepath.Join(tmp, "dev")
	if _, err := identity.OpenStore(dev, identity.StoreConfig{}); err != nil {
		t.Fatal(err)
	}
	base := []string{"device", "update", "--store", dev, "--root", filepath.Join(repo, "root.json"), "--hardware-class", "hw", "--slots", filepath.Join(tmp, "slots")}
	d2cRun(t, append(base, "--repo-url", url, "--insecure-http", "--progress=false")...)
	d2cRun(t, append(base, "--confirm")...)
	o.Reset()
	e.Reset()
	if code := run(t.Context(), append(base, "--status"), &o, &e); code != exitOK {
		t.Fatalf("--status: exit %d\n%s", code, &e)
	}
	sum := sha256.Sum256([]byte(doc))
	for _, want := range []string{"sbom:       sha256 " + hex.EncodeToString(sum[:]) + "\n", "support:    security support until 2020-01-01T00:00:00Z\n"} {
		if !strings.Contains(o.String(), want) {
			t.Errorf("--status lacks %q:\n%s", want, &o)
		}
	}
	if !strings.Contains(e.String(), "warning: the security support of release 4 ended at 2020-01-01T00:00:00Z") {
		t.Errorf("--status: no warning on stderr:\n%s", &e)
	}
	var st updateStatus
	if err := json.Unmarshal([]byte(d2cRun(t, append(base, "--status", "--json")...)), &st); err != nil {
		t.Fatal(err)
	}
	if st.Installed.Version != 4 || st.Installed.SBOM != hex.EncodeToString(sum[:]) || st.Installed.SupportUntil != "2020-01-01T00:00:00Z" {
		t.Errorf("--status --json: %+v", st.Installed)
	}

	// update verify shows the facts and checks the SBOM in the repository.
	verify := []string{"update", "verify", "--repo", repo, "--root", filepath.Join(repo, "root.json"), "--hardware-class", "hw"}
	out := d2cRun(t, verify...)
	if !strings.Contains(out, "sbom:      "+strconv.Itoa(len(doc))+" bytes, sha256 "+hex.EncodeToString(sum[:])+", uri v4/bom.json\n") ||
		!strings.Contains(out, "support:   security support until 2020-01-01T00:00:00Z\n") {
		t.Errorf("update verify:\n%s", out)
	}
	var vr verifyReport
	if err := json.Unmarshal([]byte(d2cRun(t, append(verify, "--json")...)), &vr); err != nil {
		t.Fatal(err)
	}
	if vr.Release.SBOM == nil || vr.Release.SBOM.SHA256 != hex.EncodeToString(sum[:]) || vr.Release.SupportUntil != "2020-01-01T00:00:00Z" {
		t.Errorf("update verify --json: %+v", vr.Release)
	}
	if err := os.WriteFile(filepath.Join(repo, "v4", "bom.json"), []byte(strings.Replace(doc, "1.4", "1.5", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	o.Reset()
	e.Reset()
	if code := run(t.Context(), verify, &o, &e); code != exitError || !strings.Contains(e.String(), "arbitrary software") {
		t.Errorf("update verify of an altered SBOM: exit %d\n%s", code, &e)
	}
}

// TestReleaseSignFactsRefused: --sbom takes only a CycloneDX JSON SBOM,
// --support-until only a date or an RFC 3339 time; nothing is published
// when either is refused.
func TestReleaseSignFactsRefused(t *testing.T) {
	repo, keys := newTestRepo(t, []byte("firmware 3"))
	tmp := t.TempDir()
	img := filepath.Join(tmp, "fw4.bin")
	if err := os.WriteFile(img, []byte("firmware 4"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := listRepo(t, repo)
	sign := []string{"update", "release", "sign", "--repo", repo, "--key", filepath.Join(keys, "release.key"), "--version", "4",
		"--security-counter", "1", "--hardware-class", "hw", "--image", img, "--timestamp-key", filepath.Join(keys, "timestamp.key"),
		"--progress=false"}
	for name, c := range map[string]struct {
		doc, until string
		code       int
		want       string
	}{
		"spdx":          {doc: `{"spdxVersion":"SPDX-2.3"}`, code: exitError, want: "not a CycloneDX 1.4-1.6 JSON SBOM"},
		"cyclonedx 1.2": {doc: `{"bomFormat":"CycloneDX","specVersion":"1.2"}`, code: exitError, want: `specVersion "1.2"`},
		"xml":           {doc: `<bom xmlns="http://cyclonedx.org/schema/bom/1.5"/>`, code: exitError, want: "hint: give the CycloneDX JSON SBOM"},
		"date form":     {doc: `{"bomFormat":"CycloneDX","specVersion":"1.5"}`, until: "31/12/2031", code: exitUsage, want: "--support-until \"31/12/2031\": want YYYY-MM-DD"},
	} {
		sb := filepath.Join(tmp, "sbom.json")
		if err := os.WriteFile(sb, []byte(c.doc), 0o644); err != nil {
			t.Fatal(err)
		}
		args := append(append([]string{}, sign...), "--sbom", sb)
		if c.until != "" {
			args = append(args, "--support-until", c.until)
		}
		var o, e bytes.Buffer
		if code := run(t.Context(), args, &o, &e); code != c.code || !strings.Contains(e.String(), c.want) {
			t.Errorf("%s: exit %d, want %d with %q\n%s", name, code, c.code, c.want, &e)
		}
		if after := listRepo(t, repo); after != before {
			t.Errorf("%s: the repository changed:\n%s\nwas:\n%s", name, after, before)
		}
	}
}
