// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package update delivers software to devices over a hostile channel: a
// compromised mirror or CDN, a network attacker, even a stolen signing key
// cannot make a device install software the fleet's owner did not sign for
// it, an older release, or stale metadata forever (the TUF and Uptane
// attack model).
//
// It holds both halves of the job. The cloud half signs metadata: the root
// of trust ([Root]), releases ([Release], [NewArtifact]) and the short-lived
// timestamps that name the current release ([NewTimestamp]). The device
// half verifies it in a pure, I/O-free state machine ([Trusted]). The
// package also holds the device's update agent, which fetches metadata and
// artifacts, installs into the inactive slot and confirms or reverts.
//
// The format is specified in docs/update-format.md: JSON documents signed
// as JWS (RFC 7515) in the JSON general serialization, one signature per
// key, ES256 or EdDSA only.
//
// # Roles and keys
//
// A [Root] lists the public keys of three roles and how many distinct keys
// of each must sign ([RoleKeys]):
//
//   - [RoleRoot] signs roots. Keep these keys offline, several of them
//     with a threshold above one; they are needed only to rotate keys.
//   - [RoleRelease] signs releases: version, security counter, hardware
//     class, artifacts with length and SHA-256, expiry.
//   - [RoleTimestamp] signs timestamps: short-lived (hours to a day),
//     naming the current release document by version, length and SHA-256.
//     This key is online, re-signing on a schedule; its theft alone cannot
//     make a device accept a release the release keys did not sign.
//
// Keys are any [crypto.Signer] on ECDSA P-256 or Ed25519 (files written by
// [identity.WriteKeyFile], PKCS#11 or TPM keys); key IDs are RFC 7638
// thumbprints ([identity.KeyID]). Build a root with [Root.SetRole], sign it
// with [Root.Sign]; rotate with [Root.Next], replacing a role's keys with
// [Root.SetRole] (a removed key is revoked), and sign the new root with a
// threshold of the old root keys and a threshold of the new ones.
//
// # Publishing a release
//
// Stream the image once with [NewArtifact] (length and SHA-256, memory
// flat), sign a [Release] with the release keys ([Release.Sign]), then a
// [Timestamp] naming the signed bytes ([NewTimestamp], [Timestamp.Sign]).
// Serve root versions as N.root.json, and the current release and
// timestamp; re-sign the timestamp before it expires. A release may also
// list deltas ([NewDelta], [Release.Deltas]) from earlier releases'
// images: the agent of a device that runs the base installs from the
// delta, checks the result against the full artifact's signed digest, and
// falls back to the full artifact on any failure ([Result.Delta]).
//
// # Verifying on the device
//
// A device starts each update cycle with [NewTrusted], from the root it
// pinned at manufacture (or the newest it persisted), its [Floors] and the
// trusted time (identity.TrustedClock.Now: a clock reset to 1970 does not
// make expired metadata valid). It then calls, in order,
// [Trusted.UpdateRoot] for each root version N+1 until none is found,
// [Trusted.UpdateTimestamp], and [Trusted.UpdateRelease]; persists
// [Trusted.RootBytes] and [Trusted.Floors]; decides with [Release.Newer]
// whether to install; and writes the download through
// [Artifact.Verifier], which refuses more than the signed length and
// checks the digest. Each check cites its step of the TUF specification
// (section 5) in the source and in docs/update-format.md.
//
// Every refusal wraps one sentinel error naming the attack it stopped
// ([ErrRollback], [ErrExpired], [ErrMixAndMatch], [ErrThreshold], ...) and
// leaves the [Trusted] unchanged. Every input is bounded before it is
// parsed (internal/limits), and JSON is decoded strictly: no duplicate or
// unknown members, one spelling of each value.
//
// # Floors
//
// The timestamp and release version floors rise as metadata verifies; a
// rotation that removes a timestamp or release key resets that floor, so
// the repository can recover from a stolen key used to push huge versions
// (fast-forward attack). The security-counter floor is raised only by the
// caller, when a release is confirmed after its trial boot, and is never
// reset.
//
// # Compatibility
//
// Documents carry "spec_version" "1.0"; a device refuses any other. A
// change of format that older devices could misread gets a new
// spec_version and new JWS "typ" values, never a silent reinterpretation.
package update
