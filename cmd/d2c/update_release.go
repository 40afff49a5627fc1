// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/update"
	updaterepo "github.com/d2c-iot/d2c/update/repo"
)

func updateReleaseSignCommand() *command {
	return &command{
		path:    "update release sign",
		summary: "sign a release and a fresh timestamp into a repository",
		usage: "--repo DIR --key FILE... --version V --security-counter C --hardware-class H --image FILE " +
			"[--artifact NAME] [--uri URI] [--expires DURATION] --timestamp-key FILE... [--timestamp-expires DURATION] [--progress] [--delta-from V]... " +
			"[--sbom FILE] [--support-until DATE] [--held]",
		details: `
Reads the image once, hashing it (SHA-256, length) and, unless --uri is
absolute, copying it into the repository at the same time, to DIR/<URI>
(default URI: v<VERSION>/<image file name>). It then signs the release
metadata with the release keys, a timestamp naming it (the previous timestamp
version plus one) with the timestamp keys, checks both as a device would, and
only then publishes, in this order: the image (renamed into place),
DIR/release.json, DIR/timestamp.json, each atomically.

A release version below the current one is refused (devices would refuse it
as a rollback), and so is a security counter below the current one. The
current version again is accepted only for the same image: that re-signs the
release, for a later expiry or after a rotation of the release key. A
published image is never replaced by other content.

With an absolute --uri (https://cdn.example.com/...), the image is hashed
only: upload it there yourself, before devices check.

Raise --security-counter with every release that fixes a vulnerability:
devices refuse any release whose counter is below the one they confirmed.

It holds DIR/.lock from its first read to its last write, hashing and
copying the image included: a timestamp job running meanwhile waits up to 5
seconds, then fails, to be run again.

A progress bar goes to stderr when it is a terminal, or with --progress.

--delta-from V (repeatable) adds a delta from release V: V.release.json
must be in the repository, with an artifact of the same name whose image
is in the repository too (a relative URI). The delta is written to
DIR/v<VERSION>/<ARTIFACT>.from-v<V>.delta and signed in the release
(docs/update-format.md, "Deltas"); devices that run release V download it
instead of the image, and fall back to the image if it fails. It is
usually a few percent of the image for two builds of one program.

--sbom FILE signs the image's software bill of materials into the release
(its length and SHA-256, as for the image) and copies it into the
repository at DIR/v<VERSION>/<file name>. It must be a CycloneDX JSON SBOM,
specVersion 1.4 to 1.6, of at most 16 MiB and 100000 components. Devices
never download it: they report its digest with the release they run, and
"d2c fleet affected" finds the devices whose release's SBOM names a
component. --support-until DATE states the end of the release's security
support (YYYY-MM-DD for 00:00 UTC that day, or an RFC 3339 time); devices
report it too, and "d2c device update --status" warns once it has passed.`,
		example: `d2c update release sign --repo /srv/updates/fleet --key keys/release.key \
    --version 7 --security-counter 2 --hardware-class sensor-v2 --image build/firmware.bin \
    --timestamp-key keys/timestamp.key`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			repo := fl.String("repo", "", "repository directory (required)")
			var keys, tsKeys stringList
			fl.Var(&keys, "key", "private release key, a file or a pkcs11: URI; repeatable to reach the release threshold (required)")
			version := fl.Uint64("version", 0, "release version, above the installed one on devices (required)")
			counter := fl.Uint64("security-counter", 0, "security counter; raise it with every security fix (required)")
			hardware := fl.String("hardware-class", "", "hardware class of the devices the release is for (required)")
			image := fl.String("image", "", "the image file (required)")
			name := fl.String("artifact", "image", "artifact name in the release")
			uri := fl.String("uri", "", "artifact URI, relative to the repository or absolute (default: v<VERSION>/<image file name>)")
			expires := fl.Duration("expires", 30*24*time.Hour, "how long the release metadata is valid")
			fl.Var(&tsKeys, "timestamp-key", "private timestamp key, a file or a pkcs11: URI; repeatable to reach the timestamp threshold (required)")
			tsExpires := fl.Duration("timestamp-expires", 24*time.Hour, "how long the timestamp is valid")
			var progress autoBool
			fl.Var(&progress, "progress", "show a progress bar on stderr; auto: when stderr is a terminal")
			var deltaFrom stringList
			fl.Var(&deltaFrom, "delta-from", "an earlier release V whose image in the repository the release gets a delta from; repeatable")
			held := fl.Bool("held", false, "sign the timestamp with a rule that offers the release to no device, until the service running its campaign signs the first phase (d2c rollout start)")
			sbomFile := fl.String("sbom", "", "CycloneDX JSON SBOM of the image, signed into the release and copied into the repository")
			supportFlag := fl.String("support-until", "", "end of the release's security support: YYYY-MM-DD (00:00 UTC) or an RFC 3339 time")
			return func(ctx context.Context, s streams) error {
				set := map[string]bool{}
				fl.Visit(func(f *flag.Flag) { set[f.Name] = true })
				if *repo == "" || len(keys) == 0 || !set["version"] || !set["security-counter"] || *hardware == "" ||
					*image == "" || len(tsKeys) == 0 {
					return usageErrorf("--repo, --key, --version, --security-counter, --hardware-class, --image and --timestamp-key are required")
				}
				if *version == 0 {
					return usageErrorf("--version 0: versions start at 1")
				}
				if err := validName("hardware-class", *hardware); err != nil {
					return err
				}
				if err := validName("artifact", *name); err != nil {
					return err
				}
				if err := positiveDuration("expires", *expires); err != nil {
					return err
				}
				if err := positiveDuration("timestamp-expires", *tsExpires); err != nil {
					return err
				}
				var supportUntil time.Time
				if *supportFlag != "" {
					t, err := parseSupportUntil(*supportFlag)
					if err != nil {
						return err
					}
					supportUntil = t
				}
				if *uri == "" {
					base := filepath.Base(*image)
					if !safeName(base) {
						return usageErrorf("--image file name %q does not make a plain URI: give --uri", base)
					}
					*uri = "v" + strconv.FormatUint(*version, 10) + "/" + base
				}
				dest, err := artifactPath(*repo, *uri)
				if err != nil {
					return err
				}
				unlock, err := lockRepo(ctx, *repo)
				if err != nil {
					return err
				}
				defer unlock()
				relSigners, err := readSigners(update.RoleRelease, keys)
				if err != nil {
					return err
				}
				tsSigners, err := readSigners(update.RoleTimestamp, tsKeys)
				if err != nil {
					return err
				}
				now := time.Now()
				t, err := openRepo(*repo, now, *hardware)
				if err != nil {
					return err
				}
				if err := checkRoleKeys(t.Root(), update.RoleRelease, "key", relSigners, *repo); err != nil {
					return err
				}
				if err := checkRoleKeys(t.Root(), update.RoleTimestamp, "timestamp-key", tsSigners, *repo); err != nil {
					return err
				}
				prev, hasPrev, err := peekMeta(filepath.Join(*repo, repoRelease), limits.UpdateRelease)
				if err != nil {
					return err
				}
				if hasPrev && prev.HardwareClass != *hardware {
					return withHint(fmt.Errorf("%w: the repository's current release is for %q, not %q",
						update.ErrWrongHardware, prev.HardwareClass, *hardware),
						"a repository serves one hardware class: check --hardware-class, or give each class a repository of its own")
				}
				if hasPrev && *version < prev.Version {
					return withHint(fmt.Errorf("%w: release version %d is below the current release %d", update.ErrRollback, *version, prev.Version),
						fmt.Sprintf("devices refuse an older release: give --version %d or more", prev.Version+1))
				}
				if hasPrev && *counter < prev.SecurityCounter {
					return withHint(fmt.Errorf("%w: security counter %d is below the current release's %d", update.ErrSecurityCounter, *counter, prev.SecurityCounter),
						fmt.Sprintf("devices that confirmed the current release refuse it: give --security-counter %d or more", prev.SecurityCounter))
				}
				var bom *stagedSBOM
				if *sbomFile != "" {
					if bom, err = stageSBOM(ctx, *repo, *version, *sbomFile, dest); err != nil {
						return err
					}
					defer bom.abort()
				}
				var bar *progressBar
				if progress.enabled(s.stderr) {
					bar = newProgressBar(s.stderr, *name, *image)
				}
				staged, err := stageArtifact(ctx, *image, *name, *uri, dest, bar)
				if err != nil {
					return err
				}
				defer staged.abort()
				art := staged.art
				if hasPrev && *version == prev.Version && !sameArtifact(prev, art) {
					return withHint(fmt.Errorf("release version %d is already published with another image", *version),
						fmt.Sprintf("a version names one image: give --version %d", prev.Version+1))
				}
				deltas, err := stageDeltas(ctx, *repo, *version, *image, art, deltaFrom)
				defer deltas.abort()
				if err != nil {
					return err
				}
				rel := &update.Release{Version: *version, SecurityCounter: *counter, HardwareClass: *hardware,
					Artifacts: []update.Artifact{art}, Deltas: deltas.entries(), Expires: now.Add(*expires),
					SBOM: bom.entry(), SupportUntil: supportUntil}
				relBytes, err := rel.Sign(relSigners...)
				if err != nil {
					return err
				}
				// Signed and checked as a device would, written below.
				next := updaterepo.NextTimestamp
				if *held {
					next = updaterepo.NextTimestampHeld
				}
				ts, tsBytes, err := next(*repo, t, relBytes, tsSigners, now.Add(*tsExpires))
				if err != nil {
					return repoHint(err, *repo)
				}
				if err := staged.publish(); err != nil {
					return err
				}
				if err := deltas.publish(); err != nil {
					return err
				}
				if err := bom.publish(); err != nil {
					return err
				}
				// The versioned release first: a device holding the
				// previous timestamp still finds the release it names.
				if err := writeRepoFile(filepath.Join(*repo, strconv.FormatUint(rel.Version, 10)+releaseSuffix), relBytes); err != nil {
					return err
				}
				if err := writeRepoFile(filepath.Join(*repo, repoRelease), relBytes); err != nil {
					return err
				}
				if err := writeRepoFile(filepath.Join(*repo, repoTimestamp), tsBytes); err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "release version %d signed for %s, security counter %d, expires %s\n",
					rel.Version, rel.HardwareClass, rel.SecurityCounter, rel.Expires.UTC().Format(time.RFC3339))
				fmt.Fprintf(s.stdout, "artifact %s: %d bytes, sha256 %x, uri %s\n", art.Name, art.Length, art.SHA256, art.URI)
				for _, d := range rel.Deltas {
					fmt.Fprintf(s.stdout, "delta from version %d: %d bytes, sha256 %x, uri %s\n", d.FromVersion, d.Length, d.SHA256, d.URI)
				}
				printFacts(s, rel, bom, now)
				fmt.Fprintf(s.stdout, "timestamp version %d, expires %s\n", ts.Version, ts.Expires.UTC().Format(time.RFC3339))
				if ts.Rollout.Halted() {
					fmt.Fprintf(s.stdout, "held: no device is offered release %d until its campaign's first phase is signed\n", rel.Version)
				}
				if dest == "" {
					fmt.Fprintf(s.stderr, "upload %s to %s before devices check: it was not copied\n", *image, art.URI)
				}
				fmt.Fprintf(s.stderr, "re-sign the timestamp before %s: d2c update timestamp --repo %s --key FILE\n",
					ts.Expires.UTC().Format(time.RFC3339), *repo)
				return nil
			}
		},
	}
}

func updateTimestampCommand() *command {
	return &command{
		path:    "update timestamp",
		summary: "re-sign a fresh timestamp for the current release",
		usage:   "--repo DIR --key FILE... [--expires DURATION]",
		details: `
Signs a new timestamp naming the current DIR/release.json, with the previous
timestamp's version plus one, checks it as a device would, and writes it to
DIR/timestamp.json atomically. This is the online role's periodic job: devices
refuse a timestamp once it has expired (a freeze attack looks exactly like a
repository nobody re-signs), so run it well within --expires, for example
every 8 hours for the default 24h, from cron or a systemd timer.

It refuses to sign for a release that has itself expired: a fresh timestamp
cannot revive it; sign the release again ("update release sign").

Like "update release sign", "update root init" and "update root rotate", it
locks DIR/.lock from its first read to its last write: if another of them
holds the lock, it waits up to 5 seconds, then fails; run it again.`,
		example: `d2c update timestamp --repo /srv/updates/fleet --key /etc/d2c/timestamp.key --expires 24h`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			repo := fl.String("repo", "", "repository directory (required)")
			var keys stringList
			fl.Var(&keys, "key", "private timestamp key, a file or a pkcs11: URI; repeatable to reach the threshold (required)")
			expires := fl.Duration("expires", 24*time.Hour, "how long the timestamp is valid")
			return func(ctx context.Context, s streams) error {
				if *repo == "" || len(keys) == 0 {
					return usageErrorf("--repo and --key are required")
				}
				if err := positiveDuration("expires", *expires); err != nil {
					return err
				}
				signers, err := readSigners(update.RoleTimestamp, keys)
				if err != nil {
					return err
				}
				// lctx bounds the wait for the lock: nothing after it
				// depends on a context.
				lctx, cancel := context.WithTimeout(ctx, repoLockWait)
				defer cancel()
				ts, err := updaterepo.SignTimestamp(lctx, *repo, signers, *expires, time.Now())
				if errors.Is(err, update.ErrUnknownKey) || errors.Is(err, update.ErrThreshold) {
					return withHint(err, fmt.Sprintf("give the timestamp key(s) of the repository's newest root, or trust a new key "+
						"first with `d2c update root rotate --repo %s --timestamp-pub FILE`; if the release is the one refused, "+
						"sign it again with `d2c update release sign --repo %s`", *repo, *repo))
				}
				if err != nil {
					return lockError(ctx, *repo, err)
				}
				fmt.Fprintf(s.stdout, "timestamp version %d written to %s\nrelease:   version %d\nexpires:   %s\n",
					ts.Version, filepath.Join(*repo, repoTimestamp), ts.Release.Version, ts.Expires.UTC().Format(time.RFC3339))
				return nil
			}
		},
	}
}

// isKeyRefusal reports whether err refuses signatures: not by a trusted
// key, too few, or not verifying.
func isKeyRefusal(err error) bool {
	return errors.Is(err, update.ErrUnknownKey) || errors.Is(err, update.ErrThreshold) ||
		errors.Is(err, update.ErrBadSignature) || errors.Is(err, update.ErrAlgorithm)
}

// sameArtifact reports whether the release prev lists art with the same
// content.
func sameArtifact(prev peekedMeta, art update.Artifact) bool {
	for _, a := range prev.Artifacts {
		if a.Name == art.Name && a.Length == art.Length && a.SHA256 == fmt.Sprintf("%x", art.SHA256) {
			return true
		}
	}
	return false
}

// artifactPath returns where in repo an artifact with a relative URI is
// published, or "" for an absolute URI. A relative URI must be a plain
// path inside the repository, of segments that safeName accepts, and not
// one of the metadata files.
func artifactPath(repo, uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", usageErrorf("--uri %q: %v", uri, err)
	}
	if u.Scheme != "" || u.Host != "" {
		if u.Scheme != "https" && u.Scheme != "http" {
			return "", usageErrorf("--uri %q: want an https:// address or a path relative to the repository", uri)
		}
		return "", nil
	}
	segs := strings.Split(uri, "/")
	for _, seg := range segs {
		if !safeName(seg) {
			return "", usageErrorf("--uri %q: a relative URI is a path inside the repository, "+
				"of names made of letters, digits, '.', '_' and '-', not starting with '.'", uri)
		}
	}
	if len(segs) == 1 && (uri == repoRelease || uri == repoTimestamp || uri == repoRootCopy || strings.HasSuffix(uri, rootSuffix) || strings.HasSuffix(uri, releaseSuffix)) {
		return "", usageErrorf("--uri %q is a metadata file of the repository", uri)
	}
	return filepath.Join(repo, filepath.FromSlash(uri)), nil
}

// stagedArtifact is an image hashed and, for a relative URI, copied
// beside its place in the repository, not yet published.
type stagedArtifact struct {
	art       update.Artifact
	tmp, dest string   // tmp is "" when there is nothing to publish
	madeDirs  []string // directories created for dest, removed by abort
}

// stageArtifact reads image once: it hashes it into its artifact entry
// and, when dest is not "", copies it to a temporary file beside dest.
// An existing dest must already hold the same content: a published
// artifact is never replaced, since devices may be downloading it.
func stageArtifact(ctx context.Context, image, name, uri, dest string, bar *progressBar) (*stagedArtifact, error) {
	f, err := os.Open(image)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("image %s: not a regular file", image)
	}
	st := &stagedArtifact{dest: dest}
	var r io.Reader = ctxReader{ctx, f}
	var tmp *os.File
	if dest != "" {
		dir := filepath.Dir(dest)
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Lstat(d); err == nil || d == filepath.Dir(d) {
				break
			}
			st.madeDirs = append(st.madeDirs, d) // deepest first
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			st.abort()
			return nil, err
		}
		if tmp, err = os.CreateTemp(dir, "."+filepath.Base(dest)+".tmp-*"); err != nil {
			st.abort()
			return nil, err
		}
		st.tmp = tmp.Name()
		if err := tmp.Chmod(repoFileMode); err != nil {
			_ = tmp.Close()
			st.abort()
			return nil, err
		}
		r = io.TeeReader(r, tmp)
	}
	var progress func(int64)
	if bar != nil {
		bar.total = fi.Size()
		progress = bar.update
	}
	st.art, err = update.NewArtifact(name, uri, r, progress)
	if bar != nil {
		bar.finish(st.art.Length)
	}
	if tmp != nil {
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		st.abort()
		return nil, err
	}
	if dest == "" {
		return st, nil
	}
	if _, err := os.Lstat(dest); err == nil {
		// Already published: the same content is fine, other content is
		// refused.
		st.abort()
		same, err := fileMatches(dest, st.art)
		if err != nil {
			return nil, err
		}
		if !same {
			return nil, withHint(fmt.Errorf("%s already exists with other content", dest),
				"a published artifact is never replaced (devices may be downloading it): give another --uri or --version")
		}
	}
	return st, nil
}

// publish renames the copy into place and makes the rename durable.
func (s *stagedArtifact) publish() error {
	if s.tmp == "" {
		return nil
	}
	if err := os.Rename(s.tmp, s.dest); err != nil {
		return err
	}
	// The new entry, and those of the directories made for it.
	dirs := []string{filepath.Dir(s.dest)}
	for _, d := range s.madeDirs {
		dirs = append(dirs, filepath.Dir(d))
	}
	s.tmp, s.madeDirs = "", nil
	for _, d := range dirs {
		if err := (atomicfile.OS{}).SyncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// abort removes the copy and the directories made for it, unless
// published.
func (s *stagedArtifact) abort() {
	if s.tmp != "" {
		_ = os.Remove(s.tmp)
		s.tmp = ""
	}
	for _, d := range s.madeDirs {
		_ = os.Remove(d) // only if empty
	}
	s.madeDirs = nil
}

// fileMatches reports whether the file at path has a's length and SHA-256.
func fileMatches(path string, a update.Artifact) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return false, err
	}
	return n == a.Length && [32]byte(h.Sum(nil)) == a.SHA256, nil
}

// ctxReader stops reading once ctx is done (SIGINT during a long image).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// autoBool is a boolean flag whose default, "auto", is decided later.
type autoBool struct{ set, val bool }

func (b *autoBool) String() string {
	if b == nil || !b.set {
		return "auto"
	}
	return strconv.FormatBool(b.val)
}

func (b *autoBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	b.set, b.val = true, v
	return nil
}

func (b *autoBool) IsBoolFlag() bool { return true }

// enabled returns the flag's value, or, when not given, whether w is a
// terminal.
func (b *autoBool) enabled(w io.Writer) bool {
	if b.set {
		return b.val
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progressBar draws "label [#####     ]  42%   12.3 MB/s" on one line,
// at most every progressInterval.
type progressBar struct {
	w          io.Writer
	label      string
	total      int64
	start      time.Time
	last       time.Time
	now        func() time.Time
	drawnFinal bool
}

const (
	progressInterval = 100 * time.Millisecond
	progressWidth    = 30
)

func newProgressBar(w io.Writer, label, file string) *progressBar {
	return &progressBar{w: w, label: label + " " + filepath.Base(file), start: time.Now(), now: time.Now}
}

// update redraws the bar if the last drawing is older than progressInterval.
func (p *progressBar) update(done int64) {
	now := p.now()
	if !p.last.IsZero() && now.Sub(p.last) < progressInterval {
		return
	}
	p.last = now
	p.draw(done, now)
}

// finish draws the final state and ends the line.
func (p *progressBar) finish(done int64) {
	if p.drawnFinal {
		return
	}
	p.drawnFinal = true
	p.draw(done, p.now())
	fmt.Fprintln(p.w)
}

func (p *progressBar) draw(done int64, now time.Time) {
	pct := int64(100)
	if p.total > 0 {
		pct = min(done, p.total) * 100 / p.total
	}
	fill := int(pct) * progressWidth / 100
	rate := 0.0
	if secs := now.Sub(p.start).Seconds(); secs > 0 {
		rate = float64(done) / 1e6 / secs
	}
	fmt.Fprintf(p.w, "\r%s [%s%s] %3d%% %7.1f MB/s", p.label,
		strings.Repeat("#", fill), strings.Repeat(" ", progressWidth-fill), pct, rate)
}
