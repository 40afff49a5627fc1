// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Outbox storage.
//
// An outbox is a directory (mode 0700) of files, all mode 0600:
//
//	seg-<first ID, 16 hex digits>.log   message segments, append-only
//	acks.log                            IDs removed (acked, dropped, expired, purged)
//	quarantine-<n>.bin                  bytes set aside by the opener
//	lock                                flock held by the open Outbox
//
// Every segment and the acks log start with an 8-byte magic ("d2cobs1\n",
// "d2coba1\n") followed by frames:
//
//	[4-byte big-endian length n][4-byte big-endian CRC-32C of the payload][n-byte payload]
//
// with 0 < n <= limits.OutboxRecord. A segment frame's payload is the
// deterministic CBOR map of one message (msgRecord: ID, topic, payload,
// priority, expiry in Unix milliseconds, stream, a "more" flag set on
// every record of an Append but its last, and the (boot, seq) pair of a
// sequenced message). An acks-log payload is a CBOR map
// holding up to ackIDsPerRecord removed IDs. Decoding is strict (cborx).
//
// Appending. Append encodes its records under the outbox lock, assigns IDs
// (strictly increasing) and queues them in the pending batch; a single
// committer goroutine takes the whole pending batch at once, writes the
// queued removals to the acks log and fsyncs it, then writes every queued
// record to the active segment in one write and fsyncs it (plus an fsync of
// the directory when the segment is new), and only then wakes the appenders
// of that batch. Appenders that arrive during an fsync form the next batch:
// one fsync serves them all (group commit). The records of one Append never
// straddle two segments; the active segment is rotated before an Append
// that would take it past SegmentBytes.
//
// Removals (Ack, Drop, expiry) are applied in memory at once and queued
// for the committer, which writes them in its next commit without the
// caller waiting; removals are written before the records of the same
// commit, so a removal is durable once an Append or PurgeStream called
// after it has returned nil. PurgeStream waits for its commit.
//
// Reclaiming space. A segment is deleted (then the directory fsynced) once
// every message in it is removed, except the active segment and the one
// holding the highest stored ID (so that IDs continue above every ID ever
// stored: at open the next ID is one above the highest ID in any segment or
// in the acks log). A segment in which less than half the bytes are still
// live is relocated: its live records are appended, with their IDs, to the
// active segment and fsynced, then the old segment is deleted. A crash
// between the two leaves two identical copies; the opener keeps the later
// one. Disk use thus stays below about twice the live bytes plus the active
// and newest segments. The acks log is rewritten atomically (temporary file,
// fsync, rename, directory fsync) with only the IDs still present in a
// segment once most of its IDs refer to deleted segments. Removals are
// never needed for safety: a segment is deleted only when the removal of
// each of its messages is final in memory, and a lost removal only brings
// a message back (sent again, dropped by the cloud as a duplicate).
//
// Opening reads every segment and the acks log as a stream, one frame at a
// time (at most limits.OutboxRecord bytes). A frame with a bad length, CRC,
// encoding or content, or a truncated frame, ends the intact part of its
// file; so do the records of an Append whose last record is missing (a
// power cut in the middle of the write), which makes each Append
// all-or-nothing on disk too. The rest of the file is copied to
// quarantine-<n>.bin, counted and logged, and the file is truncated to its
// intact part (an acks log is rewritten). Payloads are not kept in memory:
// the index holds about 100 bytes per message, and Next reads each message
// back from its segment, checking its CRC again.
//
// Sending window. A sequenced message carries the (boot, seq) pair sealed
// in its envelope, and Append requires the pairs to rise with the IDs, so
// that ID order is sequence order. Next returns a sequenced message only
// if it belongs to the boot of the oldest sequenced message still stored
// (the floor) and its seq is less than sendWindow above the floor's: the
// cloud's replay window (wire.ReplayWindowSize) refuses a message more than
// that far below the newest it has accepted, so letting priority, the
// Receive Maximum or a reconnection send anything further ahead would
// have the cloud refuse, as a replay, a message the broker acknowledged
// and the outbox deleted. Priority therefore reorders messages within the
// window; a message outside it waits however high its priority.
//
// Only the committer writes, deletes and renames; the FS interface
// (atomicfile.FS) carries every such operation so that tests can cut the
// power at each one (crashfs).

package outbox

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/cborx"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/transport/internal/outboxhook"
	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/wire"
)

// ErrFull is returned by [Outbox.Append] when the messages do not fit
// within MaxMessages or MaxBytes. Nothing of that call is stored; nothing
// stored is ever dropped to make room.
var ErrFull = errors.New("transport: outbox full")

// ErrClosed is returned by the methods of a closed [Outbox].
var ErrClosed = errors.New("transport: outbox closed")

// ErrMessageTooLarge is returned by [Outbox.Append] for a message whose
// stored record would exceed limits.OutboxRecord (256 KiB). Retrying cannot
// help: split the message.
var ErrMessageTooLarge = errors.New("transport: message too large for the outbox")

// Config configures [Open]. The zero value of every field but
// Dir means its default.
type Config struct {
	// Dir is the outbox directory. Required. It is created with mode 0700
	// if missing. One Outbox at a time may use it: Open takes a lock
	// in it and fails if another holder keeps it for more than a few
	// seconds.
	Dir string
	// MaxMessages bounds the stored messages. Default 100 000
	// (limits.OutboxMessages).
	MaxMessages int
	// MaxBytes bounds the stored topic and payload bytes. Default 32 MiB
	// (limits.OutboxBytes). Disk use stays below about twice this plus two
	// segments.
	MaxBytes int64
	// SegmentBytes is the size at which the active segment file is
	// rotated. Default 4 MiB (limits.OutboxSegment); at most 64 MiB.
	SegmentBytes int64
	// Now is the clock for message expiry. Default time.Now.
	Now func() time.Time
	// Logger receives quarantines, drops and write failures. Default: none.
	Logger *slog.Logger

	fs       atomicfile.FS // nil: the operating system; tests inject crashfs
	ackSlack int           // acks-log compaction threshold; 0: ackCompactSlack, <0: none (tests)
}

// Message is one message of the outbox.
type Message struct {
	// ID is assigned by [Outbox.Append]: strictly increasing, never
	// reused, also across restarts. Append ignores the value given.
	ID uint64
	// Topic is the MQTT topic: 1 to 65535 bytes of UTF-8, without NUL or
	// wildcards.
	Topic string
	// Payload is the message body.
	Payload []byte
	// Priority orders delivery: higher first, FIFO within a priority.
	Priority uint8
	// Expires, if not zero, is when the message stops being worth sending:
	// from then on it is dropped (and counted) instead of returned by
	// [Outbox.Next]. It is stored with millisecond precision.
	Expires time.Time
	// Stream is the telemetry stream, for [Outbox.PurgeStream]. Empty, or
	// a valid stream name ([wire.ValidateStream]).
	Stream string
	// Boot and Seq are the (boot, seq) pair sealed in the message's record
	// (Boot at least 1), or both zero for a message outside the device's
	// sequence (a session-key delivery). Append refuses a sequenced message
	// whose pair is not above every pair appended before it; [Outbox.Next]
	// keeps sequenced messages within the cloud's replay window.
	Boot, Seq uint64
}

// ErrOutOfSequence is returned by [Outbox.Append] for a sequenced message
// whose (boot, seq) pair is not above every pair appended before it.
var ErrOutOfSequence = errors.New("transport: outbox: message out of sequence")

// Stats reports an outbox's content and its counters since open.
type Stats struct {
	Len         int    // messages stored and not removed
	Bytes       int64  // their topic and payload bytes
	Appended    uint64 // messages stored by Append
	Acked       uint64 // removed by Ack
	Dropped     uint64 // removed by Drop
	Expired     uint64 // removed because they expired
	Purged      uint64 // removed by PurgeStream
	Quarantined uint64 // torn or corrupt file tails set aside, and messages that no longer read back intact
}

// Outbox is the device's durable queue of outgoing messages.
//
// [Outbox.Append] returns only once its messages are on disk (fsynced);
// concurrent appenders share each fsync. A delivery loop takes messages
// with [Outbox.Next], publishes them, and removes each with [Outbox.Ack]
// after a successful PUBACK, or [Outbox.Drop] after a permanent refusal.
// Nothing whose Append returned nil is lost by a crash or power cut before
// it is removed.
//
// Removal durability: Ack, Drop and expiry remove a message from memory at
// once (Next no longer returns it) and queue its removal for the committer,
// which writes and fsyncs it in its next commit, starting at once, without
// the caller waiting. A removal is durable once an Append or PurgeStream
// called after it returned has returned nil, or Close has returned nil. A
// power cut before that may bring the message back after a restart: it is
// sent again, and the cloud drops the duplicate.
//
// Delivery is at least once: an Append that returns an error stored nothing
// unless the error is its context's (then its messages may still be
// stored), or a crash or failing disk interrupted the write after it
// reached the disk.
type Outbox struct {
	cfg   Config
	fs    atomicfile.FS
	log   *slog.Logger
	modes cborx.Modes

	unlock  func()
	kickCh  chan struct{}
	stopped chan struct{}

	mu         sync.Mutex
	idle       *sync.Cond // signalled when the committer has nothing to do (tests)
	closed     bool
	busy       bool // the committer is working
	avail      chan struct{}
	gone       chan struct{} // closed at the next removal; nil while no flush waits
	pend       *batch        // accepting calls and removals
	inflight   *batch        // being committed
	nextID     uint64
	lastSeq    seqPair           // highest (boot, seq) appended or found
	window     uint64            // sendWindow; tests lower it
	entries    map[uint64]*entry // every message with a copy in a segment, live or removed
	segs       map[uint64]*segment
	queues     [256]*queue
	streams    map[string]string // interned stream names
	count      int               // live messages
	bytes      int64             // their topic+payload bytes
	resCount   int               // messages of calls not yet committed
	resBytes   int64
	removedIn  int // removed entries still in a segment (their IDs must stay in the acks log)
	failedAcks []uint64
	lastAckErr error
	rbuf       []byte
	nextQuar   int
	st         Stats

	// Committer state: touched only by the committer goroutine (and by
	// Open and Close when it is not running).
	active     *segment // open for append; nil until the next commit
	newest     *segment // holds the highest stored ID: never deleted
	ackF       atomicfile.File
	ackExists  bool
	ackSize    int64
	ackIDs     int  // IDs in the acks log
	ackBroken  bool // the acks log must be rewritten before the next append to it
	ackSlack   int  // compaction threshold (tests lower it)
	unsynced   []*segment
	finalTried bool
	wbuf       []byte
	did        struct{ rotated, deleted, relocated, compacted int } // for tests
}

// batch is what one commit writes.
type batch struct {
	calls    []*call
	acks     []uint64
	barriers int // PurgeStream calls waiting for this commit
	done     chan struct{}
	ackErr   error
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

func (b *batch) empty() bool { return len(b.calls) == 0 && len(b.acks) == 0 && b.barriers == 0 }

// call is the records of one Append.
type call struct {
	entries []*entry // off relative to buf until committed
	buf     []byte
	seg     *segment
	base    int64
	err     error
}

// entry is the index of one stored message.
type entry struct {
	id      uint64
	seg     *segment // the copy Next reads
	off     int64
	n       int32 // frame length
	size    int32 // topic + payload bytes
	expires int64 // Unix ms; 0: never
	stream  string
	seq     seqPair
	prio    uint8
	removed bool
	copies  int32 // frames holding this ID (2 after an interrupted relocation)
}

// seqPair is a message's (boot, seq); boot 0: not sequenced.
type seqPair struct{ boot, seq uint64 }

func (p seqPair) sequenced() bool { return p.boot != 0 }

// less orders pairs by boot, then seq.
func (p seqPair) less(q seqPair) bool {
	return p.boot < q.boot || p.boot == q.boot && p.seq < q.seq
}

type segment struct {
	first     uint64
	name      string
	size      int64    // intact bytes (committer)
	recs      []*entry // every frame in the file, one per copy
	live      int      // live entries whose read copy is here
	liveBytes int64
	f         atomicfile.File // append handle while active (committer)
	r         *os.File        // read handle, opened by the first read (mu)
	deleted   bool            // removed, directory fsync pending (committer)
}

type queue struct {
	items []*entry // by ID
	head  int
	dead  int // removed entries in items[head:]
}

// msgRecord is the stored form of a message.
type msgRecord struct {
	ID       uint64 `cbor:"1,keyasint"`
	Topic    string `cbor:"2,keyasint"`
	Payload  []byte `cbor:"3,keyasint"`
	Priority uint8  `cbor:"4,keyasint,omitempty"`
	Expires  int64  `cbor:"5,keyasint,omitempty"`
	Stream   string `cbor:"6,keyasint,omitempty"`
	More     bool   `cbor:"7,keyasint,omitempty"`
	Boot     uint64 `cbor:"8,keyasint,omitempty"`
	Seq      uint64 `cbor:"9,keyasint,omitempty"`
}

// ackRecord is one record of the acks log.
type ackRecord struct {
	IDs []uint64 `cbor:"1,keyasint"`
}

const (
	segMagic        = "d2cobs1\n"
	ackMagic        = "d2coba1\n"
	magicLen        = 8
	frameHeader     = 8
	ackLogName      = "acks.log"
	lockName        = "lock"
	ackIDsPerRecord = 4096
	maxOutboxID     = 1 << 62 // IDs above are corrupt: the counter can never overflow
	maxTopicLen     = 65535
	ackCompactSlack = 8192
	ackRetryDelay   = time.Second
	maxKeptBuffer   = 1 << 20
	// sendWindow is how far ahead of the oldest stored sequenced message
	// Next may go: the cloud's replay window.
	sendWindow = wire.ReplayWindowSize
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// outboxLockWait is how long Open waits for another holder of the
// directory's lock (tests lower it).
var outboxLockWait = 3 * time.Second

var (
	errTorn       = errors.New("truncated record")
	errChecksum   = errors.New("checksum mismatch")
	errIncomplete = errors.New("incomplete append (its last record is missing)")
	errMagic      = errors.New("not an outbox file of this version")
)

func init() {
	outboxhook.Open = func(fsys atomicfile.FS, cfg any) (any, error) {
		c := cfg.(Config)
		c.fs = fsys
		return Open(c)
	}
}

// Open opens (creating if needed) the outbox in cfg.Dir, reading
// every stored message back. Torn or corrupt file tails are set aside
// (quarantined), never fatal: every intact message before them is kept.
func Open(cfg Config) (*Outbox, error) {
	if cfg.Dir == "" {
		return nil, errors.New("transport: outbox: Config.Dir is required")
	}
	switch {
	case cfg.MaxMessages < 0, cfg.MaxBytes < 0, cfg.SegmentBytes < 0:
		return nil, errors.New("transport: outbox: negative bound in Config")
	case cfg.SegmentBytes > limits.OutboxSegmentMax:
		return nil, fmt.Errorf("transport: outbox: SegmentBytes %d above %d", cfg.SegmentBytes, limits.OutboxSegmentMax)
	}
	if cfg.MaxMessages == 0 {
		cfg.MaxMessages = limits.OutboxMessages
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = limits.OutboxBytes
	}
	if cfg.SegmentBytes == 0 {
		cfg.SegmentBytes = limits.OutboxSegment
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
	modes, err := cborx.New(ackIDsPerRecord)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.MkdirPrivate(fsys, cfg.Dir); err != nil {
		return nil, fmt.Errorf("transport: outbox: %w", err)
	}
	unlock, err := lockDir(filepath.Join(cfg.Dir, lockName))
	if err != nil {
		return nil, err
	}
	o := &Outbox{
		cfg: cfg, fs: fsys, log: cfg.Logger, modes: modes, unlock: unlock,
		kickCh: make(chan struct{}, 1), stopped: make(chan struct{}),
		busy: true, avail: make(chan struct{}), pend: newBatch(),
		entries: map[uint64]*entry{}, segs: map[uint64]*segment{}, streams: map[string]string{},
		nextQuar: 1, ackSlack: ackCompactSlack, window: sendWindow,
	}
	if cfg.ackSlack != 0 {
		o.ackSlack = max(cfg.ackSlack, 0)
	}
	o.idle = sync.NewCond(&o.mu)
	if err := o.load(); err != nil {
		o.closeReaders()
		unlock()
		return nil, err
	}
	go o.run()
	return o, nil
}

// lockDir takes the outbox lock, waiting at most outboxLockWait for another
// holder to let go.
func lockDir(path string) (func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), outboxLockWait)
	defer cancel()
	unlock, err := atomicfile.LockContext(ctx, path)
	if errors.Is(err, atomicfile.ErrLocked) {
		return nil, fmt.Errorf("transport: outbox %s is in use by another process or Outbox", filepath.Dir(path))
	}
	if err != nil {
		return nil, fmt.Errorf("transport: outbox: %w", err)
	}
	return unlock, nil
}

func segName(first uint64) string { return fmt.Sprintf("seg-%016x.log", first) }

func parseSegName(name string) (uint64, bool) {
	hex, ok := strings.CutPrefix(name, "seg-")
	if !ok {
		return 0, false
	}
	hex, ok = strings.CutSuffix(hex, ".log")
	if !ok || len(hex) != 16 || strings.ToLower(hex) != hex {
		return 0, false
	}
	v, err := strconv.ParseUint(hex, 16, 64)
	return v, err == nil
}

func (o *Outbox) path(name string) string { return filepath.Join(o.cfg.Dir, name) }

// load reads the directory into the index. It runs before the committer.
func (o *Outbox) load() error {
	des, err := os.ReadDir(o.cfg.Dir)
	if err != nil {
		return fmt.Errorf("transport: outbox: %w", err)
	}
	var firsts []uint64
	var temps []string
	hasAcks := false
	for _, de := range des {
		name := de.Name()
		if first, ok := parseSegName(name); ok {
			firsts = append(firsts, first)
			continue
		}
		switch {
		case name == ackLogName:
			hasAcks = true
		case strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-"):
			temps = append(temps, name)
		case strings.HasPrefix(name, "quarantine-") && strings.HasSuffix(name, ".bin"):
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, "quarantine-"), ".bin"))
			if err == nil && n >= o.nextQuar {
				o.nextQuar = n + 1
			}
		}
	}
	// Temporary files of an interrupted atomic write never counted.
	for _, name := range temps {
		if err := o.fs.Remove(o.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("transport: outbox: %w", err)
		}
	}
	if len(temps) > 0 {
		if err := o.fs.SyncDir(o.cfg.Dir); err != nil {
			return fmt.Errorf("transport: outbox: %w", err)
		}
	}
	slices.Sort(firsts)
	var maxID uint64
	for _, first := range firsts {
		top, err := o.loadSegment(first)
		if err != nil {
			return err
		}
		if top != nil && top.id > maxID {
			maxID, o.newest = top.id, top.seg
		}
	}
	if hasAcks {
		maxAck, err := o.loadAcks()
		if err != nil {
			return err
		}
		maxID = max(maxID, maxAck)
	}
	o.nextID = maxID + 1
	for _, e := range o.entries {
		if e.removed {
			o.removedIn++
			continue
		}
		e.seg.live++
		e.seg.liveBytes += int64(e.n)
		o.count++
		o.bytes += int64(e.size)
		o.queue(e.prio).items = append(o.queue(e.prio).items, e)
	}
	for _, q := range o.queues {
		if q != nil {
			slices.SortFunc(q.items, func(a, b *entry) int {
				switch {
				case a.id < b.id:
					return -1
				case a.id > b.id:
					return 1
				}
				return 0
			})
		}
	}
	if o.ackBroken {
		if err := o.compactAcks(nil); err != nil {
			o.log.Error("outbox: rewrite acks log", "err", err)
		}
	}
	return nil
}

func (o *Outbox) queue(prio uint8) *queue {
	q := o.queues[prio]
	if q == nil {
		q = &queue{}
		o.queues[prio] = q
	}
	return q
}

func (o *Outbox) intern(s string) string {
	if s == "" {
		return ""
	}
	if v, ok := o.streams[s]; ok {
		return v
	}
	o.streams[s] = s
	return s
}

// frameReader reads frames from a file after its magic.
type frameReader struct {
	br  *bufio.Reader
	off int64
	buf []byte
}

// next returns the next intact frame's payload (valid until the next call)
// and its offset. At a clean end it returns io.EOF; a bad or truncated frame
// gives a non-nil bad; err is an I/O error.
func (fr *frameReader) next() (payload []byte, off int64, bad, err error) {
	var h [frameHeader]byte
	n, err := io.ReadFull(fr.br, h[:])
	switch {
	case err == io.EOF:
		return nil, 0, nil, io.EOF
	case err == io.ErrUnexpectedEOF:
		return nil, 0, fmt.Errorf("%w: %d-byte header", errTorn, n), nil
	case err != nil:
		return nil, 0, nil, err
	}
	ln := binary.BigEndian.Uint32(h[0:])
	if ln == 0 || ln > limits.OutboxRecord {
		return nil, 0, fmt.Errorf("record length %d out of range", ln), nil
	}
	if cap(fr.buf) < int(ln) {
		fr.buf = make([]byte, ln)
	}
	p := fr.buf[:ln]
	if _, err := io.ReadFull(fr.br, p); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, 0, errTorn, nil
		}
		return nil, 0, nil, err
	}
	if crc32.Checksum(p, castagnoli) != binary.BigEndian.Uint32(h[4:]) {
		return nil, 0, errChecksum, nil
	}
	off = fr.off
	fr.off += frameHeader + int64(ln)
	return p, off, nil, nil
}

// openFrames opens a file and checks its magic. A nil reader with a nil
// error means the file holds no intact magic; bad then says whether it
// holds anything else than a torn one.
func openFrames(path, magic string) (f *os.File, fr *frameReader, size int64, bad error, err error) {
	f, err = os.Open(path)
	if err != nil {
		return nil, nil, 0, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, 0, nil, err
	}
	br := bufio.NewReaderSize(f, 64<<10)
	var m [magicLen]byte
	n, err := io.ReadFull(br, m[:])
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		f.Close()
		return nil, nil, 0, nil, err
	}
	if n < magicLen && string(m[:n]) == magic[:n] {
		return f, nil, st.Size(), nil, nil // created, magic torn: nothing was stored
	}
	if string(m[:n]) != magic {
		return f, nil, st.Size(), errMagic, nil
	}
	return f, &frameReader{br: br, off: magicLen}, st.Size(), nil, nil
}

type topEntry struct {
	id  uint64
	seg *segment
}

// loadSegment indexes one segment file, setting aside what follows its
// intact part. It returns the entry with the highest ID in it, if any.
func (o *Outbox) loadSegment(first uint64) (*topEntry, error) {
	name := segName(first)
	path := o.path(name)
	f, fr, size, bad, err := openFrames(path, segMagic)
	if err != nil {
		return nil, fmt.Errorf("transport: outbox: read %s: %w", name, err)
	}
	defer f.Close()
	s := &segment{first: first, name: name}
	good := int64(0)
	var top *topEntry
	if fr != nil {
		good = magicLen
		var pending []*entry // records of an append not yet complete
		for {
			p, off, b, err := fr.next()
			if err == io.EOF {
				if len(pending) > 0 {
					bad = errIncomplete
				}
				break
			}
			if err != nil {
				return nil, fmt.Errorf("transport: outbox: read %s: %w", name, err)
			}
			if b == nil {
				var rec msgRecord
				if err := o.modes.Dec.Unmarshal(p, &rec); err != nil {
					b = fmt.Errorf("decode: %w", err)
				} else if err := checkRecord(&rec); err != nil {
					b = err
				} else {
					pending = append(pending, &entry{
						id: rec.ID, seg: s, off: off, n: int32(frameHeader + len(p)),
						size: int32(len(rec.Topic) + len(rec.Payload)), expires: rec.Expires,
						stream: o.intern(rec.Stream), prio: rec.Priority, seq: seqPair{rec.Boot, rec.Seq},
					})
					if !rec.More {
						for _, e := range pending {
							o.index(s, e)
							if top == nil || e.id > top.id {
								top = &topEntry{e.id, s}
							}
						}
						pending = pending[:0]
						good = fr.off
					}
					continue
				}
			}
			if len(pending) > 0 {
				b = fmt.Errorf("%w, then %w", errIncomplete, b)
			}
			bad = b
			break
		}
	}
	s.size = good
	if bad != nil && size > good {
		// (A torn magic, fr == nil with bad == nil, held nothing.)
		if !o.quarantine(name, f, good, size, bad) {
			// Keep the only copy of those bytes; the next open retries.
			// This process never appends to the file.
			if len(s.recs) == 0 {
				return nil, nil
			}
			o.segs[first] = s
			return top, nil
		}
	}
	if len(s.recs) == 0 {
		// No intact record: nothing to keep.
		if err := atomicfile.Remove(o.fs, path); err != nil {
			o.log.Error("outbox: remove empty segment", "file", name, "err", err)
		}
		return nil, nil
	}
	if good < size {
		o.truncate(name, f, good)
	}
	o.segs[first] = s
	return top, nil
}

// checkRecord refuses intact records that Append could not have written.
func checkRecord(r *msgRecord) error {
	switch {
	case r.ID == 0 || r.ID > maxOutboxID:
		return fmt.Errorf("ID %d out of range", r.ID)
	case checkTopic(r.Topic) != nil:
		return checkTopic(r.Topic)
	case r.Stream != "" && wire.ValidateStream(r.Stream) != nil:
		return wire.ValidateStream(r.Stream)
	case r.Boot == 0 && r.Seq != 0:
		return fmt.Errorf("seq %d without a boot", r.Seq)
	}
	return nil
}

func checkTopic(t string) error {
	switch {
	case t == "":
		return errors.New("empty topic")
	case len(t) > maxTopicLen:
		return fmt.Errorf("topic of %d bytes", len(t))
	case !utf8.ValidString(t):
		return errors.New("topic is not UTF-8")
	case strings.ContainsAny(t, "+#\x00"):
		return fmt.Errorf("topic %q holds a wildcard or NUL", textutil.Clip(t))
	}
	return nil
}

// index adds a frame read at open. A second frame with the same ID is the
// copy made by a relocation that a crash interrupted: the later one (the
// relocated copy) is read from then on.
func (o *Outbox) index(s *segment, e *entry) {
	if old, ok := o.entries[e.id]; ok {
		old.seg, old.off, old.n = e.seg, e.off, e.n
		old.size, old.expires, old.stream, old.prio, old.seq = e.size, e.expires, e.stream, e.prio, e.seq
		old.copies++
		s.recs = append(s.recs, old)
		return
	}
	e.copies = 1
	o.entries[e.id] = e
	s.recs = append(s.recs, e)
	if o.lastSeq.less(e.seq) {
		o.lastSeq = e.seq
	}
}

// loadAcks applies the acks log and returns the highest ID in it.
func (o *Outbox) loadAcks() (uint64, error) {
	path := o.path(ackLogName)
	f, fr, size, bad, err := openFrames(path, ackMagic)
	if err != nil {
		return 0, fmt.Errorf("transport: outbox: read %s: %w", ackLogName, err)
	}
	defer f.Close()
	if fr == nil {
		if bad != nil {
			o.quarantine(ackLogName, f, 0, size, bad)
		}
		if err := atomicfile.Remove(o.fs, path); err != nil {
			return 0, fmt.Errorf("transport: outbox: %w", err)
		}
		return 0, nil
	}
	var maxID uint64
	for {
		p, _, b, err := fr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("transport: outbox: read %s: %w", ackLogName, err)
		}
		if b == nil {
			var rec ackRecord
			if err := o.modes.Dec.Unmarshal(p, &rec); err != nil {
				b = fmt.Errorf("decode: %w", err)
			} else if i := slices.IndexFunc(rec.IDs, func(id uint64) bool { return id == 0 || id > maxOutboxID }); i >= 0 {
				b = fmt.Errorf("ID %d out of range", rec.IDs[i])
			} else {
				for _, id := range rec.IDs {
					maxID = max(maxID, id)
					if e := o.entries[id]; e != nil {
						e.removed = true
					}
				}
				o.ackIDs += len(rec.IDs)
				continue
			}
		}
		o.quarantine(ackLogName, f, fr.off, size, b)
		o.ackBroken = true // rewritten at the end of load
		break
	}
	o.ackExists, o.ackSize = true, fr.off
	return maxID, nil
}

// quarantine copies bytes [from, size) of the file to quarantine-<n>.bin
// and reports whether the copy is durable.
func (o *Outbox) quarantine(name string, f *os.File, from, size int64, why error) bool {
	o.st.Quarantined++
	qname := fmt.Sprintf("quarantine-%d.bin", o.nextQuar)
	o.nextQuar++
	err := copyToFile(o.fs, o.path(qname), io.NewSectionReader(f, from, size-from))
	if err != nil {
		qname = ""
	}
	o.log.Warn("outbox: torn or corrupt file tail set aside", "file", name, "offset", from,
		"bytes", size-from, "why", why.Error(), "quarantine", qname, "err", err)
	return err == nil
}

type truncater interface{ Truncate(size int64) error }

// truncate cuts a segment to its intact part, in place where the file
// system allows, else by rewriting it atomically. Failure is logged only:
// this process never appends to the file, and the next open retries.
func (o *Outbox) truncate(name string, src *os.File, size int64) {
	path := o.path(name)
	err := func() error {
		f, err := o.fs.OpenFile(path, os.O_WRONLY, 0o600)
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
		return copyToFile(o.fs, path, io.NewSectionReader(src, 0, size))
	}()
	if err != nil {
		o.log.Error("outbox: truncate segment to its intact part", "file", name, "size", size, "err", err)
	}
}

// copyToFile writes r to name atomically: temporary file (0600), fsync,
// rename, directory fsync.
func copyToFile(fsys atomicfile.FS, name string, r io.Reader) error {
	dir, base := filepath.Split(name)
	f, err := fsys.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, name)
	}
	if err != nil {
		_ = fsys.Remove(tmp)
		return err
	}
	return fsys.SyncDir(dir)
}

func appendFrame(dst, payload []byte) []byte {
	var h [frameHeader]byte
	binary.BigEndian.PutUint32(h[0:], uint32(len(payload)))
	binary.BigEndian.PutUint32(h[4:], crc32.Checksum(payload, castagnoli))
	return append(append(dst, h[:]...), payload...)
}

func expiresMilli(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	if ms := t.UnixMilli(); ms != 0 {
		return ms
	}
	return -1 // the epoch itself: expired, but not "never"
}

// Append stores msgs durably and returns their IDs, in order. It returns
// only once they are fsynced (sharing the fsync with concurrent callers),
// and stores all of them or none: if they do not fit it returns an error
// wrapping [ErrFull]; a message over 256 KiB gives
// [ErrMessageTooLarge]. If ctx ends while Append waits for the disk, it
// returns ctx's error and the messages may still be stored.
func (o *Outbox) Append(ctx context.Context, msgs ...Message) ([]uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	a, err := o.Enqueue(msgs)
	if err != nil {
		return nil, err
	}
	return a.Wait(ctx)
}

// Pending is an append whose records are queued for the committer
// ([Outbox.Enqueue]).
type Pending struct {
	c   *call
	g   *batch
	ids []uint64
}

// Wait waits for the commit of a's records and returns their IDs. If ctx
// ends first the records may still be stored.
func (a *Pending) Wait(ctx context.Context) ([]uint64, error) {
	if a == nil {
		return nil, nil
	}
	select {
	case <-a.g.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("transport: outbox append (the messages may still be stored): %w", ctx.Err())
	}
	if a.c.err != nil {
		return nil, a.c.err
	}
	return a.ids, nil
}

// Enqueue checks msgs, assigns their IDs and queues their records for the
// committer: the first half of [Outbox.Append], which is Enqueue then
// [Pending.Wait]. A caller that must keep IDs in the order of something it
// assigns (the client's sequence numbers) calls it under its own lock and
// waits for the commit outside.
func (o *Outbox) Enqueue(msgs []Message) (*Pending, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	var size int64
	for i := range msgs {
		m := &msgs[i]
		if err := checkTopic(m.Topic); err != nil {
			return nil, fmt.Errorf("transport: outbox: message %d: %w", i, err)
		}
		if m.Stream != "" {
			if err := wire.ValidateStream(m.Stream); err != nil {
				return nil, fmt.Errorf("transport: outbox: message %d: %w", i, err)
			}
		}
		if n := len(m.Topic) + len(m.Payload); n > limits.OutboxRecord {
			return nil, fmt.Errorf("%w: message %d holds %d bytes, limit %d", ErrMessageTooLarge, i, n, limits.OutboxRecord)
		}
		size += int64(len(m.Topic) + len(m.Payload))
		if m.Boot == 0 && m.Seq != 0 {
			return nil, fmt.Errorf("%w: message %d has seq %d without a boot", ErrOutOfSequence, i, m.Seq)
		}
	}

	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil, ErrClosed
	}
	if n := o.count + o.resCount + len(msgs); n > o.cfg.MaxMessages {
		o.mu.Unlock()
		return nil, fmt.Errorf("%w: %d messages would exceed MaxMessages %d", ErrFull, n, o.cfg.MaxMessages)
	}
	if b := o.bytes + o.resBytes + size; b > o.cfg.MaxBytes {
		o.mu.Unlock()
		return nil, fmt.Errorf("%w: %d bytes would exceed MaxBytes %d", ErrFull, b, o.cfg.MaxBytes)
	}
	last := o.lastSeq
	for i := range msgs {
		p := seqPair{msgs[i].Boot, msgs[i].Seq}
		if !p.sequenced() {
			continue
		}
		if !last.less(p) {
			o.mu.Unlock()
			return nil, fmt.Errorf("%w: message %d is (boot %d, seq %d), not above (boot %d, seq %d)", ErrOutOfSequence, i, p.boot, p.seq, last.boot, last.seq)
		}
		last = p
	}
	c := &call{entries: make([]*entry, len(msgs))}
	ids := make([]uint64, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		rec := msgRecord{ID: o.nextID + uint64(i), Topic: m.Topic, Payload: m.Payload, Priority: m.Priority,
			Expires: expiresMilli(m.Expires), Stream: m.Stream, More: i < len(msgs)-1, Boot: m.Boot, Seq: m.Seq}
		p, err := o.modes.Enc.Marshal(rec)
		if err == nil && len(p) > limits.OutboxRecord {
			err = fmt.Errorf("%w: message %d is a %d-byte record, limit %d", ErrMessageTooLarge, i, len(p), limits.OutboxRecord)
		}
		if err != nil {
			o.mu.Unlock()
			return nil, fmt.Errorf("transport: outbox: encode message %d: %w", i, err)
		}
		c.entries[i] = &entry{id: rec.ID, off: int64(len(c.buf)), n: int32(frameHeader + len(p)),
			size: int32(len(m.Topic) + len(m.Payload)), expires: rec.Expires, stream: o.intern(m.Stream), prio: m.Priority,
			seq: seqPair{m.Boot, m.Seq}}
		c.buf = appendFrame(c.buf, p)
		ids[i] = rec.ID
	}
	o.nextID += uint64(len(msgs))
	o.lastSeq = last
	o.resCount += len(msgs)
	o.resBytes += size
	g := o.pend
	g.calls = append(g.calls, c)
	o.mu.Unlock()
	o.kick()
	return &Pending{c: c, g: g, ids: ids}, nil
}

func (o *Outbox) kick() {
	select {
	case o.kickCh <- struct{}{}:
	default:
	}
}

// Next returns up to max deliverable messages: highest priority first, by
// ID within a priority, skipping those for which exclude (which may be nil)
// reports true, typically those in flight. A sequenced message is
// deliverable only within the sending window: of the boot of the oldest
// sequenced message stored, and less than 256 (the cloud's replay window)
// above its seq. Expired messages met on the way are removed and counted.
// exclude runs with the outbox locked and must not call it. Next reads
// each message from disk; one that no longer reads back intact is removed
// and counted as quarantined.
func (o *Outbox) Next(max int, exclude func(id uint64) bool) []Message {
	return o.next(max, exclude, true)
}

// next is Next, keeping to the sending window if windowed (tests read
// everything stored without it).
func (o *Outbox) next(max int, exclude func(id uint64) bool, windowed bool) []Message {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed || max <= 0 {
		return nil
	}
	now := o.cfg.Now().UnixMilli()
	floor := o.floorLocked()
	var out []Message
	removed := false
	for p := len(o.queues) - 1; p >= 0 && len(out) < max; p-- {
		q := o.queues[p]
		if q == nil {
			continue
		}
		q.trim()
		for i := q.head; i < len(q.items) && len(out) < max; i++ {
			e := q.items[i]
			if e.removed {
				continue
			}
			if windowed && e.seq.sequenced() && (e.seq.boot != floor.boot || e.seq.seq >= floor.seq+o.window) {
				// Outside the window, and so is every later message
				// of the queue (IDs rise with the pairs).
				break
			}
			if e.expires != 0 && e.expires <= now {
				o.removeLocked(e)
				o.st.Expired++
				removed = true
				continue
			}
			if exclude != nil && exclude(e.id) {
				continue
			}
			m, err := o.readLocked(e)
			if err != nil {
				var corrupt *corruptError
				if !errors.As(err, &corrupt) {
					o.log.Error("outbox: read message", "id", e.id, "err", err)
					continue // perhaps transient: left in place
				}
				o.log.Error("outbox: message no longer intact, removed", "id", e.id, "segment", e.seg.name, "err", err)
				o.removeLocked(e)
				o.st.Quarantined++
				removed = true
				continue
			}
			out = append(out, m)
		}
	}
	if removed {
		o.kick()
	}
	return out
}

// floorLocked returns the (boot, seq) of the oldest sequenced message
// stored: the one with the lowest ID, since pairs rise with IDs.
func (o *Outbox) floorLocked() seqPair {
	var floor *entry
	for _, q := range o.queues {
		if q == nil {
			continue
		}
		for _, e := range q.items[q.head:] {
			if floor != nil && e.id > floor.id {
				break
			}
			if !e.removed && e.seq.sequenced() {
				floor = e
				break
			}
		}
	}
	if floor == nil {
		return seqPair{}
	}
	return floor.seq
}

func (o *Outbox) trimAll() {
	for _, q := range o.queues {
		if q != nil {
			q.trim()
		}
	}
}

// trim drops removed entries from the head of the queue and compacts it
// when it is mostly removed entries.
func (q *queue) trim() {
	for q.head < len(q.items) && q.items[q.head].removed {
		q.items[q.head] = nil
		q.head++
		q.dead--
	}
	switch {
	case q.head == len(q.items):
		q.items, q.head = q.items[:0], 0
	case q.dead > 1024 && q.dead*2 > len(q.items)-q.head:
		j := 0
		for _, x := range q.items[q.head:] {
			if !x.removed {
				q.items[j] = x
				j++
			}
		}
		clear(q.items[j:])
		q.items, q.head, q.dead = q.items[:j], 0, 0
	case q.head > 1024 && q.head*2 > len(q.items):
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
}

type corruptError struct{ err error }

func (e *corruptError) Error() string { return e.err.Error() }
func (e *corruptError) Unwrap() error { return e.err }

// readLocked reads a message back from its segment.
func (o *Outbox) readLocked(e *entry) (Message, error) {
	rec, err := o.readRecordLocked(e)
	if err != nil {
		return Message{}, err
	}
	m := Message{ID: rec.ID, Topic: rec.Topic, Payload: rec.Payload, Priority: rec.Priority, Stream: rec.Stream, Boot: rec.Boot, Seq: rec.Seq}
	if rec.Expires != 0 {
		m.Expires = time.UnixMilli(rec.Expires)
	}
	return m, nil
}

func (o *Outbox) readRecordLocked(e *entry) (*msgRecord, error) {
	r, err := o.readerLocked(e.seg)
	if err != nil {
		return nil, err
	}
	if cap(o.rbuf) < int(e.n) {
		o.rbuf = make([]byte, e.n)
	}
	buf := o.rbuf[:e.n]
	if _, err := r.ReadAt(buf, e.off); err != nil {
		if err == io.EOF {
			return nil, &corruptError{errTorn}
		}
		return nil, err
	}
	return o.decodeFrame(buf, e.id)
}

func (o *Outbox) readerLocked(s *segment) (*os.File, error) {
	if s.r == nil {
		r, err := os.Open(o.path(s.name))
		if err != nil {
			return nil, err
		}
		s.r = r
	}
	return s.r, nil
}

// decodeFrame checks and decodes one whole segment frame.
func (o *Outbox) decodeFrame(buf []byte, id uint64) (*msgRecord, error) {
	p := buf[frameHeader:]
	if binary.BigEndian.Uint32(buf) != uint32(len(p)) {
		return nil, &corruptError{errors.New("record length changed")}
	}
	if crc32.Checksum(p, castagnoli) != binary.BigEndian.Uint32(buf[4:]) {
		return nil, &corruptError{errChecksum}
	}
	var rec msgRecord
	if err := o.modes.Dec.Unmarshal(p, &rec); err != nil {
		return nil, &corruptError{err}
	}
	if rec.ID != id {
		return nil, &corruptError{fmt.Errorf("record holds ID %d", rec.ID)}
	}
	return &rec, nil
}

// removeLocked removes a live, committed message and queues its removal.
func (o *Outbox) removeLocked(e *entry) {
	e.removed = true
	o.count--
	o.bytes -= int64(e.size)
	o.removedIn++
	e.seg.live--
	e.seg.liveBytes -= int64(e.n)
	o.queues[e.prio].dead++ // compacted by trim, never while iterating
	o.pend.acks = append(o.pend.acks, e.id)
	if o.gone != nil {
		close(o.gone)
		o.gone = nil
	}
}

// Ack removes messages after their successful delivery (PUBACK success).
// IDs not stored (already removed) are ignored. The removal is durable as
// the [Outbox] documentation says: lazily, without waiting.
func (o *Outbox) Ack(ids ...uint64) error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return ErrClosed
	}
	n := 0
	for _, id := range ids {
		if e := o.entries[id]; e != nil && !e.removed {
			o.removeLocked(e)
			n++
		}
	}
	if n > 0 {
		o.trimAll()
	}
	o.st.Acked += uint64(n)
	o.mu.Unlock()
	if n > 0 {
		o.kick()
	}
	return nil
}

// Drop removes a message that can never be delivered (for example PUBACK
// 0x87, not authorized), counting and logging it with reason. An ID not
// stored is ignored. Its durability is that of [Outbox.Ack].
func (o *Outbox) Drop(id uint64, reason string) error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return ErrClosed
	}
	e := o.entries[id]
	if e == nil || e.removed {
		o.mu.Unlock()
		return nil
	}
	stream := e.stream
	o.removeLocked(e)
	o.st.Dropped++
	o.mu.Unlock()
	o.kick()
	o.log.Warn("outbox: message dropped", "id", id, "stream", stream, "reason", reason)
	return nil
}

// PurgeStream removes every message of stream not yet acknowledged,
// including those of Append calls still in progress, and returns how many.
// It returns once the removal is durable. On error the messages are gone
// from this process but may come back after a restart: call it again.
func (o *Outbox) PurgeStream(stream string) (int, error) {
	if stream == "" {
		return 0, errors.New("transport: outbox: PurgeStream needs a stream name")
	}
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return 0, ErrClosed
	}
	var victims []*entry
	for _, q := range o.queues {
		if q == nil {
			continue
		}
		for _, e := range q.items[q.head:] {
			if !e.removed && e.stream == stream {
				victims = append(victims, e)
			}
		}
	}
	for _, e := range victims {
		o.removeLocked(e)
	}
	o.trimAll()
	n := len(victims)
	// Calls not yet committed: their records are written after these
	// removals, or in a commit already under way.
	for _, g := range []*batch{o.inflight, o.pend} {
		if g == nil {
			continue
		}
		for _, c := range g.calls {
			for _, e := range c.entries {
				if !e.removed && e.stream == stream {
					e.removed = true
					o.resCount--
					o.resBytes -= int64(e.size)
					o.pend.acks = append(o.pend.acks, e.id)
					n++
				}
			}
		}
	}
	o.st.Purged += uint64(n)
	g := o.pend
	g.barriers++
	o.mu.Unlock()
	o.kick()
	<-g.done
	if g.ackErr != nil {
		return n, fmt.Errorf("transport: outbox: purge stream %q: %w", stream, g.ackErr)
	}
	return n, nil
}

// Wait returns a channel that is closed when the next Append commits new
// messages, or when the outbox closes. Take it before calling Next, so
// that no commit between the two goes unnoticed:
//
//	for {
//		ch := o.Wait()
//		if msgs := o.Next(n, inflight); len(msgs) > 0 { ...; continue }
//		<-ch
//	}
func (o *Outbox) Wait() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.avail
}

// Flush waits until every message stored before the call (its Append
// returned) is removed: acknowledged, dropped, expired or purged. It
// returns ErrClosed if the outbox closes first, and ctx's error with
// the number of those messages still stored if ctx ends first.
//
// IDs rise with every Append, so the messages to wait for are the live
// ones below the next ID at the call, and the wait is over once the lowest
// live ID in any priority queue is at or above it. Each removal wakes the
// waiter (o.gone); an expiry wakes it by a timer, since while the client is
// offline no Next meets the expired message to remove it.
func (o *Outbox) Flush(ctx context.Context) (remaining int, err error) {
	o.mu.Lock()
	mark := o.nextID
	var (
		timer  *time.Timer
		expiry <-chan time.Time
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for scan := true; ; {
		if o.closed {
			o.mu.Unlock()
			return 0, ErrClosed
		}
		if scan {
			if timer != nil {
				timer.Stop()
				timer, expiry = nil, nil
			}
			if next, ok := o.expireBelowLocked(mark); ok {
				timer = time.NewTimer(max(time.Duration(next-o.cfg.Now().UnixMilli())*time.Millisecond, time.Millisecond))
				expiry = timer.C
			}
			scan = false
		}
		if o.countBelowLocked(mark) == 0 {
			o.mu.Unlock()
			return 0, nil
		}
		if o.gone == nil {
			o.gone = make(chan struct{})
		}
		gone := o.gone
		o.mu.Unlock()
		select {
		case <-gone:
		case <-expiry:
			scan = true
		case <-ctx.Done():
			o.mu.Lock()
			n := o.countBelowLocked(mark)
			o.mu.Unlock()
			return n, ctx.Err()
		}
		o.mu.Lock()
	}
}

// countBelowLocked counts the live, committed messages with an ID below
// mark.
func (o *Outbox) countBelowLocked(mark uint64) int {
	n := 0
	for _, q := range o.queues {
		if q == nil {
			continue
		}
		for _, e := range q.items[q.head:] {
			if e.id >= mark {
				break
			}
			if !e.removed {
				n++
			}
		}
	}
	return n
}

// expireBelowLocked removes, as Next would, the live messages with an ID
// below mark that have expired, and returns the earliest expiry (Unix ms)
// of those left, if one of them has any.
func (o *Outbox) expireBelowLocked(mark uint64) (next int64, ok bool) {
	now := o.cfg.Now().UnixMilli()
	removed := false
	for _, q := range o.queues {
		if q == nil {
			continue
		}
		for _, e := range q.items[q.head:] {
			if e.id >= mark {
				break
			}
			switch {
			case e.removed || e.expires == 0:
			case e.expires <= now:
				o.removeLocked(e)
				o.st.Expired++
				removed = true
			case !ok || e.expires < next:
				next, ok = e.expires, true
			}
		}
	}
	if removed {
		o.kick()
	}
	return next, ok
}

// Stats returns the outbox's content and counters.
func (o *Outbox) Stats() Stats {
	o.mu.Lock()
	defer o.mu.Unlock()
	st := o.st
	st.Len, st.Bytes = o.count, o.bytes
	return st
}

// Close waits for the Append and PurgeStream calls under way, writes the
// queued removals, and releases the files. Messages not removed stay stored
// for the next Open.
func (o *Outbox) Close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		<-o.stopped
		return nil
	}
	o.closed = true
	close(o.avail)
	if o.gone != nil {
		close(o.gone)
		o.gone = nil
	}
	o.mu.Unlock()
	o.kick()
	<-o.stopped
	var errs []error
	if len(o.failedAcks) > 0 {
		errs = append(errs, fmt.Errorf("transport: outbox: %d removals not recorded: %w", len(o.failedAcks), o.lastAckErr))
	}
	if o.active != nil && o.active.f != nil {
		if err := o.active.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("transport: outbox: close %s: %w", o.active.name, err))
		}
		o.active.f = nil
	}
	if o.ackF != nil {
		if err := o.ackF.Close(); err != nil {
			errs = append(errs, fmt.Errorf("transport: outbox: close %s: %w", ackLogName, err))
		}
		o.ackF = nil
	}
	o.closeReaders()
	o.unlock()
	return errors.Join(errs...)
}

func (o *Outbox) closeReaders() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range o.segs {
		if s.r != nil {
			s.r.Close()
			s.r = nil
		}
	}
}

// waitIdle waits until the committer has nothing left to do (tests).
func (o *Outbox) waitIdle() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for o.busy || !o.pend.empty() {
		o.idle.Wait()
	}
}

// run is the committer.
func (o *Outbox) run() {
	defer close(o.stopped)
	o.maintain()
	var retry <-chan time.Time
	for {
		retrying := false
		for {
			o.mu.Lock()
			g := o.pend
			closing := o.closed
			work := !g.empty()
			if len(o.failedAcks) > 0 && (work || retrying || closing && !o.finalTried) {
				g.acks = append(o.failedAcks, g.acks...)
				o.failedAcks = nil
				o.finalTried = o.finalTried || closing
				work = true
			}
			retrying = false
			if !work {
				o.busy = false
				o.idle.Broadcast()
				o.mu.Unlock()
				if closing {
					return
				}
				break
			}
			o.busy = true
			o.pend = newBatch()
			o.inflight = g
			o.mu.Unlock()

			o.commit(g)
			close(g.done)
			o.maintain()
			o.mu.Lock()
			if len(o.failedAcks) > 0 && retry == nil {
				retry = time.After(ackRetryDelay)
			}
			o.mu.Unlock()
		}
		select {
		case <-o.kickCh:
		case <-retry:
			retry, retrying = nil, true
		}
	}
}

// commit writes one batch: removals first, then records.
func (o *Outbox) commit(g *batch) {
	if len(g.acks) > 0 {
		if err := o.writeAcks(g.acks); err != nil {
			err = fmt.Errorf("transport: outbox: record removals: %w", err)
			o.log.Error("outbox: write acks log", "err", err)
			o.mu.Lock()
			o.failedAcks = append(o.failedAcks, g.acks...)
			o.lastAckErr = err
			o.mu.Unlock()
			g.ackErr = err
			for _, c := range g.calls {
				c.err = err
			}
		}
	}
	if g.ackErr == nil && len(g.calls) > 0 {
		o.writeCalls(g.calls)
	}
	o.publish(g)
}

// writeCalls appends the calls' records to the active segment, rotating it
// as needed, and fsyncs. Each call gets its segment and offset, or an
// error.
func (o *Outbox) writeCalls(calls []*call) {
	buf := o.wbuf[:0]
	var group []*call
	var failed error
	flush := func() {
		if len(group) == 0 {
			return
		}
		if err := o.writeActive(buf, true); err != nil {
			failed = err
		}
		for _, c := range group {
			c.err = failed
		}
		group, buf = group[:0], buf[:0]
	}
	for _, c := range calls {
		if failed == nil {
			at := int64(len(buf))
			if o.active != nil {
				at += o.active.size
			}
			if o.active == nil || at > magicLen && at+int64(len(c.buf)) > o.cfg.SegmentBytes {
				flush()
				if failed == nil {
					failed = o.rotate(c.entries[0].id)
				}
			}
		}
		if failed != nil {
			c.err = failed
			continue
		}
		if o.active.size == 0 && len(buf) == 0 {
			buf = append(buf, segMagic...)
		}
		c.seg, c.base = o.active, o.active.size+int64(len(buf))
		buf = append(buf, c.buf...)
		group = append(group, c)
	}
	flush()
	if cap(buf) <= maxKeptBuffer {
		o.wbuf = buf[:0]
	} else {
		o.wbuf = nil
	}
}

// rotate starts a new active segment whose first record has ID first.
func (o *Outbox) rotate(first uint64) error {
	if o.active != nil {
		if err := o.active.f.Close(); err != nil {
			o.log.Warn("outbox: close segment", "file", o.active.name, "err", err)
		}
		o.active.f, o.active = nil, nil
	}
	name := segName(first)
	f, err := o.fs.OpenFile(o.path(name), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("transport: outbox: create %s: %w", name, err)
	}
	s := &segment{first: first, name: name, f: f}
	o.mu.Lock()
	o.segs[first] = s
	o.mu.Unlock()
	o.active = s
	o.did.rotated++
	return nil
}

// writeActive writes buf to the active segment and makes it durable. On
// failure the segment is given up (cut back to its intact part if the
// file system allows) and the next commit starts a new one.
func (o *Outbox) writeActive(buf []byte, appended bool) error {
	s := o.active
	n, err := s.f.Write(buf)
	if err == nil {
		err = s.f.Sync()
	}
	if err == nil && s.size == 0 {
		err = o.fs.SyncDir(o.cfg.Dir) // the new file's name
	}
	if err != nil {
		if t, ok := s.f.(truncater); ok && n > 0 {
			if t.Truncate(s.size) == nil {
				_ = s.f.Sync()
			}
		}
		_ = s.f.Close()
		s.f, o.active = nil, nil
		return fmt.Errorf("transport: outbox: write %s: %w", s.name, err)
	}
	s.size += int64(len(buf))
	if appended {
		o.newest = s
	}
	return nil
}

// publish makes a committed batch visible and releases what failed.
func (o *Outbox) publish(g *batch) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.inflight = nil
	woke := false
	for _, c := range g.calls {
		for _, e := range c.entries {
			if c.err != nil {
				if !e.removed {
					o.resCount--
					o.resBytes -= int64(e.size)
				}
				continue
			}
			e.seg, e.off, e.copies = c.seg, c.base+e.off, 1
			o.entries[e.id] = e
			c.seg.recs = append(c.seg.recs, e)
			o.st.Appended++
			if e.removed { // purged before its commit
				o.removedIn++
				continue
			}
			o.resCount--
			o.resBytes -= int64(e.size)
			o.count++
			o.bytes += int64(e.size)
			c.seg.live++
			c.seg.liveBytes += int64(e.n)
			q := o.queue(e.prio)
			q.items = append(q.items, e)
			woke = true
		}
	}
	if woke && !o.closed {
		close(o.avail)
		o.avail = make(chan struct{})
	}
}

// writeAcks appends removal records to the acks log and fsyncs it.
func (o *Outbox) writeAcks(ids []uint64) error {
	if o.ackBroken {
		return o.compactAcks(ids)
	}
	var buf []byte
	fresh := false
	if o.ackF == nil {
		path := o.path(ackLogName)
		flag := os.O_WRONLY | os.O_APPEND
		if !o.ackExists {
			flag |= os.O_CREATE | os.O_EXCL
			fresh = true
			buf = append(buf, ackMagic...)
		}
		f, err := o.fs.OpenFile(path, flag, 0o600)
		if err != nil {
			o.ackBroken = true
			return err
		}
		o.ackF = f
		if fresh {
			o.ackExists, o.ackSize = true, 0
		}
	}
	buf, err := o.appendAckFrames(buf, ids)
	if err != nil {
		return err
	}
	n, err := o.ackF.Write(buf)
	if err == nil {
		err = o.ackF.Sync()
	}
	if err == nil && fresh {
		err = o.fs.SyncDir(o.cfg.Dir)
	}
	if err != nil {
		if t, ok := o.ackF.(truncater); ok && n > 0 {
			if t.Truncate(o.ackSize) == nil {
				_ = o.ackF.Sync()
			}
		}
		_ = o.ackF.Close()
		o.ackF, o.ackBroken = nil, true
		return err
	}
	o.ackSize += int64(len(buf))
	o.ackIDs += len(ids)
	return nil
}

func (o *Outbox) appendAckFrames(buf []byte, ids []uint64) ([]byte, error) {
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), ackIDsPerRecord)]
		ids = ids[len(chunk):]
		p, err := o.modes.Enc.Marshal(ackRecord{IDs: chunk})
		if err != nil {
			return nil, fmt.Errorf("transport: outbox: encode removals: %w", err)
		}
		buf = appendFrame(buf, p)
	}
	return buf, nil
}

// compactAcks rewrites the acks log atomically with the IDs of removed
// messages still in a segment, plus extra.
func (o *Outbox) compactAcks(extra []uint64) error {
	o.mu.Lock()
	ids := make([]uint64, 0, o.removedIn+len(extra))
	for id, e := range o.entries {
		if e.removed {
			ids = append(ids, id)
		}
	}
	o.mu.Unlock()
	ids = append(ids, extra...)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	buf, err := o.appendAckFrames([]byte(ackMagic), ids)
	if err != nil {
		return err
	}
	if o.ackF != nil {
		_ = o.ackF.Close()
		o.ackF = nil
	}
	if err := atomicfile.WriteFile(o.fs, o.path(ackLogName), buf); err != nil {
		o.ackBroken = true
		return err
	}
	o.ackExists, o.ackSize, o.ackIDs, o.ackBroken = true, int64(len(buf)), len(ids), false
	o.did.compacted++
	return nil
}

// maintain reclaims space after a commit: deletes segments with no live
// message, relocates one mostly dead segment, compacts the acks log.
func (o *Outbox) maintain() {
	o.deleteDead()
	if o.relocateOne() {
		o.deleteDead()
	}
	o.mu.Lock()
	compact := o.ackIDs > 2*o.removedIn+o.ackSlack
	o.mu.Unlock()
	if compact {
		if err := o.compactAcks(nil); err != nil {
			o.log.Error("outbox: compact acks log", "err", err)
		}
	}
}

// deleteDead deletes every segment whose messages are all removed, except
// the active and the newest. Their entries leave the index once the
// directory is fsynced, so that their IDs stay in the acks log until then.
func (o *Outbox) deleteDead() {
	o.mu.Lock()
	var dead []*segment
	for _, s := range o.segs {
		if s.live == 0 && !s.deleted && s != o.active && s != o.newest {
			dead = append(dead, s)
		}
	}
	o.mu.Unlock()
	if len(dead) == 0 && len(o.unsynced) == 0 {
		return
	}
	for _, s := range dead {
		if s.f != nil {
			_ = s.f.Close()
			s.f = nil
		}
		if err := o.fs.Remove(o.path(s.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			o.log.Error("outbox: delete segment", "file", s.name, "err", err)
			continue
		}
		s.deleted = true
		o.unsynced = append(o.unsynced, s)
	}
	if len(o.unsynced) == 0 {
		return
	}
	if err := o.fs.SyncDir(o.cfg.Dir); err != nil {
		o.log.Error("outbox: fsync directory after deleting segments", "err", err)
		return
	}
	o.mu.Lock()
	for _, s := range o.unsynced {
		for _, e := range s.recs {
			if e.copies--; e.copies == 0 {
				delete(o.entries, e.id)
				if e.removed {
					o.removedIn--
				}
			}
		}
		if s.r != nil {
			s.r.Close()
		}
		delete(o.segs, s.first)
		o.did.deleted++
	}
	o.mu.Unlock()
	o.unsynced = nil
}

// relocateOne moves the live records of the segment with the least live
// data, if less than half of it is live, to the active segment, so that the
// old one can be deleted. It reports whether it moved something.
func (o *Outbox) relocateOne() bool {
	if o.active == nil || o.active.size == 0 {
		return false
	}
	o.mu.Lock()
	var s *segment
	for _, c := range o.segs {
		if c == o.active || c == o.newest || c.deleted || c.live == 0 || c.liveBytes*2 > c.size {
			continue
		}
		if s == nil || c.liveBytes < s.liveBytes {
			s = c
		}
	}
	if s == nil {
		o.mu.Unlock()
		return false
	}
	type move struct {
		e   *entry
		off int64
		n   int32
	}
	var moves []move
	for _, e := range s.recs {
		if e.seg == s && !e.removed {
			moves = append(moves, move{e, e.off, e.n})
		}
	}
	r, err := o.readerLocked(s)
	o.mu.Unlock()
	if err != nil {
		o.log.Error("outbox: relocate segment", "file", s.name, "err", err)
		return false
	}
	var buf []byte
	var moved, broken []*entry
	var offs []int64
	var sizes []int32
	for _, m := range moves {
		frame := make([]byte, m.n)
		_, err := r.ReadAt(frame, m.off)
		var rec *msgRecord
		if err == nil {
			rec, err = o.decodeFrame(frame, m.e.id)
		}
		if err != nil {
			var corrupt *corruptError
			if errors.As(err, &corrupt) || err == io.EOF {
				broken = append(broken, m.e)
				continue
			}
			o.log.Error("outbox: relocate segment", "file", s.name, "err", err)
			return false
		}
		rec.More = false
		p, err := o.modes.Enc.Marshal(rec)
		if err != nil {
			o.log.Error("outbox: relocate segment", "file", s.name, "err", err)
			return false
		}
		offs = append(offs, int64(len(buf)))
		sizes = append(sizes, int32(frameHeader+len(p)))
		buf = appendFrame(buf, p)
		moved = append(moved, m.e)
	}
	dst := o.active
	base := dst.size
	if len(buf) > 0 {
		if err := o.writeActive(buf, false); err != nil {
			o.log.Error("outbox: relocate segment", "file", s.name, "err", err)
			return false
		}
	}
	o.mu.Lock()
	for i, e := range moved {
		if e.seg == s && !e.removed {
			s.live--
			s.liveBytes -= int64(e.n)
			dst.live++
			dst.liveBytes += int64(sizes[i])
		}
		e.seg, e.off, e.n = dst, base+offs[i], sizes[i]
		e.copies++
		dst.recs = append(dst.recs, e)
	}
	o.did.relocated++
	for _, e := range broken {
		if !e.removed {
			o.log.Error("outbox: message no longer intact, removed", "id", e.id, "segment", s.name)
			o.removeLocked(e)
			o.st.Quarantined++
		}
	}
	o.mu.Unlock()
	return true
}
