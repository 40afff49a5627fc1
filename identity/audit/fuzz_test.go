// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/d2c-iot/d2c/internal/fuzzcorpus"
)

// The fuzz targets run over the committed corpus in testdata/fuzz
// (regenerated, with the test vector, by go test -run TestVector -update).
// Run them with:
//
//	go test ./identity/audit/ -run '^$' -fuzz '^FuzzVerifyStream$' -fuzztime 20s
//	go test ./identity/audit/ -run '^$' -fuzz '^FuzzDecodeRecord$' -fuzztime 20s

var update = flag.Bool("update", false, "rewrite the test vector and the fuzz corpus")

// vectorFile is an exported log written by buildVector: its bytes and its
// head are the format's test vector.
const (
	vectorFile = "testdata/log-v1.bin"
	vectorHead = "39a383e0274af3aae220bb07f65640fc663dad464aaf0cb449d50d5b119cbb19"
	vectorLast = 13
)

// buildVector writes a log with a fixed clock and small segments (three
// rotations) and returns its export.
func buildVector(t testing.TB) []byte {
	t.Helper()
	dir := t.TempDir()
	l := openTest(t, dir, func(c *Config) { c.SegmentBytes, c.MaxBytes = 400, 1<<20 })
	defer mustClose(t, l)
	ctx := t.Context()
	steps := []struct {
		kind Kind
		d    Detail
	}{
		{KindEnrollment, Detail{"device": "sensor-1", "serial": "1f", "not_after": "2027-11-01T12:00:00Z"}},
		{KindAttestation, Detail{"token_sha256": hex.EncodeToString(make([]byte, 32))}},
		{KindUpdateInstall, Detail{"event": "installed", "version": "7", "from": "6"}},
		{KindUpdateConfirm, Detail{"event": "confirmed", "version": "7", "from": "6"}},
		{KindUpdateRefused, Detail{"event": "refused", "version": "5", "from": "7", "reason": "rollback"}},
		{KindCommandRefused, Detail{"command": "reboot", "reason": "expired"}},
		{KindMessageRefused, Detail{"topic": "d2c/v1/dev/sensor-1/up/t/temp", "reason": "not authorized"}},
		{KindConsent, Detail{"stream": "location", "granted": "false"}},
		{KindDecommission, nil},
	}
	for _, s := range steps {
		if _, err := l.Append(ctx, s.kind, s.d); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := l.Export(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestVector checks that the writer still writes the committed vector
// byte for byte, and that it verifies to its head.
func TestVector(t *testing.T) {
	built := buildVector(t)
	if *update {
		if err := os.WriteFile(vectorFile, built, 0o644); err != nil {
			t.Fatal(err)
		}
		writeCorpus(t, built)
	}
	b, err := os.ReadFile(vectorFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, built) {
		t.Errorf("the writer no longer writes %s (run with -update only if the format is meant to change)", vectorFile)
	}
	rep, err := VerifyStream(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(rep.Head[:]); got != vectorHead || rep.Last != vectorLast || !rep.FromGenesis || rep.Segments != 4 {
		t.Errorf("vector: head %s at %d, %d segments; want %s at %d, 4 segments", got, rep.Last, rep.Segments, vectorHead, vectorLast)
	}
}

// writeCorpus writes the seed corpus from the vector.
func writeCorpus(t *testing.T, vector []byte) {
	t.Helper()
	torn := vector[:len(vector)-5]
	tampered := bytes.Clone(vector)
	tampered[len(tampered)/2] ^= 0x20
	recs := vector[magicLen+frameHeader : magicLen+frameHeader+60]
	seeds := map[string]map[string][]byte{
		"FuzzVerifyStream": {"valid": vector, "torn": torn, "tampered": tampered, "empty": nil},
		"FuzzDecodeRecord": {},
	}
	frames := readFramesBytes(vector)
	for i, p := range frames[:4] {
		seeds["FuzzDecodeRecord"][fmt.Sprintf("record-%d", i)] = p
	}
	seeds["FuzzDecodeRecord"]["prefix"] = recs
	for target, files := range seeds {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range files {
			content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// readFramesBytes splits an export into record payloads.
func readFramesBytes(b []byte) [][]byte {
	var out [][]byte
	sc := newScanner(bytes.NewReader(b))
	for {
		k, p, _, _, err := sc.next()
		if err != nil || k == frameEOF || k == frameTorn || k == frameBad {
			return out
		}
		if k == frameRecord {
			out = append(out, bytes.Clone(p))
		}
	}
}

func TestFuzzCorpus(t *testing.T) {
	fuzzcorpus.Check(t, ".")
}

// FuzzVerifyStream: any input is refused with a sentinel or verifies; a
// log that verifies is rebuilt from its decoded records to the same head.
func FuzzVerifyStream(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		c := newChain(true, nil)
		var recs []Record
		err := walkStream(bytes.NewReader(data), c, func(r Record) { recs = append(recs, r) })
		var rep Report
		if err == nil {
			rep, err = c.finish()
		}
		if err != nil {
			if !errors.Is(err, ErrTampered) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if len(recs) != rep.Records {
			t.Fatalf("%d records passed, report says %d", len(recs), rep.Records)
		}
		var rebuilt []byte
		for _, r := range recs {
			if r.Kind == KindCheckpoint {
				rebuilt = append(rebuilt, segMagic...)
			}
			p, err := r.encode()
			if err != nil {
				t.Fatal(err)
			}
			rebuilt = appendFrame(rebuilt, p)
		}
		again, err := VerifyStream(bytes.NewReader(rebuilt))
		if err != nil || again.Head != rep.Head || again.Records != rep.Records {
			t.Fatalf("rebuilt log: %+v, %v; original %+v", again, err, rep)
		}
		if _, err := CheckLog(recs); err != nil {
			t.Fatalf("CheckLog of records that verified: %v", err)
		}
	})
}

// FuzzDecodeRecord: a record that decodes encodes back to the same bytes,
// and its hash is theirs.
func FuzzDecodeRecord(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := decodeRecord(p)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		q, err := r.encode()
		if err != nil || !bytes.Equal(p, q) {
			t.Fatalf("re-encoded %x, %v; decoded from %x", q, err, p)
		}
		if r.Hash != sha256.Sum256(p) {
			t.Fatal("hash is not the SHA-256 of the encoding")
		}
	})
}
