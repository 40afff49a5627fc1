// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

// t0 is the start of every test clock.
var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// testClock ticks one second per reading.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock { return &testClock{t: t0} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

func openTest(t testing.TB, dir string, mod func(*Config)) *Log {
	t.Helper()
	cfg := Config{Dir: dir, Now: newClock().Now}
	if mod != nil {
		mod(&cfg)
	}
	l, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// appendN appends n records (record i has detail n=i) and returns their
// sequence numbers.
func appendN(t testing.TB, l *Log, n int) []uint64 {
	t.Helper()
	var seqs []uint64
	for i := range n {
		seq, err := l.Append(t.Context(), KindCommandRefused, Detail{"n": fmt.Sprint(i), "reason": "bad signature"})
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	return seqs
}

func mustClose(t testing.TB, l *Log) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// segments returns the segment files of dir, oldest first.
func segments(t testing.TB, dir string) []string {
	t.Helper()
	segs, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range segs {
		names = append(names, filepath.Join(dir, s.name))
	}
	return names
}

// readFrames returns the payloads of a segment file's frames.
func readFrames(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte(segMagic)) {
		t.Fatalf("%s: no magic", path)
	}
	b = b[magicLen:]
	var out [][]byte
	for len(b) > 0 {
		n := binary.BigEndian.Uint32(b)
		out = append(out, b[frameHeader:frameHeader+n])
		b = b[frameHeader+n:]
	}
	return out
}

// writeFrames rewrites a segment file with the given payloads, each with
// a correct checksum.
func writeFrames(t testing.TB, path string, payloads [][]byte) {
	t.Helper()
	buf := []byte(segMagic)
	for _, p := range payloads {
		buf = appendFrame(buf, p)
	}
	if err := os.WriteFile(path, buf, 0o600); err != nil {
		t.Fatal(err)
	}
}

// reencode decodes a payload, changes it and encodes it again.
func reencode(t testing.TB, p []byte, change func(*wireRecord)) []byte {
	t.Helper()
	var w wireRecord
	if err := modes.Dec.Unmarshal(p, &w); err != nil {
		t.Fatal(err)
	}
	change(&w)
	out, err := modes.Enc.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAppendVerify(t *testing.T) {
	dir := t.TempDir()
	l := openTest(t, dir, nil)
	if seq, _ := l.Head(); seq != 1 {
		t.Fatalf("a new log's head is at %d, want 1 (its genesis checkpoint)", seq)
	}
	seqs := appendN(t, l, 5)
	if seqs[0] != 2 || seqs[4] != 6 {
		t.Fatalf("sequence numbers %v, want 2 to 6", seqs)
	}
	if err := l.UpdateResult(t.Context(), "refused", 7, 6, strings.Repeat("x", 1000)); err != nil {
		t.Fatalf("a helper with a long reason: %v", err)
	}
	headSeq, headHash := l.Head()
	mustClose(t, l)

	recs, rep, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != 7 || rep.First != 1 || rep.Last != 7 || !rep.FromGenesis || rep.Segments != 1 || rep.TornBytes != 0 {
		t.Errorf("report %+v", rep)
	}
	if rep.Last != headSeq || rep.Head != headHash {
		t.Errorf("report head %d %x, log head %d %x", rep.Last, rep.Head, headSeq, headHash)
	}
	if recs[0].Kind != KindCheckpoint || recs[0].Prev != ([32]byte{}) {
		t.Errorf("first record %+v, want the genesis checkpoint", recs[0])
	}
	last := recs[6]
	if last.Kind != KindUpdateRefused || last.Detail["version"] != "7" || len(last.Detail["reason"]) != helperValue {
		t.Errorf("last record %+v", last)
	}
	if !recs[2].Time.After(recs[1].Time) || recs[1].Time.Location() != time.UTC {
		t.Errorf("times %v, %v", recs[1].Time, recs[2].Time)
	}

	// Reopened, the chain goes on.
	l = openTest(t, dir, nil)
	if seq, hash := l.Head(); seq != headSeq || hash != headHash {
		t.Fatalf("reopened head %d, want %d", seq, headSeq)
	}
	if seq, err := l.Append(t.Context(), KindConsent, Detail{"stream": "location", "granted": "false"}); err != nil || seq != 8 {
		t.Fatalf("append after reopen: %d, %v", seq, err)
	}
	mustClose(t, l)
	if rep, err := Verify(dir); err != nil || rep.Records != 8 {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	if _, err := l.Append(t.Context(), KindConsent, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("append after close: %v", err)
	}
}

func TestAppendRefuses(t *testing.T) {
	l := openTest(t, t.TempDir(), nil)
	defer mustClose(t, l)
	big := Detail{}
	for i := range limits.AuditDetailEntries + 1 {
		big[fmt.Sprintf("k%d", i)] = "v"
	}
	for _, tc := range []struct {
		name   string
		kind   Kind
		detail Detail
		want   error
	}{
		{"checkpoint", KindCheckpoint, nil, ErrMalformed},
		{"empty kind", "", nil, ErrMalformed},
		{"upper-case kind", "Enrollment", nil, ErrMalformed},
		{"kind too long", Kind(strings.Repeat("a", 65)), nil, ErrMalformed},
		{"bad key", KindConsent, Detail{"Stream": "x"}, ErrMalformed},
		{"empty key", KindConsent, Detail{"": "x"}, ErrMalformed},
		{"value not UTF-8", KindConsent, Detail{"stream": "\xff"}, ErrMalformed},
		{"too many entries", KindConsent, big, ErrTooLarge},
		{"detail too large", KindConsent, Detail{"reason": strings.Repeat("x", limits.AuditDetail)}, ErrTooLarge},
	} {
		if _, err := l.Append(t.Context(), tc.kind, tc.detail); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := l.Append(ctx, KindConsent, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	if seq, _ := l.Head(); seq != 1 {
		t.Errorf("refused appends moved the head to %d", seq)
	}
	if _, err := l.Append(t.Context(), "app.custom-event", Detail{"x": ""}); err != nil {
		t.Errorf("an application kind: %v", err)
	}
}

// tamperCase builds a six-record log (records 1 to 6 in one segment),
// changes its frames, and expects a verdict.
type tamperCase struct {
	name   string
	change func(t *testing.T, frames [][]byte) [][]byte
	raw    func(b []byte) []byte // changes the file bytes instead
	head   bool                  // check against a head signed at record 6
	want   error                 // nil: the log verifies
	msg    string
}

func TestTamperDetected(t *testing.T) {
	modify := func(i int) func(*testing.T, [][]byte) [][]byte {
		return func(t *testing.T, f [][]byte) [][]byte {
			f[i] = reencode(t, f[i], func(w *wireRecord) { w.Detail["reason"] = "nothing happened" })
			return f
		}
	}
	cases := []tamperCase{
		{name: "intact", change: func(_ *testing.T, f [][]byte) [][]byte { return f }, head: true},
		{name: "record modified, checksum fixed", change: modify(2), want: ErrTampered,
			msg: "record 3 modified (its hash does not match the prev hash of record 4)"},
		{name: "record modified, checksum not fixed", raw: func(b []byte) []byte {
			i := bytes.Index(b, []byte("bad signature"))
			i = bytes.Index(b[i+1:], []byte("bad signature")) + i + 1 // record 3
			b[i] = 'B'
			return b
		}, want: ErrTampered, msg: "record 3 modified (checksum mismatch)"},
		{name: "record removed", change: func(_ *testing.T, f [][]byte) [][]byte {
			return append(f[:2:2], f[3:]...)
		}, want: ErrTampered, msg: "record 3 missing (record 4 follows record 2)"},
		{name: "records removed", change: func(_ *testing.T, f [][]byte) [][]byte {
			return append(f[:2:2], f[4:]...)
		}, want: ErrTampered, msg: "records 3 to 4 missing"},
		{name: "records reordered", change: func(_ *testing.T, f [][]byte) [][]byte {
			f[2], f[3] = f[3], f[2]
			return f
		}, want: ErrTampered, msg: "record 3 out of order (found after record 4)"},
		{name: "record duplicated", change: func(_ *testing.T, f [][]byte) [][]byte {
			return append(f[:4:4], append([][]byte{f[2]}, f[4:]...)...)
		}, want: ErrTampered, msg: "record 3 out of order or duplicated (found after record 4)"},
		{name: "genesis removed", change: func(_ *testing.T, f [][]byte) [][]byte { return f[1:] },
			want: ErrTampered, msg: "the log begins at record 2, which is not a checkpoint"},
		{name: "record not canonical", change: func(t *testing.T, f [][]byte) [][]byte {
			// The sequence number in two bytes instead of one.
			p := f[2]
			if !bytes.HasPrefix(p, []byte{0xa5, 0x01, 0x03}) {
				t.Fatalf("unexpected encoding % x", p[:3])
			}
			f[2] = append([]byte{0xa5, 0x01, 0x18, 0x03}, p[3:]...)
			return f
		}, want: ErrMalformed, msg: "record 3: not in deterministic encoding"},
		{name: "garbage inserted", raw: func(b []byte) []byte {
			i := len(b) - 40
			return append(b[:i:i], append([]byte("\x00\x01\x00\x00garbage!"), b[i:]...)...)
		}, want: ErrTampered, msg: "modified (checksum mismatch)"},
		{name: "torn tail", raw: func(b []byte) []byte { return b[:len(b)-3] }},
		{name: "zero-filled tail", raw: func(b []byte) []byte { return append(b, make([]byte, 100)...) }},
		{name: "truncated before the signed head", change: func(_ *testing.T, f [][]byte) [][]byte { return f[:4] },
			head: true, want: ErrTruncated, msg: "the log ends at record 4, before the signed head at record 6"},
		{name: "last record modified, signed head", change: modify(5), head: true, want: ErrTampered,
			msg: "record 6 modified (it does not match the head signed at"},
		{name: "truncated and regrown", change: func(t *testing.T, f [][]byte) [][]byte {
			f = f[:5]
			f[4] = reencode(t, f[4], func(w *wireRecord) { w.Detail["n"] = "forged" })
			return append(f, reencode(t, f[4], func(w *wireRecord) {
				w.Seq = 6
				h := sha256Sum(f[4])
				w.Prev = h[:]
			}))
		}, head: true, want: ErrTampered, msg: "record 6 modified (it does not match the head signed at"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openTest(t, dir, nil)
			appendN(t, l, 5)
			seq, hash := l.Head()
			mustClose(t, l)
			head := SignedHead{Device: "sensor-1", Seq: seq, Hash: hash, Time: t0}
			seg := segments(t, dir)[0]
			if tc.change != nil {
				writeFrames(t, seg, tc.change(t, readFrames(t, seg)))
			} else {
				b, _ := os.ReadFile(seg)
				if err := os.WriteFile(seg, tc.raw(b), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var heads []SignedHead
			if tc.head {
				heads = append(heads, head)
			}
			rep, err := VerifyAgainstHead(dir, heads...)
			t.Logf("report %+v, error: %v", rep, err)
			check := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, tc.want) || tc.want != nil && !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("%s: %v, want %v with %q", what, err, tc.want, tc.msg)
				}
			}
			check("Verify", err)
			if tc.want == nil {
				return
			}
			var ce *ChainError
			if !errors.As(err, &ce) || !strings.Contains(ce.Problem, fmt.Sprintf("record %d", ce.Seq)) && !strings.Contains(ce.Problem, fmt.Sprintf("records %d", ce.Seq)) {
				t.Errorf("not a ChainError naming its record: %#v", err)
			}
			// The exported form and the records say the same.
			var buf bytes.Buffer
			for _, s := range segments(t, dir) {
				b, _ := os.ReadFile(s)
				buf.Write(b)
			}
			_, err = VerifyStream(&buf, heads...)
			check("VerifyStream", err)
			if tc.want != ErrMalformed && tc.raw == nil {
				recs := decodeAll(t, readFrames(t, seg))
				_, err = CheckLog(recs, heads...)
				if tc.name != "genesis removed" { // no segments in a record list
					check("CheckLog", err)
				}
			}
			// Open refuses what Verify refuses: it never rewrites evidence.
			if tc.want != ErrTruncated && !tc.head {
				if _, err := Open(Config{Dir: dir}); !errors.Is(err, tc.want) {
					t.Errorf("Open: %v, want %v", err, tc.want)
				}
			}
		})
	}
}

func sha256Sum(p []byte) [32]byte {
	r, err := decodeRecord(p)
	if err != nil {
		panic(err)
	}
	return r.Hash
}

// decodeAll decodes payloads, skipping the undecodable.
func decodeAll(t testing.TB, frames [][]byte) []Record {
	var recs []Record
	for _, p := range frames {
		if r, err := decodeRecord(p); err == nil {
			recs = append(recs, r)
		}
	}
	return recs
}

func TestOpenDropsTornTail(t *testing.T) {
	for _, tc := range []struct {
		name string
		tail []byte
	}{
		{"partial header", []byte{0, 0}},
		{"partial frame", appendFrame(nil, []byte("0123456789"))[:12]},
		{"checksum fails at the end", func() []byte { f := appendFrame(nil, []byte("xyz")); f[9] ^= 1; return f }()},
		{"zero bytes", make([]byte, 300)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openTest(t, dir, nil)
			appendN(t, l, 3)
			mustClose(t, l)
			seg := segments(t, dir)[0]
			before, _ := os.ReadFile(seg)
			if err := os.WriteFile(seg, append(append([]byte{}, before...), tc.tail...), 0o600); err != nil {
				t.Fatal(err)
			}
			if rep, err := Verify(dir); err != nil || rep.TornBytes != int64(len(tc.tail)) || rep.Records != 4 {
				t.Fatalf("verify with a torn tail: %+v, %v", rep, err)
			}
			l = openTest(t, dir, nil)
			if after, _ := os.ReadFile(seg); !bytes.Equal(after, before) {
				t.Fatalf("open did not cut the torn tail: %d bytes, want %d", len(after), len(before))
			}
			appendN(t, l, 1)
			mustClose(t, l)
			if rep, err := Verify(dir); err != nil || rep.Records != 5 || rep.TornBytes != 0 {
				t.Fatalf("after append: %+v, %v", rep, err)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	cfg := func(c *Config) { c.SegmentBytes, c.MaxBytes = 1024, 4096 }
	l := openTest(t, dir, cfg)
	appendN(t, l, 100)
	seq, hash := l.Head()
	mustClose(t, l)
	segs := segments(t, dir)
	if len(segs) < 3 || len(segs) > 5 {
		t.Fatalf("%d segments, want 3 to 5 (MaxBytes: 4 segments)", len(segs))
	}
	var total int64
	for _, s := range segs {
		st, _ := os.Stat(s)
		total += st.Size()
	}
	if total > 4096+1024+limits.AuditRecord {
		t.Errorf("%d bytes of segments, above MaxBytes plus a segment", total)
	}
	recs, rep, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.FromGenesis || rep.Last != seq || rep.Head != hash || rep.Segments != len(segs) {
		t.Errorf("report %+v, head %d", rep, seq)
	}
	checkpoints := 0
	for _, r := range recs {
		if r.Kind == KindCheckpoint {
			checkpoints++
		}
	}
	if checkpoints != len(segs) || recs[0].Kind != KindCheckpoint {
		t.Errorf("%d checkpoints in %d segments", checkpoints, len(segs))
	}
	// A head older than the oldest record kept cannot be checked.
	rep, err = VerifyAgainstHead(dir, SignedHead{Seq: 2, Hash: [32]byte{1}}, SignedHead{Seq: seq, Hash: hash})
	if err != nil || rep.HeadsCompacted != 1 || rep.HeadsChecked != 1 {
		t.Errorf("compacted head: %+v, %v", rep, err)
	}

	// Segment-level tampering.
	for _, tc := range []struct {
		name   string
		change func(segs []string)
		want   error
		msg    string
	}{
		{"segment removed", func(s []string) { os.Remove(s[1]) }, ErrTampered, "missing"},
		{"segment emptied", func(s []string) { os.WriteFile(s[1], []byte(segMagic), 0o600) }, ErrTampered, "holds no record"},
		{"segment truncated", func(s []string) {
			b, _ := os.ReadFile(s[1])
			os.WriteFile(s[1], b[:len(b)-5], 0o600)
		}, ErrTampered, "(truncated or corrupt)"},
		{"segment renamed", func(s []string) {
			os.Rename(s[len(s)-1], filepath.Join(filepath.Dir(s[0]), segName(1<<40)))
		}, ErrTampered, "begins with record"},
		{"checkpoint removed", func(s []string) {
			f := readFrames(t, s[1])
			writeFrames(t, s[1], f[1:])
		}, ErrTampered, "missing"},
		{"not a segment", func(s []string) { os.WriteFile(s[1], []byte("hello, world"), 0o600) }, ErrMalformed, "not an audit log segment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			for _, s := range segs {
				b, _ := os.ReadFile(s)
				os.WriteFile(filepath.Join(d, filepath.Base(s)), b, 0o600)
			}
			tc.change(segments(t, d))
			if _, err := Verify(d); !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("%v, want %v with %q", err, tc.want, tc.msg)
			}
		})
	}
}

func TestConcurrentAppend(t *testing.T) {
	dir := t.TempDir()
	l := openTest(t, dir, func(c *Config) { c.SegmentBytes = 2048 })
	var wg sync.WaitGroup
	seen := make(chan uint64, 200)
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 {
				seq, err := l.Append(t.Context(), KindMessageRefused, Detail{"g": fmt.Sprint(g), "i": fmt.Sprint(i)})
				if err != nil {
					t.Error(err)
					return
				}
				seen <- seq
			}
		})
	}
	wg.Wait()
	close(seen)
	got := map[uint64]bool{}
	for s := range seen {
		if got[s] {
			t.Fatalf("sequence number %d given twice", s)
		}
		got[s] = true
	}
	mustClose(t, l)
	if rep, err := Verify(dir); err != nil || rep.Last != 161+uint64(rep.Segments-1) {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
}

func TestExportVerifyStream(t *testing.T) {
	dir := t.TempDir()
	l := openTest(t, dir, func(c *Config) { c.SegmentBytes, c.MaxBytes = 1024, 1<<20 })
	appendN(t, l, 40)
	var buf bytes.Buffer
	if _, err := l.Export(t.Context(), &buf); err != nil {
		t.Fatal(err)
	}
	seq, hash := l.Head()
	mustClose(t, l)
	want, err := Verify(dir)
	if err != nil {
		t.Fatal(err)
	}
	exported := buf.Bytes()
	got, err := VerifyStream(bytes.NewReader(exported), SignedHead{Seq: seq, Hash: hash})
	if err != nil {
		t.Fatal(err)
	}
	want.HeadsChecked = 1
	if got != want {
		t.Errorf("stream report %+v, directory report %+v", got, want)
	}
	// A segment header dropped: its records run into the previous segment.
	i := bytes.LastIndex(exported, []byte(segMagic))
	cut := append(append([]byte{}, exported[:i]...), exported[i+magicLen:]...)
	if _, err := VerifyStream(bytes.NewReader(cut)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "checkpoint inside a segment") {
		t.Errorf("merged segments: %v", err)
	}
	if _, err := VerifyStream(strings.NewReader("not a log")); !errors.Is(err, ErrMalformed) {
		t.Errorf("not a log: %v", err)
	}
	if rep, err := VerifyStream(strings.NewReader("")); err != nil || rep.Records != 0 {
		t.Errorf("empty stream: %+v, %v", rep, err)
	}
}

func TestCheckLog(t *testing.T) {
	dir := t.TempDir()
	l := openTest(t, dir, nil)
	appendN(t, l, 6)
	seq, hash := l.Head()
	mustClose(t, l)
	recs, _, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	head := SignedHead{Seq: seq, Hash: hash}
	if _, err := CheckLog(recs, head); err != nil {
		t.Fatal(err)
	}
	changed := append([]Record{}, recs...)
	changed[3].Detail = Detail{"n": "2", "reason": "fine"}
	if _, err := CheckLog(changed, head); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "record 4 modified") {
		t.Errorf("changed detail: %v", err)
	}
	changed[3].Hash = [32]byte{} // recomputed: the next prev no longer matches
	if _, err := CheckLog(changed, head); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "record 4 modified") {
		t.Errorf("changed detail, no hash: %v", err)
	}
	if _, err := CheckLog(recs[:5], head); !errors.Is(err, ErrTruncated) {
		t.Errorf("truncated: %v", err)
	}
	if _, err := CheckLog(nil, head); !errors.Is(err, ErrTruncated) {
		t.Errorf("empty: %v", err)
	}
}

func TestOpenLocked(t *testing.T) {
	defer func(d time.Duration) { lockWait = d }(lockWait)
	lockWait = 50 * time.Millisecond
	dir := t.TempDir()
	l := openTest(t, dir, nil)
	if _, err := Open(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second open: %v", err)
	}
	mustClose(t, l)
	mustClose(t, openTest(t, dir, nil))
}

func TestConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Dir: "x", SegmentBytes: -1},
		{Dir: "x", SegmentBytes: limits.AuditSegmentMax + 1},
		{Dir: "x", SegmentBytes: 1024, MaxBytes: 1500},
		{Dir: "x", MaxBytes: limits.AuditLogMax + 1},
		{Dir: "x", SegmentBytes: 1, MaxBytes: 1 << 20},
	} {
		if _, err := Open(cfg); err == nil {
			t.Errorf("Open(%+v) accepted", cfg)
		}
	}
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// flakyFS fails the next fsync of a file when failSync is set.
type flakyFS struct {
	atomicfile.OS
	mu       sync.Mutex
	failSync bool
}

type flakyFile struct {
	atomicfile.File
	fs *flakyFS
}

func (f *flakyFS) OpenFile(name string, flag int, perm fs.FileMode) (atomicfile.File, error) {
	file, err := f.OS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &flakyFile{File: file, fs: f}, nil
}

func (f *flakyFile) Sync() error {
	f.fs.mu.Lock()
	fail := f.fs.failSync
	f.fs.failSync = false
	f.fs.mu.Unlock()
	if fail {
		return errors.New("flaky: I/O error")
	}
	return f.File.Sync()
}

// TestWriteFailure: after a failed fsync the log reloads from disk before
// the next append, and the chain stays whole.
func TestWriteFailure(t *testing.T) {
	dir := t.TempDir()
	fsys := &flakyFS{}
	l := openTest(t, dir, func(c *Config) { c.fs = fsys })
	appendN(t, l, 2)
	fsys.failSync = true
	if _, err := l.Append(t.Context(), KindConsent, Detail{"stream": "x"}); err == nil || !strings.Contains(err.Error(), "flaky") {
		t.Fatalf("append with a failing fsync: %v", err)
	}
	// The record reached the file although its fsync failed: it is kept,
	// chained, and the next append follows it.
	seq, err := l.Append(t.Context(), KindConsent, Detail{"stream": "y"})
	if err != nil || seq != 5 {
		t.Fatalf("append after the failure: %d, %v", seq, err)
	}
	mustClose(t, l)
	if rep, err := Verify(dir); err != nil || rep.Last != 5 {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
}
