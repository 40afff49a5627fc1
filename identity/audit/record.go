// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/d2c-iot/d2c/internal/cborx"
	"github.com/d2c-iot/d2c/internal/limits"
)

// Kind names the event a record holds. The kinds below are those the SDK
// defines; an application may add its own (1 to 64 bytes of lower-case
// ASCII letters, digits, '.', '_' and '-', starting with a letter).
type Kind string

// Event kinds.
const (
	// KindCheckpoint opens every segment: the log's first record (its
	// genesis, sequence number 1), and the first record after each
	// rotation, which carries the previous segment's head in its sequence
	// number and prev hash. Only the log writes it; Append refuses it.
	KindCheckpoint Kind = "checkpoint"

	// KindEnrollment: the device obtained its first certificate.
	KindEnrollment Kind = "enrollment"
	// KindRenewal: the device renewed its certificate (a new key).
	KindRenewal Kind = "renewal"
	// KindAttestation: the device signed an attestation token.
	KindAttestation Kind = "attestation"
	// KindUpdateInstall: an update was installed into the inactive slot.
	KindUpdateInstall Kind = "update.install"
	// KindUpdateConfirm: an update was confirmed (the rollback floor rose).
	KindUpdateConfirm Kind = "update.confirm"
	// KindUpdateRevert: an update on trial was reverted.
	KindUpdateRevert Kind = "update.revert"
	// KindUpdateRefused: update metadata or an image was refused (an
	// attack on the update channel, or a broken repository).
	KindUpdateRefused Kind = "update.refused"
	// KindUpdateFailed: an update failed for another reason (I/O, space).
	KindUpdateFailed Kind = "update.failed"
	// KindCommandRefused: a command from the cloud was refused (bad
	// signature, expired, replayed).
	KindCommandRefused Kind = "command.refused"
	// KindMessageRefused: a message was refused (by the broker, or a
	// received message that did not verify).
	KindMessageRefused Kind = "message.refused"
	// KindConsent: the user granted or withdrew consent for a stream.
	KindConsent Kind = "consent"
	// KindDecommission: the device was decommissioned (keys destroyed,
	// queues wiped).
	KindDecommission Kind = "decommission"
)

// Detail is the small map of facts a record carries: at most
// limits.AuditDetailEntries (16) pairs and limits.AuditDetail (1 KiB) of
// keys and values together. Keys are 1 to 32 bytes of lower-case ASCII
// letters, digits, '.', '_' and '-', starting with a letter; values are
// UTF-8. Keep personal data out of it.
type Detail map[string]string

// Record is one record of the log, as read back.
type Record struct {
	// Seq is the record's sequence number: 1 for the log's first record,
	// one more for each next record, never reused.
	Seq uint64
	// Time is when the record was appended (the writer's clock, with
	// millisecond precision, UTC).
	Time time.Time
	// Kind is the event.
	Kind Kind
	// Detail holds the event's facts; nil when there are none.
	Detail Detail
	// Prev is the SHA-256 of the previous record's encoding; zero for
	// record 1.
	Prev [32]byte
	// Hash is the SHA-256 of this record's encoding: the next record's
	// Prev, and the head hash when it is the last.
	Hash [32]byte
}

// wireRecord is a record as encoded: a deterministic CBOR map with small
// integer keys.
type wireRecord struct {
	Seq    uint64            `cbor:"1,keyasint"`
	Time   int64             `cbor:"2,keyasint"` // Unix milliseconds
	Kind   string            `cbor:"3,keyasint"`
	Detail map[string]string `cbor:"4,keyasint,omitempty"`
	Prev   []byte            `cbor:"5,keyasint"`
}

const (
	// segMagic starts every segment file.
	segMagic    = "d2caud1\n"
	magicLen    = len(segMagic)
	frameHeader = 8
	// maxSeq bounds sequence numbers: a larger one is corrupt, and the
	// counter can never overflow.
	maxSeq      = 1 << 62
	maxKindLen  = 64
	maxKeyLen   = 32
	helperValue = 256 // typed helpers clip values to this many bytes
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// modes are the deterministic encoder and strict decoder of records.
var modes = func() cborx.Modes {
	m, err := cborx.New(limits.AuditDetailEntries)
	if err != nil {
		panic(err) // fixed options: cannot fail
	}
	return m
}()

// validateKind checks a kind's format.
func validateKind(k Kind) error {
	if len(k) == 0 || len(k) > maxKindLen {
		return fmt.Errorf("%w: kind of %d bytes, want 1 to %d", ErrMalformed, len(k), maxKindLen)
	}
	if !isName(string(k)) {
		return fmt.Errorf("%w: kind %q: want lower-case letters, digits, '.', '_' and '-'", ErrMalformed, clip(string(k)))
	}
	return nil
}

// isName reports whether s is lower-case ASCII letters, digits, '.', '_'
// and '-', starting with a letter.
func isName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || i > 0 && (c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			continue
		}
		return false
	}
	return s != ""
}

// validateDetail checks a detail's bounds and format.
func validateDetail(d Detail) error {
	if len(d) > limits.AuditDetailEntries {
		return fmt.Errorf("%w: detail of %d entries, at most %d", ErrTooLarge, len(d), limits.AuditDetailEntries)
	}
	n := 0
	for k, v := range d {
		if len(k) > maxKeyLen || !isName(k) {
			return fmt.Errorf("%w: detail key %q: want 1 to %d lower-case letters, digits, '.', '_' and '-'",
				ErrMalformed, clip(k), maxKeyLen)
		}
		if !utf8.ValidString(v) {
			return fmt.Errorf("%w: detail %s is not UTF-8", ErrMalformed, k)
		}
		n += len(k) + len(v)
	}
	if n > limits.AuditDetail {
		return fmt.Errorf("%w: detail of %d bytes, at most %d", ErrTooLarge, n, limits.AuditDetail)
	}
	return nil
}

// encodeRecord returns the encoding of a record.
func encodeRecord(seq uint64, t time.Time, kind Kind, d Detail, prev [32]byte) ([]byte, error) {
	w := wireRecord{Seq: seq, Time: t.UnixMilli(), Kind: string(kind), Prev: prev[:]}
	if len(d) > 0 {
		w.Detail = d
	}
	p, err := modes.Enc.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("audit: encode record: %w", err)
	}
	if len(p) > limits.AuditRecord {
		return nil, fmt.Errorf("%w: record of %d bytes, at most %d", ErrTooLarge, len(p), limits.AuditRecord)
	}
	return p, nil
}

// encode returns the encoding of r (its Hash is not part of it).
func (r *Record) encode() ([]byte, error) {
	return encodeRecord(r.Seq, r.Time, r.Kind, r.Detail, r.Prev)
}

// decodeRecord decodes and checks one record: strict CBOR, every field in
// bounds, and the one deterministic encoding (so that a record has exactly
// one spelling and one hash).
func decodeRecord(p []byte) (Record, error) {
	if len(p) > limits.AuditRecord {
		return Record{}, fmt.Errorf("%w: record of %d bytes", ErrTooLarge, len(p))
	}
	var w wireRecord
	if err := modes.Dec.Unmarshal(p, &w); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	switch {
	case w.Seq == 0 || w.Seq > maxSeq:
		return Record{}, fmt.Errorf("%w: sequence number %d out of range", ErrMalformed, w.Seq)
	case len(w.Prev) != sha256.Size:
		return Record{}, fmt.Errorf("%w: prev hash of %d bytes", ErrMalformed, len(w.Prev))
	}
	if err := validateKind(Kind(w.Kind)); err != nil {
		return Record{}, err
	}
	if err := validateDetail(w.Detail); err != nil {
		return Record{}, err
	}
	again, err := modes.Enc.Marshal(w)
	if err != nil || !bytes.Equal(again, p) {
		return Record{}, fmt.Errorf("%w: not in deterministic encoding", ErrMalformed)
	}
	r := Record{Seq: w.Seq, Time: time.UnixMilli(w.Time).UTC(), Kind: Kind(w.Kind), Hash: sha256.Sum256(p)}
	if len(w.Detail) > 0 {
		r.Detail = w.Detail
	}
	copy(r.Prev[:], w.Prev)
	return r, nil
}

// appendFrame appends [length][CRC-32C][payload] to dst.
func appendFrame(dst, payload []byte) []byte {
	var h [frameHeader]byte
	binary.BigEndian.PutUint32(h[0:], uint32(len(payload)))
	binary.BigEndian.PutUint32(h[4:], crc32.Checksum(payload, castagnoli))
	return append(append(dst, h[:]...), payload...)
}

// clip shortens untrusted text before it goes into an error.
func clip(s string) string {
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return s
}

// clipValue shortens a detail value to helperValue bytes, on a rune
// boundary.
func clipValue(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= helperValue {
		return s
	}
	s = s[:helperValue-3]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}

var errReservedKind = errors.New("kind checkpoint is written by the log only")
