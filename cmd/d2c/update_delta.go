// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/update"
)

// stagedDelta is a delta made for a release, copied beside its place in
// the repository, not yet published.
type stagedDelta struct {
	entry update.Delta
	file  *stagedArtifact
}

type stagedDeltas []stagedDelta

func (ds stagedDeltas) entries() []update.Delta {
	var e []update.Delta
	for _, d := range ds {
		e = append(e, d.entry)
	}
	return e
}

func (ds stagedDeltas) publish() error {
	for _, d := range ds {
		if err := d.file.publish(); err != nil {
			return err
		}
	}
	return nil
}

func (ds stagedDeltas) abort() {
	for _, d := range ds {
		d.file.abort()
	}
}

// stageDeltas makes, for --delta-from, a delta to art (the image file
// image) from the same artifact of each earlier release in from, and
// stages it in the repository.
func stageDeltas(ctx context.Context, repo string, version uint64, image string, art update.Artifact, from []string) (stagedDeltas, error) {
	var ds stagedDeltas
	seen := map[uint64]bool{}
	for _, f := range from {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil || v == 0 || v >= version {
			return ds, usageErrorf("--delta-from %q: want an earlier release version, 1 to %d", f, version-1)
		}
		if seen[v] {
			continue
		}
		seen[v] = true
		d, err := stageDelta(ctx, repo, version, image, art, v)
		if err != nil {
			return ds, err
		}
		ds = append(ds, d)
	}
	if len(ds) > limits.UpdateDeltas {
		return ds, usageErrorf("--delta-from: %d deltas (at most %d)", len(ds), limits.UpdateDeltas)
	}
	return ds, nil
}

func stageDelta(ctx context.Context, repo string, version uint64, image string, art update.Artifact, from uint64) (stagedDelta, error) {
	prev, ok, err := peekMeta(filepath.Join(repo, strconv.FormatUint(from, 10)+releaseSuffix), limits.UpdateRelease)
	if err != nil {
		return stagedDelta{}, err
	}
	if !ok {
		return stagedDelta{}, withHint(fmt.Errorf("--delta-from %d: the repository has no %d%s", from, from, releaseSuffix),
			"give a release version this repository published")
	}
	var basePath string
	var baseSum string
	for _, a := range prev.Artifacts {
		if a.Name == art.Name {
			if basePath, err = artifactPath(repo, a.URI); err != nil {
				return stagedDelta{}, err
			}
			baseSum = a.SHA256
		}
	}
	if basePath == "" {
		return stagedDelta{}, withHint(fmt.Errorf("--delta-from %d: release %d has no artifact %q in the repository", from, from, art.Name),
			"a delta needs the earlier image as the repository published it (a relative URI)")
	}
	base, err := os.Open(basePath)
	if err != nil {
		return stagedDelta{}, fmt.Errorf("--delta-from %d: %w", from, err)
	}
	defer base.Close()
	fi, err := base.Stat()
	if err != nil {
		return stagedDelta{}, err
	}
	target, err := os.Open(image)
	if err != nil {
		return stagedDelta{}, fmt.Errorf("image: %w", err)
	}
	defer target.Close()
	tmp, err := os.CreateTemp("", "d2c-delta-*")
	if err != nil {
		return stagedDelta{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	uri := fmt.Sprintf("v%d/%s.from-v%d.delta", version, art.Name, from)
	d, err := update.NewDelta(tmp, uri, art, ctxReader{ctx, target}, update.DeltaBase{Version: from, Image: ctxReader{ctx, base}, Length: fi.Size()})
	if err != nil {
		return stagedDelta{}, err
	}
	if fmt.Sprintf("%x", d.FromSHA256) != baseSum {
		return stagedDelta{}, fmt.Errorf("--delta-from %d: %s does not hold the image release %d signed", from, basePath, from)
	}
	if err := tmp.Close(); err != nil {
		return stagedDelta{}, err
	}
	dest, err := artifactPath(repo, uri)
	if err != nil {
		return stagedDelta{}, err
	}
	st, err := stageArtifact(ctx, tmp.Name(), art.Name, uri, dest, nil)
	if err != nil {
		return stagedDelta{}, err
	}
	if st.art.SHA256 != d.SHA256 || st.art.Length != d.Length {
		st.abort()
		return stagedDelta{}, fmt.Errorf("--delta-from %d: the delta changed while it was copied", from)
	}
	return stagedDelta{entry: d, file: st}, nil
}
