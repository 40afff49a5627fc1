// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/d2c-iot/d2c/internal/atomicfile/crashfs"
)

// TestCrashAtEveryStep cuts the power at every file-system operation of
// an append, of an append that rotates (and deletes old segments), of the
// creation of a log, and of the open that cuts a torn tail. After each
// crash the log opens, verifies, holds every record whose Append
// returned, unchanged, and takes new records.
func TestCrashAtEveryStep(t *testing.T) {
	small := func(c *Config) { c.SegmentBytes, c.MaxBytes = 512, 1024 }
	type scenario struct {
		name  string
		cfg   func(*Config)
		setup func(t *testing.T, dir string) // the state before the step
		step  func(l *Log) int               // returns the appends acknowledged; nil: the step is Open itself
	}
	// appendTwo appends two records: a crash may hit the second after the
	// first was acknowledged.
	appendTwo := func(l *Log) int {
		for i := range 2 {
			if _, err := l.Append(t.Context(), KindUpdateConfirm, Detail{"version": "7"}); err != nil {
				return i
			}
		}
		return 2
	}
	scenarios := []scenario{
		{name: "append", setup: func(t *testing.T, dir string) {
			l := openTest(t, dir, nil)
			appendN(t, l, 3)
			mustClose(t, l)
		}, step: appendTwo},
		{name: "append with rotation", cfg: small, setup: func(t *testing.T, dir string) {
			l := openTest(t, dir, small)
			// Fill until the next append rotates, with a segment to delete.
			for {
				appendN(t, l, 1)
				act := l.segs[len(l.segs)-1]
				p, err := encodeRecord(1<<20, t0, KindUpdateConfirm, Detail{"version": "7"}, [32]byte{})
				if err != nil {
					t.Fatal(err)
				}
				next := act.size + int64(frameHeader+len(p))
				if len(l.segs) >= 2 && act.records > 1 && next > 512 && l.total+next-act.size > 1024 {
					break
				}
			}
			mustClose(t, l)
		}, step: appendTwo},
		{name: "create", setup: func(*testing.T, string) {}},
		{name: "open with a torn tail", setup: func(t *testing.T, dir string) {
			l := openTest(t, dir, nil)
			appendN(t, l, 3)
			mustClose(t, l)
			seg := segments(t, dir)[0]
			f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write(appendFrame(nil, []byte("a record cut short"))[:15])
			f.Close()
		}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			base := filepath.Join(t.TempDir(), "base")
			if err := os.MkdirAll(base, 0o700); err != nil {
				t.Fatal(err)
			}
			sc.setup(t, base)
			before, _, err := ReadDir(base)
			if err != nil && len(segments(t, base)) > 0 {
				t.Fatal(err)
			}
			// run performs the step on a copy of base with crashfs failing
			// at operation failAt (0: never) and reports the operations
			// counted before the step, all operations, and whether the
			// step returned nil.
			run := func(dir string, failAt int) (opsBefore, ops, acked int) {
				crashfs.CopyDir(t, base, dir)
				fsys := &crashfs.FS{FailAt: failAt}
				cfg := Config{Dir: dir, Now: newClock().Now, fs: fsys}
				if sc.cfg != nil {
					sc.cfg(&cfg)
				}
				l, err := Open(cfg)
				if sc.step == nil {
					if err != nil {
						return 0, fsys.Ops(), 0
					}
					l.Close()
					return 0, fsys.Ops(), 1
				}
				if err != nil {
					t.Fatalf("open before the step: %v", err)
				}
				opsBefore = fsys.Ops()
				acked = sc.step(l)
				ops = fsys.Ops()
				l.Close()
				return opsBefore, ops, acked
			}
			opsBefore, ops, acked := run(filepath.Join(t.TempDir(), "count"), 0)
			if acked == 0 || sc.step != nil && acked != 2 {
				t.Fatal("the step fails without a crash")
			}
			if sc.name == "append with rotation" {
				d := filepath.Join(t.TempDir(), "check")
				run(d, 0)
				if got := segments(t, d); filepath.Base(got[0]) == filepath.Base(segments(t, base)[0]) {
					t.Fatal("the rotation deleted no segment")
				}
			}
			t.Logf("%d operations in the step", ops-opsBefore)
			for i := opsBefore + 1; i <= ops; i++ {
				dir := filepath.Join(t.TempDir(), "crash")
				_, _, acked := run(dir, i)
				if acked == 2 {
					t.Fatalf("crash at operation %d: no crash", i)
				}
				// The log as the power cut left it verifies.
				if _, err := Verify(dir); err != nil {
					t.Fatalf("crash at operation %d: verify before reopening: %v", i, err)
				}
				// Power back on.
				l, err := Open(Config{Dir: dir, Now: newClock().Now})
				if err != nil {
					t.Fatalf("crash at operation %d: open: %v", i, err)
				}
				appendN(t, l, 1)
				mustClose(t, l)
				after, rep, err := ReadDir(dir)
				if err != nil {
					t.Fatalf("crash at operation %d: verify: %v", i, err)
				}
				// Every record kept must still be there, unchanged: those
				// before the step (less any compacted away), then the
				// step's record if its Append returned.
				first := rep.First
				var kept []Record
				for _, r := range before {
					if r.Seq >= first {
						kept = append(kept, r)
					}
				}
				if len(after) < len(kept) {
					t.Fatalf("crash at operation %d: %d records, want at least %d", i, len(after), len(kept))
				}
				for j, r := range kept {
					if a := after[j]; a.Hash != r.Hash {
						t.Fatalf("crash at operation %d: record %d changed", i, r.Seq)
					}
				}
				found := 0
				for _, r := range after[len(kept):] {
					if r.Kind == KindUpdateConfirm {
						found++
					}
				}
				if sc.step != nil && found < acked || found > 2 {
					t.Fatalf("crash at operation %d: %d of the step's records found, %d acknowledged", i, found, acked)
				}
				if n := len(before); n > 0 && first > before[0].Seq && sc.name != "append with rotation" {
					t.Fatalf("crash at operation %d: records compacted away", i)
				}
				if n := len(before); n > 0 && !bytes.Equal(after[len(kept)-1].Hash[:], before[n-1].Hash[:]) {
					t.Fatalf("crash at operation %d: the last record before the step changed", i)
				}
			}
		})
	}
}
