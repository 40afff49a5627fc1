// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"crypto"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/d2c-iot/d2c/internal/limits"
)

// Role names a kind of metadata document and the keys that sign it.
type Role string

// The roles. Root keys sign roots only and stay offline; release keys sign
// releases; the timestamp key, the only one online, signs the short-lived
// timestamps.
const (
	RoleRoot      Role = "root"
	RoleRelease   Role = "release"
	RoleTimestamp Role = "timestamp"
)

// roles lists every role, in the order documents list them.
var roles = []Role{RoleRoot, RoleRelease, RoleTimestamp}

// MediaType returns the JWS "typ" header of the role's documents:
// "d2c-root+jws", "d2c-release+jws" or "d2c-timestamp+jws" (RFC 8725
// section 3.11 explicit typing), so that no document signed for one role
// can be taken for another, even where roles share a key.
func (r Role) MediaType() string { return "d2c-" + string(r) + "+jws" }

// SpecVersion is the "spec_version" of the documents this package writes
// and the only one it reads.
const SpecVersion = "1.0"

// timeLayout is the one form of "expires": RFC 3339, UTC, whole seconds.
const timeLayout = "2006-01-02T15:04:05Z"

// Root is the content of root metadata: the trusted keys of every role,
// and the version and expiry of this set. Build one with [Root.SetRole],
// derive its successor with [Root.Next], sign it with [Root.Sign].
type Root struct {
	// Version counts roots from 1; each rotation adds exactly one.
	Version uint64
	// Expires is when the root stops being trusted for new updates
	// (whole seconds, UTC on the wire).
	Expires time.Time
	// Keys are the public keys of all roles, by key ID: the RFC 7638
	// SHA-256 thumbprint, base64url ([identity.KeyID]).
	Keys map[string]crypto.PublicKey
	// Roles holds the key IDs and threshold of each of RoleRoot,
	// RoleRelease and RoleTimestamp.
	Roles map[Role]RoleKeys
}

// RoleKeys are the keys trusted for one role and how many of them must
// sign each of its documents.
type RoleKeys struct {
	// KeyIDs are the role's keys, each listed in [Root.Keys].
	KeyIDs []string
	// Threshold is the number of distinct keys of KeyIDs whose signatures
	// a document needs: at least 1, at most len(KeyIDs).
	Threshold int
}

// Release is the content of release metadata: one software release for
// one hardware class.
type Release struct {
	// Version is the release's version; devices install only a version
	// newer than the installed one ([Release.Newer]).
	Version uint64
	// SecurityCounter only grows with releases that fix vulnerabilities;
	// a device refuses a release whose counter is below the counter of
	// the release it confirmed last.
	SecurityCounter uint64
	// HardwareClass names the devices the release is for.
	HardwareClass string
	// Artifacts are the files of the release: at least one.
	Artifacts []Artifact
	// Deltas are optional patches that build artifacts of this release
	// from those of earlier releases ([NewDelta]); a device that runs the
	// base installs from a delta and falls back to the artifact itself.
	// At most 16; none is the common case.
	Deltas []Delta
	// Expires is when the release metadata stops being valid.
	Expires time.Time
	// SBOM, if not nil, is the release's software bill of materials: a
	// CycloneDX JSON file, signed by length and SHA-256 like an artifact
	// ([SBOMRef]). Devices never download it; they report its digest.
	SBOM *SBOMRef
	// SupportUntil is the end of the release's security support (whole
	// seconds, UTC on the wire, as Expires); zero states none.
	SupportUntil time.Time
}

// Artifact is one file of a release, as signed.
type Artifact struct {
	// Name identifies the artifact within the release: 1 to 128 bytes of
	// ASCII letters, digits, '.', '_' and '-', not "." or "..".
	Name string
	// Length is the exact size in bytes.
	Length int64
	// SHA256 is the SHA-256 of the content.
	SHA256 [32]byte
	// URI locates the content: an absolute URI, or a reference relative
	// to the metadata's location. It is not trusted: the length and
	// digest are.
	URI string
}

// Delta is a signed patch that builds one artifact of the release from the
// image of an earlier release: a delta container (docs/update-format.md,
// "Deltas") written by [NewDelta]. A device uses it only when its running
// slot holds exactly the base (FromLength bytes hashing to FromSHA256), and
// installs the result only if it is the artifact: its signed length and
// SHA-256.
type Delta struct {
	// Artifact names the artifact of the release the delta builds.
	Artifact string
	// FromVersion is the release version of the base, below the release's.
	FromVersion uint64
	// FromLength and FromSHA256 are the exact length and SHA-256 of the
	// base image.
	FromLength int64
	FromSHA256 [32]byte
	// Length and SHA256 are those of the delta file itself: a device
	// downloads no more than Length bytes and applies them only once they
	// hash to SHA256.
	Length int64
	SHA256 [32]byte
	// URI locates the delta file, as [Artifact.URI]; not trusted.
	URI string
}

// Timestamp is the content of timestamp metadata: a short-lived,
// frequently re-signed statement naming the current release metadata.
type Timestamp struct {
	// Version grows with every timestamp the repository signs.
	Version uint64
	// Expires is short (hours to days), so that a device cut off from
	// fresh timestamps notices within that time (freeze attack).
	Expires time.Time
	// Release names the current signed release metadata document.
	Release MetaRef
	// Rollout, if not nil, limits the devices the release is offered to:
	// the cohort rule of a campaign, signed here by the online timestamp
	// key so that phases advance without the offline release keys. Nil
	// offers the release to every device of its hardware class.
	Rollout *Rollout
}

// MetaRef names one signed metadata document: its version, and the length
// and SHA-256 of its bytes as served.
type MetaRef struct {
	// Version is the document's "version".
	Version uint64
	// Length is the size of the signed document in bytes.
	Length int64
	// SHA256 is the SHA-256 of the signed document.
	SHA256 [32]byte
}

// Wire forms (docs/update-format.md). Field order is the order written.
type (
	rootJSON struct {
		Type        string              `json:"_type"`
		SpecVersion string              `json:"spec_version"`
		Version     uint64              `json:"version"`
		Expires     string              `json:"expires"`
		Keys        map[string]jwkJSON  `json:"keys"`
		Roles       map[string]roleJSON `json:"roles"`
	}
	roleJSON struct {
		KeyIDs    []string `json:"keyids"`
		Threshold int      `json:"threshold"`
	}
	releaseJSON struct {
		Type            string         `json:"_type"`
		SpecVersion     string         `json:"spec_version"`
		Version         uint64         `json:"version"`
		Expires         string         `json:"expires"`
		SecurityCounter uint64         `json:"security_counter"`
		HardwareClass   string         `json:"hardware_class"`
		Artifacts       []artifactJSON `json:"artifacts"`
		Deltas          []deltaJSON    `json:"deltas,omitempty"`
		SBOM            *sbomJSON      `json:"sbom,omitempty"`
		SupportUntil    string         `json:"support_until,omitempty"`
	}
	artifactJSON struct {
		Name   string `json:"name"`
		Length int64  `json:"length"`
		SHA256 string `json:"sha256"`
		URI    string `json:"uri"`
	}
	deltaJSON struct {
		Artifact    string `json:"artifact"`
		FromVersion uint64 `json:"from_version"`
		FromLength  int64  `json:"from_length"`
		FromSHA256  string `json:"from_sha256"`
		Length      int64  `json:"length"`
		SHA256      string `json:"sha256"`
		URI         string `json:"uri"`
	}
	timestampJSON struct {
		Type        string       `json:"_type"`
		SpecVersion string       `json:"spec_version"`
		Version     uint64       `json:"version"`
		Expires     string       `json:"expires"`
		Release     metaRefJSON  `json:"release"`
		Rollout     *rolloutJSON `json:"rollout,omitempty"`
	}
	metaRefJSON struct {
		Version uint64 `json:"version"`
		Length  int64  `json:"length"`
		SHA256  string `json:"sha256"`
	}
)

// header is the part every document starts with.
type header struct {
	Type        string `json:"_type"`
	SpecVersion string `json:"spec_version"`
}

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(timeLayout, s)
	if err != nil || t.Format(timeLayout) != s {
		return time.Time{}, fmt.Errorf("%w: expires %q is not YYYY-MM-DDThh:mm:ssZ", ErrMalformed, truncate(s))
	}
	return t, nil
}

// validateExpires refuses a zero expiry and one outside years 1970-9999,
// which the wire form cannot carry.
func validateExpires(role Role, t time.Time) error {
	if y := t.UTC().Year(); t.IsZero() || y < 1970 || y > 9999 {
		return fmt.Errorf("%w: %s expires %v (want a time in years 1970 to 9999)", ErrMalformed, role, t)
	}
	return nil
}

func parseDigest(s string) ([32]byte, error) {
	var d [32]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(d) || hex.EncodeToString(b) != s {
		return d, fmt.Errorf("%w: sha256 %q is not 64 lowercase hex digits", ErrMalformed, truncate(s))
	}
	copy(d[:], b)
	return d, nil
}

// checkType refuses a payload whose "_type" is not role and whose
// "spec_version" is not SpecVersion, before the rest is decoded.
func checkType(payload []byte, role Role) error {
	var h header
	// A lenient decode, only to read these two members: the strict
	// decode of the whole document follows.
	if err := json.Unmarshal(payload, &h); err != nil {
		return fmt.Errorf("%w: %s payload: %v", ErrMalformed, role, err)
	}
	if h.Type != string(role) {
		return fmt.Errorf("%w: _type %q presented as %s", ErrWrongType, truncate(h.Type), role)
	}
	if h.SpecVersion != SpecVersion {
		return fmt.Errorf("%w: spec_version %q (want %q)", ErrMalformed, truncate(h.SpecVersion), SpecVersion)
	}
	return nil
}

// decodeRoot parses and validates a root payload.
func decodeRoot(payload []byte) (*Root, error) {
	if err := checkType(payload, RoleRoot); err != nil {
		return nil, err
	}
	var w rootJSON
	if err := strictUnmarshal(payload, &w); err != nil {
		return nil, fmt.Errorf("%w: root: %v", ErrMalformed, err)
	}
	exp, err := parseTime(w.Expires)
	if err != nil {
		return nil, err
	}
	if len(w.Keys) > limits.UpdateKeys {
		return nil, fmt.Errorf("%w: root lists %d keys (at most %d)", ErrTooLarge, len(w.Keys), limits.UpdateKeys)
	}
	r := &Root{Version: w.Version, Expires: exp, Keys: map[string]crypto.PublicKey{}, Roles: map[Role]RoleKeys{}}
	for id, j := range w.Keys {
		pub, err := decodeJWK(id, j)
		if err != nil {
			return nil, err
		}
		r.Keys[id] = pub
	}
	for name, rj := range w.Roles {
		if !slices.Contains(roles, Role(name)) {
			return nil, fmt.Errorf("%w: root: unknown role %q", ErrMalformed, truncate(name))
		}
		r.Roles[Role(name)] = RoleKeys(rj)
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// validate checks the rules of docs/update-format.md that the JSON form
// alone does not: versions from 1, every role present with a reachable
// threshold, every key ID the thumbprint of its key, no unused key.
func (r *Root) validate() error {
	if r.Version == 0 {
		return fmt.Errorf("%w: root version 0 (versions start at 1)", ErrMalformed)
	}
	if err := validateExpires(RoleRoot, r.Expires); err != nil {
		return err
	}
	if len(r.Keys) > limits.UpdateKeys {
		return fmt.Errorf("%w: root lists %d keys (at most %d)", ErrTooLarge, len(r.Keys), limits.UpdateKeys)
	}
	for id, pub := range r.Keys {
		got, err := keyID(pub)
		if err != nil {
			return within(fmt.Sprintf("root key %q", truncate(id)), err)
		}
		if got != id {
			return fmt.Errorf("%w: root key listed as %q has thumbprint %q", ErrMalformed, truncate(id), got)
		}
	}
	if len(r.Roles) != len(roles) {
		return fmt.Errorf("%w: root has %d roles (want root, release and timestamp)", ErrMalformed, len(r.Roles))
	}
	used := map[string]bool{}
	for _, role := range roles {
		rk, ok := r.Roles[role]
		if !ok {
			return fmt.Errorf("%w: root has no %s role", ErrMalformed, role)
		}
		if len(rk.KeyIDs) == 0 || rk.Threshold < 1 || rk.Threshold > len(rk.KeyIDs) || rk.Threshold > limits.UpdateSignatures {
			return fmt.Errorf("%w: %s role: threshold %d of %d keys (want 1 to min(keys, %d))", ErrMalformed, role, rk.Threshold, len(rk.KeyIDs), limits.UpdateSignatures)
		}
		seen := map[string]bool{}
		for _, id := range rk.KeyIDs {
			if seen[id] {
				return fmt.Errorf("%w: %s role lists key %q twice", ErrMalformed, role, truncate(id))
			}
			seen[id] = true
			if _, ok := r.Keys[id]; !ok {
				return fmt.Errorf("%w: %s role names key %q that the root does not list", ErrMalformed, role, truncate(id))
			}
			used[id] = true
		}
	}
	for id := range r.Keys {
		if !used[id] {
			return fmt.Errorf("%w: root lists key %q that no role uses", ErrMalformed, truncate(id))
		}
	}
	return nil
}

// encode returns the JSON payload of a root (validated first).
func (r *Root) encode() ([]byte, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}
	w := rootJSON{
		Type: string(RoleRoot), SpecVersion: SpecVersion, Version: r.Version, Expires: formatTime(r.Expires),
		Keys: map[string]jwkJSON{}, Roles: map[string]roleJSON{},
	}
	for id, pub := range r.Keys {
		j, err := encodeJWK(pub)
		if err != nil {
			return nil, err
		}
		w.Keys[id] = j
	}
	for role, rk := range r.Roles {
		w.Roles[string(role)] = roleJSON(rk)
	}
	return json.Marshal(w)
}

// roleKeys returns the public keys of a role, by key ID.
func (r *Root) roleKeys(role Role) map[string]crypto.PublicKey {
	m := map[string]crypto.PublicKey{}
	for _, id := range r.Roles[role].KeyIDs {
		m[id] = r.Keys[id]
	}
	return m
}

// clone returns a deep copy of r.
func (r *Root) clone() *Root {
	c := &Root{Version: r.Version, Expires: r.Expires, Keys: make(map[string]crypto.PublicKey, len(r.Keys)), Roles: make(map[Role]RoleKeys, len(r.Roles))}
	for id, pub := range r.Keys {
		c.Keys[id] = clonePublicKey(pub)
	}
	for role, rk := range r.Roles {
		c.Roles[role] = RoleKeys{KeyIDs: slices.Clone(rk.KeyIDs), Threshold: rk.Threshold}
	}
	return c
}

// decodeRelease parses and validates a release payload.
func decodeRelease(payload []byte) (*Release, error) {
	if err := checkType(payload, RoleRelease); err != nil {
		return nil, err
	}
	var w releaseJSON
	if err := strictUnmarshal(payload, &w); err != nil {
		return nil, fmt.Errorf("%w: release: %v", ErrMalformed, err)
	}
	exp, err := parseTime(w.Expires)
	if err != nil {
		return nil, err
	}
	if len(w.Artifacts) > limits.UpdateArtifacts {
		return nil, fmt.Errorf("%w: release lists %d artifacts (at most %d)", ErrTooLarge, len(w.Artifacts), limits.UpdateArtifacts)
	}
	r := &Release{Version: w.Version, SecurityCounter: w.SecurityCounter, HardwareClass: w.HardwareClass, Expires: exp}
	for _, aj := range w.Artifacts {
		d, err := parseDigest(aj.SHA256)
		if err != nil {
			return nil, err
		}
		r.Artifacts = append(r.Artifacts, Artifact{Name: aj.Name, Length: aj.Length, SHA256: d, URI: aj.URI})
	}
	if len(w.Deltas) > limits.UpdateDeltas {
		return nil, fmt.Errorf("%w: release lists %d deltas (at most %d)", ErrTooLarge, len(w.Deltas), limits.UpdateDeltas)
	}
	for _, dj := range w.Deltas {
		from, err := parseDigest(dj.FromSHA256)
		if err != nil {
			return nil, err
		}
		d, err := parseDigest(dj.SHA256)
		if err != nil {
			return nil, err
		}
		r.Deltas = append(r.Deltas, Delta{Artifact: dj.Artifact, FromVersion: dj.FromVersion, FromLength: dj.FromLength,
			FromSHA256: from, Length: dj.Length, SHA256: d, URI: dj.URI})
	}
	if err := w.decodeFacts(r); err != nil {
		return nil, err
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Release) validate() error {
	if r.Version == 0 {
		return fmt.Errorf("%w: release version 0 (versions start at 1)", ErrMalformed)
	}
	if err := validateExpires(RoleRelease, r.Expires); err != nil {
		return err
	}
	if err := validateName("hardware class", r.HardwareClass); err != nil {
		return err
	}
	if len(r.Artifacts) == 0 {
		return fmt.Errorf("%w: release has no artifact", ErrMalformed)
	}
	if len(r.Artifacts) > limits.UpdateArtifacts {
		return fmt.Errorf("%w: release lists %d artifacts (at most %d)", ErrTooLarge, len(r.Artifacts), limits.UpdateArtifacts)
	}
	seen := map[string]bool{}
	for _, a := range r.Artifacts {
		if err := a.validate(); err != nil {
			return err
		}
		if seen[a.Name] {
			return fmt.Errorf("%w: release lists artifact %q twice", ErrMalformed, a.Name)
		}
		seen[a.Name] = true
	}
	if len(r.Deltas) > limits.UpdateDeltas {
		return fmt.Errorf("%w: release lists %d deltas (at most %d)", ErrTooLarge, len(r.Deltas), limits.UpdateDeltas)
	}
	type base struct {
		artifact string
		from     [32]byte
	}
	bases := map[base]bool{}
	for _, d := range r.Deltas {
		if err := d.validate(r); err != nil {
			return err
		}
		b := base{d.Artifact, d.FromSHA256}
		if bases[b] {
			return fmt.Errorf("%w: release lists two deltas to %s from base %x", ErrMalformed, d.Artifact, d.FromSHA256)
		}
		bases[b] = true
	}
	return r.validateFacts()
}

// validate checks a delta of release r: it builds an artifact of r, from
// an earlier version, and its URI follows the artifact rules.
func (d Delta) validate(r *Release) error {
	if _, ok := r.Artifact(d.Artifact); !ok {
		return fmt.Errorf("%w: delta for artifact %q, which the release does not list", ErrMalformed, truncate(d.Artifact))
	}
	if d.FromVersion == 0 || d.FromVersion >= r.Version {
		return fmt.Errorf("%w: delta to %s from version %d (want 1 to %d)", ErrMalformed, d.Artifact, d.FromVersion, r.Version-1)
	}
	if d.FromLength < 0 || d.Length < 0 {
		return fmt.Errorf("%w: delta to %s: negative length", ErrMalformed, d.Artifact)
	}
	return Artifact{Name: d.Artifact, URI: d.URI}.validateURI("delta to " + d.Artifact)
}

func (a Artifact) validate() error {
	if err := validateName("artifact name", a.Name); err != nil {
		return err
	}
	if a.Name == "." || a.Name == ".." {
		return fmt.Errorf("%w: artifact name %q", ErrMalformed, a.Name)
	}
	if a.Length < 0 {
		return fmt.Errorf("%w: artifact %s: negative length %d", ErrMalformed, a.Name, a.Length)
	}
	return a.validateURI("artifact " + a.Name)
}

// validateURI checks a.URI: 1 to limits.UpdateURI bytes of printable
// ASCII without spaces, a URI reference. what names it in errors.
func (a Artifact) validateURI(what string) error {
	if len(a.URI) == 0 || len(a.URI) > limits.UpdateURI {
		return fmt.Errorf("%w: %s: URI of %d bytes (want 1 to %d)", ErrMalformed, what, len(a.URI), limits.UpdateURI)
	}
	for i := 0; i < len(a.URI); i++ {
		if c := a.URI[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: %s: URI holds a byte 0x%02x outside printable ASCII", ErrMalformed, what, c)
		}
	}
	if _, err := url.Parse(a.URI); err != nil {
		return fmt.Errorf("%w: %s: URI: %v", ErrMalformed, what, err)
	}
	return nil
}

// validateName checks an artifact name or hardware class: 1 to
// limits.UpdateName bytes of ASCII letters, digits, '.', '_' and '-'.
func validateName(what, s string) error {
	if len(s) == 0 || len(s) > limits.UpdateName {
		return fmt.Errorf("%w: %s of %d bytes (want 1 to %d)", ErrMalformed, what, len(s), limits.UpdateName)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: %s %q: only ASCII letters, digits, '.', '_' and '-'", ErrMalformed, what, truncate(s))
		}
	}
	return nil
}

func (r *Release) encode() ([]byte, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}
	w := releaseJSON{
		Type: string(RoleRelease), SpecVersion: SpecVersion, Version: r.Version, Expires: formatTime(r.Expires),
		SecurityCounter: r.SecurityCounter, HardwareClass: r.HardwareClass,
	}
	for _, a := range r.Artifacts {
		w.Artifacts = append(w.Artifacts, artifactJSON{Name: a.Name, Length: a.Length, SHA256: hex.EncodeToString(a.SHA256[:]), URI: a.URI})
	}
	for _, d := range r.Deltas {
		w.Deltas = append(w.Deltas, deltaJSON{Artifact: d.Artifact, FromVersion: d.FromVersion, FromLength: d.FromLength,
			FromSHA256: hex.EncodeToString(d.FromSHA256[:]), Length: d.Length, SHA256: hex.EncodeToString(d.SHA256[:]), URI: d.URI})
	}
	r.encodeFacts(&w)
	return json.Marshal(w)
}

func (r *Release) clone() *Release {
	c := *r
	c.Artifacts = slices.Clone(r.Artifacts)
	c.Deltas = slices.Clone(r.Deltas)
	if r.SBOM != nil {
		s := *r.SBOM
		c.SBOM = &s
	}
	return &c
}

// Artifact returns the artifact of the release with the given name.
func (r *Release) Artifact(name string) (Artifact, bool) {
	for _, a := range r.Artifacts {
		if a.Name == name {
			return a, true
		}
	}
	return Artifact{}, false
}

// Newer reports whether the release is newer than the installed version:
// true to install it, false (and no error) when it is the installed
// release, fetched again. An older release is refused with [ErrRollback].
// Trusted does not decide this itself, because a re-fetched current
// release is not an attack.
func (r *Release) Newer(installed uint64) (bool, error) {
	switch {
	case r.Version > installed:
		return true, nil
	case r.Version == installed:
		return false, nil
	}
	return false, fmt.Errorf("%w: release version %d is older than installed %d", ErrRollback, r.Version, installed)
}

// decodeTimestamp parses and validates a timestamp payload.
func decodeTimestamp(payload []byte) (*Timestamp, error) {
	if err := checkType(payload, RoleTimestamp); err != nil {
		return nil, err
	}
	var w timestampJSON
	if err := strictUnmarshal(payload, &w); err != nil {
		return nil, fmt.Errorf("%w: timestamp: %v", ErrMalformed, err)
	}
	exp, err := parseTime(w.Expires)
	if err != nil {
		return nil, err
	}
	d, err := parseDigest(w.Release.SHA256)
	if err != nil {
		return nil, err
	}
	ro, err := w.Rollout.rollout()
	if err != nil {
		return nil, err
	}
	t := &Timestamp{Version: w.Version, Expires: exp, Release: MetaRef{Version: w.Release.Version, Length: w.Release.Length, SHA256: d},
		Rollout: ro}
	if err := t.validate(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Timestamp) validate() error {
	if t.Version == 0 {
		return fmt.Errorf("%w: timestamp version 0 (versions start at 1)", ErrMalformed)
	}
	if err := validateExpires(RoleTimestamp, t.Expires); err != nil {
		return err
	}
	if t.Release.Version == 0 {
		return fmt.Errorf("%w: timestamp names release version 0", ErrMalformed)
	}
	if t.Release.Length <= 0 || t.Release.Length > limits.UpdateRelease {
		return fmt.Errorf("%w: timestamp names a release of %d bytes (want 1 to %d)", ErrMalformed, t.Release.Length, limits.UpdateRelease)
	}
	if t.Rollout != nil {
		return t.Rollout.validate()
	}
	return nil
}

func (t *Timestamp) encode() ([]byte, error) {
	if err := t.validate(); err != nil {
		return nil, err
	}
	return json.Marshal(timestampJSON{
		Type: string(RoleTimestamp), SpecVersion: SpecVersion, Version: t.Version, Expires: formatTime(t.Expires),
		Release: metaRefJSON{Version: t.Release.Version, Length: t.Release.Length, SHA256: hex.EncodeToString(t.Release.SHA256[:])},
		Rollout: t.Rollout.wire(),
	})
}
