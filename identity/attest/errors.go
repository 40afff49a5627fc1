// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package attest

import "errors"

// Sentinel errors. Callers branch on them with errors.Is. Every refusal of
// [Verifier.Verify] wraps one of them, or one of package identity's
// certificate sentinels (identity.ErrRevoked, identity.ErrUntrusted,
// identity.ErrCertExpired) when the device certificate is refused.
var (
	// ErrMalformed: a token is not an EAT of the d2c profile: not a compact
	// JWS, a header other than alg, kid and typ, a typ other than
	// [TokenType], an algorithm outside ES256 and EdDSA, a claims set that
	// is not strict JSON (duplicate or unknown claims, wrong types), or a
	// claim outside its bounds. Also returned by [Sign] for invalid
	// [Evidence].
	ErrMalformed = errors.New("attest: malformed token")
	// ErrTooLarge: a token exceeds its size limit.
	ErrTooLarge = errors.New("attest: token too large")
	// ErrSignature: the signature does not verify with the key of a
	// certificate registered for the device the token names, or the token's
	// kid names no such key.
	ErrSignature = errors.New("attest: bad signature")
	// ErrUnknownDevice: the certificate lookup knows no certificate for the
	// device the token names.
	ErrUnknownDevice = errors.New("attest: unknown device")
	// ErrWrongDevice: the token, its certificate and its nonce do not all
	// name the same device (another device's challenge answered, or a
	// certificate registered under a device ID it does not carry).
	ErrWrongDevice = errors.New("attest: wrong device")
	// ErrReplay: the nonce was never issued by this verifier, was already
	// used, was evicted, or has expired (then [ErrExpired] is wrapped too).
	ErrReplay = errors.New("attest: nonce unknown or already used")
	// ErrExpired: a challenge outlived its lifetime, or the token's iat lies
	// outside the challenge's window.
	ErrExpired = errors.New("attest: expired")
	// ErrPolicy: the token is authentic and fresh but the device state it
	// reports is not allowed by the [Policy] (image digest, software
	// version, debug status, boot state).
	ErrPolicy = errors.New("attest: refused by policy")
	// ErrTooManyChallenges: the nonce store is full of unexpired
	// challenges.
	ErrTooManyChallenges = errors.New("attest: too many outstanding challenges")
)
