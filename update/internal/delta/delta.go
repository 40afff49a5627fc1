// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package delta reads and writes d2c delta images: the container specified
// in docs/update-format.md, section "Delta container".
//
// A delta rebuilds a new image (the target) from an earlier one (the base)
// in fixed-size blocks. Each block of the target is one standard zstd frame
// (RFC 8878) compressed with a raw content dictionary: a region of the base
// near the block's offset, named by the frame's record. Regions only move
// forward, so both ends stream: [Write] and [Apply] read the base once,
// front to back, keeping at most one region in memory, and memory is
// bounded by the header's sizes (themselves bounded by internal/limits),
// never by the image size.
//
// [Apply] refuses, with [ErrMalformed] or [ErrTooLarge], anything outside
// the container's profile before the zstd decoder sees it: a frame's
// header and block structure are walked first, and every size is checked
// against its bound. The caller checks the output's signed length
// and digest: a well-formed delta may still build another image.
package delta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"github.com/klauspost/compress/zstd"

	"github.com/d2c-iot/d2c/internal/limits"
)

// Magic starts every delta: "D2CDELT1", the '1' being the container
// version.
const Magic = "D2CDELT1"

// Sizes of the fixed parts, in bytes.
const (
	HeaderSize = 32 // magic, block size (u32), largest dictionary (u32), base length (u64), target length (u64)
	RecordSize = 16 // dictionary offset (u64), dictionary length (u32), frame length (u32)
)

// Defaults of [Write].
const (
	DefaultBlockSize = 1 << 20 // target bytes per frame
	DefaultReach     = 2 << 20 // base bytes before and after the block in its dictionary
)

// Sentinel errors of [Apply].
var (
	// ErrMalformed: bytes that are not a delta container of version 1, a
	// zstd frame outside the profile, or a frame that does not decode to
	// its block.
	ErrMalformed = errors.New("delta: malformed delta")
	// ErrTooLarge: a size over its bound in internal/limits (block,
	// dictionary, frame, zstd window).
	ErrTooLarge = errors.New("delta: delta exceeds a bound")
	// ErrBase: the delta was made from a base of another length.
	ErrBase = errors.New("delta: delta made for another base")
)

// Options tune [Write]; zero fields take the defaults.
type Options struct {
	// BlockSize is the target bytes per frame, a power of two from
	// limits.UpdateDeltaBlockMin to limits.UpdateDeltaBlock. Default
	// DefaultBlockSize.
	BlockSize int
	// Reach is how many base bytes before the block's offset and after
	// its end the frame's dictionary covers. 2×Reach+BlockSize must not
	// exceed limits.UpdateDeltaDict. Default DefaultReach.
	Reach int
	// Level is the zstd encoder level. Default zstd.SpeedBetterCompression
	// (the faster levels make little use of a large dictionary; the best
	// one is twice as slow for no smaller deltas on program images).
	Level zstd.EncoderLevel
}

// Header is the fixed start of a delta.
type Header struct {
	// BlockSize is the target bytes each frame builds (the last frame
	// builds the rest).
	BlockSize int
	// DictMax bounds every record's dictionary length: the decoder
	// allocates it once.
	DictMax int
	// BaseLength is the length of the base the delta was made from.
	BaseLength int64
	// TargetLength is the length of the image the delta builds.
	TargetLength int64
}

// Frames returns the number of frames that follow the header.
func (h Header) Frames() int64 {
	return (h.TargetLength + int64(h.BlockSize) - 1) / int64(h.BlockSize)
}

// MaxFrame returns the largest frame length a record may give for blocks
// of size block: zstd's worst case (raw blocks, RFC 8878 section 3.1.1.2)
// with room for the frame header and checksum.
func MaxFrame(block int) int { return block + block>>7 + 1024 }

func (h Header) append(b []byte) []byte {
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint32(b, uint32(h.BlockSize))
	b = binary.BigEndian.AppendUint32(b, uint32(h.DictMax))
	b = binary.BigEndian.AppendUint64(b, uint64(h.BaseLength))
	return binary.BigEndian.AppendUint64(b, uint64(h.TargetLength))
}

// ParseHeader decodes and checks a delta's header.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize || string(b[:8]) != Magic {
		return Header{}, fmt.Errorf("%w: no %s header", ErrMalformed, Magic)
	}
	bs := binary.BigEndian.Uint32(b[8:])
	dm := binary.BigEndian.Uint32(b[12:])
	base := binary.BigEndian.Uint64(b[16:])
	target := binary.BigEndian.Uint64(b[24:])
	if bs < limits.UpdateDeltaBlockMin || bs > limits.UpdateDeltaBlock || bs&(bs-1) != 0 {
		return Header{}, fmt.Errorf("%w: block size %d (want a power of two from %d to %d)", ErrTooLarge, bs, limits.UpdateDeltaBlockMin, limits.UpdateDeltaBlock)
	}
	if dm > limits.UpdateDeltaDict {
		return Header{}, fmt.Errorf("%w: dictionaries of up to %d bytes (at most %d)", ErrTooLarge, dm, limits.UpdateDeltaDict)
	}
	if base > 1<<62 || target > 1<<62 {
		return Header{}, fmt.Errorf("%w: base length %d, target length %d", ErrTooLarge, base, target)
	}
	return Header{BlockSize: int(bs), DictMax: int(dm), BaseLength: int64(base), TargetLength: int64(target)}, nil
}

// Record is what precedes each frame: the base region used as its
// dictionary and the frame's length.
type Record struct {
	// DictOffset and DictLength locate the frame's dictionary in the
	// base.
	DictOffset int64
	DictLength int
	// FrameLength is the length of the zstd frame that follows.
	FrameLength int
}

func (r Record) append(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(r.DictOffset))
	b = binary.BigEndian.AppendUint32(b, uint32(r.DictLength))
	return binary.BigEndian.AppendUint32(b, uint32(r.FrameLength))
}

// parseRecord decodes a record and checks it against the header and the
// previous record (regions never move backward).
func parseRecord(b []byte, h Header, prev Record) (Record, error) {
	off := binary.BigEndian.Uint64(b)
	n := binary.BigEndian.Uint32(b[8:])
	fl := binary.BigEndian.Uint32(b[12:])
	switch {
	case n > uint32(h.DictMax):
		return Record{}, fmt.Errorf("%w: dictionary of %d bytes (the header's largest is %d)", ErrTooLarge, n, h.DictMax)
	case off > uint64(h.BaseLength) || uint64(n) > uint64(h.BaseLength)-off:
		return Record{}, fmt.Errorf("%w: dictionary %d+%d past the base's %d bytes", ErrMalformed, off, n, h.BaseLength)
	case fl > uint32(MaxFrame(h.BlockSize)):
		return Record{}, fmt.Errorf("%w: frame of %d bytes (at most %d)", ErrTooLarge, fl, MaxFrame(h.BlockSize))
	}
	r := Record{DictOffset: int64(off), DictLength: int(n), FrameLength: int(fl)}
	if r.DictOffset < prev.DictOffset || r.DictOffset+int64(r.DictLength) < prev.DictOffset+int64(prev.DictLength) {
		return Record{}, fmt.Errorf("%w: dictionary %d+%d moves back from %d+%d", ErrMalformed, r.DictOffset, r.DictLength, prev.DictOffset, prev.DictLength)
	}
	return r, nil
}

// Apply reads a delta from d and writes the target it builds from base to
// dst. base yields the base image from its first byte (it is read at most
// to baseLength); targetLength is the length the caller expects (the
// signed artifact's). Apply returns nil once exactly targetLength bytes
// were written and d holds nothing more; it does not check the target's
// digest. dst receives whole blocks only.
func Apply(dst io.Writer, d io.Reader, base io.Reader, baseLength, targetLength int64) error {
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(d, hb[:]); err != nil {
		return fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	h, err := ParseHeader(hb[:])
	if err != nil {
		return err
	}
	if h.BaseLength != baseLength {
		return fmt.Errorf("%w: made from %d bytes, the base has %d", ErrBase, h.BaseLength, baseLength)
	}
	if h.TargetLength != targetLength {
		return fmt.Errorf("%w: builds %d bytes, the artifact has %d", ErrMalformed, h.TargetLength, targetLength)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(limits.UpdateDeltaWindow), zstd.WithDecoderMaxMemory(uint64(h.BlockSize)),
		zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return err
	}
	defer dec.Close()
	win := &window{r: base, limit: baseLength, buf: make([]byte, 0, h.DictMax)}
	frame := make([]byte, 0, MaxFrame(h.BlockSize))
	out := make([]byte, 0, h.BlockSize)
	var prev Record
	var rb [RecordSize]byte
	for i := range h.Frames() {
		want := int(min(int64(h.BlockSize), h.TargetLength-i*int64(h.BlockSize)))
		if _, err := io.ReadFull(d, rb[:]); err != nil {
			return fmt.Errorf("%w: frame %d record: %w", ErrMalformed, i, err)
		}
		r, err := parseRecord(rb[:], h, prev)
		if err != nil {
			return fmt.Errorf("frame %d: %w", i, err)
		}
		prev = r
		frame = frame[:r.FrameLength]
		if _, err := io.ReadFull(d, frame); err != nil {
			return fmt.Errorf("%w: frame %d: %w", ErrMalformed, i, err)
		}
		if err := CheckFrame(frame, want); err != nil {
			return fmt.Errorf("frame %d: %w", i, err)
		}
		dict, err := win.region(r.DictOffset, r.DictLength)
		if err != nil {
			return fmt.Errorf("delta: read base: %w", err)
		}
		if err := dec.ResetWithOptions(nil, zstd.WithDecoderDictRaw(0, dict)); err != nil {
			return err
		}
		got, err := dec.DecodeAll(frame, out[:0])
		if err != nil {
			return fmt.Errorf("%w: frame %d: %w", ErrMalformed, i, err)
		}
		if len(got) != want {
			return fmt.Errorf("%w: frame %d decodes to %d bytes, the block has %d", ErrMalformed, i, len(got), want)
		}
		if _, err := dst.Write(got); err != nil {
			return err
		}
	}
	var one [1]byte
	if n, _ := io.ReadFull(d, one[:]); n != 0 {
		return fmt.Errorf("%w: data after the last frame", ErrMalformed)
	}
	return nil
}

// zstd frame format, RFC 8878 section 3.1.1.
const (
	zstdMagic    = 0xFD2FB528
	maxZstdBlock = 128 << 10 // Block_Maximum_Size's upper bound
)

// CheckFrame walks one zstd frame (RFC 8878 section 3.1.1) that must
// decode to want bytes, and refuses anything outside the delta profile:
// another magic number (skippable frames included); a reserved or unused
// header bit set; a Dictionary_ID field (the dictionary is the raw base
// region, as with zstd --patch-from); a Frame_Content_Size other than want;
// a Window_Size over limits.UpdateDeltaWindow; a reserved block type or a
// block over 128 KiB; bytes after the frame. The block contents are left to
// the decoder.
func CheckFrame(f []byte, want int) error {
	if len(f) < 6 || binary.LittleEndian.Uint32(f) != zstdMagic {
		return fmt.Errorf("%w: not a zstd frame", ErrMalformed)
	}
	fhd := f[4]
	fcsFlag, single, checksum := fhd>>6, fhd&0x20 != 0, fhd&0x04 != 0
	if fhd&0x18 != 0 || fhd&0x03 != 0 {
		return fmt.Errorf("%w: frame header descriptor 0x%02x (reserved bits, or a dictionary ID)", ErrMalformed, fhd)
	}
	p := 5
	var win uint64
	if !single {
		wd := f[p]
		p++
		exp := uint(wd>>3) + 10
		if exp > 41 {
			return fmt.Errorf("%w: window log %d", ErrTooLarge, exp)
		}
		base := uint64(1) << exp
		win = base + base/8*uint64(wd&7)
	}
	fcsSize := [4]int{0, 2, 4, 8}[fcsFlag]
	if single && fcsFlag == 0 {
		fcsSize = 1
	}
	if len(f) < p+fcsSize {
		return fmt.Errorf("%w: frame header cut short", ErrMalformed)
	}
	if fcsSize > 0 {
		var fcs uint64
		switch fcsSize {
		case 1:
			fcs = uint64(f[p])
		case 2:
			fcs = uint64(binary.LittleEndian.Uint16(f[p:])) + 256
		case 4:
			fcs = uint64(binary.LittleEndian.Uint32(f[p:]))
		case 8:
			fcs = binary.LittleEndian.Uint64(f[p:])
		}
		p += fcsSize
		if fcs != uint64(want) {
			return fmt.Errorf("%w: frame content size %d, the block has %d", ErrMalformed, fcs, want)
		}
		if single {
			win = fcs
		}
	}
	if win > limits.UpdateDeltaWindow {
		return fmt.Errorf("%w: frame window of %d bytes (at most %d)", ErrTooLarge, win, limits.UpdateDeltaWindow)
	}
	for {
		if len(f) < p+3 {
			return fmt.Errorf("%w: block header cut short", ErrMalformed)
		}
		bh := uint32(f[p]) | uint32(f[p+1])<<8 | uint32(f[p+2])<<16
		p += 3
		last, typ, size := bh&1 != 0, (bh>>1)&3, int(bh>>3)
		if size > maxZstdBlock {
			return fmt.Errorf("%w: zstd block of %d bytes", ErrTooLarge, size)
		}
		switch typ {
		case 1: // RLE_Block: one byte
			size = 1
		case 3:
			return fmt.Errorf("%w: reserved zstd block type", ErrMalformed)
		}
		if len(f)-p < size {
			return fmt.Errorf("%w: zstd block cut short", ErrMalformed)
		}
		p += size
		if last {
			break
		}
	}
	if checksum {
		p += 4
	}
	if p != len(f) {
		return fmt.Errorf("%w: frame length %d, the frame ends at %d", ErrMalformed, len(f), p)
	}
	return nil
}

// window keeps one region of a stream read front to back: regions may
// only move forward, and bytes before a region are dropped.
type window struct {
	r     io.Reader
	limit int64  // bytes r may yield
	buf   []byte // the stream from off on
	off   int64
}

// region returns the n bytes at off, valid until the next call.
func (w *window) region(off int64, n int) ([]byte, error) {
	if off < w.off {
		return nil, fmt.Errorf("%w: region at %d before %d", ErrMalformed, off, w.off)
	}
	end := off + int64(n)
	if end > w.limit {
		return nil, fmt.Errorf("%w: region %d+%d past %d", ErrMalformed, off, n, w.limit)
	}
	if drop := off - w.off; drop > 0 {
		if drop >= int64(len(w.buf)) {
			// Skip what lies between the old region and the new one.
			if _, err := io.CopyN(io.Discard, w.r, drop-int64(len(w.buf))); err != nil {
				return nil, err
			}
			w.buf = w.buf[:0]
		} else {
			w.buf = w.buf[:copy(w.buf, w.buf[drop:])]
		}
		w.off = off
	}
	if have := w.off + int64(len(w.buf)); have < end {
		need := int(end - have)
		if cap(w.buf)-len(w.buf) < need {
			nb := make([]byte, len(w.buf), 1<<bits.Len(uint(len(w.buf)+need-1)))
			copy(nb, w.buf)
			w.buf = nb
		}
		k, err := io.ReadFull(w.r, w.buf[len(w.buf):len(w.buf)+need])
		w.buf = w.buf[:len(w.buf)+k]
		if err != nil {
			return nil, fmt.Errorf("base ends at %d, want %d bytes: %w", w.off+int64(len(w.buf)), end, err)
		}
	}
	return w.buf[:n], nil
}

// rest reads what remains of the stream up to its limit (so that a hash
// of everything read covers the whole stream), and refuses a stream that
// ends early.
func (w *window) rest() error {
	left := w.limit - w.off - int64(len(w.buf))
	n, err := io.CopyN(io.Discard, w.r, left)
	if err != nil {
		return fmt.Errorf("base ends at %d, want %d bytes: %w", w.limit-left+n, w.limit, err)
	}
	return nil
}

// Write writes to dst a delta that builds the target (targetLength bytes
// from target) from the base (baseLength bytes from base). It reads each
// input once, front to back, and holds at most one dictionary, one block
// and one frame in memory. Both inputs must yield exactly their lengths.
func Write(dst io.Writer, base io.Reader, baseLength int64, target io.Reader, targetLength int64, o Options) error {
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.Reach == 0 {
		o.Reach = DefaultReach
	}
	if o.Level == 0 {
		o.Level = zstd.SpeedBetterCompression
	}
	if o.Reach < 0 || 2*int64(o.Reach)+int64(o.BlockSize) > limits.UpdateDeltaDict {
		return fmt.Errorf("delta: reach %d: 2×reach+block over %d bytes", o.Reach, limits.UpdateDeltaDict)
	}
	h := Header{BlockSize: o.BlockSize, DictMax: int(min(2*int64(o.Reach)+int64(o.BlockSize), max(baseLength, 0))),
		BaseLength: baseLength, TargetLength: targetLength}
	if baseLength < 0 || targetLength < 0 {
		return fmt.Errorf("delta: negative length: base %d, target %d", baseLength, targetLength)
	}
	if _, err := ParseHeader(h.append(nil)); err != nil {
		return fmt.Errorf("delta: block size %d, base %d bytes, target %d bytes: %w", o.BlockSize, baseLength, targetLength, err)
	}
	// The encoder's window must reach the start of the dictionary from the
	// end of the block; it is not written into the frames.
	winSize := 1 << bits.Len(uint(2*o.Reach+o.BlockSize-1))
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(o.Level), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(max(winSize, zstd.MinWindowSize)), zstd.WithSingleSegment(true), zstd.WithEncoderCRC(true))
	if err != nil {
		return err
	}
	defer enc.Close()
	if _, err := dst.Write(h.append(nil)); err != nil {
		return err
	}
	win := &window{r: base, limit: baseLength, buf: make([]byte, 0, h.DictMax)}
	block := make([]byte, o.BlockSize)
	var frame, rec []byte
	for i := range h.Frames() {
		start := i * int64(o.BlockSize)
		n := int(min(int64(o.BlockSize), targetLength-start))
		if _, err := io.ReadFull(target, block[:n]); err != nil {
			return fmt.Errorf("delta: read target: %w", err)
		}
		lo := min(max(start-int64(o.Reach), 0), baseLength)
		hi := max(lo, min(baseLength, start+int64(n)+int64(o.Reach)))
		dict, err := win.region(lo, int(hi-lo))
		if err != nil {
			return fmt.Errorf("delta: read base: %w", err)
		}
		if err := enc.ResetWithOptions(nil, zstd.WithEncoderDictRaw(0, dict)); err != nil {
			return err
		}
		frame = enc.EncodeAll(block[:n], frame[:0])
		rec = Record{DictOffset: lo, DictLength: len(dict), FrameLength: len(frame)}.append(rec[:0])
		if _, err := dst.Write(rec); err != nil {
			return err
		}
		if _, err := dst.Write(frame); err != nil {
			return err
		}
	}
	var one [1]byte
	if k, _ := io.ReadFull(target, one[:]); k != 0 {
		return fmt.Errorf("delta: target longer than %d bytes", targetLength)
	}
	if err := win.rest(); err != nil {
		return fmt.Errorf("delta: read base: %w", err)
	}
	return nil
}
