// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package outbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/atomicfile/crashfs"
	"github.com/d2c-iot/d2c/internal/cborx"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/transport/wire"
)

var obUpdateSeeds = flag.Bool("update-outbox-seeds", false, "rewrite testdata/fuzz/FuzzOutboxSegment")

// obEpoch is the fixed time of the outbox tests.
var obEpoch = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

type obClock struct {
	mu sync.Mutex
	t  time.Time
}

func newOBClock() *obClock { return &obClock{t: obEpoch} }

func (c *obClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *obClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func obOpen(t testing.TB, cfg Config) *Outbox {
	t.Helper()
	o, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return o
}

func obClose(t testing.TB, o *Outbox) {
	t.Helper()
	if err := o.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func obMsg(stream, body string, prio uint8) Message {
	topic := "d2c/v1/dev/dev-1/up/key"
	if stream != "" {
		topic = wire.TelemetryTopic("dev-1", stream)
	}
	return Message{Topic: topic, Payload: []byte(body), Priority: prio, Stream: stream}
}

func obAppend(t testing.TB, o *Outbox, msgs ...Message) []uint64 {
	t.Helper()
	ids, err := o.Append(t.Context(), msgs...)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	if len(ids) != len(msgs) {
		t.Fatalf("Append returned %d IDs for %d messages", len(ids), len(msgs))
	}
	return ids
}

// obAll returns every deliverable message.
func obAll(o *Outbox) []Message { return o.Next(1<<30, nil) }

func obBodies(msgs []Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, string(m.Payload))
	}
	return out
}

func obSame(a, b Message) bool {
	return a.ID == b.ID && a.Topic == b.Topic && bytes.Equal(a.Payload, b.Payload) &&
		a.Priority == b.Priority && a.Expires.Equal(b.Expires) && a.Stream == b.Stream && a.Boot == b.Boot && a.Seq == b.Seq
}

func obIDs(msgs []Message) []uint64 {
	var ids []uint64
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	return ids
}

func TestOutboxRoundTrip(t *testing.T) {
	dir := t.TempDir()
	clock := newOBClock()
	cfg := Config{Dir: dir, Now: clock.Now}
	o := obOpen(t, cfg)
	in := []Message{
		obMsg("temp", "one", 0),
		{Topic: wire.TelemetryTopic("dev-1", "temp"), Payload: nil, Stream: "temp", Expires: obEpoch.Add(time.Hour)},
		{Topic: "d2c/v1/dev/dev-1/up/cmdres", Payload: bytes.Repeat([]byte{0, 0xff}, 1000), Priority: 3},
	}
	ids := obAppend(t, o, in...)
	for i := range in {
		in[i].ID = ids[i]
	}
	if !(ids[0] < ids[1] && ids[1] < ids[2]) {
		t.Fatalf("IDs not increasing: %v", ids)
	}
	got := obAll(o)
	want := []Message{in[2], in[0], in[1]} // priority 3 first, then by ID
	if len(got) != len(want) {
		t.Fatalf("Next: %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if !obSame(got[i], want[i]) {
			t.Fatalf("Next[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	// Next does not remove: the same messages come again until acked.
	if again := obAll(o); len(again) != 3 {
		t.Fatalf("second Next: %d messages", len(again))
	}
	if err := o.Ack(ids[2]); err != nil {
		t.Fatal(err)
	}
	if err := o.Ack(ids[2], 999); err != nil { // already acked, unknown: ignored
		t.Fatal(err)
	}
	if st := o.Stats(); st.Len != 2 || st.Acked != 1 || st.Appended != 3 ||
		st.Bytes != int64(len(in[0].Topic)+3+len(in[1].Topic)) {
		t.Fatalf("stats %+v", st)
	}
	obClose(t, o)

	o = obOpen(t, cfg)
	defer obClose(t, o)
	got = obAll(o)
	if len(got) != 2 || !obSame(got[0], in[0]) || !obSame(got[1], in[1]) {
		t.Fatalf("after reopen: %+v", got)
	}
	next := obAppend(t, o, obMsg("temp", "four", 0))
	if next[0] <= ids[2] {
		t.Fatalf("ID %d after reopen does not exceed %d", next[0], ids[2])
	}
}

// ExampleOpenOutbox shows both halves: Publish appends durably; the
// delivery loop takes messages by priority and removes each after its
// PUBACK.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "outbox")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	o, err := Open(Config{Dir: filepath.Join(dir, "outbox")})
	if err != nil {
		panic(err)
	}
	defer o.Close()
	ctx := context.Background()
	// On disk (fsynced) when Append returns.
	if _, err := o.Append(ctx, Message{Topic: wire.TelemetryTopic("dev-1", "temp"), Payload: []byte("21.5"), Stream: "temp"}); err != nil {
		panic(err)
	}
	if _, err := o.Append(ctx, Message{Topic: wire.TelemetryTopic("dev-1", "alarm"), Payload: []byte("door open"), Priority: 9,
		Stream: "alarm", Expires: time.Now().Add(time.Hour)}); err != nil {
		panic(err)
	}
	for _, m := range o.Next(16, nil) {
		fmt.Printf("%s %s\n", m.Topic, m.Payload) // publish at QoS 1, then on PUBACK success:
		if err := o.Ack(m.ID); err != nil {
			panic(err)
		}
	}
	fmt.Println(o.Stats().Len, "left")
	// Output:
	// d2c/v1/dev/dev-1/up/tele/alarm door open
	// d2c/v1/dev/dev-1/up/tele/temp 21.5
	// 0 left
}

func TestOutboxPriorityFIFO(t *testing.T) {
	o := obOpen(t, Config{Dir: t.TempDir()})
	defer obClose(t, o)
	obAppend(t, o, obMsg("s", "low-1", 1), obMsg("s", "high-1", 5))
	obAppend(t, o, obMsg("s", "low-2", 1))
	obAppend(t, o, obMsg("s", "zero", 0), obMsg("s", "high-2", 5), obMsg("s", "top", 255))
	want := []string{"top", "high-1", "high-2", "low-1", "low-2", "zero"}
	if got := obBodies(obAll(o)); !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	// max bounds the batch; exclude skips messages in flight.
	first := o.Next(2, nil)
	if got := obBodies(first); !slices.Equal(got, want[:2]) {
		t.Fatalf("Next(2) = %v", got)
	}
	inflight := map[uint64]bool{first[0].ID: true, first[1].ID: true}
	if got := obBodies(o.Next(3, func(id uint64) bool { return inflight[id] })); !slices.Equal(got, want[2:5]) {
		t.Fatalf("Next excluding in-flight = %v, want %v", got, want[2:5])
	}
	// Acking the head of a priority lets the next one through, FIFO.
	if err := o.Ack(first[1].ID); err != nil {
		t.Fatal(err)
	}
	if got := obBodies(o.Next(2, nil)); !slices.Equal(got, []string{"top", "high-2"}) {
		t.Fatalf("after ack: %v", got)
	}
}

// TestOutboxRemovalsAcrossReopen: IDs keep increasing across restarts,
// also once every segment was deleted, and acked, dropped and purged
// messages never come back.
func TestOutboxRemovalsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: 256}
	var last uint64
	for round := range 4 {
		o := obOpen(t, cfg)
		if n := o.Stats().Len; n != 2*round {
			t.Fatalf("round %d: %d messages stored, want %d", round, n, 2*round)
		}
		for _, m := range obAll(o) {
			if !strings.HasPrefix(string(m.Payload), "keep-") {
				t.Fatalf("round %d: removed message %q came back", round, m.Payload)
			}
		}
		ids := obAppend(t, o, obMsg("a", fmt.Sprintf("ack-%d", round), 0), obMsg("b", fmt.Sprintf("purge-%d", round), 0))
		ids = append(ids, obAppend(t, o, obMsg("c", fmt.Sprintf("drop-%d", round), 0))...)
		ids = append(ids, obAppend(t, o, obMsg("d", fmt.Sprintf("keep-%d-a", round), 0), obMsg("d", fmt.Sprintf("keep-%d-b", round), 0))...)
		for _, id := range ids {
			if id <= last {
				t.Fatalf("round %d: ID %d does not exceed %d", round, id, last)
			}
			last = id
		}
		if err := o.Ack(ids[0]); err != nil {
			t.Fatal(err)
		}
		if err := o.Drop(ids[2], "PUBACK 0x87 not authorized"); err != nil {
			t.Fatal(err)
		}
		if n, err := o.PurgeStream("b"); err != nil || n != 1 {
			t.Fatalf("PurgeStream: %d, %v", n, err)
		}
		st := o.Stats()
		if st.Acked != 1 || st.Dropped != 1 || st.Purged != 1 || st.Appended != 5 {
			t.Fatalf("round %d: stats %+v", round, st)
		}
		obClose(t, o)
	}
	// Everything acked, the acks log compacted down to nothing: the
	// segment with the highest ID stays, so the IDs still continue.
	cfg.ackSlack = -1 // compact as soon as the log holds an ID of a deleted segment
	o := obOpen(t, cfg)
	all := obAll(o)
	if err := o.Ack(obIDs(all)...); err != nil {
		t.Fatal(err)
	}
	o.waitIdle()
	obClose(t, o)
	if o.did.compacted == 0 || o.ackIDs != o.removedIn || o.removedIn > 2 {
		t.Fatalf("acks log not compacted: %d IDs for %d removed records on disk (%+v)", o.ackIDs, o.removedIn, o.did)
	}
	o = obOpen(t, cfg)
	defer obClose(t, o)
	if n := o.Stats().Len; n != 0 {
		t.Fatalf("%d messages after acking all", n)
	}
	if id := obAppend(t, o, obMsg("a", "after", 0))[0]; id <= last {
		t.Fatalf("ID %d after acking everything does not exceed %d", id, last)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	if len(segs) > 3 {
		t.Fatalf("%d segments left for 1 message: %v", len(segs), segs)
	}
}

// TestOutboxFilesPrivate: directory 0700, every file 0600.
func TestOutboxFilesPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ob")
	o := obOpen(t, Config{Dir: dir, SegmentBytes: 128})
	ids := obAppend(t, o, obMsg("a", "x", 0))
	obAppend(t, o, obMsg("a", "y", 0))
	o.Ack(ids...)
	obAppend(t, o, obMsg("a", "z", 0))
	obClose(t, o)
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %v, %v", st.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", e.Name(), info.Mode())
		}
	}
}

func TestOutboxLocked(t *testing.T) {
	defer func(d time.Duration) { outboxLockWait = d }(outboxLockWait)
	outboxLockWait = 100 * time.Millisecond
	dir := t.TempDir()
	o := obOpen(t, Config{Dir: dir})
	if _, err := Open(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open of the same directory: %v", err)
	}
	obClose(t, o)
	time.Sleep(50 * time.Millisecond) // the abandoned waiter takes and drops the lock
	obClose(t, obOpen(t, Config{Dir: dir}))
}

func TestOutboxWait(t *testing.T) {
	o := obOpen(t, Config{Dir: t.TempDir()})
	ch := o.Wait()
	select {
	case <-ch:
		t.Fatal("Wait channel closed before any append")
	default:
	}
	obAppend(t, o, obMsg("a", "x", 0))
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait channel not closed by an append")
	}
	ch = o.Wait()
	obClose(t, o)
	<-ch // closing wakes waiters
	if _, err := o.Append(t.Context(), obMsg("a", "y", 0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if err := o.Ack(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ack after Close: %v", err)
	}
}

func TestOutboxFull(t *testing.T) {
	dir := t.TempDir()
	o := obOpen(t, Config{Dir: dir, MaxMessages: 3, MaxBytes: 1 << 20})
	ids := obAppend(t, o, obMsg("a", "1", 0), obMsg("a", "2", 0))
	if _, err := o.Append(t.Context(), obMsg("a", "3", 0), obMsg("a", "4", 0)); !errors.Is(err, ErrFull) {
		t.Fatalf("over MaxMessages: %v", err)
	}
	if got := obBodies(obAll(o)); !slices.Equal(got, []string{"1", "2"}) {
		t.Fatalf("a refused call stored something: %v", got)
	}
	obAppend(t, o, obMsg("a", "3", 0))
	o.Ack(ids[0])
	obAppend(t, o, obMsg("a", "4", 0)) // room again
	obClose(t, o)

	small := int64(3 * (len(wire.TelemetryTopic("dev-1", "a")) + 1))
	o = obOpen(t, Config{Dir: dir, MaxBytes: small + 2*300})
	defer obClose(t, o)
	if got := obBodies(obAll(o)); !slices.Equal(got, []string{"2", "3", "4"}) || o.Stats().Bytes != small {
		t.Fatalf("after reopen: %v, %+v", got, o.Stats())
	}
	big := obMsg("b", strings.Repeat("x", 300-len(wire.TelemetryTopic("dev-1", "b"))), 0)
	before := o.Stats()
	if _, err := o.Append(t.Context(), big, big, big); !errors.Is(err, ErrFull) {
		t.Fatalf("over MaxBytes: %v", err)
	}
	if st := o.Stats(); st.Len != before.Len || st.Bytes != before.Bytes {
		t.Fatalf("a refused call changed the outbox: %+v, then %+v", before, st)
	}
	obAppend(t, o, big, big) // exactly fits
	if _, err := o.Append(t.Context(), obMsg("b", "", 0)); !errors.Is(err, ErrFull) {
		t.Fatalf("one byte over MaxBytes: %v", err)
	}

	// A record over limits.OutboxRecord is refused as such.
	huge := obMsg("b", strings.Repeat("h", limits.OutboxRecord), 0)
	if _, err := o.Append(t.Context(), obMsg("b", "ok", 0), huge); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("oversized message: %v", err)
	}
	for _, bad := range []Message{
		{Topic: "", Payload: []byte("x")},
		{Topic: "a/+/b"},
		{Topic: "a/#"},
		{Topic: "bad\xffutf8"},
		{Topic: "ok", Stream: "not a stream"},
	} {
		if _, err := o.Append(t.Context(), bad); err == nil || errors.Is(err, ErrFull) {
			t.Errorf("Append(%+v): %v, want a validation error", bad, err)
		}
	}
	if n := o.Stats().Len; n != 5 {
		t.Fatalf("%d messages after refusals, want 5", n)
	}
}

func TestOutboxTTL(t *testing.T) {
	dir := t.TempDir()
	clock := newOBClock()
	cfg := Config{Dir: dir, Now: clock.Now}
	o := obOpen(t, cfg)
	short := obMsg("a", "short", 1)
	short.Expires = clock.Now().Add(time.Minute)
	long := obMsg("a", "long", 0)
	long.Expires = clock.Now().Add(time.Hour)
	obAppend(t, o, short, long, obMsg("a", "forever", 0))
	if got := obBodies(obAll(o)); !slices.Equal(got, []string{"short", "long", "forever"}) {
		t.Fatalf("before expiry: %v", got)
	}
	clock.Advance(2 * time.Minute)
	if got := obBodies(obAll(o)); !slices.Equal(got, []string{"long", "forever"}) {
		t.Fatalf("after the first expiry: %v", got)
	}
	if st := o.Stats(); st.Expired != 1 || st.Len != 2 {
		t.Fatalf("stats %+v", st)
	}
	obClose(t, o)
	clock.Advance(2 * time.Hour)
	o = obOpen(t, cfg)
	defer obClose(t, o)
	if got := obBodies(obAll(o)); !slices.Equal(got, []string{"forever"}) {
		t.Fatalf("after reopen and the second expiry: %v", got)
	}
	if st := o.Stats(); st.Expired != 1 || st.Len != 1 {
		t.Fatalf("stats after reopen %+v", st)
	}
}

// gateFS lets written data reach the file only at fsync, counts fsyncs,
// and makes each one take delay, like a slow flash disk. A record that
// can be read from the file was therefore fsynced.
type gateFS struct {
	atomicfile.FS
	delay time.Duration
	syncs atomic.Int64
}

func (g *gateFS) OpenFile(name string, flag int, perm fs.FileMode) (atomicfile.File, error) {
	f, err := g.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &gateFile{File: f, fs: g}, nil
}

func (g *gateFS) CreateTemp(dir, pattern string) (atomicfile.File, error) {
	f, err := g.FS.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &gateFile{File: f, fs: g}, nil
}

type gateFile struct {
	atomicfile.File
	fs      *gateFS
	pending []byte
}

func (f *gateFile) Write(p []byte) (int, error) {
	f.pending = append(f.pending, p...)
	return len(p), nil
}

func (f *gateFile) Sync() error {
	time.Sleep(f.fs.delay)
	f.fs.syncs.Add(1)
	if len(f.pending) > 0 {
		if _, err := f.File.Write(f.pending); err != nil {
			return err
		}
		f.pending = nil
	}
	return f.File.Sync()
}

// TestOutboxGroupCommit: 50 concurrent appenders share fsyncs, and each
// Append returns only once its record is on disk.
func TestOutboxGroupCommit(t *testing.T) {
	dir := t.TempDir()
	gfs := &gateFS{FS: atomicfile.OS{}, delay: 2 * time.Millisecond}
	o := obOpen(t, Config{Dir: dir, SegmentBytes: 16 << 10, fs: gfs})
	const appenders, each = 50, 20
	var wg sync.WaitGroup
	errs := make(chan error, appenders)
	for a := range appenders {
		wg.Go(func() {
			for i := range each {
				body := fmt.Sprintf("a%02d-%02d", a, i)
				ids, err := o.Append(t.Context(), obMsg("g", body, 0))
				if err != nil {
					errs <- err
					return
				}
				// The record must already be in the file: gateFS writes
				// only at fsync.
				o.mu.Lock()
				e := o.entries[ids[0]]
				name, off, n := e.seg.name, e.off, e.n
				o.mu.Unlock()
				b, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil || int64(len(b)) < off+int64(n) {
					errs <- fmt.Errorf("Append of %s returned before its record was fsynced (%v)", body, err)
					return
				}
				rec, err := o.decodeFrame(b[off:off+int64(n)], ids[0])
				if err != nil || string(rec.Payload) != body {
					errs <- fmt.Errorf("record of %s on disk: %v", body, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	syncs := gfs.syncs.Load()
	total := int64(appenders * each)
	t.Logf("group commit: %d appends, %d fsyncs (%.1f appends per fsync)", total, syncs, float64(total)/float64(syncs))
	if syncs*5 > total {
		t.Fatalf("%d fsyncs for %d appends: no group commit", syncs, total)
	}
	obClose(t, o)
	o = obOpen(t, Config{Dir: dir})
	defer obClose(t, o)
	if n := len(obAll(o)); n != int(total) {
		t.Fatalf("%d messages after reopen, want %d", n, total)
	}
}

// TestOutboxGroupCommitCrash cuts the power in the middle of 50 concurrent
// appenders: every Append that returned nil is on disk, exactly once.
func TestOutboxGroupCommitCrash(t *testing.T) {
	const appenders, each = 50, 10
	run := func(failAt int) (ops int, returned map[string]uint64, dir string) {
		dir = t.TempDir()
		cfs := &crashfs.FS{FailAt: failAt}
		o := obOpen(t, Config{Dir: dir, SegmentBytes: 4 << 10, fs: cfs})
		var mu sync.Mutex
		returned = map[string]uint64{}
		var wg sync.WaitGroup
		for a := range appenders {
			wg.Go(func() {
				for i := range each {
					body := fmt.Sprintf("a%02d-%02d", a, i)
					ids, err := o.Append(t.Context(), obMsg("g", body, uint8(a%3)))
					if err != nil {
						return
					}
					mu.Lock()
					returned[body] = ids[0]
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		o.Close()
		return cfs.Ops(), returned, dir
	}
	total, _, _ := run(0)
	for _, frac := range []int{4, 2, 3} {
		failAt := total * (frac - 1) / frac
		_, returned, dir := run(failAt)
		o := obOpen(t, Config{Dir: dir})
		seen := map[string]bool{}
		var maxID uint64
		for _, m := range obAll(o) {
			if seen[string(m.Payload)] {
				t.Fatalf("crash at %d: %s stored twice", failAt, m.Payload)
			}
			seen[string(m.Payload)] = true
			if id, ok := returned[string(m.Payload)]; ok && id != m.ID {
				t.Fatalf("crash at %d: %s has ID %d, Append returned %d", failAt, m.Payload, m.ID, id)
			}
			maxID = max(maxID, m.ID)
		}
		for body, id := range returned {
			if !seen[body] {
				t.Fatalf("crash at %d/%d: %s (ID %d) was acknowledged as stored and is lost", failAt, total, body, id)
			}
			maxID = max(maxID, id)
		}
		if id := obAppend(t, o, obMsg("g", "after", 0))[0]; id <= maxID {
			t.Fatalf("crash at %d: new ID %d does not exceed %d", failAt, id, maxID)
		}
		obClose(t, o)
		t.Logf("crash at operation %d/%d: %d appends had returned, all kept", failAt, total, len(returned))
	}
}

// obModel tracks what a workload was told, to check the state after a
// crash.
type obModel struct {
	attempted map[string]Message  // by payload, as given to Append
	calls     map[string][]string // payload -> the payloads of its Append call
	stored    map[string]uint64   // Append returned nil: payload -> ID
	expired   map[string]bool
	pending   []uint64 // removals not yet known to be durable
	durable   map[uint64]bool
	maxID     uint64
}

func newOBModel() *obModel {
	return &obModel{attempted: map[string]Message{}, calls: map[string][]string{},
		stored: map[string]uint64{}, expired: map[string]bool{}, durable: map[uint64]bool{}}
}

// barrier: an Append, PurgeStream or Close returned nil, so every removal
// made before it is durable.
func (m *obModel) barrier() {
	for _, id := range m.pending {
		m.durable[id] = true
	}
	m.pending = nil
}

func (m *obModel) append(o *Outbox, msgs ...Message) error {
	var bodies []string
	for _, msg := range msgs {
		bodies = append(bodies, string(msg.Payload))
		m.attempted[string(msg.Payload)] = msg
	}
	for _, b := range bodies {
		m.calls[b] = bodies
	}
	ids, err := o.Append(context.Background(), msgs...)
	o.waitIdle()
	if err != nil {
		return err
	}
	for i, b := range bodies {
		m.stored[b] = ids[i]
		m.maxID = max(m.maxID, ids[i])
	}
	m.barrier()
	return nil
}

func (m *obModel) ack(o *Outbox, bodies ...string) {
	var ids []uint64
	for _, b := range bodies {
		if id, ok := m.stored[b]; ok {
			ids = append(ids, id)
		}
	}
	o.Ack(ids...)
	m.pending = append(m.pending, ids...)
	o.waitIdle()
}

// check reopens dir and verifies the invariants.
func (m *obModel) check(t *testing.T, where string, dir string, now func() time.Time) {
	t.Helper()
	o, err := Open(Config{Dir: dir, Now: now})
	if err != nil {
		t.Fatalf("%s: reopen: %v", where, err)
	}
	defer o.Close()
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*")); len(tmps) != 0 {
		t.Fatalf("%s: temporary files left after open: %v", where, tmps)
	}
	present := map[string]Message{}
	for _, got := range obAll(o) {
		b := string(got.Payload)
		if _, dup := present[b]; dup {
			t.Fatalf("%s: %s stored twice", where, b)
		}
		present[b] = got
		want, ok := m.attempted[b]
		if !ok {
			t.Fatalf("%s: a message never appended came back: %+v", where, got)
		}
		want.ID = got.ID
		if !obSame(got, want) {
			t.Fatalf("%s: %s came back as %+v, appended as %+v", where, b, got, want)
		}
		if id, ok := m.stored[b]; ok && id != got.ID {
			t.Fatalf("%s: %s has ID %d, Append returned %d", where, b, got.ID, id)
		}
		if m.durable[got.ID] {
			t.Fatalf("%s: %s (ID %d) came back after its removal was durable", where, b, got.ID)
		}
		if m.expired[b] {
			t.Fatalf("%s: expired %s returned by Next", where, b)
		}
	}
	for b, id := range m.stored {
		if _, ok := present[b]; !ok && !m.durable[id] && !m.expired[b] && !slices.Contains(m.pending, id) {
			t.Fatalf("%s: %s (ID %d) was stored, never removed, and is lost", where, b, id)
		}
	}
	// Appends that failed: all of the call or none of it.
	for b := range m.attempted {
		if _, ok := m.stored[b]; ok {
			continue
		}
		n := 0
		for _, other := range m.calls[b] {
			if _, ok := present[other]; ok {
				n++
			}
		}
		if n != 0 && n != len(m.calls[b]) {
			t.Fatalf("%s: %d of the %d messages of a failed Append came back", where, n, len(m.calls[b]))
		}
	}
	maxID := m.maxID
	for _, msg := range present {
		maxID = max(maxID, msg.ID)
	}
	ids, err := o.Append(context.Background(), obMsg("z", "after-crash", 0))
	if err != nil {
		t.Fatalf("%s: append after reopen: %v", where, err)
	}
	if ids[0] <= maxID {
		t.Fatalf("%s: new ID %d does not exceed %d", where, ids[0], maxID)
	}
}

// TestOutboxCrash cuts the power at every file-system operation of a
// session (open with a torn tail and a leftover temporary file, appends,
// acks, a drop, an expiry, a purge, segment rotations, deletions, a
// relocation, acks-log compactions, close), restarts, and checks that every
// message acknowledged as stored and not durably removed is there exactly
// once, that no durably removed one came back, and that IDs keep
// increasing.
func TestOutboxCrash(t *testing.T) {
	clock := newOBClock()
	template := filepath.Join(t.TempDir(), "template")
	base := newOBModel()
	{
		o := obOpen(t, Config{Dir: template, Now: clock.Now})
		for i, prio := range []uint8{0, 1, 0, 2} {
			if err := base.append(o, obMsg("c", fmt.Sprintf("p%d", i), prio)); err != nil {
				t.Fatal(err)
			}
		}
		base.ack(o, "p1")
		obClose(t, o)
		base.barrier()
		segs, _ := filepath.Glob(filepath.Join(template, "seg-*.log"))
		f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte{0, 0, 0, 90, 1, 2, 3, 4, 0xa7, 0x01}) // a torn record
		f.Close()
		os.WriteFile(filepath.Join(template, ".acks.log.tmp-123"), []byte("partial"), 0o600)
	}

	var did struct{ rotated, deleted, relocated, compacted int }
	workload := func(o *Outbox, m *obModel) error {
		msg := func(stream, body string, prio uint8) Message { return obMsg(stream, body, prio) }
		if err := m.append(o, msg("a", "w0", 0)); err != nil {
			return err
		}
		if err := m.append(o, msg("b", "w1", 0), msg("a", "w2", 2), msg("", "w3", 1)); err != nil {
			return err
		}
		m.ack(o, "p0")
		if err := m.append(o, msg("b", "w4", 0)); err != nil {
			return err
		}
		o.Next(100, nil)
		m.ack(o, "w1", "w4")
		if id, ok := m.stored["w3"]; ok {
			o.Drop(id, "PUBACK 0x87")
			m.pending = append(m.pending, id)
			o.waitIdle()
		}
		exp := msg("b", "w5", 0)
		exp.Expires = clock.Now().Add(-time.Second)
		m.expired["w5"] = true
		if err := m.append(o, exp); err != nil {
			return err
		}
		o.Next(100, nil) // drops w5
		o.waitIdle()
		for b, id := range m.stored {
			if m.attempted[b].Stream == "a" {
				m.pending = append(m.pending, id)
			}
		}
		if _, err := o.PurgeStream("a"); err != nil {
			return err
		}
		o.waitIdle()
		m.barrier()
		for k := 6; k < 14; k++ {
			if err := m.append(o, msg("b", fmt.Sprintf("w%d", k), uint8(k%3))); err != nil {
				return err
			}
		}
		// Leave w8 alone in its segment: it is relocated.
		m.ack(o, "w6", "w7", "w9", "w10", "w11", "w12")
		if err := m.append(o, msg("b", "w14", 0)); err != nil {
			return err
		}
		m.ack(o, "p2", "w13")
		if err := m.append(o, msg("b", "w15", 0)); err != nil {
			return err
		}
		if err := o.Close(); err != nil {
			return err
		}
		did = o.did
		m.barrier()
		return nil
	}
	session := func(failAt int) (*crashfs.FS, *obModel, string, error) {
		dir := filepath.Join(t.TempDir(), "ob")
		crashfs.CopyDir(t, template, dir)
		m := &obModel{attempted: maps.Clone(base.attempted), calls: maps.Clone(base.calls),
			stored: maps.Clone(base.stored), expired: map[string]bool{}, durable: maps.Clone(base.durable),
			maxID: base.maxID}
		cfs := &crashfs.FS{FailAt: failAt}
		o, err := Open(Config{Dir: dir, Now: clock.Now, SegmentBytes: 300, fs: cfs, ackSlack: -1})
		if err != nil {
			return cfs, m, dir, err
		}
		err = workload(o, m)
		if err != nil {
			o.Close()
		}
		return cfs, m, dir, err
	}

	// A clean run: the workload does what it says.
	cfs, m, dir, err := session(0)
	if err != nil {
		t.Fatal(err)
	}
	total := cfs.Ops()
	t.Logf("clean run: %d operations, %+v", total, did)
	if did.rotated < 3 || did.deleted < 2 || did.relocated < 1 || did.compacted < 1 {
		t.Fatalf("the workload misses a path: %+v", did)
	}
	m.check(t, "clean run", dir, clock.Now)
	if q, _ := filepath.Glob(filepath.Join(dir, "quarantine-*.bin")); len(q) != 1 {
		t.Fatalf("clean run: quarantine files %v, want one", q)
	}

	covered := 0
	for i := 1; ; i++ {
		cfs, m, dir, err := session(i)
		if !cfs.Crashed() {
			if err != nil {
				t.Fatalf("run %d: %v", i, err)
			}
			break
		}
		if !errors.Is(err, crashfs.ErrCrash) {
			t.Fatalf("crash at %d: workload error %v, want ErrCrash", i, err)
		}
		m.check(t, fmt.Sprintf("crash at %d/%d", i, total), dir, clock.Now)
		covered++
		if i > 10*total {
			t.Fatalf("crash runs do not end (clean run: %d operations)", total)
		}
	}
	if covered < 60 {
		t.Fatalf("only %d crash points: the workload does less than it should", covered)
	}
	t.Logf("outbox: %d crash points covered", covered)
}

// obFrame encodes a message record as a segment frame.
func obFrame(t testing.TB, rec msgRecord) []byte {
	t.Helper()
	modes, err := cborx.New(ackIDsPerRecord)
	if err != nil {
		t.Fatal(err)
	}
	p, err := modes.Enc.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	return appendFrame(nil, p)
}

func obAckFrame(t testing.TB, ids ...uint64) []byte {
	t.Helper()
	modes, _ := cborx.New(ackIDsPerRecord)
	p, err := modes.Enc.Marshal(ackRecord{IDs: ids})
	if err != nil {
		t.Fatal(err)
	}
	return appendFrame(nil, p)
}

func obAppendFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func obLastSegment(t *testing.T, dir string) string {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	if len(segs) == 0 {
		t.Fatal("no segment")
	}
	return segs[len(segs)-1]
}

// TestOutboxTornTail: a record torn by a power cut mid-append is set aside;
// every intact record before it is kept, and appends go on.
func TestOutboxTornTail(t *testing.T) {
	for _, tc := range []struct {
		name string
		tail func(t *testing.T) []byte
	}{
		{"half a record", func(t *testing.T) []byte {
			f := obFrame(t, msgRecord{ID: 4, Topic: "t/x", Payload: []byte("lost")})
			return f[:len(f)/2]
		}},
		{"garbage", func(t *testing.T) []byte { return []byte("\xde\xad\xbe\xef garbage after the records") }},
		{"bad checksum", func(t *testing.T) []byte {
			f := obFrame(t, msgRecord{ID: 4, Topic: "t/x", Payload: []byte("lost")})
			f[len(f)-1] ^= 1
			return f
		}},
		{"append missing its last record", func(t *testing.T) []byte {
			// Two intact records of a three-message Append: the call
			// never returned, so none of it counts.
			return append(obFrame(t, msgRecord{ID: 4, Topic: "t/x", Payload: []byte("a"), More: true}),
				obFrame(t, msgRecord{ID: 5, Topic: "t/x", Payload: []byte("b"), More: true})...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			o := obOpen(t, Config{Dir: dir})
			ids := obAppend(t, o, obMsg("a", "one", 0))
			ids = append(ids, obAppend(t, o, obMsg("a", "two", 0), obMsg("a", "three", 0))...)
			obClose(t, o)
			seg := obLastSegment(t, dir)
			intact, _ := os.ReadFile(seg)
			tail := tc.tail(t)
			obAppendFile(t, seg, tail)

			o = obOpen(t, Config{Dir: dir})
			if got := obBodies(obAll(o)); !slices.Equal(got, []string{"one", "two", "three"}) {
				t.Fatalf("after a torn tail: %v", got)
			}
			if q := o.Stats().Quarantined; q != 1 {
				t.Fatalf("Quarantined = %d, want 1", q)
			}
			q, err := os.ReadFile(filepath.Join(dir, "quarantine-1.bin"))
			if err != nil || !bytes.Equal(q, tail) {
				t.Fatalf("quarantine file holds %q (%v), want the tail %q", q, err, tail)
			}
			if now, _ := os.ReadFile(seg); !bytes.Equal(now, intact) {
				t.Fatalf("segment not cut back to its intact part (%d bytes, want %d)", len(now), len(intact))
			}
			id := obAppend(t, o, obMsg("a", "four", 0))[0]
			if id <= ids[2] {
				t.Fatalf("new ID %d", id)
			}
			obClose(t, o)

			o = obOpen(t, Config{Dir: dir})
			defer obClose(t, o)
			if got := obBodies(obAll(o)); !slices.Equal(got, []string{"one", "two", "three", "four"}) {
				t.Fatalf("second reopen: %v", got)
			}
			if q := o.Stats().Quarantined; q != 0 {
				t.Fatalf("second reopen quarantined %d", q)
			}
		})
	}
}

// TestOutboxCorruptFiles: damage that is not a torn tail is set aside too,
// and never stops the outbox from opening.
func TestOutboxCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	o := obOpen(t, Config{Dir: dir})
	ids := obAppend(t, o, obMsg("a", "one", 0), obMsg("a", "two", 0))
	o.Ack(ids[0])
	obClose(t, o)
	// The acks log loses its magic; a foreign file wears a segment's name.
	acks := filepath.Join(dir, ackLogName)
	b, _ := os.ReadFile(acks)
	b[0] = 'X'
	os.WriteFile(acks, b, 0o600)
	os.WriteFile(filepath.Join(dir, segName(1<<40)), []byte("not a segment at all"), 0o600)
	o = obOpen(t, Config{Dir: dir})
	defer obClose(t, o)
	// The ack is lost with its log: "one" comes back (a duplicate for the
	// cloud), nothing is lost.
	if got := obBodies(obAll(o)); !slices.Equal(got, []string{"one", "two"}) {
		t.Fatalf("after corruption: %v", got)
	}
	if q := o.Stats().Quarantined; q != 2 {
		t.Fatalf("Quarantined = %d, want 2", q)
	}
	if _, err := os.Stat(filepath.Join(dir, segName(1<<40))); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("foreign segment left in place: %v", err)
	}
	if id := obAppend(t, o, obMsg("a", "three", 0))[0]; id <= ids[1] {
		t.Fatalf("new ID %d", id)
	}
}

// TestOutboxInterruptedRelocation: a crash between relocating records and
// deleting their old segment leaves two copies; the message is delivered
// once, and both copies go once it is acked.
func TestOutboxInterruptedRelocation(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(dir, 0o700)
	rec := func(id uint64, body string) msgRecord {
		return msgRecord{ID: id, Topic: "t/x", Payload: []byte(body), Stream: "s"}
	}
	old := append([]byte(segMagic), obFrame(t, rec(1, "pinned"))...)
	old = append(old, obFrame(t, rec(2, "acked"))...)
	newer := append([]byte(segMagic), obFrame(t, rec(3, "three"))...)
	newer = append(newer, obFrame(t, rec(1, "pinned"))...) // the relocated copy
	os.WriteFile(filepath.Join(dir, segName(1)), old, 0o600)
	os.WriteFile(filepath.Join(dir, segName(3)), newer, 0o600)
	os.WriteFile(filepath.Join(dir, ackLogName), append([]byte(ackMagic), obAckFrame(t, 2)...), 0o600)

	o := obOpen(t, Config{Dir: dir})
	got := obAll(o)
	if !slices.Equal(obBodies(got), []string{"pinned", "three"}) || got[0].ID != 1 {
		t.Fatalf("with two copies: %+v", got)
	}
	o.waitIdle()
	// The first segment has no live copy left: deleted at open.
	if _, err := os.Stat(filepath.Join(dir, segName(1))); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("old segment kept: %v", err)
	}
	o.Ack(1)
	obClose(t, o)
	o = obOpen(t, Config{Dir: dir})
	defer obClose(t, o)
	if got := obBodies(obAll(o)); !slices.Equal(got, []string{"three"}) {
		t.Fatalf("after acking the relocated message: %v", got)
	}
}

// TestOutboxRelocation: low-priority messages left behind in mostly acked
// segments are moved forward, so disk use follows the live data and not the
// history.
func TestOutboxRelocation(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: 1 << 10}
	o := obOpen(t, cfg)
	var pinned []string
	for round := range 40 {
		body := fmt.Sprintf("pinned-%02d", round)
		pinned = append(pinned, body)
		obAppend(t, o, obMsg("slow", body, 0))
		var ids []uint64
		for i := range 8 {
			ids = append(ids, obAppend(t, o, obMsg("fast", fmt.Sprintf("fast-%d-%d-%s", round, i, strings.Repeat("x", 60)), 9))...)
		}
		o.Ack(ids...)
	}
	o.waitIdle()
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	var size int64
	for _, s := range segs {
		st, _ := os.Stat(s)
		size += st.Size()
	}
	t.Logf("40 rounds: %d segments, %d bytes on disk for %d live messages", len(segs), size, o.Stats().Len)
	if len(segs) > 8 || size > 8<<10 {
		t.Fatalf("%d segments, %d bytes: mostly dead segments are not reclaimed", len(segs), size)
	}
	if got := obBodies(obAll(o)); !slices.Equal(got, pinned) {
		t.Fatalf("pinned messages after relocation: %v", got)
	}
	obClose(t, o)
	o = obOpen(t, cfg)
	defer obClose(t, o)
	if got := obBodies(obAll(o)); !slices.Equal(got, pinned) {
		t.Fatalf("pinned messages after reopen: %v", got)
	}
	if q := o.Stats().Quarantined; q != 0 {
		t.Fatalf("reopen quarantined %d", q)
	}
}

// TestOutboxAcksCompaction: the acks log shrinks back once its IDs refer to
// deleted segments.
func TestOutboxAcksCompaction(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: 512, ackSlack: 16}
	o := obOpen(t, cfg)
	for i := range 200 {
		id := obAppend(t, o, obMsg("a", fmt.Sprint(i), 0))
		o.Ack(id...)
	}
	keep := obAppend(t, o, obMsg("a", "keep", 0))
	o.waitIdle()
	o.mu.Lock()
	removedIn := o.removedIn
	o.mu.Unlock()
	if o.ackIDs > 2*removedIn+16+1 {
		t.Fatalf("acks log holds %d IDs for %d removed messages still on disk", o.ackIDs, removedIn)
	}
	obClose(t, o)
	o = obOpen(t, cfg)
	defer obClose(t, o)
	if got := obAll(o); len(got) != 1 || got[0].ID != keep[0] {
		t.Fatalf("after compaction and reopen: %+v", got)
	}
}

// TestOutboxPurgeInFlightAppend: PurgeStream also removes messages of an
// Append whose commit has not happened yet.
func TestOutboxPurgeInFlightAppend(t *testing.T) {
	dir := t.TempDir()
	gfs := &gateFS{FS: atomicfile.OS{}, delay: 20 * time.Millisecond}
	o := obOpen(t, Config{Dir: dir, fs: gfs})
	obAppend(t, o, obMsg("keep", "k", 0))
	done := make(chan error, 2)
	go func() { _, err := o.Append(t.Context(), obMsg("gone", "g1", 0)); done <- err }()
	go func() { _, err := o.Append(t.Context(), obMsg("gone", "g2", 0), obMsg("keep", "k2", 0)); done <- err }()
	time.Sleep(5 * time.Millisecond) // the first is being committed, the second perhaps queued
	n, err := o.PurgeStream("gone")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	got := obBodies(obAll(o))
	if slices.Contains(got, "g1") || slices.Contains(got, "g2") {
		t.Fatalf("purged messages delivered: %v (purge counted %d)", got, n)
	}
	if n != 2 {
		t.Logf("purge counted %d messages (the appends had not started)", n)
	}
	obClose(t, o)
	o = obOpen(t, Config{Dir: dir})
	defer obClose(t, o)
	if got := obBodies(obAll(o)); slices.Contains(got, "g1") || slices.Contains(got, "g2") || !slices.Contains(got, "k2") {
		t.Fatalf("after reopen: %v", got)
	}
}

// TestOutboxDiskFull fills a 256 KiB tmpfs: the failing Append reports
// ENOSPC, everything stored before survives a restart, and once acks free
// segments the outbox stores again.
func TestOutboxDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestOutboxDiskFull needs root to mount a 256 KiB tmpfs (CI runs as root)")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	dir := filepath.Join(mnt, "outbox")
	cfg := Config{Dir: dir, SegmentBytes: 16 << 10}
	o := obOpen(t, cfg)
	body := strings.Repeat("p", 1000)
	var stored []uint64
	var fullErr error
	for i := 0; i < 1000; i++ {
		ids, err := o.Append(t.Context(), obMsg("a", fmt.Sprintf("%04d-%s", i, body), 0))
		if err != nil {
			fullErr = err
			break
		}
		stored = append(stored, ids[0])
	}
	if !errors.Is(fullErr, syscall.ENOSPC) {
		t.Fatalf("after %d appends: %v, want an error wrapping ENOSPC", len(stored), fullErr)
	}
	t.Logf("disk full after %d messages: %v", len(stored), fullErr)
	if len(stored) < 100 {
		t.Fatalf("only %d messages fit in 256 KiB", len(stored))
	}
	obClose(t, o)

	o = obOpen(t, cfg)
	got := obAll(o)
	if !slices.Equal(obIDs(got), stored) {
		t.Fatalf("after reopen %d messages, want the %d stored", len(got), len(stored))
	}
	// Acking the oldest half frees their segments; appends work again.
	half := stored[:len(stored)/2]
	o.Ack(half...)
	var again []uint64
	for try := 0; try < 3 && len(again) == 0; try++ {
		o.waitIdle()
		ids, err := o.Append(t.Context(), obMsg("a", "after-"+body, 0))
		if err != nil {
			t.Logf("append after acks, try %d: %v", try, err)
			continue
		}
		again = ids
	}
	if len(again) == 0 {
		t.Fatal("the outbox does not store again after acks freed space")
	}
	for i := 0; i < 20; i++ {
		ids := obAppend(t, o, obMsg("a", fmt.Sprintf("more-%d-%s", i, body), 0))
		again = append(again, ids...)
	}
	obClose(t, o)
	o = obOpen(t, cfg)
	defer obClose(t, o)
	want := append(slices.Clone(stored[len(half):]), again...)
	if got := obIDs(obAll(o)); !slices.Equal(got, want) {
		t.Fatalf("after the second reopen: %d messages, want %d", len(got), len(want))
	}
}

// obRefMessages parses a segment and an acks log the simple way (whole
// buffers, stop at the first bad frame, drop an unfinished Append) and
// returns the messages an opener must deliver, in delivery order, and the
// highest intact ID.
func obRefMessages(t *testing.T, seg, acks []byte, now time.Time) ([]Message, uint64) {
	modes, _ := cborx.New(ackIDsPerRecord)
	frames := func(b []byte, magic string, fn func(p []byte) bool) {
		if len(b) < len(magic) || string(b[:len(magic)]) != magic {
			return
		}
		b = b[len(magic):]
		for len(b) >= 8 {
			n := binary.BigEndian.Uint32(b)
			if n == 0 || n > limits.OutboxRecord || uint64(n) > uint64(len(b)-8) {
				return
			}
			p := b[8 : 8+n]
			if crc32.Checksum(p, crc32.MakeTable(crc32.Castagnoli)) != binary.BigEndian.Uint32(b[4:]) || !fn(p) {
				return
			}
			b = b[8+n:]
		}
	}
	var maxID uint64
	byID := map[uint64]msgRecord{}
	var pending []msgRecord
	frames(seg, segMagic, func(p []byte) bool {
		var r msgRecord
		if modes.Dec.Unmarshal(p, &r) != nil || checkRecord(&r) != nil {
			return false
		}
		pending = append(pending, r)
		if !r.More {
			for _, r := range pending {
				byID[r.ID] = r // a later copy wins
				maxID = max(maxID, r.ID)
			}
			pending = nil
		}
		return true
	})
	acked := map[uint64]bool{}
	frames(acks, ackMagic, func(p []byte) bool {
		var r ackRecord
		if modes.Dec.Unmarshal(p, &r) != nil {
			return false
		}
		for _, id := range r.IDs {
			if id == 0 || id > maxOutboxID {
				return false
			}
		}
		for _, id := range r.IDs {
			acked[id] = true
			maxID = max(maxID, id)
		}
		return true
	})
	var out []Message
	for id, r := range byID {
		if acked[id] || r.Expires != 0 && r.Expires <= now.UnixMilli() {
			continue
		}
		m := Message{ID: id, Topic: r.Topic, Payload: r.Payload, Priority: r.Priority, Stream: r.Stream, Boot: r.Boot, Seq: r.Seq}
		if r.Expires != 0 {
			m.Expires = time.UnixMilli(r.Expires)
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Message) int {
		if a.Priority != b.Priority {
			return int(b.Priority) - int(a.Priority)
		}
		if a.ID < b.ID {
			return -1
		}
		return 1
	})
	return out, maxID
}

func obCompare(t *testing.T, where string, got, want []Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d messages, want %d\ngot  %+v\nwant %+v", where, len(got), len(want), got, want)
	}
	for i := range got {
		if !obSame(got[i], want[i]) {
			t.Fatalf("%s: message %d is %+v, want %+v", where, i, got[i], want[i])
		}
	}
}

type obSeed struct {
	seg, acks []byte
	fixCRC    bool
}

// obSeeds are the seed inputs of FuzzOutboxSegment.
func obSeeds(t testing.TB) map[string]obSeed {
	rec := func(id uint64, prio uint8, more bool) msgRecord {
		return msgRecord{ID: id, Topic: "d2c/v1/dev/dev-1/up/tele/temp", Payload: []byte(fmt.Sprintf("reading %d", id)),
			Priority: prio, Stream: "temp", More: more}
	}
	valid := []byte(segMagic)
	valid = append(valid, obFrame(t, rec(1, 0, false))...)
	valid = append(valid, obFrame(t, rec(2, 3, true))...)
	valid = append(valid, obFrame(t, rec(3, 3, false))...)
	exp := rec(4, 1, false)
	exp.Expires = obEpoch.Add(-time.Minute).UnixMilli()
	valid = append(valid, obFrame(t, exp)...)
	valid = append(valid, obFrame(t, msgRecord{ID: 5, Topic: "t/x", Expires: obEpoch.Add(time.Hour).UnixMilli()})...)
	acks := append([]byte(ackMagic), obAckFrame(t, 1, 9)...)
	dup := append(slices.Clone(valid), obFrame(t, rec(1, 7, false))...)
	// Sequenced records: in order, then one below the last pair, then a
	// seq without a boot (refused as corrupt).
	seq := func(id, boot, n uint64) msgRecord { r := rec(id, 0, false); r.Boot, r.Seq = boot, n; return r }
	sequenced := []byte(segMagic)
	for _, r := range []msgRecord{seq(1, 1, 0), seq(2, 1, 1), seq(3, 2, 0), seq(4, 1, 9), {ID: 5, Topic: "t/x", Seq: 3}} {
		sequenced = append(sequenced, obFrame(t, r)...)
	}
	// Frames whose CRC the harness fixes, so that the fuzzer reaches the
	// decoder and the checks behind it.
	badCBOR := append([]byte(segMagic), 0, 0, 0, 4, 0, 0, 0, 0, 0xa1, 0x01, 0x01, 0xff)
	return map[string]obSeed{
		"valid":           {valid, nil, false},
		"valid-with-acks": {valid, acks, false},
		"truncated":       {valid[:len(valid)-7], acks[:len(acks)-3], false},
		"torn-magic":      {[]byte(segMagic[:5]), []byte(ackMagic[:3]), false},
		"garbage":         {[]byte("d2cobs1\n\x00\x00\x00\x05garbage garbage"), []byte("garbage"), false},
		"duplicate-ids":   {dup, nil, false},
		"sequenced":       {sequenced, nil, false},
		"fixed-crc":       {badCBOR, append([]byte(ackMagic), 0, 0, 0, 3, 0, 0, 0, 0, 0xa1, 0x01, 0x80), true},
	}
}

// obFixCRCs rewrites the CRC of every frame whose length fits, so that
// mutated payloads get past the checksum.
func obFixCRCs(b []byte, magic string) []byte {
	b = slices.Clone(b)
	if len(b) < len(magic) || string(b[:len(magic)]) != magic {
		return b
	}
	for off := len(magic); len(b)-off >= 8; {
		n := binary.BigEndian.Uint32(b[off:])
		if n == 0 || n > limits.OutboxRecord || uint64(n) > uint64(len(b)-off-8) {
			break
		}
		binary.BigEndian.PutUint32(b[off+4:], crc32.Checksum(b[off+8:off+8+int(n)], crc32.MakeTable(crc32.Castagnoli)))
		off += 8 + int(n)
	}
	return b
}

// FuzzOutboxSegment opens an outbox whose segment and acks log hold the
// fuzzed bytes: it never panics or fails, returns exactly the intact,
// unacknowledged messages, sets the rest aside, and keeps working.
//
//	go test ./transport/ -run '^$' -fuzz '^FuzzOutboxSegment$' -fuzztime 60s -fuzzminimizetime 200x
func FuzzOutboxSegment(f *testing.F) {
	for _, s := range obSeeds(f) {
		f.Add(s.seg, s.acks, s.fixCRC)
	}
	now := func() time.Time { return obEpoch }
	fsys := &obCountFS{FS: atomicfile.OS{}, noSync: true} // durability is not what this tests
	f.Fuzz(func(t *testing.T, seg, acks []byte, fixCRC bool) {
		if fixCRC {
			seg, acks = obFixCRCs(seg, segMagic), obFixCRCs(acks, ackMagic)
		}
		dir := t.TempDir()
		if len(seg) > 0 {
			os.WriteFile(filepath.Join(dir, segName(1)), seg, 0o600)
		}
		if len(acks) > 0 {
			os.WriteFile(filepath.Join(dir, ackLogName), acks, 0o600)
		}
		want, maxID := obRefMessages(t, seg, acks, obEpoch)
		o, err := Open(Config{Dir: dir, Now: now, fs: fsys})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		obCompare(t, "first open", o.next(1<<30, nil, false), want)
		if q := o.Stats().Quarantined; q > 2 {
			t.Fatalf("Quarantined = %d for two files", q)
		}
		ids, err := o.Append(t.Context(), Message{Topic: "t/new", Payload: []byte("new")})
		if err != nil {
			t.Fatalf("Append after open: %v", err)
		}
		if ids[0] <= maxID {
			t.Fatalf("new ID %d does not exceed the stored %d", ids[0], maxID)
		}
		if err := o.Close(); err != nil {
			t.Fatal(err)
		}
		o, err = Open(Config{Dir: dir, Now: now, fs: fsys})
		if err != nil {
			t.Fatalf("second Open: %v", err)
		}
		defer o.Close()
		if q := o.Stats().Quarantined; q != 0 {
			t.Fatalf("second open quarantined %d: the first did not cut the files back", q)
		}
		obCompare(t, "second open", o.next(1<<30, nil, false), append(want, Message{ID: ids[0], Topic: "t/new", Payload: []byte("new")}))
	})
}

// TestOutboxFuzzCorpus fails if FuzzOutboxSegment has no committed seed
// corpus; with -update-outbox-seeds it rewrites it from obSeeds.
func TestOutboxFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzOutboxSegment")
	if *obUpdateSeeds {
		os.MkdirAll(dir, 0o755)
		for name, s := range obSeeds(t) {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n[]byte(%q)\nbool(%v)\n", s.seg, s.acks, s.fixCRC)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("%d seed files in %s, want at least 3 (valid, truncated, garbage)", len(files), dir)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) != 4 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") ||
			!strings.HasPrefix(lines[2], "[]byte(") || !strings.HasPrefix(lines[3], "bool(") {
			t.Errorf("%s: want a `go test fuzz v1` header, two []byte values and a bool", file)
		}
	}
}
