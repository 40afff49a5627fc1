// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package delta

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/d2c-iot/d2c/internal/fuzzcorpus"
)

var updateSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite testdata/fuzz/FuzzApply")

// fuzzBase is the base every FuzzApply input is applied to.
func fuzzBase() []byte { b, _ := images(200<<10, 5); return b }

// fuzzSeeds are deltas from fuzzBase: a good one and some damaged.
func fuzzSeeds(t testing.TB) map[string][]byte {
	base := fuzzBase()
	_, target := images(200<<10, 5)
	var d bytes.Buffer
	if err := Write(&d, bytes.NewReader(base), int64(len(base)), bytes.NewReader(target), int64(len(target)), Options{BlockSize: 64 << 10, Reach: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	good := d.Bytes()
	cut := bytes.Clone(good[:HeaderSize+RecordSize+8])
	flip := bytes.Clone(good)
	flip[HeaderSize+RecordSize+12] ^= 1
	var empty bytes.Buffer
	if err := Write(&empty, bytes.NewReader(base), int64(len(base)), bytes.NewReader(nil), 0, Options{BlockSize: 64 << 10, Reach: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{"good": good, "cut": cut, "flip": flip, "empty-target": empty.Bytes(), "header-only": good[:HeaderSize]}
}

// FuzzApply: Apply never panics, and whatever it accepts builds exactly
// the target length its header names.
func FuzzApply(f *testing.F) {
	base := fuzzBase()
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, d []byte) {
		h, err := ParseHeader(d)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := Apply(&out, bytes.NewReader(d), bytes.NewReader(base), int64(len(base)), h.TargetLength); err == nil && int64(out.Len()) != h.TargetLength {
			t.Fatalf("accepted a delta that builds %d bytes, header says %d", out.Len(), h.TargetLength)
		}
	})
}

// TestFuzzCorpusPresent checks the committed seed corpus (and rewrites it
// with -update-fuzz-seeds).
func TestFuzzCorpusPresent(t *testing.T) {
	if *updateSeeds {
		dir := filepath.Join("testdata", "fuzz", "FuzzApply")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, s := range fuzzSeeds(t) {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	fuzzcorpus.Check(t, ".")
}
