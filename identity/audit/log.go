// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

// Config configures [Open]. The zero value of every field but Dir means
// its default.
type Config struct {
	// Dir is the log directory. Required. It is created with mode 0700 if
	// missing. One Log at a time may use it: Open takes a lock in it and
	// fails if another holder keeps it for more than a few seconds.
	Dir string
	// SegmentBytes is the size past which the log starts a new segment
	// file. Default 256 KiB (limits.AuditSegment); at most 16 MiB
	// (limits.AuditSegmentMax). A segment holds at least one record after
	// its checkpoint, so it may exceed this by one record.
	SegmentBytes int64
	// MaxBytes bounds the bytes of all segments: past it, the oldest
	// segments are deleted, once the checkpoint of a newer one is
	// durable. Default 4 MiB (limits.AuditLogBytes); at least twice
	// SegmentBytes; at most 64 MiB (limits.AuditLogMax). Records are
	// small (100 to 300 bytes): the default keeps some 20 000.
	MaxBytes int64
	// Now is the clock of record times and signed heads. Default
	// time.Now; on a device, give the identity store's
	// TrustedClock().Now, which never goes back below what the device
	// has verified.
	Now func() time.Time
	// Logger receives torn tails dropped at open and failures to delete
	// old segments. Default: none.
	Logger *slog.Logger

	fs atomicfile.FS // nil: the operating system; tests inject crashfs
}

// Log is the device's tamper-evident audit log: an append-only chain of
// records in segment files, each record holding the hash of the one
// before it. It is safe for concurrent use; appends are serialised.
type Log struct {
	cfg    Config
	fs     atomicfile.FS
	log    *slog.Logger
	unlock func()
	turn   chan struct{} // held by the one caller writing

	// Writer state: under turn.
	segs   []*segFile // oldest first; the last is the active one
	active atomicfile.File
	total  int64 // bytes of all segments
	broken error // a write failed: reload before the next append

	mu      sync.Mutex
	closed  bool
	seq     uint64
	hash    [32]byte
	changed chan struct{} // closed at the next append
}

const lockName = "lock"

// lockWait is how long Open waits for another holder of the directory's
// lock (tests lower it).
var lockWait = 3 * time.Second

// Open opens the log in cfg.Dir, creating it (with its first checkpoint)
// if the directory holds none. It reads and verifies the whole chain: a
// torn last record (a power cut during an append that never returned) is
// dropped, every intact record is kept. A log that does not verify is
// refused with the error [Verify] gives ([ErrTampered], [ErrMalformed]):
// Open never rewrites evidence. To keep recording, move the directory
// aside for investigation and open a new log; the cloud sees the new
// log's heads start again from 1.
func Open(cfg Config) (*Log, error) {
	if cfg.Dir == "" {
		return nil, errors.New("audit: Config.Dir is required")
	}
	switch {
	case cfg.SegmentBytes == 0:
		cfg.SegmentBytes = limits.AuditSegment
	case cfg.SegmentBytes < 0 || cfg.SegmentBytes > limits.AuditSegmentMax:
		return nil, fmt.Errorf("audit: SegmentBytes %d outside (0, %d]", cfg.SegmentBytes, limits.AuditSegmentMax)
	}
	switch {
	case cfg.MaxBytes == 0:
		cfg.MaxBytes = max(limits.AuditLogBytes, 2*cfg.SegmentBytes)
	case cfg.MaxBytes < 2*cfg.SegmentBytes || cfg.MaxBytes > limits.AuditLogMax:
		return nil, fmt.Errorf("audit: MaxBytes %d outside [2*SegmentBytes, %d]", cfg.MaxBytes, limits.AuditLogMax)
	}
	if cfg.MaxBytes/cfg.SegmentBytes+2 > limits.AuditSegments {
		return nil, fmt.Errorf("audit: MaxBytes/SegmentBytes above %d segments", limits.AuditSegments-2)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	fsys := cfg.fs
	if fsys == nil {
		fsys = atomicfile.OS{}
	}
	if err := atomicfile.MkdirPrivate(fsys, cfg.Dir); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	unlock, err := lockDir(filepath.Join(cfg.Dir, lockName))
	if err != nil {
		return nil, err
	}
	l := &Log{cfg: cfg, fs: fsys, log: cfg.Logger, unlock: unlock,
		turn: make(chan struct{}, 1), changed: make(chan struct{})}
	if err := l.load(); err != nil {
		if l.active != nil {
			_ = l.active.Close()
		}
		unlock()
		return nil, err
	}
	return l, nil
}

// lockDir takes the directory lock, waiting at most lockWait for another
// holder to let go.
func lockDir(path string) (func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), lockWait)
	defer cancel()
	unlock, err := atomicfile.LockContext(ctx, path)
	if errors.Is(err, atomicfile.ErrLocked) {
		return nil, fmt.Errorf("audit: log %s is in use by another process or Log", filepath.Dir(path))
	}
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return unlock, nil
}

func (l *Log) path(name string) string { return filepath.Join(l.cfg.Dir, name) }

// load reads the directory: verifies the chain, cuts a torn tail, and
// opens the newest segment for appending (or starts a new log). It runs
// at Open and after a failed write.
func (l *Log) load() error {
	if l.active != nil {
		_ = l.active.Close()
		l.active = nil
	}
	if err := l.removeTemps(); err != nil {
		return err
	}
	c := newChain(true, nil)
	segs, err := walkDir(l.cfg.Dir, c, nil)
	if err == nil {
		_, err = c.finish()
	}
	if err != nil {
		return err
	}
	if n := len(segs); n > 0 && (segs[n-1].torn > 0 || segs[n-1].records == 0) {
		// What a power cut left of an append or a rotation that never
		// returned.
		sf := segs[n-1]
		l.log.Warn("audit: torn tail dropped", "file", sf.name, "offset", sf.size, "bytes", sf.torn)
		if sf.records == 0 {
			if err := atomicfile.Remove(l.fs, l.path(sf.name)); err != nil {
				return fmt.Errorf("audit: %w", err)
			}
			segs = segs[:n-1]
		} else if err := l.truncate(sf.name, sf.size); err != nil {
			return fmt.Errorf("audit: cut the torn tail of %s: %w", sf.name, err)
		}
		sf.torn = 0
	}
	l.segs, l.total = segs, 0
	for _, sf := range segs {
		l.total += sf.size
	}
	if len(segs) == 0 {
		return l.createSegment(1, [32]byte{}, l.cfg.Now()) // genesis
	}
	f, err := l.fs.OpenFile(l.path(segs[len(segs)-1].name), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	l.active = f
	l.setHead(c.rep.Last, c.rep.Head)
	return nil
}

// removeTemps deletes what an interrupted truncation left behind.
func (l *Log) removeTemps() error {
	matches, err := filepath.Glob(filepath.Join(l.cfg.Dir, ".seg-*.tmp-*"))
	if err != nil || len(matches) == 0 {
		return err
	}
	for _, m := range matches {
		if err := l.fs.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("audit: %w", err)
		}
	}
	if err := l.fs.SyncDir(l.cfg.Dir); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

type truncater interface{ Truncate(size int64) error }

// truncate cuts a segment to its intact part: in place where the file
// system allows, else by rewriting it atomically.
func (l *Log) truncate(name string, size int64) error {
	path := l.path(name)
	f, err := l.fs.OpenFile(path, os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if t, ok := f.(truncater); ok {
		err = t.Truncate(size)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if int64(len(b)) < size {
		return fmt.Errorf("%s shrank to %d bytes", name, len(b))
	}
	return atomicfile.WriteFile(l.fs, path, b[:size])
}

// createSegment starts a segment whose first record is a checkpoint with
// sequence number seq and prev hash prev, and makes it durable (file and
// directory) before it becomes the active one.
func (l *Log) createSegment(seq uint64, prev [32]byte, now time.Time) error {
	p, err := encodeRecord(seq, now, KindCheckpoint, nil, prev)
	if err != nil {
		return err
	}
	buf := appendFrame([]byte(segMagic), p)
	name := segName(seq)
	f, err := l.fs.OpenFile(l.path(name), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: create %s: %w", name, err)
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = l.fs.SyncDir(l.cfg.Dir)
	}
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("audit: write %s: %w", name, err)
	}
	l.segs = append(l.segs, &segFile{name: name, first: seq, size: int64(len(buf)), records: 1})
	l.total += int64(len(buf))
	l.active = f
	l.setHead(seq, sha256.Sum256(p))
	return nil
}

// rotate closes the active segment, starts the next one with a checkpoint
// and, once that is durable, deletes the oldest segments past MaxBytes.
func (l *Log) rotate(now time.Time) error {
	if err := l.active.Close(); err != nil {
		l.log.Warn("audit: close segment", "file", l.segs[len(l.segs)-1].name, "err", err)
	}
	l.active = nil
	seq, hash := l.Head()
	if err := l.createSegment(seq+1, hash, now); err != nil {
		return err
	}
	l.trim()
	return nil
}

// trim deletes the oldest segments, one at a time (each removal durable
// before the next), while the log is above MaxBytes. The segments kept
// are thus always a contiguous suffix of the chain.
func (l *Log) trim() {
	for l.total > l.cfg.MaxBytes && len(l.segs) > 1 {
		sf := l.segs[0]
		if err := l.fs.Remove(l.path(sf.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.log.Error("audit: delete old segment", "file", sf.name, "err", err)
			return
		}
		if err := l.fs.SyncDir(l.cfg.Dir); err != nil {
			l.log.Error("audit: delete old segment", "file", sf.name, "err", err)
			return
		}
		l.segs = l.segs[1:]
		l.total -= sf.size
	}
}

func (l *Log) setHead(seq uint64, hash [32]byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq, l.hash = seq, hash
	close(l.changed)
	l.changed = make(chan struct{})
}

// acquire waits for the writer's turn.
func (l *Log) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case l.turn <- struct{}{}:
		if l.isClosed() {
			<-l.turn
			return ErrClosed
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *Log) release() { <-l.turn }

func (l *Log) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// repair reloads the log from disk after a failed write.
func (l *Log) repair() error {
	if l.broken == nil {
		return nil
	}
	if err := l.load(); err != nil {
		return fmt.Errorf("audit: log unusable since %v: %w", l.broken, err)
	}
	l.broken = nil
	return nil
}

// Append adds a record of kind with detail and returns its sequence
// number once it is durable (written and fsynced). Kind [KindCheckpoint]
// is refused: only the log writes checkpoints. Appends are serialised;
// ctx bounds the wait for the turn, not the write.
//
// An Append that returns an error stored nothing, unless a crash or a
// failing disk interrupted it after its record reached the disk: then the
// record may be in the log, chained like any other.
func (l *Log) Append(ctx context.Context, kind Kind, detail Detail) (uint64, error) {
	if kind == KindCheckpoint {
		return 0, fmt.Errorf("%w: %v", ErrMalformed, errReservedKind)
	}
	if err := validateKind(kind); err != nil {
		return 0, err
	}
	if err := validateDetail(detail); err != nil {
		return 0, err
	}
	if err := l.acquire(ctx); err != nil {
		return 0, err
	}
	defer l.release()
	if err := l.repair(); err != nil {
		return 0, err
	}
	now := l.cfg.Now()
	seq, prev := l.Head()
	if seq >= maxSeq {
		return 0, fmt.Errorf("audit: sequence numbers exhausted")
	}
	p, err := encodeRecord(seq+1, now, kind, detail, prev)
	if err != nil {
		return 0, err
	}
	act := l.segs[len(l.segs)-1]
	if act.size+int64(frameHeader+len(p)) > l.cfg.SegmentBytes && act.records > 1 {
		if err := l.rotate(now); err != nil {
			l.broken = err
			return 0, err
		}
		seq, prev = l.Head()
		if p, err = encodeRecord(seq+1, now, kind, detail, prev); err != nil {
			return 0, err
		}
		act = l.segs[len(l.segs)-1]
	}
	frame := appendFrame(nil, p)
	_, err = l.active.Write(frame)
	if err == nil {
		err = l.active.Sync()
	}
	if err != nil {
		l.broken = err
		return 0, fmt.Errorf("audit: write %s: %w", act.name, err)
	}
	act.size += int64(len(frame))
	act.records++
	l.total += int64(len(frame))
	l.setHead(seq+1, sha256.Sum256(p))
	return seq + 1, nil
}

// Head returns the sequence number and hash of the last record: what a
// signed head vouches for.
func (l *Log) Head() (seq uint64, hash [32]byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, l.hash
}

// wait returns a channel closed at the next append, or when the log
// closes.
func (l *Log) wait() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// Export writes the log's segments, oldest first, one after the other:
// the form [VerifyStream] reads, for uploading the log to the cloud.
func (l *Log) Export(ctx context.Context, w io.Writer) (int64, error) {
	if err := l.acquire(ctx); err != nil {
		return 0, err
	}
	defer l.release()
	if err := l.repair(); err != nil {
		return 0, err
	}
	var n int64
	for _, sf := range l.segs {
		f, err := os.Open(l.path(sf.name))
		if err != nil {
			return n, fmt.Errorf("audit: export: %w", err)
		}
		m, err := io.CopyN(w, f, sf.size)
		f.Close()
		n += m
		if err != nil {
			return n, fmt.Errorf("audit: export %s: %w", sf.name, err)
		}
	}
	return n, nil
}

// Close waits for an append under way and releases the files and the
// directory lock.
func (l *Log) Close() error {
	if err := l.acquire(context.Background()); err != nil {
		return nil // already closed
	}
	defer l.release()
	l.mu.Lock()
	l.closed = true
	close(l.changed)
	l.changed = make(chan struct{})
	close(l.changed)
	l.mu.Unlock()
	var err error
	if l.active != nil {
		err = l.active.Close()
		l.active = nil
	}
	l.unlock()
	if err != nil {
		return fmt.Errorf("audit: close: %w", err)
	}
	return nil
}
