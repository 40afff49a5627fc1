// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/update/internal/delta"
	"github.com/d2c-iot/d2c/update/internal/fetch"
)

// smallDeltas makes NewDelta cut images into 64 KiB blocks with 64 KiB of
// reach, so that test images of a few hundred KiB span several frames.
func smallDeltas(t testing.TB) {
	old := deltaOptions
	deltaOptions = delta.Options{BlockSize: 64 << 10, Reach: 64 << 10}
	t.Cleanup(func() { deltaOptions = old })
}

// buildImage returns a compressible pseudo-random image of n bytes for a
// seed; build(seed, n, edit) with edit != 0 changes a few bytes, inserts a
// run and appends a tail, as a rebuild with a small change would.
func buildImage(seed uint64, n int, edit uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.IntN(32))
	}
	if edit == 0 {
		return b
	}
	e := rand.New(rand.NewPCG(seed, edit))
	for range 16 {
		b[e.IntN(n)] ^= 0x80
	}
	at := n / 2
	b = append(b[:at:at], append(bytes.Repeat([]byte{byte(edit)}, 1000), b[at:]...)...)
	return append(b, fmt.Sprintf("version %d\n", edit)...)
}

// deltaFile is a delta as a test publishes it: the signed entry and the
// bytes served at its URI.
type deltaFile struct {
	entry  Delta
	served []byte
}

// makeDelta makes a delta from base (release from) to target, the
// artifact "image" of a release.
func makeDelta(t testing.TB, from uint64, base, target []byte, uri string) deltaFile {
	t.Helper()
	art, err := NewArtifact("image", "x", bytes.NewReader(target), nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	d, err := NewDelta(&buf, uri, art, bytes.NewReader(target), DeltaBase{Version: from, Image: bytes.NewReader(base), Length: int64(len(base))})
	if err != nil {
		t.Fatal(err)
	}
	return deltaFile{entry: d, served: buf.Bytes()}
}

// sign sets the entry's length and digest to the bytes served: the
// release key signs whatever delta the test built.
func (f deltaFile) sign() deltaFile {
	f.entry.Length, f.entry.SHA256 = int64(len(f.served)), sha256.Sum256(f.served)
	return f
}

// publishDeltas signs and serves release version of img with deltas.
func (r *agentRepo) publishDeltas(version, counter uint64, img []byte, deltas ...deltaFile) {
	r.t.Helper()
	r.publishWith(version, counter, img, nil, deltas)
}

// fetched counts the requests for one served file.
func (r *agentRepo) fetched(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, f := range r.requested {
		if f == name {
			n++
		}
	}
	return n
}

// deltaDevice is a device running release 1 (v1, confirmed) of a
// repository that then publishes release 2 (v2) with the given deltas.
func deltaDevice(t *testing.T, v1 []byte) (*agentRepo, *agentDevice) {
	t.Helper()
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	repo.publishDeltas(1, 1, v1)
	ctx := t.Context()
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatalf("install v1: %v %v", ok, err)
	}
	dev.restart()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dev.agent.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	return repo, dev
}

// bootNew restarts the device into the installed update, confirms it and
// returns what it runs.
func (d *agentDevice) bootNew() []byte {
	d.t.Helper()
	d.restart()
	if _, err := d.agent.Start(d.t.Context()); err != nil {
		d.t.Fatal(err)
	}
	if err := d.agent.Confirm(d.t.Context()); err != nil {
		d.t.Fatal(err)
	}
	return d.running()
}

func TestAgentDeltaInstall(t *testing.T) {
	smallDeltas(t)
	v1 := buildImage(1, 400<<10, 0)
	v2 := buildImage(1, 400<<10, 2)
	repo, dev := deltaDevice(t, v1)
	df := makeDelta(t, 1, v1, v2, "image-2.from-1.delta")
	repo.publishDeltas(2, 1, v2, df)
	if ok, err := dev.agent.Update(t.Context()); err != nil || !ok {
		t.Fatalf("install v2: %v %v", ok, err)
	}
	if r := dev.lastReport(); r.Event != "installed" || r.Delta != "applied" || r.Reason != "" {
		t.Fatalf("report %+v, want installed from the delta", r)
	}
	if n := repo.fetched("image-2.bin"); n != 0 {
		t.Fatalf("the full image was fetched %d times", n)
	}
	if _, err := os.Stat(filepath.Join(dev.dir, "agent", deltaFileName)); !os.IsNotExist(err) {
		t.Fatalf("delta file left behind: %v", err)
	}
	if !bytes.Equal(dev.bootNew(), v2) {
		t.Fatal("the device does not run v2")
	}
	t.Logf("v2: %d bytes; delta: %d bytes", len(v2), len(df.served))
}

// TestAgentDeltaRefused: every bad delta is refused with its sentinel and
// the device installs the full image instead, reporting the fallback.
func TestAgentDeltaRefused(t *testing.T) {
	smallDeltas(t)
	v1 := buildImage(3, 300<<10, 0)
	v2 := buildImage(3, 300<<10, 4)
	good := makeDelta(t, 1, v1, v2, "d.delta")
	patch := func(f deltaFile, edit func(b []byte)) deltaFile {
		f.served = bytes.Clone(f.served)
		edit(f.served)
		return f
	}
	frame0 := delta.HeaderSize + delta.RecordSize
	cases := []struct {
		name string
		d    deltaFile // served nil: the server answers 404 for it
		want error
	}{
		{"not served", func() deltaFile { f := good; f.served = nil; return f }(), fetch.ErrResponse},
		{"tampered byte", patch(good, func(b []byte) { b[len(b)/2] ^= 1 }), ErrDigest},
		{"truncated", func() deltaFile { f := good; f.served = f.served[:len(f.served)-10]; return f }(), ErrLength},
		{"oversized", func() deltaFile { f := good; f.served = append(bytes.Clone(f.served), 0); return f }(), ErrEndlessData},
		{"signed for another base", func() deltaFile {
			f := good
			f.entry.FromSHA256[0] ^= 1
			return f
		}(), ErrDeltaBase},
		{"made from another base of the same length", func() deltaFile {
			other := v2[:len(v1)] // holds what v1 lacks: the frames copy it
			f := makeDelta(t, 1, other, v2, "d.delta")
			f.entry.FromSHA256 = sha256.Sum256(v1) // signed as if from v1
			return f
		}(), ErrDeltaMalformed}, // the frames' content checksums catch it before the image's digest
		{"made from a base of another length", func() deltaFile {
			f := makeDelta(t, 1, buildImage(9, 100<<10, 0), v2, "d.delta")
			f.entry.FromLength, f.entry.FromSHA256 = int64(len(v1)), sha256.Sum256(v1)
			return f
		}(), ErrDeltaBase},
		{"builds another image", func() deltaFile {
			other := bytes.Clone(v2)
			other[1000] ^= 1
			f := makeDelta(t, 1, v1, v1, "d.delta")
			g := makeDelta(t, 1, v1, other, "d.delta")
			f.served = g.served
			return f.sign()
		}(), ErrDigest},
		{"signed corrupt frame", patch(good, func(b []byte) { b[frame0+40] ^= 0x5a }).sign(), ErrDeltaMalformed},
		{"signed huge window", patch(good, func(b []byte) {
			b[frame0+4] &^= 0x20         // not single segment: a window descriptor follows
			b[frame0+5] = (31 - 10) << 3 // 2 GiB
		}).sign(), ErrDeltaMalformed},
		{"signed huge content size", patch(good, func(b []byte) {
			binary.BigEndian.PutUint32(b[8:], 4<<20) // blocks of 4 MiB: frames claim 64 KiB
		}).sign(), ErrDeltaMalformed},
		{"signed huge dictionary", patch(good, func(b []byte) {
			binary.BigEndian.PutUint32(b[delta.HeaderSize+8:], 1<<31)
		}).sign(), ErrDeltaMalformed},
		{"signed trailing frame", func() deltaFile {
			f := good
			f.served = append(bytes.Clone(f.served), good.served[delta.HeaderSize:delta.HeaderSize+100]...)
			return f.sign()
		}(), ErrDeltaMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			repo, dev := deltaDevice(t, v1)
			repo.publishDeltas(2, 1, v2, c.d)
			if c.d.served == nil {
				repo.mu.Lock()
				delete(repo.files, c.d.entry.URI)
				repo.mu.Unlock()
			}
			if ok, err := dev.agent.Update(t.Context()); err != nil || !ok {
				t.Fatalf("install v2: %v %v", ok, err)
			}
			if !errors.Is(dev.agent.deltaErr, c.want) {
				t.Fatalf("delta error %v, want %v", dev.agent.deltaErr, c.want)
			}
			r := dev.lastReport()
			if r.Event != "installed" || r.Delta != "fallback" || !strings.Contains(r.Reason, strings.TrimPrefix(strings.TrimPrefix(c.want.Error(), "update: "), "fetch: ")) {
				t.Fatalf("report %+v, want a fallback naming %q", r, c.want)
			}
			if n := repo.fetched("image-2.bin"); n != 1 {
				t.Fatalf("the full image was fetched %d times", n)
			}
			if _, err := os.Stat(filepath.Join(dev.dir, "agent", deltaFileName)); !os.IsNotExist(err) {
				t.Fatalf("delta file left behind: %v", err)
			}
			if !bytes.Equal(dev.bootNew(), v2) {
				t.Fatal("the device does not run v2")
			}
		})
	}
}

// TestAgentDeltaPowerFail cuts the power at every file-system operation of
// an install from a delta, and of one whose delta fails and falls back to
// the full image, through the restart and Confirm (as TestAgentPowerFail
// does for the full image). After every cut the device boots v1 or v2,
// never anything else, and the update completes.
func TestAgentDeltaPowerFail(t *testing.T) {
	smallDeltas(t)
	v1 := buildImage(5, 200<<10, 0)
	v2 := buildImage(5, 200<<10, 6)
	digests := map[[32]byte]string{sha256.Sum256(v1): "v1", sha256.Sum256(v2): "v2"}
	good := makeDelta(t, 1, v1, v2, "d.delta")
	bad := good
	bad.served = bytes.Clone(good.served)
	bad.served[delta.HeaderSize+delta.RecordSize+40] ^= 0x5a
	bad = bad.sign()
	for name, df := range map[string]deltaFile{"delta": good, "fallback": bad} {
		repo, base := deltaDevice(t, v1)
		repo.publishDeltas(2, 1, v2, df)
		base.agent.Close()
		ops := cutPowerAtEveryOp(t, name, base.clone, powerFailSteps(t, "confirm"), func(d *agentDevice, i int) {
			d.checkAfterCrash(t, "confirm", i, digests)
			d.agent.Close()
		})
		t.Logf("%s: power cut at each of %d file-system operations; every restart booted v1 or v2 and finished", name, ops)
	}
}

// TestAgentDeltaStaleFile: a delta file left by an install abandoned
// earlier (another release's bytes) does not spoil the next delta
// install: the download finds the bytes it holds do not hash to the
// signed digest, starts over, and the delta applies (a concern of the
// adversarial review, checked).
func TestAgentDeltaStaleFile(t *testing.T) {
	smallDeltas(t)
	v1 := buildImage(1, 400<<10, 0)
	v2 := buildImage(1, 400<<10, 2)
	repo, dev := deltaDevice(t, v1)
	stale := filepath.Join(dev.dir, "agent", deltaFileName)
	if err := os.WriteFile(stale, bytes.Repeat([]byte{0x5a}, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	repo.publishDeltas(2, 1, v2, makeDelta(t, 1, v1, v2, "image-2.from-1.delta"))
	if ok, err := dev.agent.Update(t.Context()); err != nil || !ok {
		t.Fatalf("install v2: %v %v", ok, err)
	}
	if r := dev.lastReport(); r.Event != "installed" || r.Delta != "applied" {
		t.Fatalf("report %+v, want installed from the delta", r)
	}
	if !bytes.Equal(dev.bootNew(), v2) {
		t.Fatal("the device does not run v2")
	}
}
