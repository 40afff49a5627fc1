// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"errors"
	"io/fs"
	"syscall"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/update"
)

// deviceIDFormat states the device ID format for people (see
// identity.ValidateDeviceID).
const deviceIDFormat = "a device ID is 1 to 64 ASCII letters, digits, '.', '_' and '-', " +
	"starting with a letter or digit (for example sensor-0042)"

// hinted is an error with a hint chosen by the command that saw it, which
// knows better than the generic table below.
type hinted struct {
	err  error
	hint string
}

func (h *hinted) Error() string { return h.err.Error() }
func (h *hinted) Unwrap() error { return h.err }

// withHint attaches a hint to err (nil stays nil; an empty hint leaves err
// to the table below).
func withHint(err error, hint string) error {
	if err == nil || hint == "" {
		return err
	}
	return &hinted{err: err, hint: hint}
}

// hints maps the identity and update packages' sentinel errors, and a few system
// errors, to what the operator should do. Order matters: the first match
// wins, so specific conditions come before general ones (a reused token is
// also a refusal by the server).
var hints = []struct {
	err  error
	hint string
}{
	{context.Canceled, "interrupted"},
	{identity.ErrTokenReused, "this enrollment token was already used; issue a new one with `d2c token issue`"},
	{identity.ErrTokenExpired, "this enrollment token has expired (or the issuer's and the registrar's clocks disagree); " +
		"issue a new one with `d2c token issue`"},
	{identity.ErrTokenInvalid, "the registrar does not accept this token: check that it was issued by this fleet's CA " +
		"(`d2c token issue --ca DIR`) and copied whole"},
	{identity.ErrInvalidDeviceID, deviceIDFormat},
	{identity.ErrNoTrustAnchor, "give the fleet root fingerprint with --fingerprint (printed by `d2c ca init`, " +
		"also in CA_DIR/root.sha256) or the fleet CA certificates with --roots"},
	{identity.ErrKeyPermissions, "a key file or store directory is open to other users: chmod 600 the key file " +
		"(chmod 700 the directory); if someone else could read the key, treat it as compromised"},
	{identity.ErrRevoked, "this certificate has been revoked; if the device should stay in the fleet, " +
		"enroll it again with a new token (`d2c token issue`)"},
	{identity.ErrCertExpired, "the device certificate has expired: enroll again with a new token, " +
		"or use --allow-expired if the registrar allows it (registrar serve --renew-expired-within)"},
	{identity.ErrNoIdentity, "this device has no identity yet: run `d2c device enroll` first (and check --store)"},
	{identity.ErrUntrusted, "the registrar or certificate does not chain to the fleet root: check --fingerprint " +
		"(CA_DIR/root.sha256) or --roots, and that --url is this fleet's registrar"},
	{identity.ErrUnsupportedKey, "use --key-type p256 or ed25519, as allowed by the fleet CA"},
	{identity.ErrNotAuthorized, "the registrar refused the credential: check that the token was issued for this " +
		"--device, or, for renewal, that the current certificate is still valid"},
	{identity.ErrTooLarge, "an input exceeds its size limit: check that the file is the one intended"},
	{identity.ErrMalformed, "an input does not parse: check that the file holds what the flag asks for " +
		"(PEM certificates, a PKCS#8 key, a token)"},
	{update.ErrRootVersionSkip, "the repository's N.root.json files must run from the oldest version to the newest " +
		"without a gap, each holding its own version: restore the missing or misplaced one"},
	{update.ErrExpired, "metadata has expired: re-sign the timestamp (`d2c update timestamp`), the release " +
		"(`d2c update release sign`) or the root (`d2c update root rotate`), whichever the error names"},
	{update.ErrUnknownKey, "a document is signed with a key the root does not trust for its role: give the role's " +
		"key files, or trust the new key with `d2c update root rotate`"},
	{update.ErrThreshold, "too few of the role's keys signed: give more of its key files (repeat the flag)"},
	{update.ErrBadSignature, "a signature does not verify: the file was modified after signing; restore it or sign it again"},
	{update.ErrSecurityCounter, "raise --security-counter to at least the floor the error names"},
	{update.ErrRollback, "use a version above the one the error names"},
	{update.ErrMixAndMatch, "release.json and timestamp.json do not belong together: re-sign the timestamp " +
		"(`d2c update timestamp`) after publishing release.json"},
	{update.ErrWrongHardware, "check --hardware-class"},
	{update.ErrDigest, "this is not the image that was signed: publish the signed image again, or sign this one"},
	{update.ErrMalformed, "a repository file does not follow docs/update-format.md: restore it from a backup or sign it again"},
	{update.ErrTooLarge, "a repository file exceeds its size limit: check that the file is the one intended"},
	{update.ErrState, "the update agent's state in --state is unreadable (a failing disk?): the agent refuses to guess " +
		"what is installed; restore the directory from a backup, or provision the device again"},
	{update.ErrLocked, "another update agent uses --state: wait for it, or stop it"},
	{update.ErrBusy, "an update is under way: `d2c device update --status` tells where it stands"},
	{update.ErrNoTrial, "no release is on trial: `d2c device update --status` tells where the update stands"},
	{syscall.EADDRINUSE, "another program listens on that address: choose another --listen port, or stop the other program"},
	{syscall.ECONNREFUSED, "nothing listens at --url: check the address and that `d2c registrar serve` is running"},
	{fs.ErrNotExist, "a file or directory is missing: check the paths given in the flags"},
	{fs.ErrPermission, "permission denied: run as the user that owns the files"},
}

// hintFor returns the hint for err, or "" if there is none.
func hintFor(err error) string {
	var h *hinted
	if errors.As(err, &h) {
		return h.hint
	}
	for _, e := range hints {
		if errors.Is(err, e.err) {
			return e.hint
		}
	}
	return ""
}

// renamedFlags are the flags renamed, before the first release, so that
// each concept has one flag name across the commands (issue 14, item 3),
// by command path: old name to new name. They are not aliases: the old
// name is an unknown flag, whose error names the new one.
var renamedFlags = map[string]map[string]string{
	"ca init":             {"dir": "ca"},
	"ca server-cert":      {"dir": "ca"},
	"ca service-cert":     {"dir": "ca", "name": "service"},
	"ca revoke":           {"dir": "ca"},
	"ca crl":              {"dir": "ca"},
	"device enroll":       {"dir": "store", "anchors": "roots"},
	"device renew":        {"dir": "store"},
	"device show":         {"dir": "store"},
	"device update":       {"dir": "store"},
	"update keys gen":     {"type": "key-type"},
	"update release sign": {"name": "artifact"},
	"update verify":       {"name": "artifact", "security-counter": "installed-security-counter"},
}
