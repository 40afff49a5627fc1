// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/internal/sbom"
	"github.com/d2c-iot/d2c/update"
)

// Release facts (docs/update-format.md, "release"; docs/operations.md,
// "Release facts"): the SBOM and the end of security support that
// "update release sign" signs into a release.

// parseSupportUntil reads --support-until: an RFC 3339 time (to whole
// seconds), or YYYY-MM-DD for 00:00:00 UTC of that day.
func parseSupportUntil(s string) (time.Time, error) {
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usageErrorf("--support-until %q: want YYYY-MM-DD or an RFC 3339 time (2031-12-31T00:00:00Z)", s)
	}
	t = t.UTC().Truncate(time.Second)
	if y := t.Year(); y < 1970 || y > 9999 {
		return time.Time{}, usageErrorf("--support-until %q: want a time in years 1970 to 9999", s)
	}
	return t, nil
}

// stagedSBOM is an SBOM checked, hashed and copied beside its place in
// the repository, not yet published.
type stagedSBOM struct {
	ref  update.SBOMRef
	bom  *sbom.BOM
	file *stagedArtifact
}

// stageSBOM reads file, checks that it is a CycloneDX JSON SBOM within
// the bounds, and stages it at DIR/<uri> (default v<VERSION>/<file name>)
// as the image is staged.
func stageSBOM(ctx context.Context, repo string, version uint64, file, imageDest string) (*stagedSBOM, error) {
	b, err := atomicfile.ReadFile(file, limits.UpdateSBOM)
	if errors.Is(err, atomicfile.ErrTooLarge) {
		return nil, withHint(fmt.Errorf("--sbom %s: over %d bytes", file, limits.UpdateSBOM), "a release carries an SBOM of at most 16 MiB")
	}
	if err != nil {
		return nil, fmt.Errorf("--sbom: %w", err)
	}
	bom, err := sbom.Parse(b)
	if err != nil {
		return nil, withHint(fmt.Errorf("--sbom %s: %w", file, err),
			"give the CycloneDX JSON SBOM of the image (syft -o cyclonedx-json, cdxgen, or your build system's)")
	}
	base := filepath.Base(file)
	if !safeName(base) {
		return nil, usageErrorf("--sbom file name %q does not make a plain URI: rename it", base)
	}
	uri := "v" + strconv.FormatUint(version, 10) + "/" + base
	dest, err := artifactPath(repo, uri)
	if err != nil {
		return nil, err
	}
	if dest == imageDest {
		return nil, usageErrorf("--sbom %s and --image would both be published at %s", file, uri)
	}
	st, err := stageArtifact(ctx, file, "sbom", uri, dest, nil)
	if err != nil {
		return nil, err
	}
	if st.art.SHA256 != sha256.Sum256(b) {
		st.abort()
		return nil, fmt.Errorf("--sbom %s changed while it was read", file)
	}
	return &stagedSBOM{ref: update.SBOMRef{Length: st.art.Length, SHA256: st.art.SHA256, URI: uri}, bom: bom, file: st}, nil
}

// publish renames the staged SBOM into place; nil publishes nothing.
func (s *stagedSBOM) publish() error {
	if s == nil {
		return nil
	}
	return s.file.publish()
}

// abort removes the staged copy, unless published.
func (s *stagedSBOM) abort() {
	if s != nil {
		s.file.abort()
	}
}

// entry is the release's SBOM member: nil without --sbom.
func (s *stagedSBOM) entry() *update.SBOMRef {
	if s == nil {
		return nil
	}
	r := s.ref
	return &r
}

// printFacts prints the facts "update release sign" signed, and warns of
// a support end already past.
func printFacts(s streams, rel *update.Release, bom *stagedSBOM, now time.Time) {
	if rel.SBOM != nil {
		fmt.Fprintf(s.stdout, "sbom: %d bytes, sha256 %x, uri %s (CycloneDX %s, %d components)\n",
			rel.SBOM.Length, rel.SBOM.SHA256, rel.SBOM.URI, bom.bom.SpecVersion, len(bom.bom.Components))
	}
	if !rel.SupportUntil.IsZero() {
		fmt.Fprintf(s.stdout, "security support until %s\n", rel.SupportUntil.UTC().Format(time.RFC3339))
		if !now.Before(rel.SupportUntil) {
			fmt.Fprintf(s.stderr, "warning: the release's security support ended at %s, before it was signed\n",
				rel.SupportUntil.UTC().Format(time.RFC3339))
		}
	}
}

// installedFacts returns the installed release's SBOM digest (hex) and
// support end (RFC 3339), each "" when unknown.
func installedFacts(in update.Installed) (sbomDigest, supportUntil string) {
	if len(in.SBOM) > 0 {
		sbomDigest = fmt.Sprintf("%x", in.SBOM)
	}
	if in.SupportUntil != 0 {
		supportUntil = time.UnixMilli(in.SupportUntil).UTC().Format(time.RFC3339)
	}
	return sbomDigest, supportUntil
}

// printSupport prints, for "device update --status", the installed
// release's SBOM digest and support end, and warns on stderr once that
// support has ended.
func printSupport(s streams, in update.Installed, now time.Time) {
	digest, until := installedFacts(in)
	if digest != "" {
		fmt.Fprintf(s.stdout, "sbom:       sha256 %s\n", digest)
	}
	if until == "" {
		return
	}
	fmt.Fprintf(s.stdout, "support:    security support until %s\n", until)
	if in.SupportEnded(now) {
		fmt.Fprintf(s.stderr, "warning: the security support of release %d ended at %s: it gets no more security fixes; install a supported release\n",
			in.Version, until)
	}
}
