// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

// The "update" commands sign, check and serve an update repository: a
// directory laid out as package update/repo describes it (DIR/N.root.json,
// root.json, <V>.release.json, release.json, timestamp.json, artifacts,
// DIR/.lock), which update.HTTPSource reads (docs/update-format.md). The
// repository's own logic lives there: its lock, the walk of its roots, the
// timestamp and the server; these commands add flags, keys from files and
// tokens, and hints.
//
// Every file is written atomically (internal/atomicfile), mode 0644: the
// metadata is public, its signatures protect it.

import (
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/update"
	updaterepo "github.com/d2c-iot/d2c/update/repo"
)

// Repository file names (update.HTTPSource).
const (
	repoRootCopy  = "root.json"
	repoRelease   = "release.json"
	repoTimestamp = "timestamp.json"
	rootSuffix    = ".root.json"
	releaseSuffix = ".release.json"
)

// b64url decodes JWS members (RFC 7515: base64url without padding).
var b64url = base64.RawURLEncoding

// repoFileMode is the mode of everything written into a repository: the
// web server serving it usually runs as another user.
const repoFileMode = 0o644

// anyHardwareClass stands for the device's class where only roots and
// timestamps are checked, which do not depend on it.
const anyHardwareClass = "any"

// roles are the update roles, in the order the commands list them.
var roles = []update.Role{update.RoleRoot, update.RoleRelease, update.RoleTimestamp}

func rootFileName(version uint64) string { return strconv.FormatUint(version, 10) + rootSuffix }

// readMeta reads a metadata file of the repository, bounded by max.
func readMeta(path string, max int64) ([]byte, error) {
	b, err := atomicfile.ReadFile(path, max)
	if errors.Is(err, atomicfile.ErrTooLarge) {
		return nil, fmt.Errorf("%w: %s is over %d bytes", update.ErrTooLarge, path, max)
	}
	return b, err
}

// openRepo is updaterepo.NewTrusted, with hints for the operator.
func openRepo(dir string, now time.Time, hardwareClass string) (*update.Trusted, error) {
	t, err := updaterepo.NewTrusted(dir, now, hardwareClass)
	return t, repoHint(err, dir)
}

// repoHint adds to an error of package update/repo the hint that tells
// the operator what to do next.
func repoHint(err error, dir string) error {
	switch {
	case errors.Is(err, updaterepo.ErrNoRepository):
		return withHint(err, fmt.Sprintf("check --repo, or create the repository with `d2c update root init --repo %s`", dir))
	case errors.Is(err, updaterepo.ErrNoRelease):
		return withHint(err, fmt.Sprintf("the repository has no release yet: sign one with `d2c update release sign --repo %s`", dir))
	case errors.Is(err, updaterepo.ErrReleaseExpired):
		return withHint(err, fmt.Sprintf("a fresh timestamp cannot revive an expired release: sign it again with "+
			"`d2c update release sign --repo %s` and a later --expires", dir))
	case errors.Is(err, update.ErrExpired):
		// The release is not expired: the root the timestamp is checked against is.
		return withHint(err, fmt.Sprintf("rotate the root to extend its expiry: d2c update root rotate --repo %s --old-key FILE", dir))
	}
	return err
}

// repoLockFile is the lock of the repository (updaterepo.Lock): the
// commands writing the repository hold it for their whole
// read-sign-write sequence, so that two of them (a release signing and
// the periodic timestamp job) never sign the same timestamp version.
// "update serve" never serves it: it is a dot file.
const repoLockFile = ".lock"

// repoLockWait is how long a writing command waits for another one to
// release the repository; a variable for tests.
var repoLockWait = 5 * time.Second

// lockRepo takes the repository lock (DIR/.lock), waiting at most
// repoLockWait for another d2c update command to finish.
func lockRepo(ctx context.Context, dir string) (unlock func(), err error) {
	wctx, cancel := context.WithTimeout(ctx, repoLockWait)
	defer cancel()
	unlock, err = updaterepo.Lock(wctx, dir)
	return unlock, lockError(ctx, dir, err)
}

// lockError says in the operator's words that another command held the
// lock of dir throughout repoLockWait, or returns ctx's error if the
// command was interrupted meanwhile; other errors get repoHint's hints.
func lockError(ctx context.Context, dir string, err error) error {
	if !errors.Is(err, updaterepo.ErrLocked) {
		return repoHint(err, dir)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	path := filepath.Join(dir, repoLockFile)
	return withHint(fmt.Errorf("another d2c update command is writing %s; try again", dir),
		fmt.Sprintf("a release signing or a timestamp job holds %s while it signs and writes: "+
			"run the command again once it is done (`fuser %s` names the process)", path, path))
}

// peekedMeta is the part of a metadata payload the signing commands
// continue from: the previous versions and counter.
type peekedMeta struct {
	Version         uint64 `json:"version"`
	SecurityCounter uint64 `json:"security_counter"`
	HardwareClass   string `json:"hardware_class"`
	Artifacts       []struct {
		Name   string `json:"name"`
		Length int64  `json:"length"`
		SHA256 string `json:"sha256"`
		URI    string `json:"uri"`
	} `json:"artifacts"`
}

// peekMeta decodes, without verifying its signatures, the payload of a
// signed document the repository already holds: the numbers a new
// document must follow (a timestamp version one higher, a release version
// not lower). Nothing is trusted from it: every document written is
// checked by update.Trusted first. It returns false if the file does not
// exist.
func peekMeta(path string, max int64) (peekedMeta, bool, error) {
	var m peekedMeta
	b, err := readMeta(path, max)
	if errors.Is(err, fs.ErrNotExist) {
		return m, false, nil
	}
	if err != nil {
		return m, false, err
	}
	var jws struct {
		Payload string `json:"payload"`
	}
	if err := json.Unmarshal(b, &jws); err != nil {
		return m, false, fmt.Errorf("%w: %s: %v", update.ErrMalformed, path, err)
	}
	payload, err := b64url.DecodeString(jws.Payload)
	if err != nil {
		return m, false, fmt.Errorf("%w: %s: payload: %v", update.ErrMalformed, path, err)
	}
	if err := json.Unmarshal(payload, &m); err != nil {
		return m, false, fmt.Errorf("%w: %s: payload: %v", update.ErrMalformed, path, err)
	}
	return m, true, nil
}

// readSigner reads the private key of an update role from a file written
// by "update keys gen", or opens it in a PKCS#11 token if path is a
// pkcs11: URI (keyref.go; the token is opened for each signature).
func readSigner(role update.Role, path string) (crypto.Signer, error) {
	if isPKCS11URI(path) {
		k, err := openTokenSigner(context.Background(), path)
		if err != nil {
			return nil, fmt.Errorf("%s key: %w", role, err)
		}
		return k, nil
	}
	k, err := identity.ReadKeyFile(path)
	switch {
	case errors.Is(err, identity.ErrKeyPermissions):
		msg := fmt.Sprintf("%s key file %s is readable by others", role, path)
		if st, serr := os.Stat(path); serr == nil {
			msg += fmt.Sprintf(" (mode %04o)", st.Mode().Perm())
		}
		return nil, withHint(&relabeled{msg: msg, err: err},
			fmt.Sprintf("chmod 600 %s; if someone else could have read it, treat the key as compromised and "+
				"replace it with `d2c update root rotate`", path))
	case errors.Is(err, fs.ErrNotExist):
		return nil, withHint(fmt.Errorf("%s key file: %w", role, err),
			fmt.Sprintf("check the path, or create a key with `d2c update keys gen --role %s`", role))
	case err != nil:
		return nil, fmt.Errorf("%s key: %w", role, err)
	}
	return k, nil
}

// relabeled is err said in other words, for the operator; errors.Is still
// finds err's sentinel.
type relabeled struct {
	msg string
	err error
}

func (e *relabeled) Error() string { return e.msg }
func (e *relabeled) Unwrap() error { return e.err }

func readSigners(role update.Role, paths []string) ([]crypto.Signer, error) {
	var ks []crypto.Signer
	for _, p := range paths {
		k, err := readSigner(role, p)
		if err != nil {
			return nil, err
		}
		ks = append(ks, k)
	}
	return ks, nil
}

// readPublicKeys reads the public keys (NAME.pub from "update keys gen")
// of a role.
func readPublicKeys(role update.Role, paths []string) ([]crypto.PublicKey, error) {
	var ks []crypto.PublicKey
	for _, p := range paths {
		k, err := identity.ReadPublicKeyFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, withHint(fmt.Errorf("%s public key: %w", role, err),
				fmt.Sprintf("check the path, or create a key with `d2c update keys gen --role %s` (it writes NAME.pub)", role))
		}
		if err != nil {
			return nil, fmt.Errorf("%s public key: %w", role, err)
		}
		ks = append(ks, k)
	}
	return ks, nil
}

func publicKeys(signers []crypto.Signer) []crypto.PublicKey {
	var ks []crypto.PublicKey
	for _, s := range signers {
		ks = append(ks, s.Public())
	}
	return ks
}

func keyIDOf(pub crypto.PublicKey) string {
	id, err := identity.KeyID(pub)
	if err != nil {
		return "?"
	}
	return id
}

// writeRepoFile writes one file of the repository atomically.
func writeRepoFile(path string, b []byte) error {
	return atomicfile.WriteFileMode(nil, path, b, repoFileMode)
}

// writeRoot writes a signed root as DIR/<N>.root.json, then its copy
// DIR/root.json.
func writeRoot(dir string, version uint64, signed []byte) error {
	if err := writeRepoFile(filepath.Join(dir, rootFileName(version)), signed); err != nil {
		return err
	}
	return writeRepoFile(filepath.Join(dir, repoRootCopy), signed)
}

// printRoles prints each role's keys and threshold.
func printRoles(s streams, r *update.Root) {
	for _, role := range roles {
		rk := r.Roles[role]
		fmt.Fprintf(s.stdout, "%-10s %d of %d: %s\n", string(role)+":", rk.Threshold, len(rk.KeyIDs), strings.Join(rk.KeyIDs, " "))
	}
}

// positiveDuration checks a duration flag.
func positiveDuration(name string, d time.Duration) error {
	if d <= 0 {
		return usageErrorf("--%s %v: want a positive duration, such as 24h", name, d)
	}
	return nil
}

// safeName is 1 to 64 ASCII letters, digits, '.', '_' and '-', not
// starting with '.': a file name that is the same on every system.
func safeName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validName checks a hardware class or artifact name as the update
// format allows them: 1 to limits.UpdateName ASCII letters, digits, '.',
// '_' and '-', not "." or "..".
func validName(flagName, s string) error {
	ok := len(s) > 0 && len(s) <= limits.UpdateName && s != "." && s != ".."
	for i := 0; ok && i < len(s); i++ {
		c := s[i]
		ok = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-'
	}
	if !ok {
		return usageErrorf("--%s %q: want 1 to %d ASCII letters, digits, '.', '_' and '-'", flagName, s, limits.UpdateName)
	}
	return nil
}

func parseRole(s string) (update.Role, bool) {
	for _, r := range roles {
		if s == string(r) {
			return r, true
		}
	}
	return "", false
}

// roleFlag is one role's --ROLE-pub and --ROLE-threshold, as "update root
// init" and "update root rotate" take them.
type roleFlag struct {
	pubs      stringList         // --ROLE-pub files
	threshold int                // --ROLE-threshold
	keys      []crypto.PublicKey // read from pubs by readRoleKeys
}

// roleFlags defines --root-pub, --release-pub and --timestamp-pub, each
// with its --ROLE-threshold, and returns them by role. For
// "root rotate" (rotate), keys given replace the role's keys and a
// threshold of 0, the default, keeps the role's threshold; for "root init",
// the thresholds default to 1.
func roleFlags(fl *flag.FlagSet, rotate bool) map[update.Role]*roleFlag {
	rs := map[update.Role]*roleFlag{}
	for _, role := range roles {
		r := &roleFlag{}
		pubHelp, thDefault, thHelp := "", 1, fmt.Sprintf("%s keys needed to sign a %s", role, role)
		switch {
		case role == update.RoleRoot && rotate:
			pubHelp = "public key of a further new root key that does not sign now; repeatable"
		case role == update.RoleRoot:
			pubHelp = "public key of a further root key that does not sign now; repeatable"
		case rotate:
			pubHelp = fmt.Sprintf("public key replacing the %s keys; repeatable", role)
		default:
			pubHelp = fmt.Sprintf("public key trusted to sign %ss; repeatable (required)", role)
		}
		if rotate {
			thDefault, thHelp = 0, thHelp+"; 0 keeps the current threshold"
		}
		fl.Var(&r.pubs, string(role)+"-pub", pubHelp)
		fl.IntVar(&r.threshold, string(role)+"-threshold", thDefault, thHelp)
		rs[role] = r
	}
	return rs
}

// readRoleKeys reads the public keys each roleFlag names. The root role's
// keys start with those of rootSigners, the root keys that sign.
func readRoleKeys(rs map[update.Role]*roleFlag, rootSigners []crypto.Signer) error {
	for _, role := range roles {
		keys, err := readPublicKeys(role, rs[role].pubs)
		if err != nil {
			return err
		}
		if role == update.RoleRoot {
			keys = append(publicKeys(rootSigners), keys...)
		}
		rs[role].keys = keys
	}
	return nil
}

func updateKeysGenCommand() *command {
	return &command{
		path:    "update keys gen",
		summary: "generate a signing key for an update role",
		usage:   "--role root|release|timestamp --out DIR [--name NAME] [--key-type p256|ed25519]",
		details: `
Generates a key for one role of an update repository and writes, in DIR
(created mode 0700), NAME.key, the private key (PKCS#8 PEM, mode 0600), and
NAME.pub, the public key (PKIX PEM). It prints the key ID, the RFC 7638
thumbprint that roots list and signatures name ("kid"). It refuses to
overwrite an existing key.

Where each key lives:
  root       offline (an encrypted USB stick in a safe); used only by
             "update root init" and "update root rotate"
  release    on the machine that builds releases, off the repository server
  timestamp  the only online key: the periodic "update timestamp" job uses it

Give the .pub files to "update root init" and "update root rotate".`,
		example: `d2c update keys gen --role root --out /media/offline/keys
d2c update keys gen --role release --out keys
d2c update keys gen --role timestamp --out keys --key-type ed25519`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			roleName := fl.String("role", "", "the key's role: root, release or timestamp (required)")
			out := fl.String("out", "", "directory to write NAME.key and NAME.pub to (required)")
			name := fl.String("name", "", "file name without extension (default: the role)")
			keyType := fl.String("key-type", "p256", "key algorithm: p256 (ES256) or ed25519 (EdDSA)")
			return func(_ context.Context, s streams) error {
				role, ok := parseRole(*roleName)
				if !ok {
					return usageErrorf("--role %q: want root, release or timestamp", *roleName)
				}
				if *out == "" {
					return usageErrorf("--out is required")
				}
				if *name == "" {
					*name = string(role)
				}
				if !safeName(*name) {
					return usageErrorf("--name %q: want 1 to 64 letters, digits, '.', '_' and '-', not starting with '.'", *name)
				}
				kt, err := identity.ParseKeyType(*keyType)
				if err != nil {
					return usageErrorf("--key-type: %v", err)
				}
				keyFile := filepath.Join(*out, *name+".key")
				pubFile := filepath.Join(*out, *name+".pub")
				for _, f := range []string{keyFile, pubFile} {
					if _, err := os.Lstat(f); err == nil {
						return withHint(fmt.Errorf("%s already exists", f), "choose another --name or --out; a key is never overwritten")
					}
				}
				if err := atomicfile.MkdirPrivate(nil, *out); err != nil {
					return err
				}
				key, err := identity.GenerateKey(kt)
				if err != nil {
					return err
				}
				pub, err := identity.MarshalPublicKey(key.Public())
				if err != nil {
					return err
				}
				if err := identity.WriteKeyFile(keyFile, key); err != nil {
					return err
				}
				if err := atomicfile.WriteFileMode(nil, pubFile, pub, 0o644); err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "%s key (%s)\nkey ID:  %s\nprivate: %s (mode 0600)\npublic:  %s\n",
					role, kt, keyIDOf(key.Public()), keyFile, pubFile)
				switch role {
				case update.RoleRoot:
					fmt.Fprintf(s.stderr, "keep %s offline: only `d2c update root init` and `root rotate` need it\n", keyFile)
				case update.RoleRelease:
					fmt.Fprintf(s.stderr, "keep %s off the repository server: only `d2c update release sign` needs it\n", keyFile)
				case update.RoleTimestamp:
					fmt.Fprintf(s.stderr, "%s is the online key of the periodic `d2c update timestamp` job\n", keyFile)
				}
				return nil
			}
		},
	}
}

func updateRootInitCommand() *command {
	return &command{
		path:    "update root init",
		summary: "create the first root of an update repository",
		usage: "--repo DIR --root-key FILE... [--root-pub FILE...] [--root-threshold N] " +
			"--release-pub FILE... [--release-threshold N] --timestamp-pub FILE... [--timestamp-threshold N] [--expires DURATION]",
		details: `
Creates the repository directory and its root version 1: the public keys
trusted for each role (root, release, timestamp) and how many of them must
sign each document (the threshold). It is signed with every --root-key, which
must reach --root-threshold; --root-pub adds root keys that do not sign now
(a backup key kept elsewhere). It refuses a directory that already has a root.

It writes DIR/1.root.json, which devices fetch when they walk the roots, and
DIR/root.json, a copy of the newest root (rewritten by "update root rotate"):
pin that file in the devices you build (update.AgentConfig.Root). Devices
never fetch root.json; a device pinned with an older root walks to the newest
through the N.root.json files.

When the root expires, devices refuse every update until a rotation (with
the same keys, if they are safe) gives them a root that has not: rotate well
before --expires.`,
		example: `d2c update root init --repo /srv/updates/fleet \
    --root-key /media/offline/keys/root.key \
    --release-pub keys/release.pub --timestamp-pub keys/timestamp.pub --expires 8760h`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			repo := fl.String("repo", "", "repository directory to create (required)")
			var rootKeys stringList
			fl.Var(&rootKeys, "root-key", "private root key that signs this root; repeatable (required)")
			rf := roleFlags(fl, false)
			expires := fl.Duration("expires", 365*24*time.Hour, "how long the root is valid")
			return func(ctx context.Context, s streams) error {
				if *repo == "" || len(rootKeys) == 0 || len(rf[update.RoleRelease].pubs) == 0 || len(rf[update.RoleTimestamp].pubs) == 0 {
					return usageErrorf("--repo, --root-key, --release-pub and --timestamp-pub are required")
				}
				if err := positiveDuration("expires", *expires); err != nil {
					return err
				}
				if th := rf[update.RoleRoot].threshold; th > len(rootKeys) {
					return usageErrorf("--root-threshold %d: only %d --root-key sign this root", th, len(rootKeys))
				}
				if err := refuseSecondRoot(*repo); err != nil {
					return err
				}
				signers, err := readSigners(update.RoleRoot, rootKeys)
				if err != nil {
					return err
				}
				if err := readRoleKeys(rf, signers); err != nil {
					return err
				}
				now := time.Now()
				root := &update.Root{Version: 1, Expires: now.Add(*expires)}
				for _, role := range roles {
					if err := root.SetRole(role, rf[role].threshold, rf[role].keys...); err != nil {
						return usageErrorf("%v", err)
					}
				}
				signed, err := root.Sign(signers...)
				if err != nil {
					return err
				}
				// Check it as a device pinning it will.
				if _, err := update.NewTrusted(signed, update.Floors{}, now, anyHardwareClass); err != nil {
					return fmt.Errorf("the root just signed does not verify: %w", err)
				}
				if err := os.MkdirAll(*repo, 0o755); err != nil {
					return err
				}
				if err := (atomicfile.OS{}).SyncDir(filepath.Dir(filepath.Clean(*repo))); err != nil {
					return err
				}
				unlock, err := lockRepo(ctx, *repo)
				if err != nil {
					return err
				}
				defer unlock()
				// Again under the lock: another init may have run meanwhile.
				if err := refuseSecondRoot(*repo); err != nil {
					return err
				}
				if err := writeRoot(*repo, 1, signed); err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "root version 1 written to %s\nexpires:   %s\n",
					filepath.Join(*repo, rootFileName(1)), root.Expires.UTC().Format(time.RFC3339))
				printRoles(s, root)
				fmt.Fprintf(s.stderr, "pin %s in the devices you build (update.AgentConfig.Root); keep the root keys offline\n",
					filepath.Join(*repo, repoRootCopy))
				return nil
			}
		},
	}
}

// refuseSecondRoot refuses to initialise a repository that has a root.
func refuseSecondRoot(repo string) error {
	t, err := updaterepo.NewTrusted(repo, time.Now(), anyHardwareClass)
	if errors.Is(err, updaterepo.ErrNoRepository) {
		return nil
	}
	if err != nil {
		return err
	}
	return withHint(fmt.Errorf("%s already has root version %d", repo, t.Root().Version),
		fmt.Sprintf("to change its keys or expiry, sign the next version with `d2c update root rotate --repo %s`", repo))
}

func updateRootRotateCommand() *command {
	return &command{
		path:    "update root rotate",
		summary: "sign the next root version (rotate keys, extend expiry)",
		usage: "--repo DIR --old-key FILE... [--new-key FILE...] [--root-pub FILE...] [--root-threshold N] " +
			"[--release-pub FILE... [--release-threshold N]] [--timestamp-pub FILE... [--timestamp-threshold N]] [--expires DURATION]",
		details: `
Reads the newest root of the repository, version N (after checking the whole
chain from the oldest), and signs version N+1: the same keys and thresholds,
except for the roles whose keys are given, which are replaced. The new root is
signed by the --old-key keys, which must reach the threshold of version N's
root keys, and by the --new-key keys, which must reach the new root's own
threshold. Without --new-key or --root-pub, the root keys stay (a rotation of
the release or timestamp keys, or only a later expiry), and the old keys sign
for both.

A threshold of 0 keeps the role's current threshold. Keys that no role uses
any more are dropped: that is how a lost or stolen key is revoked.

The new root is verified as a device at version N would verify it before it
is written to DIR/<N+1>.root.json and copied to DIR/root.json. Devices walk
to it on their next check. A rotation that replaces the release or timestamp
keys also resets the devices' version floors for that role, so that the
repository recovers from a stolen key that signed huge version numbers; sign
a new release or timestamp with the new key afterwards.`,
		example: `d2c update root rotate --repo /srv/updates/fleet --old-key /media/offline/keys/root.key \
    --timestamp-pub keys/timestamp2.pub
d2c update timestamp --repo /srv/updates/fleet --key keys/timestamp2.key
# To replace the root key itself:
d2c update root rotate --repo /srv/updates/fleet --old-key /media/offline/keys/root.key \
    --new-key /media/offline/keys/root2.key`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			repo := fl.String("repo", "", "repository directory (required)")
			var oldKeys, newKeys stringList
			fl.Var(&oldKeys, "old-key", "private root key of the current root; repeatable (required)")
			fl.Var(&newKeys, "new-key", "private root key of the new root, which signs it too; repeatable")
			rf := roleFlags(fl, true)
			expires := fl.Duration("expires", 365*24*time.Hour, "how long the new root is valid")
			return func(ctx context.Context, s streams) error {
				if *repo == "" || len(oldKeys) == 0 {
					return usageErrorf("--repo and --old-key are required")
				}
				if err := positiveDuration("expires", *expires); err != nil {
					return err
				}
				for _, r := range rf {
					if r.threshold < 0 {
						return usageErrorf("thresholds must not be negative")
					}
				}
				unlock, err := lockRepo(ctx, *repo)
				if err != nil {
					return err
				}
				defer unlock()
				now := time.Now()
				t, err := openRepo(*repo, now, anyHardwareClass)
				if err != nil {
					return err
				}
				cur := t.Root()
				olds, err := readSigners(update.RoleRoot, oldKeys)
				if err != nil {
					return err
				}
				news, err := readSigners(update.RoleRoot, newKeys)
				if err != nil {
					return err
				}
				if err := checkRoleKeys(cur, update.RoleRoot, "old-key", olds, *repo); err != nil {
					return err
				}
				if err := readRoleKeys(rf, news); err != nil {
					return err
				}
				next := cur.Next(now.Add(*expires))
				var changed []string
				for _, role := range roles {
					keys, th := rf[role].keys, rf[role].threshold
					if len(keys) == 0 && th == 0 {
						continue
					}
					if len(keys) == 0 { // a new threshold over the same keys
						for _, id := range cur.Roles[role].KeyIDs {
							keys = append(keys, cur.Keys[id])
						}
					}
					if th == 0 {
						th = cur.Roles[role].Threshold
					}
					if err := next.SetRole(role, th, keys...); err != nil {
						return usageErrorf("%v (give --%s-threshold)", err, role)
					}
					changed = append(changed, string(role))
				}
				signed, err := next.Sign(append(olds, news...)...)
				if err != nil {
					return err
				}
				// Verify as a device that trusts version N.
				if _, err := t.UpdateRoot(signed); err != nil {
					if errors.Is(err, update.ErrThreshold) || errors.Is(err, update.ErrUnknownKey) {
						return withHint(fmt.Errorf("the new root does not verify: %w", err),
							fmt.Sprintf("give at least %d of the new root keys with --new-key (--root-threshold), "+
								"and only root keys of version %d or %d", next.Roles[update.RoleRoot].Threshold, cur.Version, next.Version))
					}
					return fmt.Errorf("the new root does not verify: %w", err)
				}
				if err := writeRoot(*repo, next.Version, signed); err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "root version %d written to %s\nexpires:   %s\n",
					next.Version, filepath.Join(*repo, rootFileName(next.Version)), next.Expires.UTC().Format(time.RFC3339))
				printRoles(s, next)
				if len(changed) == 0 {
					changed = []string{"none (expiry only)"}
				}
				fmt.Fprintf(s.stderr, "changed roles: %s; devices walk to version %d on their next check\n",
					strings.Join(changed, ", "), next.Version)
				if slices.Contains(changed, string(update.RoleRelease)) {
					fmt.Fprintf(s.stderr, "sign the release again with the new release key: d2c update release sign --repo %s ...\n", *repo)
				}
				if slices.Contains(changed, string(update.RoleTimestamp)) {
					fmt.Fprintf(s.stderr, "re-sign the timestamp with the new timestamp key: d2c update timestamp --repo %s --key FILE\n", *repo)
				}
				fmt.Fprintf(s.stderr, "pin %s in the devices you build from now on\n", filepath.Join(*repo, repoRootCopy))
				return nil
			}
		},
	}
}

// checkRoleKeys refuses, before anything is read or signed, keys given
// with --flag that are not keys of role in root, or too few to reach the
// role's threshold: devices would refuse what they sign.
func checkRoleKeys(root *update.Root, role update.Role, flag string, keys []crypto.Signer, repo string) error {
	rk := root.Roles[role]
	fix := fmt.Sprintf("give the %s keys of root version %d (%s)", role, root.Version, strings.Join(rk.KeyIDs, ", "))
	if role == update.RoleRoot {
		fix += "; a root key is replaced by signing the rotation with the old key and the new one (--new-key)"
	} else {
		fix += fmt.Sprintf(", or trust a new key first with `d2c update root rotate --repo %s --%s-pub FILE`", repo, role)
	}
	seen := map[string]bool{}
	for _, k := range keys {
		id := keyIDOf(k.Public())
		if !slices.Contains(rk.KeyIDs, id) {
			return withHint(fmt.Errorf("%w: --%s %s is not a %s key of root version %d", update.ErrUnknownKey, flag, id, role, root.Version), fix)
		}
		seen[id] = true
	}
	if len(seen) < rk.Threshold {
		return withHint(fmt.Errorf("%w: %d of root version %d's %s keys given, its threshold is %d",
			update.ErrThreshold, len(seen), root.Version, role, rk.Threshold),
			fmt.Sprintf("give at least %d %s keys with --%s (repeat the flag)", rk.Threshold, role, flag))
	}
	return nil
}
