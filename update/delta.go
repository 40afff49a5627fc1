// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/update/internal/delta"
	"github.com/d2c-iot/d2c/update/internal/fetch"
	"github.com/d2c-iot/d2c/update/internal/slothook"
	"github.com/d2c-iot/d2c/update/slot"
)

// Errors of the delta path. The agent never returns them from Install: a
// delta that fails for any reason is recorded (Result.Delta "fallback",
// the error in Result.Reason) and the full artifact is installed instead.
var (
	// ErrDeltaBase: the running slot does not hold the delta's base (its
	// first from_length bytes do not hash to from_sha256), or the delta
	// was made from a base of another length.
	ErrDeltaBase = errors.New("update: delta made for another base")
	// ErrDeltaMalformed: a delta that is not a delta container within its
	// bounds (docs/update-format.md, "Delta container"): a corrupt or
	// truncated frame, a frame declaring a huge window or another content
	// size, data after the last frame.
	ErrDeltaMalformed = errors.New("update: malformed delta")
)

// DeltaBase is the image a delta starts from: an earlier release's
// artifact, as devices that run that release hold it.
type DeltaBase struct {
	// Version is the release version of the base.
	Version uint64
	// Image yields the base image from its first byte.
	Image io.Reader
	// Length is the exact length of the base image.
	Length int64
}

// NewDelta writes to w a delta that builds art, whose content target
// yields, from base, and returns its entry for the release's Deltas, with
// the given URI (relative to the metadata, or absolute). It reads the base
// and the target once each, front to back; its memory (about 55 MiB of
// heap, most of it the zstd encoder's tables) does not grow with the
// images. It fails if target is not art (length
// and SHA-256) or base does not yield exactly base.Length bytes.
//
// The delta is a sequence of standard zstd frames, one per MiB of the
// target, each compressed with the base region within 2 MiB of its offset
// as a raw dictionary (docs/update-format.md, "Deltas"): small when the new
// image keeps most of the old one's bytes near the same offsets (two
// builds of one program, a file-system image with a few files changed).
func NewDelta(w io.Writer, uri string, art Artifact, target io.Reader, base DeltaBase) (Delta, error) {
	d := Delta{Artifact: art.Name, FromVersion: base.Version, FromLength: base.Length, URI: uri}
	hBase, hTarget, hDelta := sha256.New(), sha256.New(), sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, hDelta)}
	err := delta.Write(cw, io.TeeReader(base.Image, hBase), base.Length, io.TeeReader(target, hTarget), art.Length, deltaOptions)
	if err != nil {
		return Delta{}, fmt.Errorf("update: make delta to %s: %w", art.Name, err)
	}
	if [32]byte(hTarget.Sum(nil)) != art.SHA256 {
		return Delta{}, fmt.Errorf("update: make delta to %s: %w: the target image is not the artifact", art.Name, ErrDigest)
	}
	d.FromSHA256, d.SHA256, d.Length = [32]byte(hBase.Sum(nil)), [32]byte(hDelta.Sum(nil)), cw.n
	return d, nil
}

// deltaOptions are NewDelta's container parameters; tests shrink them.
var deltaOptions = delta.Options{}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// pendingDelta is the delta an install is using, as persisted.
type pendingDelta struct {
	FromVersion uint64 `cbor:"1,keyasint"`
	FromLength  int64  `cbor:"2,keyasint"`
	FromSHA256  []byte `cbor:"3,keyasint"`
	Length      int64  `cbor:"4,keyasint"`
	SHA256      []byte `cbor:"5,keyasint"`
	URI         string `cbor:"6,keyasint"`
}

// deltaFileName is where, in the agent's directory, a delta downloads.
const deltaFileName = "delta"

// pickDelta returns the delta of rel that builds art from the installed
// release, or nil. The version selects; the base check (installDelta)
// decides.
func (a *Agent) pickDelta(rel *Release, art Artifact) *pendingDelta {
	inst := a.st.Installed
	for _, d := range rel.Deltas {
		if inst.Version > 0 && d.Artifact == art.Name && d.FromVersion == inst.Version {
			return &pendingDelta{FromVersion: d.FromVersion, FromLength: d.FromLength, FromSHA256: d.FromSHA256[:],
				Length: d.Length, SHA256: d.SHA256[:], URI: d.URI}
		}
	}
	return nil
}

// installDelta builds the pending artifact in img from the pending delta:
// it checks that the running slot holds the base, downloads the delta
// into the agent's directory (resuming), checks its signed length and
// digest, then applies it from the running slot into img, from img's
// start, checking the output against the artifact's signed length and
// digest as it goes.
func (a *Agent) installDelta(ctx context.Context, art Artifact, img slot.Image) error {
	p := a.st.Pending
	pd := p.Delta
	if inst := a.st.Installed.SHA256; len(inst) > 0 && !bytes.Equal(inst, pd.FromSHA256) {
		return fmt.Errorf("%w: the installed release's digest is %x, the delta's base %x", ErrDeltaBase, inst, pd.FromSHA256)
	}
	if err := a.checkBase(ctx, p.Prev, pd); err != nil {
		return err
	}
	url, err := a.cfg.Resolve(pd.URI)
	if err != nil {
		return err
	}
	path := filepath.Join(a.cfg.Dir, deltaFileName)
	f, err := slothook.OpenImageFile(a.cfg.fs, path)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	sink := f.(slot.Image)
	a.at("delta-download")
	req := fetch.Request{URL: url, Length: pd.Length, SHA256: [32]byte(pd.SHA256), Client: a.cfg.Client,
		MinRate: a.cfg.MinRate, RateWindow: a.cfg.RateWindow, Progress: a.cfg.Progress}
	err = downloadError(fetch.Download(ctx, req, sink))
	if cerr := sink.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("update: download delta: %w", err)
	}
	a.at("delta-apply")
	if img.Offset() > 0 {
		if err := img.Reset(); err != nil {
			return fmt.Errorf("update: clear slot %s: %w", p.Slot, err)
		}
	}
	df, err := os.Open(path)
	if err != nil {
		return err
	}
	defer df.Close()
	// The delta file is bounded by its signed length, which was checked.
	base, err := a.cfg.Slots.Read(ctx, p.Prev)
	if err != nil {
		return fmt.Errorf("update: read slot %s: %w", p.Prev, err)
	}
	defer base.Close()
	v := art.Verifier()
	err = delta.Apply(io.MultiWriter(v, img), io.LimitReader(df, pd.Length), io.LimitReader(base, pd.FromLength), pd.FromLength, art.Length)
	switch {
	case errors.Is(err, delta.ErrBase):
		return fmt.Errorf("%w: %w", ErrDeltaBase, err)
	case errors.Is(err, delta.ErrMalformed) || errors.Is(err, delta.ErrTooLarge):
		return fmt.Errorf("%w: %w", ErrDeltaMalformed, err)
	case err != nil:
		return fmt.Errorf("update: apply delta: %w", err)
	}
	if err := v.Verify(); err != nil {
		return fmt.Errorf("update: the delta built another image: %w", err)
	}
	if err := img.Sync(); err != nil {
		return fmt.Errorf("update: fsync slot %s: %w", p.Slot, err)
	}
	return nil
}

// checkBase hashes the first FromLength bytes of the running slot.
func (a *Agent) checkBase(ctx context.Context, running string, pd *pendingDelta) error {
	r, err := a.cfg.Slots.Read(ctx, running)
	if err != nil {
		return fmt.Errorf("update: read slot %s: %w", running, err)
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(r, pd.FromLength))
	if err != nil {
		return fmt.Errorf("update: read slot %s: %w", running, err)
	}
	if n != pd.FromLength || !bytes.Equal(h.Sum(nil), pd.FromSHA256) {
		return fmt.Errorf("%w: slot %s does not start with the %d-byte base of the delta from version %d", ErrDeltaBase, running, pd.FromLength, pd.FromVersion)
	}
	return nil
}

// tryDelta runs the delta path of the pending install into img. It
// reports whether the delta built the artifact; after any failure but an
// interruption (a cancelled ctx: the next Install resumes the delta path)
// it records the fallback to the full artifact first, then clears img and
// the delta file, and returns false with a nil error.
func (a *Agent) tryDelta(ctx context.Context, art Artifact, img slot.Image) (bool, error) {
	err := a.installDelta(ctx, art, img)
	if err == nil {
		return true, nil
	}
	if ctx.Err() != nil {
		return false, err
	}
	a.deltaErr = err
	a.log.Warn("update: delta failed; downloading the full image", "version", a.st.Pending.Version, "err", err)
	p := a.st.Pending
	p.Delta, p.DeltaFailed = nil, truncateReason(err.Error())
	if err := a.store.save(a.st); err != nil {
		return false, err
	}
	if img.Offset() > 0 {
		if err := img.Reset(); err != nil {
			return false, fmt.Errorf("update: clear slot %s: %w", p.Slot, err)
		}
	}
	return false, a.removeDeltaFile()
}

func (a *Agent) removeDeltaFile() error {
	return atomicfile.Remove(a.cfg.fs, filepath.Join(a.cfg.Dir, deltaFileName))
}

// truncateReason bounds a reason kept in the agent's state.
func truncateReason(s string) string {
	const max = 512
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
