// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error the package returns wraps one of them, or
// an I/O error, with context.
var (
	// ErrTampered: the log is not what its writer wrote: a record was
	// modified, removed, reordered or inserted, or does not match a
	// signed head. A [ChainError] says which record.
	ErrTampered = errors.New("audit: log tampered")
	// ErrTruncated: the log ends before a signed head the cloud holds:
	// records the device had already vouched for are gone.
	ErrTruncated = errors.New("audit: log truncated")
	// ErrMalformed: bytes do not decode as a log, a record or a signed
	// head, or a value is out of its format.
	ErrMalformed = errors.New("audit: malformed input")
	// ErrTooLarge: an input, record or detail exceeds its limit.
	ErrTooLarge = errors.New("audit: input too large")
	// ErrSignature: a signed head does not verify against the device's
	// certificate (another key, a modified token, a wrong algorithm).
	ErrSignature = errors.New("audit: head signature invalid")
	// ErrWrongDevice: a signed head names another device than the one
	// expected.
	ErrWrongDevice = errors.New("audit: head of another device")
	// ErrClosed: the log was closed.
	ErrClosed = errors.New("audit: log closed")
)

// ChainError is a fault found while walking a log: the record at fault,
// what is wrong with it, and the sentinel ([ErrTampered], [ErrTruncated]
// or [ErrMalformed]) it unwraps to.
type ChainError struct {
	// Seq is the sequence number of the record at fault (for a
	// truncation: the signed head's).
	Seq uint64
	// Problem says what is wrong, e.g. "record 5 modified (its hash does
	// not match the prev of record 6)".
	Problem string
	err     error
}

func (e *ChainError) Error() string { return e.err.Error() + ": " + e.Problem }

// Unwrap returns the sentinel.
func (e *ChainError) Unwrap() error { return e.err }

func chainErr(sentinel error, seq uint64, format string, args ...any) *ChainError {
	return &ChainError{Seq: seq, Problem: fmt.Sprintf(format, args...), err: sentinel}
}
