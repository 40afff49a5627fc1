// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/internal/sbom"
	"github.com/d2c-iot/d2c/update"
)

func fleetAffectedCommand() *command {
	return &command{
		path:    "fleet affected",
		summary: "list the devices running a release whose SBOM names a component",
		usage:   "--component NAME@VERSION --db URL --repo DIR [--json]",
		details: `
Answers "which devices run the vulnerable openssl 3.0.1?" from what the
releases state and what the devices report, both signed:

 1. It reads every release the repository published (DIR/V.release.json)
    and verifies each: signed by a threshold of the release keys of a root
    of the repository's chain (DIR/1.root.json, 2.root.json, ..., each
    verified by its predecessor, as "update verify" walks them), strict
    decoding. Expiry does not matter: past releases still run on devices.
    A release that verifies only under a root older than the newest is
    used, with a note on stderr: its key was rotated out since.
 2. For each release with an SBOM (update release sign --sbom), it reads
    the SBOM from the repository, refuses it unless its length and
    SHA-256 are the ones signed, and looks for a component whose name and
    version, or whose package URL's name and version, are NAME@VERSION.
 3. From the store (--db, the cloud service's "db"), it takes each
    device's latest "running" or "confirmed" update report (the device's
    signed telemetry on the "update" stream, newest by its boot and
    sequence numbers), and lists the devices whose report names one of
    those releases: same version, and the same SBOM digest and hardware
    class when the report carries them.

Any release or SBOM that does not verify stops the command (exit 1): an
answer that silently skipped a release could hide affected devices.
Releases without an SBOM cannot be assessed and are named on stderr.

Output: one line per device: its ID, the release version, the SBOM digest
(first 12 hex digits), the end of the release's security support ("-":
none stated), and the time of the report. With --json, one object per
device and line: {"device", "version", "sbom" (hex SHA-256),
"support_until" (RFC 3339, absent when none), "reported" (RFC 3339)}.`,
		example: `d2c fleet affected --component openssl@3.0.1 --db sqlite:/var/lib/d2c/fleet.db --repo /srv/updates/fleet`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			component := fl.String("component", "", "the component to look for, NAME@VERSION: an SBOM component's name and version, or its package URL's (required)")
			db := fl.String("db", "", "the fleet's cloud store, sqlite:PATH or postgres://... (required)")
			repo := fl.String("repo", "", "repository directory whose releases and SBOMs are read (required)")
			asJSON := fl.Bool("json", false, "print one JSON object per device and line (fields in the details below)")
			return func(ctx context.Context, s streams) error {
				if *component == "" || *db == "" || *repo == "" {
					return usageErrorf("--component, --db and --repo are required")
				}
				name, version, err := sbom.ParseQuery(*component)
				if err != nil {
					return usageErrorf("--component: %v", err)
				}
				rels, err := affectedReleases(s, *repo, name, version, time.Now())
				if err != nil {
					return err
				}
				st, err := openStore(ctx, *db)
				if err != nil {
					return err
				}
				defer st.Close()
				reports, err := st.UpdateReports(ctx, time.Time{})
				if err != nil {
					return err
				}
				devs := affectedDevices(s, reports, rels)
				if *asJSON {
					for _, d := range devs {
						if err := json.NewEncoder(s.stdout).Encode(d.json()); err != nil {
							return err
						}
					}
				} else {
					tw := tabwriter.NewWriter(s.stdout, 0, 8, 2, ' ', 0)
					fmt.Fprintln(tw, "DEVICE\tVERSION\tSBOM\tSUPPORT UNTIL\tREPORTED")
					for _, d := range devs {
						until := "-"
						if d.supportUntil != 0 {
							until = time.UnixMilli(d.supportUntil).UTC().Format(time.RFC3339)
						}
						fmt.Fprintf(tw, "%s\t%d\t%.12s\t%s\t%s\n", d.device, d.version, d.sbom, until, d.reported.UTC().Format(time.RFC3339))
					}
					if err := tw.Flush(); err != nil {
						return err
					}
				}
				versions := make([]uint64, 0, len(rels))
				for _, r := range rels {
					versions = append(versions, r.Version)
				}
				if len(rels) == 0 {
					fmt.Fprintf(s.stderr, "no release of %s has an SBOM naming %s\n", *repo, *component)
				} else {
					fmt.Fprintf(s.stderr, "%d device(s) run a release whose SBOM names %s (release(s) %s)\n",
						len(devs), *component, joinVersions(versions))
				}
				return nil
			}
		},
	}
}

// repoRoots returns the roots of the repository in dir, version 1 first,
// each verified by its predecessor as a device pinned at version 1 walks
// them (TUF 5.3); expiry does not matter.
func repoRoots(dir string, now time.Time) ([]*update.Root, error) {
	first := filepath.Join(dir, rootFileName(1))
	b, err := readMeta(first, limits.UpdateRoot)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, withHint(fmt.Errorf("%s: no update repository (no %s)", dir, rootFileName(1)), "check --repo: the directory of `d2c update root init`")
	}
	if err != nil {
		return nil, err
	}
	t, err := update.NewTrusted(b, update.Floors{}, now, anyHardwareClass)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", first, err)
	}
	roots := []*update.Root{t.Root()}
	for v := uint64(2); ; v++ {
		path := filepath.Join(dir, rootFileName(v))
		b, err := readMeta(path, limits.UpdateRoot)
		if errors.Is(err, fs.ErrNotExist) {
			return roots, nil
		}
		if err != nil {
			return nil, err
		}
		r, err := t.UpdateRoot(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		roots = append(roots, r)
	}
}

// affectedReleases verifies every release of the repository in dir and
// returns those whose SBOM names the component, by version.
func affectedReleases(s streams, dir, name, version string, now time.Time) ([]*update.Release, error) {
	roots, err := repoRoots(dir, now)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []*update.Release
	var noSBOM []uint64
	for _, e := range entries {
		v, ok := strings.CutSuffix(e.Name(), releaseSuffix)
		n, err := strconv.ParseUint(v, 10, 64)
		if !ok || err != nil || strconv.FormatUint(n, 10) != v {
			continue // release.json, the copy, is one of them
		}
		path := filepath.Join(dir, e.Name())
		rel, err := verifyPublishedRelease(s, roots, path)
		if err != nil {
			return nil, err
		}
		if rel.Version != n {
			return nil, fmt.Errorf("%s holds release version %d", path, rel.Version)
		}
		if rel.SBOM == nil {
			noSBOM = append(noSBOM, n)
			continue
		}
		bom, err := readReleaseSBOM(dir, rel)
		if err != nil {
			return nil, err
		}
		if bom.Has(name, version) {
			out = append(out, rel)
		}
	}
	slices.SortFunc(out, func(a, b *update.Release) int { return cmp.Compare(a.Version, b.Version) })
	if len(noSBOM) > 0 {
		slices.Sort(noSBOM)
		fmt.Fprintf(s.stderr, "release(s) without an SBOM, not assessed: %s\n", joinVersions(noSBOM))
	}
	return out, nil
}

// joinVersions returns "1, 2, 5".
func joinVersions(vs []uint64) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = strconv.FormatUint(v, 10)
	}
	return strings.Join(s, ", ")
}

// verifyPublishedRelease verifies the release at path against the roots,
// newest first.
func verifyPublishedRelease(s streams, roots []*update.Root, path string) (*update.Release, error) {
	b, err := readMeta(path, limits.UpdateRelease)
	if err != nil {
		return nil, err
	}
	var first error
	for i := len(roots) - 1; i >= 0; i-- {
		rel, err := roots[i].VerifyRelease(b)
		if err == nil {
			if i < len(roots)-1 {
				fmt.Fprintf(s.stderr, "note: %s is signed by release keys of root version %d, not of the newest root %d\n",
					path, roots[i].Version, roots[len(roots)-1].Version)
			}
			return rel, nil
		}
		// Say why under the root whose keys it names, if any: a bad
		// signature by a known key beats "key not trusted".
		if first == nil || errors.Is(first, update.ErrUnknownKey) && !errors.Is(err, update.ErrUnknownKey) {
			first = err
		}
	}
	return nil, withHint(fmt.Errorf("%s: %w", path, first),
		"every published release must verify under the repository's roots: restore it as signed, or remove a file that is no release")
}

// readReleaseSBOM reads the SBOM a release signs from the repository,
// checks its length and digest, and parses it.
func readReleaseSBOM(dir string, rel *update.Release) (*sbom.BOM, error) {
	ref := rel.SBOM
	path, err := artifactPath(dir, ref.URI)
	if err != nil || path == "" {
		return nil, fmt.Errorf("release %d: SBOM %q is not a file of the repository", rel.Version, ref.URI)
	}
	b, err := atomicfile.ReadFile(path, limits.UpdateSBOM)
	if err != nil {
		return nil, fmt.Errorf("release %d: SBOM: %w", rel.Version, err)
	}
	if sum := sha256.Sum256(b); int64(len(b)) != ref.Length || sum != ref.SHA256 {
		return nil, withHint(fmt.Errorf("%w: release %d: %s holds %d bytes with SHA-256 %x; the release signs %d bytes with SHA-256 %x",
			update.ErrDigest, rel.Version, path, len(b), sum, ref.Length, ref.SHA256),
			"the SBOM in the repository is not the one the release signed: restore it from the release's build")
	}
	bom, err := sbom.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("release %d: %s: %w", rel.Version, path, err)
	}
	return bom, nil
}

// affectedDevice is one line of "fleet affected".
type affectedDevice struct {
	device       string
	version      uint64
	sbom         string
	supportUntil int64 // Unix ms; 0: none stated
	reported     time.Time
}

func (d affectedDevice) json() any {
	v := struct {
		Device       string `json:"device"`
		Version      uint64 `json:"version"`
		SBOM         string `json:"sbom"`
		SupportUntil string `json:"support_until,omitempty"`
		Reported     string `json:"reported"`
	}{Device: d.device, Version: d.version, SBOM: d.sbom, Reported: d.reported.UTC().Format(time.RFC3339)}
	if d.supportUntil != 0 {
		v.SupportUntil = time.UnixMilli(d.supportUntil).UTC().Format(time.RFC3339)
	}
	return v
}

// affectedDevices returns the devices whose latest "running" or
// "confirmed" report names one of rels, by device ID. reports are in
// UpdateReports' order: by device, then (boot, seq).
func affectedDevices(s streams, reports []store.UpdateReport, rels []*update.Release) []affectedDevice {
	latest := map[string]store.UpdateReport{}
	for _, r := range reports {
		if r.Result.Event == "running" || r.Result.Event == "confirmed" {
			latest[r.Device] = r // later ones come after
		}
	}
	var out []affectedDevice
	for dev, r := range latest {
		i := slices.IndexFunc(rels, func(rel *update.Release) bool { return rel.Version == r.Result.Version })
		if i < 0 {
			continue
		}
		rel := rels[i]
		digest := hex.EncodeToString(rel.SBOM.SHA256[:])
		if hc := r.Result.HardwareClass; hc != "" && hc != rel.HardwareClass {
			continue // a release of another repository
		}
		if r.Result.SBOM != "" && r.Result.SBOM != digest {
			fmt.Fprintf(s.stderr, "warning: %s reports release %d with SBOM %s, which the repository's release %d does not sign (%s)\n",
				dev, r.Result.Version, r.Result.SBOM, rel.Version, digest)
			continue
		}
		until := r.Result.SupportUntil
		if until == 0 && !rel.SupportUntil.IsZero() {
			until = rel.SupportUntil.UnixMilli()
		}
		out = append(out, affectedDevice{device: dev, version: rel.Version, sbom: digest, supportUntil: until, reported: r.Time})
	}
	slices.SortFunc(out, func(a, b affectedDevice) int { return strings.Compare(a.device, b.device) })
	return out
}
