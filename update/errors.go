// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"errors"
	"strings"
)

// Sentinel errors. Every refusal wraps exactly one of them, with context
// that names the document, the values compared and the attack stopped, for
// example "update: rollback: release version 3 is below the floor 5".
// Callers branch with errors.Is. A refusal never changes a [Trusted].
var (
	// ErrBadSignature: a signature by a key trusted for the role does not
	// verify (arbitrary software or metadata; a tampered byte).
	ErrBadSignature = errors.New("update: arbitrary metadata: bad signature")
	// ErrThreshold: fewer distinct trusted keys signed than the role's
	// threshold (arbitrary metadata; a stolen key below the threshold).
	ErrThreshold = errors.New("update: arbitrary metadata: signature threshold not met")
	// ErrUnknownKey: a signature names (kid) a key the trusted root does
	// not list for the role: an unknown, revoked or spoofed key.
	ErrUnknownKey = errors.New("update: arbitrary metadata: key not trusted for the role")
	// ErrAlgorithm: a signature algorithm outside ES256 and EdDSA ("none",
	// HS256 keyed with a public key), or one that does not match the
	// named key (algorithm confusion).
	ErrAlgorithm = errors.New("update: algorithm confusion: signature algorithm refused")
	// ErrRollback: a version older than the device's floor, or an
	// installed release newer than the one offered.
	ErrRollback = errors.New("update: rollback")
	// ErrSecurityCounter: a release whose security counter is below the
	// device's security-counter floor (rollback to a vulnerable release).
	ErrSecurityCounter = errors.New("update: rollback: security counter below the floor")
	// ErrExpired: metadata expired at the trusted time (freeze attack).
	ErrExpired = errors.New("update: freeze: metadata expired")
	// ErrMixAndMatch: release metadata that is not the one the verified
	// timestamp names (length, SHA-256 or version differ).
	ErrMixAndMatch = errors.New("update: mix-and-match: release does not match the timestamp")
	// ErrWrongHardware: a release for another hardware class.
	ErrWrongHardware = errors.New("update: wrong hardware: release is for another hardware class")
	// ErrTooLarge: an input over its bound in internal/limits (endless
	// data).
	ErrTooLarge = errors.New("update: endless data: input too large")
	// ErrRootVersionSkip: a root that is not exactly the trusted version
	// plus one (roots are walked one version at a time).
	ErrRootVersionSkip = errors.New("update: root rotation skips a version")
	// ErrMalformed: bytes that do not follow the format in
	// docs/update-format.md (JSON, JWS or field rules).
	ErrMalformed = errors.New("update: malformed metadata")
	// ErrWrongType: a document of another role than the one expected,
	// by its JWS "typ" or its "_type" field.
	ErrWrongType = errors.New("update: wrong metadata type")
	// ErrOutOfOrder: a call out of the update sequence (a root after the
	// timestamp, a release before it). A caller error, not an attack.
	ErrOutOfOrder = errors.New("update: metadata out of order")
	// ErrLength: a downloaded artifact shorter than its signed length.
	ErrLength = errors.New("update: artifact length mismatch")
	// ErrEndlessData: a download that goes on past the artifact's signed
	// length.
	ErrEndlessData = errors.New("update: endless data: artifact longer than its signed length")
	// ErrDigest: a downloaded artifact whose SHA-256 differs from the
	// signed one (arbitrary software).
	ErrDigest = errors.New("update: arbitrary software: artifact digest mismatch")
)

// contextError adds context to an error of this package without repeating
// its "update: " prefix: "update: sign release: malformed metadata: ...".
type contextError struct {
	context string
	err     error
}

func (e *contextError) Error() string {
	return "update: " + e.context + ": " + strings.TrimPrefix(e.err.Error(), "update: ")
}

func (e *contextError) Unwrap() error { return e.err }

func within(context string, err error) error { return &contextError{context, err} }
