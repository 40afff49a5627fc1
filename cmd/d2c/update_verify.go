// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/update"
)

func updateVerifyCommand() *command {
	return &command{
		path:    "update verify",
		summary: "verify a repository exactly as a device would",
		usage: "--repo DIR --root PINNED_ROOT --hardware-class H [--installed-version V] [--installed-security-counter C] " +
			"[--image FILE] [--artifact NAME] [--at TIME] [--json]",
		details: `
Runs the device's verification sequence (update.Trusted) over the repository
in DIR: the pinned root given with --root, then DIR/<N+1>.root.json,
DIR/<N+2>.root.json, ... one rotation at a time, then DIR/timestamp.json, then
DIR/<V>.release.json, the release version V that the timestamp names (the
file devices fetch), then the device's own checks: hardware class, security
counter floor, a release not older than the installed one. It checks that
DIR/release.json, from which "update timestamp" and the cloud service
re-sign the timestamp, holds the same bytes as DIR/<V>.release.json.
Finally it checks the artifact's length and SHA-256: the file given with
--image, or, for a relative URI, the file in DIR that "update serve" would
send; and, for a release with an SBOM in DIR, the SBOM's length and SHA-256.

A refusal exits with status 1 and names the attack the device would suspect
(freeze: expired; rollback; mix-and-match; arbitrary software: digest ...),
followed by what to do. Success prints a summary and what a device at
--installed-version would do.

--at checks at another time than now, as RFC 3339 or now+DURATION: for
example now+20h tells whether the current timestamp still holds tomorrow.

With --json, success is one object: "root" {"version", "pinned_version",
"expires"}, "timestamp" {"version", "expires"}, "release" {"version",
"hardware_class", "security_counter", "expires", "sbom" {"length", "sha256",
"uri"} and "support_until", both absent when the release has none},
"artifact" {"name",
"length", "sha256" (hex), "uri", "checked_file" (the file whose digest was
checked, or null)}, "installed_version" and "installs" (true if a device at
--installed-version installs this release). Times are RFC 3339, UTC. A
refusal prints nothing on stdout: the refusal and its hint are on stderr,
with exit status 1.`,
		example: `d2c update verify --repo /srv/updates/fleet --root factory/root.json \
    --hardware-class sensor-v2 --installed-version 6 --installed-security-counter 1
d2c update verify --repo /srv/updates/fleet --root factory/root.json --hardware-class sensor-v2 --json`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			repo := fl.String("repo", "", "repository directory (required)")
			rootFile := fl.String("root", "", "the root pinned in the device, as signed (required)")
			hardware := fl.String("hardware-class", "", "the device's hardware class (required)")
			installed := fl.Uint64("installed-version", 0, "release version installed on the device (0: none)")
			counter := fl.Uint64("installed-security-counter", 0, "security counter of the release installed on the device, the one it confirmed last (0: none)")
			image := fl.String("image", "", "image file to check against the signed artifact (default: the one in DIR, for a relative URI)")
			name := fl.String("artifact", "", "artifact name to check (default: the release's only artifact)")
			at := fl.String("at", "now", "trusted time of the check: RFC 3339, or now+DURATION")
			asJSON := fl.Bool("json", false, "print one JSON object (fields in the details below)")
			return func(ctx context.Context, s streams) error {
				if *repo == "" || *rootFile == "" || *hardware == "" {
					return usageErrorf("--repo, --root and --hardware-class are required")
				}
				if err := validName("hardware-class", *hardware); err != nil {
					return err
				}
				now, err := parseAt(*at, time.Now())
				if err != nil {
					return err
				}
				return verifyRepo(ctx, s, verifyOptions{repo: *repo, rootFile: *rootFile, hardware: *hardware,
					installed: *installed, counter: *counter, image: *image, name: *name, now: now, json: *asJSON})
			}
		},
	}
}

// parseAt parses --at: "now", now+DURATION, now-DURATION or RFC 3339.
func parseAt(s string, now time.Time) (time.Time, error) {
	if s == "now" {
		return now, nil
	}
	if rest, ok := strings.CutPrefix(s, "now"); ok && len(rest) > 1 && (rest[0] == '+' || rest[0] == '-') {
		d, err := time.ParseDuration(rest[1:])
		if err != nil {
			return time.Time{}, usageErrorf("--at %q: %v", s, err)
		}
		if rest[0] == '-' {
			d = -d
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usageErrorf("--at %q: want now, now+DURATION or an RFC 3339 time", s)
	}
	return t, nil
}

type verifyOptions struct {
	repo, rootFile, hardware string
	installed, counter       uint64
	image, name              string
	now                      time.Time
	json                     bool // print the summary as JSON
}

// verifyRepo is "update verify": each refusal carries the hint for the
// step that refused.
func verifyRepo(ctx context.Context, s streams, o verifyOptions) error {
	pinned, err := readMeta(o.rootFile, limits.UpdateRoot)
	if err != nil {
		return fmt.Errorf("pinned root: %w", err)
	}
	t, err := update.NewTrusted(pinned, update.Floors{SecurityCounter: o.counter}, o.now, o.hardware)
	if err != nil {
		return withHint(fmt.Errorf("pinned root %s: %w", o.rootFile, err),
			"--root is the root pinned in devices, byte for byte as signed: DIR/root.json or one of DIR/N.root.json")
	}
	pinnedVersion := t.Root().Version

	// Roots, one rotation at a time (TUF 5.3), as update.Agent walks them.
	for v := pinnedVersion + 1; ; v++ {
		path := filepath.Join(o.repo, rootFileName(v))
		b, err := readMeta(path, limits.UpdateRoot)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return err
		}
		if _, err := t.UpdateRoot(b); err != nil {
			return withHint(fmt.Errorf("%s: %w", path, err), rootHint(err, o.repo, v))
		}
	}
	root := t.Root()

	// Timestamp (TUF 5.3.10, 5.4).
	tsPath := filepath.Join(o.repo, repoTimestamp)
	b, err := readMeta(tsPath, limits.UpdateTimestamp)
	if errors.Is(err, fs.ErrNotExist) {
		return withHint(err, fmt.Sprintf("the repository has no timestamp: sign a release with `d2c update release sign --repo %s`", o.repo))
	}
	if err != nil {
		return err
	}
	ts, err := t.UpdateTimestamp(b)
	if err != nil {
		return withHint(fmt.Errorf("%s: %w", tsPath, err), timestampHint(err, o, root))
	}

	// Release (TUF 5.5, Uptane 5.4.3.4).
	relPath := filepath.Join(o.repo, strconv.FormatUint(ts.Release.Version, 10)+releaseSuffix)
	if b, err = readMeta(relPath, limits.UpdateRelease); err != nil {
		return err
	}
	rel, err := t.UpdateRelease(b)
	if err != nil {
		return withHint(fmt.Errorf("%s: %w", relPath, err), releaseHint(err, o, root, filepath.Base(relPath)))
	}
	if err := checkReleaseCopy(o.repo, relPath, b, rel.Version); err != nil {
		return err
	}
	newer, err := rel.Newer(o.installed)
	if err != nil {
		return withHint(err, fmt.Sprintf("devices at version %d refuse release %d: sign a release with --version %d or more",
			o.installed, rel.Version, o.installed+1))
	}

	// Artifact (Uptane 5.4.3.4 step 7).
	art, err := pickArtifact(rel, o.name)
	if err != nil {
		return err
	}
	checkedFile, err := checkArtifact(ctx, o, art)
	if err != nil {
		return err
	}
	// The SBOM the release signs, if the repository holds it.
	if rel.SBOM != nil {
		if p, perr := artifactPath(o.repo, rel.SBOM.URI); perr == nil && p != "" {
			if _, err := readReleaseSBOM(o.repo, rel); err != nil {
				return err
			}
		}
	}
	if o.json {
		return writeJSON(s.stdout, verifyJSON(root, pinnedVersion, ts, rel, art, checkedFile, o.installed, newer))
	}
	checked := "not checked (not a file of the repository; give --image)"
	if checkedFile != "" {
		checked = "verified (" + checkedFile + ")"
	}

	fmt.Fprintf(s.stdout, "root:      version %d (pinned %d, %d rotation(s) walked), expires %s\n",
		root.Version, pinnedVersion, root.Version-pinnedVersion, root.Expires.UTC().Format(time.RFC3339))
	fmt.Fprintf(s.stdout, "timestamp: version %d, expires %s\n", ts.Version, ts.Expires.UTC().Format(time.RFC3339))
	fmt.Fprintf(s.stdout, "release:   version %d for %s, security counter %d, expires %s\n",
		rel.Version, rel.HardwareClass, rel.SecurityCounter, rel.Expires.UTC().Format(time.RFC3339))
	fmt.Fprintf(s.stdout, "artifact:  %s, %d bytes, sha256 %x, uri %s: %s\n", art.Name, art.Length, art.SHA256, art.URI, checked)
	if b := rel.SBOM; b != nil {
		fmt.Fprintf(s.stdout, "sbom:      %d bytes, sha256 %x, uri %s\n", b.Length, b.SHA256, b.URI)
	}
	if !rel.SupportUntil.IsZero() {
		fmt.Fprintf(s.stdout, "support:   security support until %s\n", rel.SupportUntil.UTC().Format(time.RFC3339))
	}
	if newer {
		fmt.Fprintf(s.stdout, "verdict:   a device at version %d installs release %d\n", o.installed, rel.Version)
	} else {
		fmt.Fprintf(s.stdout, "verdict:   a device at version %d is up to date\n", o.installed)
	}
	return nil
}

// checkReleaseCopy checks that DIR/release.json holds signed, the bytes
// of release version, which the timestamp names and devices fetch from
// relPath. Devices never read DIR/release.json, but "update timestamp"
// and the service's timestamp refresher re-sign the timestamp for the
// release it holds (update/repo.SignTimestamp): one that is missing,
// modified or another release stops the timestamp from being re-signed,
// and devices see a freeze once the timestamp in place expires.
func checkReleaseCopy(repo, relPath string, signed []byte, version uint64) error {
	path := filepath.Join(repo, repoRelease)
	const why = "devices fetch the release by its version, but `d2c update timestamp` and the cloud service re-sign the timestamp from release.json"
	restore := fmt.Sprintf("restore it: cp %s %s", relPath, path)
	b, err := readMeta(path, limits.UpdateRelease)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return withHint(fmt.Errorf("%s is missing (%s)", path, why), restore)
	case errors.Is(err, update.ErrTooLarge):
		return withHint(fmt.Errorf("%w (%s)", err, why), restore)
	case err != nil:
		return err
	case bytes.Equal(b, signed):
		return nil
	}
	err = fmt.Errorf("%s differs from %s, the release version %d that timestamp.json names (%s)", path, relPath, version, why)
	// A release signed after the timestamp in place: its publication
	// stopped before it wrote the timestamp.
	if p, _, perr := peekMeta(path, limits.UpdateRelease); perr == nil && p.Version > version {
		return withHint(err, fmt.Sprintf("release.json holds release %d, which no timestamp names yet (an interrupted "+
			"publication?): if you signed it, publish it with `d2c update timestamp --repo %s --key FILE`; else %s",
			p.Version, repo, restore))
	}
	return withHint(err, restore)
}

// pickArtifact returns the named artifact, or the only one.
func pickArtifact(rel *update.Release, name string) (update.Artifact, error) {
	if name != "" {
		a, ok := rel.Artifact(name)
		if !ok {
			return update.Artifact{}, usageErrorf("--artifact %q: release %d has no such artifact", name, rel.Version)
		}
		return a, nil
	}
	if len(rel.Artifacts) != 1 {
		return update.Artifact{}, usageErrorf("release %d has %d artifacts: choose one with --artifact", rel.Version, len(rel.Artifacts))
	}
	return rel.Artifacts[0], nil
}

// checkArtifact streams the image (--image, or the artifact's file in the
// repository) through the artifact's verifier. It returns the file it
// checked, or "" if there is none to check (the URI is not a file of the
// repository, and no --image).
func checkArtifact(ctx context.Context, o verifyOptions, art update.Artifact) (string, error) {
	path := o.image
	if path == "" {
		dest, err := artifactPath(o.repo, art.URI)
		if err != nil || dest == "" {
			return "", nil
		}
		path = dest
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("artifact %s: %w", art.Name, err)
	}
	defer f.Close()
	v := art.Verifier()
	if _, err = io.Copy(v, ctxReader{ctx, f}); err == nil {
		err = v.Verify()
	}
	if err != nil {
		if errors.Is(err, update.ErrDigest) || errors.Is(err, update.ErrLength) || errors.Is(err, update.ErrEndlessData) {
			return "", withHint(fmt.Errorf("%s: %w", path, err),
				"this is not the image that was signed (modified, truncated or another build): publish the signed "+
					"image again, or sign this one with `d2c update release sign`")
		}
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return path, nil
}

// rootHint says what to do about a refused rotation to version v.
func rootHint(err error, repo string, v uint64) string {
	switch {
	case isKeyRefusal(err):
		return fmt.Sprintf("%s is not signed as a rotation requires (a threshold of version %d's root keys and of its own): "+
			"restore it if it was modified; if devices never accepted it, remove it and rotate again with "+
			"`d2c update root rotate --repo %s --old-key FILE`", rootFileName(v), v-1, repo)
	case errors.Is(err, update.ErrRollback), errors.Is(err, update.ErrRootVersionSkip):
		return fmt.Sprintf("each DIR/N.root.json must hold root version N: restore %s", rootFileName(v))
	}
	return fmt.Sprintf("%s is not a root as `d2c update root` writes it: restore it", rootFileName(v))
}

// timestampHint says what to do about a refused timestamp.
func timestampHint(err error, o verifyOptions, root *update.Root) string {
	switch {
	case errors.Is(err, update.ErrExpired) && !o.now.Before(root.Expires):
		return fmt.Sprintf("root version %d has expired: rotate it with a later --expires: "+
			"d2c update root rotate --repo %s --old-key FILE", root.Version, o.repo)
	case errors.Is(err, update.ErrExpired):
		return fmt.Sprintf("re-sign the timestamp: d2c update timestamp --repo %s --key FILE "+
			"(and run it periodically, well within its --expires)", o.repo)
	case isKeyRefusal(err):
		return fmt.Sprintf("timestamp.json is not signed by the timestamp key(s) of root version %d (modified, or signed with "+
			"another key): re-sign it with `d2c update timestamp --repo %s --key FILE` and a trusted key, or trust a new key "+
			"with `d2c update root rotate --timestamp-pub FILE`", root.Version, o.repo)
	}
	return "timestamp.json is not a timestamp as `d2c update timestamp` writes it: re-sign it"
}

// releaseHint says what to do about a refused release.
func releaseHint(err error, o verifyOptions, root *update.Root, name string) string {
	switch {
	case errors.Is(err, update.ErrMixAndMatch):
		return fmt.Sprintf("%s is not the one timestamp.json names (replaced or modified after the timestamp was "+
			"signed): restore it; a published release version is never replaced, sign a new version instead", name)
	case isKeyRefusal(err):
		return fmt.Sprintf("%s is not signed by the release key(s) of root version %d: sign the release with a "+
			"trusted key (`d2c update release sign`), or trust the new key with `d2c update root rotate --release-pub FILE`", name, root.Version)
	case errors.Is(err, update.ErrExpired):
		return fmt.Sprintf("sign the release again with a later --expires (the same --version and image re-sign it): "+
			"d2c update release sign --repo %s ...", o.repo)
	case errors.Is(err, update.ErrWrongHardware):
		return "check --hardware-class; each hardware class needs a repository of its own"
	case errors.Is(err, update.ErrSecurityCounter):
		return fmt.Sprintf("devices that confirmed a release with security counter %d refuse a lower one: "+
			"sign the release (`d2c update release sign`) with --security-counter %d or more", o.counter, o.counter)
	}
	return "release.json is not a release as `d2c update release sign` writes it: sign it again"
}

// verifyReport is "update verify --json"; its field names are stable.
type verifyReport struct {
	Root struct {
		Version       uint64 `json:"version"`
		PinnedVersion uint64 `json:"pinned_version"`
		Expires       string `json:"expires"`
	} `json:"root"`
	Timestamp struct {
		Version uint64 `json:"version"`
		Expires string `json:"expires"`
	} `json:"timestamp"`
	Release struct {
		Version         uint64 `json:"version"`
		HardwareClass   string `json:"hardware_class"`
		SecurityCounter uint64 `json:"security_counter"`
		Expires         string `json:"expires"`
		SBOM            *struct {
			Length int64  `json:"length"`
			SHA256 string `json:"sha256"`
			URI    string `json:"uri"`
		} `json:"sbom,omitempty"`
		SupportUntil string `json:"support_until,omitempty"`
	} `json:"release"`
	Artifact struct {
		Name        string  `json:"name"`
		Length      int64   `json:"length"`
		SHA256      string  `json:"sha256"`
		URI         string  `json:"uri"`
		CheckedFile *string `json:"checked_file"`
	} `json:"artifact"`
	InstalledVersion uint64 `json:"installed_version"`
	Installs         bool   `json:"installs"`
}

func verifyJSON(root *update.Root, pinned uint64, ts *update.Timestamp, rel *update.Release, art update.Artifact,
	checkedFile string, installed uint64, newer bool) verifyReport {
	var r verifyReport
	r.Root.Version, r.Root.PinnedVersion, r.Root.Expires = root.Version, pinned, root.Expires.UTC().Format(time.RFC3339)
	r.Timestamp.Version, r.Timestamp.Expires = ts.Version, ts.Expires.UTC().Format(time.RFC3339)
	r.Release.Version, r.Release.HardwareClass = rel.Version, rel.HardwareClass
	r.Release.SecurityCounter, r.Release.Expires = rel.SecurityCounter, rel.Expires.UTC().Format(time.RFC3339)
	if b := rel.SBOM; b != nil {
		r.Release.SBOM = &struct {
			Length int64  `json:"length"`
			SHA256 string `json:"sha256"`
			URI    string `json:"uri"`
		}{b.Length, hex.EncodeToString(b.SHA256[:]), b.URI}
	}
	if !rel.SupportUntil.IsZero() {
		r.Release.SupportUntil = rel.SupportUntil.UTC().Format(time.RFC3339)
	}
	r.Artifact.Name, r.Artifact.Length, r.Artifact.URI = art.Name, art.Length, art.URI
	r.Artifact.SHA256 = hex.EncodeToString(art.SHA256[:])
	if checkedFile != "" {
		r.Artifact.CheckedFile = &checkedFile
	}
	r.InstalledVersion, r.Installs = installed, newer
	return r
}
