// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/internal/limits"
)

// Report summarises a log that verified.
type Report struct {
	// Records is the number of records read, checkpoints included.
	Records int
	// Segments is the number of segments read.
	Segments int
	// First and Last are the sequence numbers of the first and the last
	// record; FirstTime and LastTime their times.
	First, Last         uint64
	FirstTime, LastTime time.Time
	// Head is the hash of the last record (zero for an empty log).
	Head [32]byte
	// FromGenesis: the first record is record 1, so the log is complete;
	// otherwise the records before First were compacted away (or removed
	// with their segments, which the log cannot tell apart).
	FromGenesis bool
	// TornBytes counts the bytes of an incomplete last record (or an
	// empty last segment) that were ignored: what a power cut leaves of an
	// append that never returned.
	TornBytes int64
	// HeadsChecked counts the signed heads found in the log.
	HeadsChecked int
	// HeadsCompacted counts the signed heads older than the first record
	// kept: they could not be checked.
	HeadsCompacted int
}

// Verify walks the log in dir (oldest segment first) and checks that it is
// one unbroken chain: every frame intact (CRC-32C), every record well
// formed, sequence numbers consecutive, every record's prev hash the hash
// of the record before it, every segment opened by a checkpoint named
// after it. It reports the first fault as a [*ChainError] wrapping
// [ErrTampered] (a record modified, missing, out of order) or
// [ErrMalformed]. An incomplete last record is ignored (counted in
// [Report.TornBytes]): it is what a power cut leaves of an append that
// never returned.
//
// The chain alone cannot reveal that records were cut off the end, or
// that the whole log was rewritten: check it against the heads the device
// signed ([VerifyAgainstHead]). Verify reads the files only: it may run
// while the device appends.
func Verify(dir string) (Report, error) {
	return VerifyAgainstHead(dir)
}

// VerifyAgainstHead is [Verify] that also checks the log against signed
// heads (from [VerifyHead]): a head's record must be in the log, with the
// head's hash. A log that ends before a head fails with [ErrTruncated]; a
// record that differs from its head fails with [ErrTampered]. A head
// older than the first record kept is counted in
// [Report.HeadsCompacted] and not checked.
func VerifyAgainstHead(dir string, heads ...SignedHead) (Report, error) {
	c := newChain(true, heads)
	if _, err := walkDir(dir, c, nil); err != nil {
		return c.rep, err
	}
	return c.finish()
}

// ReadDir is [Verify] that also returns the records, oldest first. On a
// fault it returns the records read before it.
func ReadDir(dir string) ([]Record, Report, error) {
	var recs []Record
	c := newChain(true, nil)
	if _, err := walkDir(dir, c, func(r Record) { recs = append(recs, r) }); err != nil {
		return recs, c.rep, err
	}
	rep, err := c.finish()
	return recs, rep, err
}

// VerifyStream is [VerifyAgainstHead] for a log exported with
// [Log.Export] (its segments, oldest first, one after the other), as a
// device uploads it. It reads at most limits.AuditLogMax (64 MiB).
func VerifyStream(r io.Reader, heads ...SignedHead) (Report, error) {
	c := newChain(true, heads)
	if err := walkStream(r, c, nil); err != nil {
		return c.rep, err
	}
	return c.finish()
}

// CheckLog checks records (as returned by [ReadDir], oldest first) as one
// chain, against the signed heads the cloud holds, as
// [VerifyAgainstHead] does. Each record's hash is computed again from its
// content.
func CheckLog(records []Record, heads ...SignedHead) (Report, error) {
	c := newChain(false, heads)
	for i := range records {
		p, err := records[i].encode()
		var r Record
		if err == nil {
			r, err = decodeRecord(p)
		}
		if err != nil {
			return c.rep, c.fault(chainErr(ErrMalformed, records[i].Seq, "record %d: %s", records[i].Seq, reason(err)))
		}
		if records[i].Hash != ([32]byte{}) && records[i].Hash != r.Hash {
			return c.rep, c.fault(chainErr(ErrTampered, r.Seq, "record %d modified (its hash does not match its content)", r.Seq))
		}
		if err := c.add(&r); err != nil {
			return c.rep, err
		}
	}
	return c.finish()
}

// reason is an error's text without this package's sentinel prefix.
func reason(err error) string {
	s := err.Error()
	for _, e := range []error{ErrMalformed, ErrTooLarge} {
		s = strings.TrimPrefix(s, e.Error()+": ")
	}
	return s
}

// chain is the pure state machine of verification: records in, a verdict
// out. A walk stops at the first fault, except that after a gap in the
// sequence numbers it only looks at them, to tell a record out of order
// from a missing one.
type chain struct {
	segments bool // segment structure is known: checkpoints open segments only
	heads    []SignedHead
	matched  []bool
	rep      Report
	next     uint64   // expected sequence number
	prev     [32]byte // hash of the last record
	lastSeq  uint64   // sequence number of the last record read
	segStart bool     // the next record opens a segment
	gap      *gap
}

// gap is records from..to missing where record to+1 followed record after.
type gap struct{ from, to, after uint64 }

func newChain(segments bool, heads []SignedHead) *chain {
	return &chain{segments: segments, heads: heads, matched: make([]bool, len(heads))}
}

func (c *chain) startSegment() {
	c.segStart = true
	c.rep.Segments++
}

// expected is the sequence number the next record should have, for
// messages; first is the caller's best guess before any record.
func (c *chain) expected(first uint64) uint64 {
	if c.rep.Records == 0 {
		return first
	}
	return c.next
}

// add checks the next record.
func (c *chain) add(r *Record) error {
	if c.gap != nil {
		if r.Seq >= c.gap.from && r.Seq <= c.gap.to {
			return chainErr(ErrTampered, r.Seq, "record %d out of order (found after record %d)", r.Seq, c.lastSeq)
		}
		c.lastSeq = r.Seq
		return nil
	}
	segStart := c.segStart
	c.segStart = false
	if c.rep.Records == 0 {
		if r.Seq == 1 && r.Prev != ([32]byte{}) {
			return chainErr(ErrTampered, 1, "record 1 is not the first record of a log (its prev hash is not zero)")
		}
		if c.segments && r.Kind != KindCheckpoint {
			return chainErr(ErrTampered, r.Seq, "the log begins at record %d, which is not a checkpoint (records before it removed)", r.Seq)
		}
		c.rep.First, c.rep.FirstTime, c.rep.FromGenesis = r.Seq, r.Time, r.Seq == 1
	} else {
		switch {
		case r.Seq > c.next:
			c.gap = &gap{from: c.next, to: r.Seq - 1, after: c.lastSeq}
			c.lastSeq = r.Seq
			return nil
		case r.Seq < c.next:
			return chainErr(ErrTampered, r.Seq, "record %d out of order or duplicated (found after record %d)", r.Seq, c.lastSeq)
		case r.Prev != c.prev:
			return chainErr(ErrTampered, r.Seq-1, "record %d modified (its hash does not match the prev hash of record %d)", r.Seq-1, r.Seq)
		}
	}
	if c.segments {
		if segStart && r.Kind != KindCheckpoint {
			return chainErr(ErrTampered, r.Seq, "record %d opens a segment but is not a checkpoint", r.Seq)
		}
		if !segStart && r.Kind == KindCheckpoint {
			return chainErr(ErrMalformed, r.Seq, "record %d: a checkpoint inside a segment", r.Seq)
		}
	}
	for i, h := range c.heads {
		if h.Seq == r.Seq {
			if h.Hash != r.Hash {
				return chainErr(ErrTampered, r.Seq, "record %d modified (it does not match the head signed at %s)",
					r.Seq, h.Time.UTC().Format(time.RFC3339))
			}
			c.matched[i] = true
		}
	}
	c.rep.Records++
	c.rep.Last, c.rep.LastTime, c.rep.Head = r.Seq, r.Time, r.Hash
	c.next, c.prev, c.lastSeq = r.Seq+1, r.Hash, r.Seq
	return nil
}

// fault returns err, unless a gap came before it: then the gap is the
// first fault.
func (c *chain) fault(err error) error {
	if c.gap != nil {
		return c.gapError()
	}
	return err
}

func (c *chain) gapError() error {
	g := c.gap
	if g.from == g.to {
		return chainErr(ErrTampered, g.from, "record %d missing (record %d follows record %d)", g.from, g.to+1, g.after)
	}
	return chainErr(ErrTampered, g.from, "records %d to %d missing (record %d follows record %d)", g.from, g.to, g.to+1, g.after)
}

// finish ends the walk: a pending gap, then the signed heads beyond the
// end of the log.
func (c *chain) finish() (Report, error) {
	if c.gap != nil {
		return c.rep, c.gapError()
	}
	for i, h := range c.heads {
		switch {
		case c.matched[i]:
			c.rep.HeadsChecked++
		case h.Seq == 0: // the head of an empty log: nothing to find
			c.rep.HeadsChecked++
		case c.rep.Records == 0:
			return c.rep, chainErr(ErrTruncated, h.Seq, "the log holds no record, the signed head is at record %d", h.Seq)
		case h.Seq > c.rep.Last:
			return c.rep, chainErr(ErrTruncated, h.Seq, "the log ends at record %d, before the signed head at record %d", c.rep.Last, h.Seq)
		default: // before the first record kept
			c.rep.HeadsCompacted++
		}
	}
	return c.rep, nil
}

// Frame scanning.

type frameKind int

const (
	frameEOF    frameKind = iota
	frameRecord           // an intact frame
	frameMagic            // a segment header (in an exported stream)
	frameTorn             // an incomplete frame running to the end of the input
	frameBad              // a corrupt frame with more bytes after it
)

// scanner reads frames. A frame is [4-byte big-endian length n][4-byte
// big-endian CRC-32C of the payload][n-byte payload], 0 < n <=
// limits.AuditRecord.
type scanner struct {
	br  *bufio.Reader
	off int64 // bytes consumed
	buf []byte
}

func newScanner(r io.Reader) *scanner {
	return &scanner{br: bufio.NewReaderSize(r, frameHeader+limits.AuditRecord+64)}
}

func (s *scanner) discard(n int) {
	d, _ := s.br.Discard(n)
	s.off += int64(d)
}

// magic reads a segment header: ok if it is there, torn if the input ends
// inside it (or is empty).
func (s *scanner) magic() (ok, torn bool, err error) {
	h, err := s.br.Peek(magicLen)
	if err != nil && err != io.EOF {
		return false, false, err
	}
	if len(h) < magicLen && string(h) == segMagic[:len(h)] {
		s.discard(len(h))
		return false, true, nil
	}
	if string(h) != segMagic {
		return false, false, nil
	}
	s.discard(magicLen)
	return true, false, nil
}

// next reads the next frame. A record's payload is valid until the next
// call; n is the bytes of a torn frame; why says what is wrong with a bad
// one. A torn frame is one the input ends inside, or one whose checksum
// fails while the input ends right after it, or a run of zero bytes to
// the end (what file systems leave of an append cut short).
func (s *scanner) next() (k frameKind, payload []byte, n int64, why string, err error) {
	h, err := s.br.Peek(frameHeader)
	switch {
	case len(h) == 0 && err == io.EOF:
		return frameEOF, nil, 0, "", nil
	case len(h) < frameHeader && err == io.EOF:
		s.discard(len(h))
		return frameTorn, nil, int64(len(h)), "", nil
	case err != nil:
		return 0, nil, 0, "", err
	}
	if string(h) == segMagic {
		s.discard(magicLen)
		return frameMagic, nil, 0, "", nil
	}
	ln := binary.BigEndian.Uint32(h)
	sum := binary.BigEndian.Uint32(h[4:])
	if ln == 0 || ln > limits.AuditRecord {
		rest, zero, err := s.drain()
		if err != nil {
			return 0, nil, 0, "", err
		}
		if zero {
			return frameTorn, nil, rest, "", nil
		}
		return frameBad, nil, 0, fmt.Sprintf("frame length %d out of range", ln), nil
	}
	f, err := s.br.Peek(frameHeader + int(ln))
	if len(f) < frameHeader+int(ln) {
		if err != io.EOF {
			return 0, nil, 0, "", err
		}
		s.discard(len(f))
		return frameTorn, nil, int64(len(f)), "", nil
	}
	if crc32.Checksum(f[frameHeader:], castagnoli) != sum {
		s.discard(len(f))
		if _, err := s.br.Peek(1); err == io.EOF {
			return frameTorn, nil, int64(len(f)), "", nil
		} else if err != nil {
			return 0, nil, 0, "", err
		}
		return frameBad, nil, 0, "checksum mismatch", nil
	}
	s.buf = append(s.buf[:0], f[frameHeader:]...)
	s.discard(len(f))
	return frameRecord, s.buf, 0, "", nil
}

// drain consumes the rest of the input and reports its length and whether
// it is all zero bytes.
func (s *scanner) drain() (n int64, zero bool, err error) {
	zero = true
	var b [4096]byte
	for {
		m, err := s.br.Read(b[:])
		for _, c := range b[:m] {
			zero = zero && c == 0
		}
		n += int64(m)
		s.off += int64(m)
		if err == io.EOF {
			return n, zero, nil
		}
		if err != nil {
			return n, zero, err
		}
	}
}

// Directories.

// segFile is one segment file as read.
type segFile struct {
	name    string
	first   uint64 // from its name
	size    int64  // bytes of its intact part
	records int
	torn    int64 // bytes after the intact part (the newest segment only)
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
	return v, err == nil && v > 0 && v <= maxSeq
}

// listSegments returns the segment files of dir, oldest first.
func listSegments(dir string) ([]*segFile, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	var segs []*segFile
	for _, de := range des {
		if first, ok := parseSegName(de.Name()); ok {
			if !de.Type().IsRegular() {
				return nil, fmt.Errorf("%w: %s is not a regular file", ErrMalformed, de.Name())
			}
			segs = append(segs, &segFile{name: de.Name(), first: first})
		}
	}
	if len(segs) > limits.AuditSegments {
		return nil, fmt.Errorf("%w: %d segment files, at most %d", ErrTooLarge, len(segs), limits.AuditSegments)
	}
	slices.SortFunc(segs, func(a, b *segFile) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	return segs, nil
}

// walkDir reads the segments of dir into c, calling fn (if set) with each
// record that passed. It returns the segment files as read: the newest may
// have a torn tail, or no record at all; any other fault is an error.
func walkDir(dir string, c *chain, fn func(Record)) ([]*segFile, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	var total int64
	kept := segs[:0]
	for i, sf := range segs {
		last := i == len(segs)-1
		err := walkSegment(filepath.Join(dir, sf.name), sf, last, &total, c, fn)
		if errors.Is(err, fs.ErrNotExist) && c.rep.Records == 0 && !last {
			continue // compacted by the writer since the listing
		}
		kept = append(kept, sf)
		if err != nil {
			return kept, err
		}
	}
	return kept, nil
}

func walkSegment(path string, sf *segFile, last bool, total *int64, c *chain, fn func(Record)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if *total += st.Size(); *total > limits.AuditLogMax {
		return fmt.Errorf("%w: log of more than %d bytes", ErrTooLarge, limits.AuditLogMax)
	}
	// Bytes appended while we read are not ours to judge.
	sc := newScanner(io.LimitReader(f, st.Size()))
	c.startSegment()
	ok, torn, err := sc.magic()
	switch {
	case err != nil:
		return fmt.Errorf("audit: read %s: %w", sf.name, err)
	case torn && !last:
		return c.fault(chainErr(ErrTampered, c.expected(sf.first), "segment %s holds no record", sf.name))
	case torn: // a rotation cut short
		sf.torn = sc.off
		c.rep.TornBytes += sf.torn
		c.rep.Segments--
		return nil
	case !ok:
		return c.fault(chainErr(ErrMalformed, c.expected(sf.first), "%s is not an audit log segment", sf.name))
	}
	sf.size = sc.off
	for {
		k, p, n, why, err := sc.next()
		if err != nil {
			return fmt.Errorf("audit: read %s: %w", sf.name, err)
		}
		seq := c.expected(sf.first)
		switch k {
		case frameEOF:
			if sf.records == 0 {
				if !last {
					return c.fault(chainErr(ErrTampered, seq, "segment %s holds no record", sf.name))
				}
				sf.torn, sf.size = sf.size, 0
				c.rep.TornBytes += sf.torn
				c.rep.Segments--
			}
			return nil
		case frameRecord:
			r, err := decodeRecord(p)
			if err != nil {
				return c.fault(chainErr(ErrMalformed, seq, "record %d: %s", seq, reason(err)))
			}
			if err := c.add(&r); err != nil {
				return err
			}
			if sf.records == 0 && c.gap == nil && r.Seq != sf.first {
				return chainErr(ErrTampered, r.Seq, "segment %s begins with record %d", sf.name, r.Seq)
			}
			sf.records++
			sf.size = sc.off
			if fn != nil && c.gap == nil {
				fn(r)
			}
		case frameMagic:
			return c.fault(chainErr(ErrTampered, seq, "segment %s: a segment header where record %d should be", sf.name, seq))
		case frameTorn:
			if !last {
				return c.fault(chainErr(ErrTampered, seq, "segment %s ends inside record %d (truncated or corrupt)", sf.name, seq))
			}
			sf.torn = n
			if sf.records == 0 {
				sf.torn, sf.size = sf.size+n, 0
				c.rep.Segments--
			}
			c.rep.TornBytes += sf.torn
			return nil
		case frameBad:
			return c.fault(chainErr(ErrTampered, seq, "record %d modified (%s)", seq, why))
		}
	}
}

// walkStream reads an exported log: segments one after the other.
func walkStream(r io.Reader, c *chain, fn func(Record)) error {
	cr := &countingReader{r: io.LimitReader(r, limits.AuditLogMax+1)}
	tooLarge := func() error {
		if cr.n > limits.AuditLogMax {
			return fmt.Errorf("%w: log of more than %d bytes", ErrTooLarge, limits.AuditLogMax)
		}
		return nil
	}
	sc := newScanner(cr)
	ok, torn, err := sc.magic()
	switch {
	case err != nil:
		return fmt.Errorf("audit: read log: %w", err)
	case torn:
		c.rep.TornBytes = sc.off
		return nil
	case !ok:
		return fmt.Errorf("%w: not an audit log export", ErrMalformed)
	}
	c.startSegment()
	segRecords := 0
	for {
		k, p, n, why, err := sc.next()
		if err != nil {
			return fmt.Errorf("audit: read log: %w", err)
		}
		seq := c.expected(0)
		switch k {
		case frameEOF:
			if segRecords == 0 {
				c.rep.TornBytes += int64(magicLen) // a rotation cut short
				c.rep.Segments--
			}
			return tooLarge()
		case frameMagic:
			if segRecords == 0 {
				return c.fault(chainErr(ErrTampered, seq, "segment %d holds no record", c.rep.Segments))
			}
			if c.rep.Segments >= limits.AuditSegments {
				return fmt.Errorf("%w: more than %d segments", ErrTooLarge, limits.AuditSegments)
			}
			c.startSegment()
			segRecords = 0
		case frameRecord:
			r, err := decodeRecord(p)
			if err != nil {
				return c.fault(chainErr(ErrMalformed, seq, "record %d: %s", seq, reason(err)))
			}
			if err := c.add(&r); err != nil {
				return err
			}
			segRecords++
			if fn != nil && c.gap == nil {
				fn(r)
			}
		case frameTorn:
			if err := tooLarge(); err != nil {
				return err
			}
			c.rep.TornBytes += n
			if segRecords == 0 {
				c.rep.TornBytes += int64(magicLen)
				c.rep.Segments--
			}
			return nil
		case frameBad:
			if err := tooLarge(); err != nil {
				return err
			}
			return c.fault(chainErr(ErrTampered, seq, "record %d modified (%s)", seq, why))
		}
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
