// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers branch on them with errors.Is; every error the
// package returns wraps one of them, or an I/O error, with context.
var (
	// ErrInvalidDeviceID: a device ID does not follow the documented format
	// (see [ValidateDeviceID]).
	ErrInvalidDeviceID = errors.New("identity: invalid device ID")
	// ErrKeyPermissions: a private key file can be read by group or others.
	ErrKeyPermissions = errors.New("identity: key file readable by group or others")
	// ErrUnsupportedKey: a key type outside policy (ECDSA P-256 and Ed25519
	// are allowed by default).
	ErrUnsupportedKey = errors.New("identity: unsupported key type")
	// ErrMalformed: bytes from outside (PEM, DER, base64, PKCS#7, PKCS#10) do
	// not parse, or parse to something out of bounds.
	ErrMalformed = errors.New("identity: malformed input")
	// ErrTooLarge: an input exceeds its limit.
	ErrTooLarge = errors.New("identity: input too large")
	// ErrTokenInvalid: an enrollment token does not verify (signature,
	// algorithm, key, type, audience or format).
	ErrTokenInvalid = errors.New("identity: enrollment token invalid")
	// ErrTokenExpired: an enrollment token is outside its validity period.
	ErrTokenExpired = errors.New("identity: enrollment token expired")
	// ErrTokenReused: an enrollment token was already used.
	ErrTokenReused = errors.New("identity: enrollment token already used")
	// ErrNotAuthorized: the request asks for something its credential does
	// not authorize (another device ID, another subject, extra names).
	ErrNotAuthorized = errors.New("identity: not authorized")
	// ErrRevoked: a certificate has been revoked.
	ErrRevoked = errors.New("identity: certificate revoked")
	// ErrCertExpired: a certificate is outside its validity period at the
	// trusted time.
	ErrCertExpired = errors.New("identity: certificate expired")
	// ErrUntrusted: a certificate or server does not chain to the trust
	// anchors, or a bootstrap fingerprint does not match.
	ErrUntrusted = errors.New("identity: not trusted")
	// ErrNoTrustAnchor: a client was configured with neither trust anchors
	// nor a bootstrap fingerprint; d2c never connects unverified.
	ErrNoTrustAnchor = errors.New("identity: no trust anchor configured")
	// ErrNoIdentity: the device store holds no complete key and certificate.
	ErrNoIdentity = errors.New("identity: device not enrolled")
)

// ServerError is an EST server's refusal: the HTTP status and the text the
// server gave. It unwraps to the sentinel matching the status (401:
// [ErrNotAuthorized] or a token error, 403: [ErrNotAuthorized], 400:
// [ErrMalformed], 413: [ErrTooLarge]).
type ServerError struct {
	Status  int
	Message string
	err     error
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("identity: EST server refused (HTTP %d): %s", e.Status, e.Message)
}

// Unwrap returns the sentinel for the status, or nil.
func (e *ServerError) Unwrap() error { return e.err }
