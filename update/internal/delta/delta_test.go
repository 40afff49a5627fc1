// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package delta

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/d2c-iot/d2c/internal/testpeer"
)

// images returns a base of n pseudo-random bytes and a target made from it
// with a few edits: bytes changed, a run inserted (shifting the rest), a
// run deleted, and a tail appended.
func images(n int, seed uint64) (base, target []byte) {
	r := rand.New(rand.NewPCG(seed, 1))
	base = make([]byte, n)
	for i := range base {
		base[i] = byte(r.IntN(16)) // compressible, like code
	}
	target = bytes.Clone(base)
	for range 20 {
		target[r.IntN(len(target))] ^= 0xff
	}
	ins := bytes.Repeat([]byte("inserted"), 500)
	at := len(target) / 3
	target = append(target[:at:at], append(ins, target[at:]...)...)
	del := 2 * len(target) / 3
	target = append(target[:del:del], target[del+3000:]...)
	return base, append(target, []byte("tail")...)
}

func roundTrip(t *testing.T, base, target []byte, o Options) []byte {
	t.Helper()
	var d bytes.Buffer
	if err := Write(&d, bytes.NewReader(base), int64(len(base)), bytes.NewReader(target), int64(len(target)), o); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Apply(&out, bytes.NewReader(d.Bytes()), bytes.NewReader(base), int64(len(base)), int64(len(target))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), target) {
		t.Fatalf("applied delta builds %d bytes that differ from the %d-byte target", out.Len(), len(target))
	}
	return d.Bytes()
}

func TestRoundTrip(t *testing.T) {
	base, target := images(3<<20+12345, 1)
	d := roundTrip(t, base, target, Options{BlockSize: 256 << 10, Reach: 512 << 10})
	if len(d) > len(target)/20 {
		t.Errorf("delta of %d bytes for a %d-byte target with a few edits", len(d), len(target))
	}
	t.Logf("target %d bytes, delta %d bytes", len(target), len(d))
	for _, c := range []struct {
		name         string
		base, target []byte
	}{
		{"empty target", base, nil},
		{"empty base", nil, target[:100000]},
		{"both empty", nil, nil},
		{"tiny", []byte("abc"), []byte("abcd")},
		{"base longer than reach", base, target[:70000]},
	} {
		t.Run(c.name, func(t *testing.T) {
			roundTrip(t, c.base, c.target, Options{BlockSize: 64 << 10, Reach: 64 << 10})
		})
	}
}

// TestReferenceDecoder decodes each frame of a delta with the zstd
// command (the reference implementation) and the frame's dictionary: the
// frames are standard zstd frames.
func TestReferenceDecoder(t *testing.T) {
	zstd := testpeer.Require(t, "zstd")
	base, target := images(600<<10, 2)
	d := roundTrip(t, base, target, Options{BlockSize: 64 << 10, Reach: 128 << 10})
	h, _ := ParseHeader(d)
	dir := t.TempDir()
	p := HeaderSize
	var got []byte
	for i := range h.Frames() {
		r, err := parseRecord(d[p:], h, Record{})
		if err != nil {
			t.Fatal(err)
		}
		p += RecordSize
		frame, dict := filepath.Join(dir, "frame"), filepath.Join(dir, "dict")
		os.WriteFile(frame, d[p:p+r.FrameLength], 0o600)
		os.WriteFile(dict, base[r.DictOffset:r.DictOffset+int64(r.DictLength)], 0o600)
		p += r.FrameLength
		out, err := exec.Command(zstd, "-d", "-c", "-D", dict, frame).Output()
		if err != nil {
			t.Fatalf("frame %d: zstd -d: %v", i, err)
		}
		got = append(got, out...)
	}
	if !bytes.Equal(got, target) {
		t.Fatal("the reference decoder builds another target")
	}
}

func TestApplyRefuses(t *testing.T) {
	base, target := images(300<<10, 3)
	o := Options{BlockSize: 64 << 10, Reach: 64 << 10}
	var buf bytes.Buffer
	if err := Write(&buf, bytes.NewReader(base), int64(len(base)), bytes.NewReader(target), int64(len(target)), o); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	h, _ := ParseHeader(good)
	rec0 := HeaderSize
	frame0 := rec0 + RecordSize
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	put32 := func(b []byte, at int, v uint32) []byte {
		b[at], b[at+1], b[at+2], b[at+3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
		return b
	}
	for _, c := range []struct {
		name  string
		delta []byte
		base  []byte
		want  error
	}{
		{"bad magic", mut(func(b []byte) []byte { b[0] = 'X'; return b }), base, ErrMalformed},
		{"truncated header", good[:10], base, ErrMalformed},
		{"truncated frame", good[:len(good)-1], base, ErrMalformed},
		{"trailing data", append(bytes.Clone(good), 0), base, ErrMalformed},
		{"huge block size", mut(func(b []byte) []byte { return put32(b, 8, 1<<30) }), base, ErrTooLarge},
		{"block size not a power of two", mut(func(b []byte) []byte { return put32(b, 8, 100000) }), base, ErrTooLarge},
		{"other base length", good, base[:len(base)-1], ErrBase},
		{"huge largest dictionary", mut(func(b []byte) []byte { return put32(b, 12, 1<<30) }), base, ErrTooLarge},
		{"huge dictionary", mut(func(b []byte) []byte { return put32(b, rec0+8, 1<<30) }), base, ErrTooLarge},
		{"dictionary past the base", mut(func(b []byte) []byte { b[rec0] = 1; return b }), base, ErrMalformed},
		{"huge frame", mut(func(b []byte) []byte { return put32(b, rec0+12, 1<<30) }), base, ErrTooLarge},
		{"frame length off", mut(func(b []byte) []byte { return put32(b, rec0+12, uint32(len(good))) }), base, ErrMalformed},
		{"skippable frame", mut(func(b []byte) []byte { b[frame0] = 0x50; b[frame0+3] = 0x18; return b }), base, ErrMalformed},
		{"dictionary id", mut(func(b []byte) []byte { b[frame0+4] |= 1; return b }), base, ErrMalformed},
		{"reserved bit", mut(func(b []byte) []byte { b[frame0+4] |= 8; return b }), base, ErrMalformed},
		{"corrupt block", mut(func(b []byte) []byte { b[frame0+20] ^= 0x55; return b }), base, ErrMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := Apply(&bytes.Buffer{}, bytes.NewReader(c.delta), bytes.NewReader(c.base), int64(len(c.base)), h.TargetLength)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	if err := Apply(&bytes.Buffer{}, bytes.NewReader(good), bytes.NewReader(base), int64(len(base)), h.TargetLength+1); !errors.Is(err, ErrMalformed) {
		t.Fatalf("another target length: %v", err)
	}
}

// TestCheckFrameWindow: a frame declaring a window or content size over
// the bounds is refused before the decoder allocates anything.
func TestCheckFrameWindow(t *testing.T) {
	// Magic, FHD (no single segment, FCS 8 bytes), window log 30, FCS.
	f := []byte{0x28, 0xb5, 0x2f, 0xfd, 0xc0, (30 - 10) << 3, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0}
	if err := CheckFrame(f, 1<<16); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("1 GiB window: %v", err)
	}
	f[5] = 0 // 1 KiB window: now the content size (2^16) is the refusal
	f[8] = 0
	f[7] = 1
	f[6] = 0
	if err := CheckFrame(f, 1<<10); !errors.Is(err, ErrMalformed) {
		t.Fatalf("content size other than the block: %v", err)
	}
	// Single segment claiming 4 GiB of content.
	g := []byte{0x28, 0xb5, 0x2f, 0xfd, 0xe0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0}
	if err := CheckFrame(g, 1<<16); !errors.Is(err, ErrMalformed) {
		t.Fatalf("4 GiB content: %v", err)
	}
}

func BenchmarkApply(b *testing.B) {
	base, target := images(16<<20, 4)
	var d bytes.Buffer
	if err := Write(&d, bytes.NewReader(base), int64(len(base)), bytes.NewReader(target), int64(len(target)), Options{}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(target)))
	b.ReportAllocs()
	for b.Loop() {
		if err := Apply(discard{}, bytes.NewReader(d.Bytes()), bytes.NewReader(base), int64(len(base)), int64(len(target))); err != nil {
			b.Fatal(err)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
