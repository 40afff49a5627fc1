// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"crypto"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"

	"github.com/d2c-iot/d2c/internal/limits"
)

// SetRole makes keys, with threshold, the trusted keys of role in r,
// replacing the role's previous keys. Keys no role uses any more are
// removed from r.Keys: this is how a key is revoked (in a new root version,
// see [Root.Next]). Keys are ECDSA P-256 or Ed25519 public keys, for
// example from [identity.ReadPublicKeyFile] or a [crypto.Signer]'s Public.
func (r *Root) SetRole(role Role, threshold int, keys ...crypto.PublicKey) error {
	if !slices.Contains(roles, role) {
		return fmt.Errorf("update: set role: unknown role %q", role)
	}
	ids := make([]string, 0, len(keys))
	byID := map[string]crypto.PublicKey{}
	for _, k := range keys {
		id, err := keyID(k)
		if err != nil {
			return within(fmt.Sprintf("set %s role", role), err)
		}
		if _, dup := byID[id]; dup {
			return fmt.Errorf("update: set %s role: key %s given twice", role, id)
		}
		byID[id] = k
		ids = append(ids, id)
	}
	if threshold < 1 || threshold > len(ids) || threshold > limits.UpdateSignatures {
		return fmt.Errorf("update: set %s role: threshold %d of %d keys (want 1 to min(keys, %d))", role, threshold, len(ids), limits.UpdateSignatures)
	}
	slices.Sort(ids)
	if r.Keys == nil {
		r.Keys = map[string]crypto.PublicKey{}
	}
	if r.Roles == nil {
		r.Roles = map[Role]RoleKeys{}
	}
	r.Roles[role] = RoleKeys{KeyIDs: ids, Threshold: threshold}
	maps.Copy(r.Keys, byID)
	used := map[string]bool{}
	for _, rk := range r.Roles {
		for _, id := range rk.KeyIDs {
			used[id] = true
		}
	}
	maps.DeleteFunc(r.Keys, func(id string, _ crypto.PublicKey) bool { return !used[id] })
	return nil
}

// Next returns a copy of r for the next root version, expiring at expires:
// change its roles with [Root.SetRole], then sign it with a threshold of
// r's root keys and a threshold of its own ([Root.Sign] with both sets of
// signers).
func (r *Root) Next(expires time.Time) *Root {
	c := r.clone()
	c.Version++
	c.Expires = expires
	return c
}

// Sign validates r and returns it signed by every signer, as a JWS in
// JSON general serialization (one signature per distinct key). For the
// first root, sign with a threshold of its root keys; for a rotation, with
// a threshold of the previous root's root keys and of the new root's.
func (r *Root) Sign(signers ...crypto.Signer) ([]byte, error) {
	payload, err := r.encode()
	if err != nil {
		return nil, within("sign root", err)
	}
	// A root its own root keys do not sign to their threshold would be
	// refused by every device: say so here. (The previous root's
	// threshold, for a rotation, is checked by NewTrusted and
	// Trusted.UpdateRoot on the previous root.)
	own := map[string]bool{}
	for _, s := range signers {
		if s == nil {
			continue
		}
		if id, err := keyID(s.Public()); err == nil && slices.Contains(r.Roles[RoleRoot].KeyIDs, id) {
			own[id] = true
		}
	}
	if rk := r.Roles[RoleRoot]; len(own) < rk.Threshold {
		return nil, fmt.Errorf("%w: signing root version %d with %d of its root keys, threshold %d", ErrThreshold, r.Version, len(own), rk.Threshold)
	}
	return sign(RoleRoot, payload, limits.UpdateRoot, signers)
}

// Sign validates r and returns it signed by every signer (release keys).
func (r *Release) Sign(signers ...crypto.Signer) ([]byte, error) {
	payload, err := r.encode()
	if err != nil {
		return nil, within("sign release", err)
	}
	return sign(RoleRelease, payload, limits.UpdateRelease, signers)
}

// Sign validates t and returns it signed by every signer (timestamp keys).
func (t *Timestamp) Sign(signers ...crypto.Signer) ([]byte, error) {
	payload, err := t.encode()
	if err != nil {
		return nil, within("sign timestamp", err)
	}
	return sign(RoleTimestamp, payload, limits.UpdateTimestamp, signers)
}

// NewTimestamp returns timestamp metadata of the given version that names
// signedRelease (as returned by [Release.Sign], byte for byte as it will be
// served): its version, length and SHA-256. Sign it with the timestamp key.
func NewTimestamp(version uint64, expires time.Time, signedRelease []byte) (*Timestamp, error) {
	e, err := parseEnvelope(signedRelease, RoleRelease, limits.UpdateRelease)
	if err != nil {
		return nil, within("new timestamp", err)
	}
	rel, err := decodeRelease(e.payload)
	if err != nil {
		return nil, within("new timestamp", err)
	}
	t := &Timestamp{Version: version, Expires: expires, Release: MetaRef{
		Version: rel.Version, Length: int64(len(signedRelease)), SHA256: sha256.Sum256(signedRelease),
	}}
	if err := t.validate(); err != nil {
		return nil, within("new timestamp", err)
	}
	return t, nil
}

// NewArtifact reads an image once, to its end, and returns its artifact
// entry: name, exact length, SHA-256 and URI. Memory stays flat whatever
// the image size. progress, if not nil, is called after each chunk with
// the bytes read so far.
func NewArtifact(name, uri string, image io.Reader, progress func(done int64)) (Artifact, error) {
	a := Artifact{Name: name, URI: uri}
	if err := a.validate(); err != nil {
		return Artifact{}, within("new artifact", err)
	}
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for {
		n, err := image.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			a.Length += int64(n)
			if progress != nil {
				progress(a.Length)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return Artifact{}, within("new artifact "+name, err)
		}
	}
	h.Sum(a.SHA256[:0])
	return a, nil
}

// kidSigner is a go-jose OpaqueSigner whose public key carries its key ID,
// so that go-jose writes it as the protected "kid".
type kidSigner struct {
	jose.OpaqueSigner
	kid string
}

func (s kidSigner) Public() *jose.JSONWebKey {
	pub := *s.OpaqueSigner.Public()
	pub.KeyID = s.kid
	return &pub
}

// sign signs payload for role with every distinct signer and returns the
// JWS general serialization. It checks its own output as a device would
// (profile, size, every signature) before returning it.
func sign(role Role, payload []byte, max int, signers []crypto.Signer) ([]byte, error) {
	if len(signers) == 0 {
		return nil, fmt.Errorf("update: sign %s: no signer", role)
	}
	byID := map[string]crypto.Signer{}
	for _, s := range signers {
		if s == nil {
			return nil, fmt.Errorf("update: sign %s: nil signer", role)
		}
		id, err := keyID(s.Public())
		if err != nil {
			return nil, within(fmt.Sprintf("sign %s", role), err)
		}
		byID[id] = s
	}
	if len(byID) > limits.UpdateSignatures {
		return nil, fmt.Errorf("%w: signing %s with %d signers (at most %d)", ErrTooLarge, role, len(byID), limits.UpdateSignatures)
	}
	ids := slices.Sorted(maps.Keys(byID))
	keys := make([]jose.SigningKey, 0, len(ids))
	pubs := map[string]crypto.PublicKey{}
	for _, id := range ids {
		s := byID[id]
		alg, _ := keyAlg(s.Public())
		keys = append(keys, jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: kidSigner{cryptosigner.Opaque(s), id}})
		pubs[id] = s.Public()
	}
	signer, err := jose.NewMultiSigner(keys, (&jose.SignerOptions{}).WithType(jose.ContentType(role.MediaType())))
	if err != nil {
		return nil, within(fmt.Sprintf("sign %s", role), err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return nil, within(fmt.Sprintf("sign %s", role), err)
	}
	out, err := generalSerialization(jws)
	if err != nil {
		return nil, within(fmt.Sprintf("sign %s", role), err)
	}
	// Check the result as a device will.
	e, err := parseEnvelope(out, role, max)
	if err != nil {
		return nil, within(fmt.Sprintf("sign %s", role), err)
	}
	good, err := e.verify(pubs)
	if err != nil || len(good) != len(ids) {
		return nil, fmt.Errorf("update: sign %s: a signer produced an invalid signature: %v", role, err)
	}
	return out, nil
}

// generalSerialization writes a go-jose JWS in the JSON general
// serialization. go-jose's FullSerialize writes the flattened form when
// there is one signature; the profile always uses the general form.
func generalSerialization(jws *jose.JSONWebSignature) ([]byte, error) {
	var full struct {
		Payload    string       `json:"payload"`
		Protected  string       `json:"protected"`
		Signature  string       `json:"signature"`
		Signatures []jwsSigJSON `json:"signatures"`
	}
	if err := json.Unmarshal([]byte(jws.FullSerialize()), &full); err != nil {
		return nil, err
	}
	w := jwsJSON{Payload: full.Payload, Signatures: full.Signatures}
	if len(w.Signatures) == 0 {
		w.Signatures = []jwsSigJSON{{Protected: full.Protected, Signature: full.Signature}}
	}
	return json.Marshal(w)
}
