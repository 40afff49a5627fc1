// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package repo is the cloud half of an update repository: a directory of
// signed metadata and artifacts, as devices fetch it through
// [update.HTTPSource] and verify it with [update.Trusted]
// (docs/update-format.md). It serves the directory ([Handler]) and keeps
// its short-lived timestamp fresh with the online timestamp key
// ([SignTimestamp] once, [Refresher] on a schedule), so that a service
// can run a repository by itself; the d2c CLI's "update" commands are
// built on it.
//
// # Layout
//
//	DIR/1.root.json, 2.root.json, ...  every root version, never removed
//	DIR/root.json                      a copy of the newest root, to pin in new devices
//	DIR/<V>.release.json               every release version (devices fetch the one
//	                                   the timestamp names)
//	DIR/release.json                   a copy of the newest release, for people and tools
//	DIR/timestamp.json                 the short-lived timestamp naming the newest release
//	DIR/v<VERSION>/<IMAGE>             artifacts, by their relative URIs
//	DIR/.lock                          the writers' lock ([Lock]), never served
//
// Every file is written atomically (a temporary file, fsync, rename, fsync
// of the directory), mode 0644: the metadata is public, its signatures
// protect it. A crash or a failing signer leaves the previous file in
// place, never a half-written one.
//
// # Keys
//
// Only the timestamp key is online: [SignTimestamp] and [Refresher] take
// it as any [crypto.Signer] (a key file read with identity.ReadKeyFile,
// a PKCS#11 or TPM key). Root and release keys stay offline and never
// reach this package. A stolen timestamp key alone cannot make a device
// accept a release the release keys did not sign; it can only delay
// updates until the root replaces it.
//
// # Checked before written
//
// Nothing is written that a device would refuse: every timestamp is
// verified, with the release it names, as a new device trusting the
// repository's roots would ([NewTrusted]), before it replaces the one in
// place. Writers hold DIR/.lock from their first read to their last
// write, so two of them (a release being published and the timestamp
// job) never sign the same timestamp version.
//
// # Errors
//
// Conditions a caller acts on wrap a sentinel: [ErrNoRepository],
// [ErrNoRelease], [ErrReleaseExpired], [ErrLocked]. Refusals found by the
// device's checks wrap the sentinels of package update
// ([update.ErrUnknownKey] for a key the root does not trust,
// [update.ErrExpired] for an expired root, ...).
//
// # Compatibility
//
// The layout is part of the update format (docs/update-format.md, spec
// version 1.0) and changes only with it.
package repo
