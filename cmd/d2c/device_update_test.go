// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/identity"
)

// TestDeviceUpdate drives "device update" against a repository built and
// served by the update commands ("update serve", in process): an install
// with the progress bar, the trial, a confirm, up to date, an image
// modified on the server refused as arbitrary software, a rollback, and
// the refusals an operator meets.
func TestDeviceUpdate(t *testing.T) {
	image := bytes.Repeat([]byte("firmware 3 "), 1000)
	repo, keys := newTestRepo(t, image) // release 3 for hardware class "hw"
	tmp := t.TempDir()
	urlFile := filepath.Join(tmp, "url")
	runInBackground(t, "update", "serve", "--repo", repo, "--listen", "127.0.0.1:0", "--url-file", urlFile)
	url := waitFile(t, urlFile)

	dev := filepath.Join(tmp, "dev")
	if _, err := identity.OpenStore(dev, identity.StoreConfig{}); err != nil { // a device store: the trusted clock
		t.Fatal(err)
	}
	slots := filepath.Join(tmp, "slots")
	base := []string{"device", "update", "--store", dev, "--root", filepath.Join(repo, "root.json"), "--hardware-class", "hw", "--slots", slots}
	check := append(append([]string{}, base...), "--repo-url", url, "--insecure-http")
	d2c := func(wantCode int, args ...string) (stdout, stderr string) {
		t.Helper()
		var o, e bytes.Buffer
		if code := run(t.Context(), args, &o, &e); code != wantCode {
			t.Fatalf("d2c %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, wantCode, &o, &e)
		}
		return o.String(), e.String()
	}
	match := func(what, out, re string) {
		t.Helper()
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("%s does not match %q:\n%s", what, re, out)
		}
	}

	// Plain http needs --insecure-http.
	_, stderr := d2c(exitError, append(append([]string{}, base...), "--repo-url", url)...)
	match("stderr", stderr, "(?m)^hint: use an https:// repository, or add --insecure-http")

	// Install, with the progress bar.
	stdout, stderr := d2c(exitOK, append(check, "--progress")...)
	match("stdout", stdout, `(?m)^release 3 available \(running 0\): image, 11000 bytes$`)
	match("stdout", stdout, `(?m)^installed release 3 into slot b, on trial$`)
	match("stdout", stdout, `(?m)^  d2c device update .* --confirm$`)
	match("stderr", stderr, `(?m)^created A/B slots in `)
	match("stderr", stderr, `release 3 fw.bin \[#+\] 100% `)
	if got, err := os.ReadFile(filepath.Join(slots, "current", "image")); err != nil || !bytes.Equal(got, image) {
		t.Fatalf("slots/current/image after the install: %v", err)
	}

	stdout, _ = d2c(exitOK, append(base, "--status")...)
	match("status", stdout, `(?m)^phase: +trial$`)
	match("status", stdout, `(?m)^pending: +release 3, start 0 of 3$`)
	match("status", stdout, `(?m)^next start: slot b, on trial$`)
	match("status", stdout, `(?m)^last: +installed release 3 \(from 0\) at 20`)
	stdout, _ = d2c(exitOK, append(base, "--status", "--json")...)
	var st updateStatus
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("--status --json: %v\n%s", err, stdout)
	}
	if st.Phase != "trial" || st.Pending != 3 || st.NextSlot != "b" || !st.NextOnTrial || st.Last == nil ||
		st.Last.Event != "installed" || st.Last.Version != 3 || !strings.HasPrefix(st.Last.Time, "20") {
		t.Errorf("--status --json: %+v\n%s", st, stdout)
	}
	_, stderr = d2c(exitUsage, append(base, "--confirm", "--json")...)
	match("stderr", stderr, "--json goes with --status")

	// On trial, a check is refused until the release is confirmed.
	_, stderr = d2c(exitError, check...)
	match("stderr", stderr, `an update is already under way: release 3 is on trial in slot b \(start 1 of 3\)`)
	match("stderr", stderr, `(?m)^hint: confirm it once the new software is healthy \(--confirm\), or go back \(--rollback\)$`)

	stdout, _ = d2c(exitOK, append(base, "--confirm")...)
	match("stdout", stdout, `(?m)^confirmed release 3 in slot b: devices now refuse any release below it \(security counter 1\)$`)
	stdout, _ = d2c(exitOK, append(base, "--confirm")...)
	match("stdout", stdout, `(?m)^nothing on trial: release 3 runs from slot b, confirmed$`)
	stdout, _ = d2c(exitOK, check...)
	match("stdout", stdout, `(?m)^up to date: release 3 runs from slot b$`)
	_, stderr = d2c(exitError, append(base, "--rollback")...)
	match("stderr", stderr, `(?m)^hint: only a release on trial`)

	// Release 4, whose image is then replaced on the server: refused as
	// arbitrary software, nothing installed.
	image4 := bytes.Repeat([]byte("firmware 4 "), 1000)
	img := filepath.Join(tmp, "fw4.bin")
	if err := os.WriteFile(img, image4, 0o644); err != nil {
		t.Fatal(err)
	}
	d2cRun(t, "update", "release", "sign", "--repo", repo, "--key", filepath.Join(keys, "release.key"), "--version", "4",
		"--security-counter", "1", "--hardware-class", "hw", "--image", img, "--timestamp-key", filepath.Join(keys, "timestamp.key"),
		"--progress=false")
	served := filepath.Join(repo, "v4", "fw4.bin")
	if err := os.WriteFile(served, bytes.Repeat([]byte("evil fw 4 "), 1100), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr = d2c(exitError, check...)
	match("stderr", stderr, `(?m)^d2c: device update: update: arbitrary software: artifact digest mismatch`)
	match("stderr", stderr, `(?m)^hint: the image downloaded is not the one signed \(arbitrary software\); nothing was installed`)
	stdout, _ = d2c(exitOK, append(base, "--status")...)
	match("status", stdout, `(?m)^phase: +idle$`)
	match("status", stdout, `(?m)^last: +refused release 4 \(from 3\)`)

	// The real image back: installed into slot a, then rolled back.
	if err := os.WriteFile(served, image4, 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, _ = d2c(exitOK, check...)
	match("stdout", stdout, `(?m)^installed release 4 into slot a, on trial$`)
	stdout, _ = d2c(exitOK, append(base, "--rollback")...)
	match("stdout", stdout, `(?m)^rolled back release 4\nslot b boots next, with release 3: restart the application from .*/slots/current/image$`)
	if got, _ := os.ReadFile(filepath.Join(slots, "current", "image")); !bytes.Equal(got, image) {
		t.Error("slots/current/image after the rollback is not release 3")
	}

	// The reverted release is not installed again (it would loop).
	stdout, _ = d2c(exitOK, check...)
	match("stdout", stdout, `(?m)^release 4 was reverted on this device and is not installed again; release 3 runs from slot b`)

	// Release 5, installed and never confirmed: every run counts a start,
	// and the fourth reverts it.
	image5 := bytes.Repeat([]byte("firmware 5 "), 1000)
	img5 := filepath.Join(tmp, "fw5.bin")
	if err := os.WriteFile(img5, image5, 0o644); err != nil {
		t.Fatal(err)
	}
	d2cRun(t, "update", "release", "sign", "--repo", repo, "--key", filepath.Join(keys, "release.key"), "--version", "5",
		"--security-counter", "1", "--hardware-class", "hw", "--image", img5, "--timestamp-key", filepath.Join(keys, "timestamp.key"),
		"--progress=false")
	stdout, _ = d2c(exitOK, check...)
	match("stdout", stdout, `(?m)^installed release 5 into slot a, on trial$`)
	for i := 1; i <= 3; i++ {
		_, stderr = d2c(exitError, check...)
		match("stderr", stderr, `release 5 is on trial in slot a \(start `+strconv.Itoa(i)+` of 3\)`)
	}
	_, stderr = d2c(exitError, append(base, "--confirm")...) // a fourth start: too late
	match("stderr", stderr, `(?m)^d2c: device update: update: no update on trial: release 5 was reverted before it was confirmed$`)
	match("stderr", stderr, `(?m)^hint: a release on trial gets 3 starts and 30 minutes`)
	stdout, _ = d2c(exitOK, append(base, "--status")...)
	match("status", stdout, `(?m)^last: +reverted release 5 \(from 3\) at .*: not confirmed within 3 starts`)
	match("status", stdout, `(?m)^next start: slot b$`)

	// Another hardware class: refused, the attack named.
	_, stderr = d2c(exitError, "device", "update", "--store", dev, "--root", filepath.Join(repo, "root.json"),
		"--hardware-class", "gateway", "--slots", slots, "--repo-url", url, "--insecure-http")
	match("stderr", stderr, `update: wrong hardware`)
	match("stderr", stderr, `(?m)^hint: the release is not for "gateway"`)

	// Usage errors.
	_, stderr = d2c(exitUsage, append(base, "--confirm", "--status")...)
	match("stderr", stderr, "give at most one of --confirm, --rollback and --status")
	_, stderr = d2c(exitUsage, base...)
	match("stderr", stderr, "--repo-url is required to check for an update")
	_, stderr = d2c(exitError, "device", "update", "--store", filepath.Join(tmp, "nowhere"), "--root", filepath.Join(repo, "root.json"),
		"--hardware-class", "hw", "--slots", slots, "--status")
	match("stderr", stderr, "(?m)^hint: this device has no identity yet")
}
