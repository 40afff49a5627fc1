// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package outbox

import (
	"io/fs"
	"sync/atomic"
	"testing"

	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// The outbox benchmarks store 256-byte payloads (about a signed telemetry
// envelope) and report messages per second and fsyncs per message:
//
//	go test ./transport/ -run '^$' -bench Outbox -benchmem
//
// AppendSerial pays one fsync per message; AppendGroupCommit shares each
// fsync among the appenders waiting for it; AppendMemory is the same code
// with fsync turned into a no-op, the ceiling group commit approaches.

// obCountFS counts file fsyncs and, with noSync, skips them (and directory
// fsyncs) altogether.
type obCountFS struct {
	atomicfile.FS
	noSync bool
	syncs  atomic.Int64
}

type obCountFile struct {
	atomicfile.File
	fs *obCountFS
}

func (c *obCountFS) OpenFile(name string, flag int, perm fs.FileMode) (atomicfile.File, error) {
	f, err := c.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &obCountFile{File: f, fs: c}, nil
}

func (c *obCountFS) CreateTemp(dir, pattern string) (atomicfile.File, error) {
	f, err := c.FS.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &obCountFile{File: f, fs: c}, nil
}

func (c *obCountFS) SyncDir(dir string) error {
	if c.noSync {
		return nil
	}
	return c.FS.SyncDir(dir)
}

func (f *obCountFile) Sync() error {
	if f.fs.noSync {
		return nil
	}
	f.fs.syncs.Add(1)
	return f.File.Sync()
}

func obBenchOpen(b *testing.B, noSync bool) (*Outbox, *obCountFS) {
	b.Helper()
	cfs := &obCountFS{FS: atomicfile.OS{}, noSync: noSync}
	o, err := Open(Config{Dir: b.TempDir(), MaxMessages: 1 << 30, MaxBytes: 1 << 40, fs: cfs})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { o.Close() })
	return o, cfs
}

var obBenchPayload = make([]byte, 256)

func obBenchMsg() Message {
	return Message{Topic: "d2c/v1/dev/dev-1/up/tele/temp", Payload: obBenchPayload, Stream: "temp"}
}

func obReport(b *testing.B, cfs *obCountFS) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	if !cfs.noSync {
		b.ReportMetric(float64(cfs.syncs.Load())/float64(b.N), "fsyncs/msg")
	}
}

func benchAppendParallel(b *testing.B, noSync bool) {
	o, cfs := obBenchOpen(b, noSync)
	b.SetParallelism(16) // 16 appenders per CPU
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		m := obBenchMsg()
		for pb.Next() {
			if _, err := o.Append(b.Context(), m); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	obReport(b, cfs)
}

func benchAppendSerial(b *testing.B, noSync bool) {
	o, cfs := obBenchOpen(b, noSync)
	m := obBenchMsg()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := o.Append(b.Context(), m); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	obReport(b, cfs)
}

// BenchmarkOutboxAppendGroupCommit: many concurrent appenders, fsync
// intact.
func BenchmarkOutboxAppendGroupCommit(b *testing.B) { benchAppendParallel(b, false) }

// BenchmarkOutboxAppendSerial: one appender, one fsync per message.
func BenchmarkOutboxAppendSerial(b *testing.B) { benchAppendSerial(b, false) }

// BenchmarkOutboxAppendMemory: the same paths with fsync a no-op.
func BenchmarkOutboxAppendMemory(b *testing.B) {
	b.Run("parallel", func(b *testing.B) { benchAppendParallel(b, true) })
	b.Run("serial", func(b *testing.B) { benchAppendSerial(b, true) })
}

// BenchmarkOutboxNextAck: the delivery side, one op per message: Next
// (which reads the message back from its segment) in batches of 64, then
// Ack; the removals' commits and segment deletions are included.
func BenchmarkOutboxNextAck(b *testing.B) {
	o, cfs := obBenchOpen(b, false)
	batch := make([]Message, 1000)
	for i := range batch {
		batch[i] = obBenchMsg()
	}
	for n := 0; n < b.N; n += len(batch) {
		if _, err := o.Append(b.Context(), batch[:min(len(batch), b.N-n)]...); err != nil {
			b.Fatal(err)
		}
	}
	o.waitIdle()
	cfs.syncs.Store(0)
	b.ReportAllocs()
	b.ResetTimer()
	ids := make([]uint64, 0, 64)
	for done := 0; done < b.N; {
		msgs := o.Next(64, nil)
		if len(msgs) == 0 {
			b.Fatalf("Next returned nothing after %d of %d", done, b.N)
		}
		ids = ids[:0]
		for _, m := range msgs {
			ids = append(ids, m.ID)
		}
		if err := o.Ack(ids...); err != nil {
			b.Fatal(err)
		}
		done += len(msgs)
	}
	o.waitIdle()
	b.StopTimer()
	obReport(b, cfs)
	if st := o.Stats(); st.Len != 0 {
		b.Fatalf("%d messages left", st.Len)
	}
}
