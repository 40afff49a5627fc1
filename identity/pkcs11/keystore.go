// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build cgo

package pkcs11

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"

	"github.com/d2c-iot/d2c/identity"
)

var _ identity.Keystore = (*Keystore)(nil)

// Keystore keeps device keys in one PKCS#11 token. It is safe for
// concurrent use; Create and Delete are serialized with each other and
// with Close.
type Keystore struct {
	mu     sync.RWMutex // write-held by Create, Delete and Close
	ctx    *crypto11.Context
	raw    *pkcs11.Ctx // the same loaded module, for object search and destruction
	slot   uint
	token  string
	closed bool
}

// Open loads the PKCS#11 module, finds the token labelled cfg.TokenLabel
// and logs in as its user. The caller must Close the keystore. A module
// is loaded once per process and shared by every Keystore on it; it is
// unloaded when the last one is closed.
func Open(cfg Config) (*Keystore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pin, err := cfg.pin()
	if err != nil {
		return nil, err
	}
	ctx, err := crypto11.Configure(&crypto11.Config{
		Path:       cfg.Module,
		TokenLabel: cfg.TokenLabel,
		Pin:        pin,
		// One session stays logged in; a device signs with a few more.
		MaxSessions: 8,
	})
	if err != nil {
		// crypto11's errors name the module, slot and return code, never
		// the PIN.
		return nil, fmt.Errorf("pkcs11: open token %q with %s: %w", cfg.TokenLabel, cfg.Module, err)
	}
	ks := &Keystore{ctx: ctx, token: cfg.TokenLabel}
	if err := ks.openRaw(cfg.Module); err != nil {
		_ = ctx.Close()
		return nil, fmt.Errorf("pkcs11: open token %q with %s: %w", cfg.TokenLabel, cfg.Module, err)
	}
	return ks, nil
}

// openRaw takes a second handle on the module crypto11 loaded, for what
// crypto11 does not offer: finding and destroying every object under a
// label, whatever its class. The module is already initialized (one
// instance per process), so this handle never initializes nor finalizes
// it, and the login of crypto11's session covers its sessions too.
func (ks *Keystore) openRaw(module string) error {
	raw := pkcs11.New(module)
	if raw == nil {
		return errors.New("cannot load the module a second time")
	}
	if err := raw.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		raw.Destroy()
		return fmt.Errorf("initialize: %w", err)
	}
	slots, err := raw.GetSlotList(true)
	if err != nil {
		raw.Destroy()
		return fmt.Errorf("list slots: %w", err)
	}
	for _, s := range slots {
		if info, err := raw.GetTokenInfo(s); err == nil && info.Label == ks.token {
			ks.raw, ks.slot = raw, s
			return nil
		}
	}
	raw.Destroy()
	return errors.New("token not found a second time")
}

// Close logs out and releases the token; the keys it returned stop
// signing (with [ErrClosed]). Signatures in progress finish first. Close
// is idempotent.
func (ks *Keystore) Close() error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.closed {
		return nil
	}
	ks.closed = true
	ks.raw.Destroy()
	if err := ks.ctx.Close(); err != nil {
		return fmt.Errorf("pkcs11: close token %q: %w", ks.token, err)
	}
	return nil
}

// Create generates an ECDSA P-256 key pair inside the token under label,
// after destroying every object already there under that label or its
// CKA_ID (what a crash may have left). The private key is a token object
// (CKA_TOKEN), usable only after login (CKA_PRIVATE), never revealed
// (CKA_SENSITIVE) nor exported (CKA_EXTRACTABLE false), and may only sign.
// Other key types are refused with [identity.ErrUnsupportedKey].
func (ks *Keystore) Create(ctx context.Context, label string, kt identity.KeyType) (crypto.Signer, error) {
	return ks.create(ctx, label, kt, true)
}

// CreateNew is [Keystore.Create] for a key that must replace nothing, such
// as a fleet CA's issuing key under a label an operator chose: if any
// object in the token carries label as its CKA_LABEL, or its CKA_ID, it
// fails with an error wrapping [ErrKeyExists] and destroys nothing.
func (ks *Keystore) CreateNew(ctx context.Context, label string, kt identity.KeyType) (crypto.Signer, error) {
	return ks.create(ctx, label, kt, false)
}

// create generates the key pair under label, first destroying what is
// there if replace, else refusing to if anything is.
func (ks *Keystore) create(ctx context.Context, label string, kt identity.KeyType, replace bool) (crypto.Signer, error) {
	if kt != identity.ECDSAP256 {
		return nil, fmt.Errorf("%w: pkcs11: the token makes ECDSA P-256 keys only, not %v", identity.ErrUnsupportedKey, kt)
	}
	if err := checkLabel(label); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.closed {
		return nil, ErrClosed
	}
	if !replace {
		n, err := ks.count(label)
		if err != nil {
			return nil, fmt.Errorf("pkcs11: create key %q: look for objects under the label: %w", label, err)
		}
		if n > 0 {
			return nil, fmt.Errorf("%w: %d object(s) under label %q or its CKA_ID in token %q", ErrKeyExists, n, label, ks.token)
		}
	} else if err := ks.destroy(label); err != nil {
		return nil, fmt.Errorf("pkcs11: create key %q: replace old objects: %w", label, err)
	}
	id := keyID(label)
	public, err := crypto11.NewAttributeSetWithIDAndLabel(id, []byte(label))
	if err != nil {
		return nil, fmt.Errorf("pkcs11: create key %q: %w", label, err)
	}
	private := public.Copy()
	public.AddIfNotPresent([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	})
	private.AddIfNotPresent([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	})
	s, err := ks.ctx.GenerateECDSAKeyPairWithAttributes(public, private, elliptic.P256())
	if err != nil {
		return nil, fmt.Errorf("pkcs11: create key %q: generate in token %q: %w", label, ks.token, err)
	}
	k, err := ks.wrap(label, s)
	if err != nil {
		_ = s.Delete()
		return nil, fmt.Errorf("pkcs11: create key %q: %w", label, err)
	}
	return k, nil
}

// Open returns the key pair under label, or an error wrapping [ErrNoKey].
// A key that is not ECDSA P-256, or that is or ever was extractable or
// not sensitive, is refused with [ErrNotHardwareKey].
func (ks *Keystore) Open(ctx context.Context, label string) (crypto.Signer, error) {
	return ks.open(ctx, keyID(label), label)
}

// open returns the one key pair whose private half has label as CKA_LABEL
// and, unless id is nil, id as its CKA_ID, under the checks of Open.
func (ks *Keystore) open(ctx context.Context, id []byte, label string) (crypto.Signer, error) {
	if err := checkLabel(label); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.closed {
		return nil, ErrClosed
	}
	pairs, err := ks.ctx.FindKeyPairs(id, []byte(label))
	if err != nil {
		return nil, fmt.Errorf("pkcs11: open key %q in token %q: %w", label, ks.token, err)
	}
	switch len(pairs) {
	case 0:
		return nil, fmt.Errorf("%w: %q in token %q", ErrNoKey, label, ks.token)
	case 1:
	default:
		return nil, fmt.Errorf("pkcs11: open key %q: %d private keys under one label", label, len(pairs))
	}
	k, err := ks.wrap(label, pairs[0])
	if err != nil {
		return nil, fmt.Errorf("pkcs11: open key %q: %w", label, err)
	}
	return k, nil
}

// Delete destroys every object (private key, public key, certificate)
// under label or its CKA_ID. A missing key is not an error.
func (ks *Keystore) Delete(ctx context.Context, label string) error {
	if err := checkLabel(label); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.closed {
		return ErrClosed
	}
	if err := ks.destroy(label); err != nil {
		return fmt.Errorf("pkcs11: delete key %q in token %q: %w", label, ks.token, err)
	}
	return nil
}

// count returns how many objects have label as CKA_LABEL or keyID(label)
// as CKA_ID. The caller holds ks.mu.
func (ks *Keystore) count(label string) (int, error) {
	sh, err := ks.raw.OpenSession(ks.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return 0, fmt.Errorf("open session: %w", err)
	}
	defer func() { _ = ks.raw.CloseSession(sh) }()
	handles, err := labelled(ks.raw, sh, label)
	if err != nil {
		return 0, err
	}
	seen := map[pkcs11.ObjectHandle]bool{}
	for _, h := range handles {
		seen[h] = true
	}
	return len(seen), nil
}

// labelled returns the handles of the objects whose CKA_LABEL is label or
// whose CKA_ID is keyID(label); an object with both appears twice.
func labelled(raw *pkcs11.Ctx, sh pkcs11.SessionHandle, label string) ([]pkcs11.ObjectHandle, error) {
	var handles []pkcs11.ObjectHandle
	for _, tmpl := range [][]*pkcs11.Attribute{
		{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)},
		{pkcs11.NewAttribute(pkcs11.CKA_ID, keyID(label))},
	} {
		hs, err := findObjects(raw, sh, tmpl)
		if err != nil {
			return nil, err
		}
		handles = append(handles, hs...)
	}
	return handles, nil
}

// destroy destroys every object whose CKA_LABEL is label or whose CKA_ID
// is keyID(label). The caller holds ks.mu for writing.
func (ks *Keystore) destroy(label string) error {
	sh, err := ks.raw.OpenSession(ks.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	defer func() { _ = ks.raw.CloseSession(sh) }()
	handles, err := labelled(ks.raw, sh, label)
	if err != nil {
		return err
	}
	// Private keys first, so that an interruption never leaves a private
	// key whose public half is gone (crypto11 cannot open such a key).
	var private, rest []pkcs11.ObjectHandle
	seen := map[pkcs11.ObjectHandle]bool{}
	for _, h := range handles {
		if seen[h] {
			continue
		}
		seen[h] = true
		attrs, err := ks.raw.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)})
		if err == nil && len(attrs) == 1 && bytesToUint(attrs[0].Value) == pkcs11.CKO_PRIVATE_KEY {
			private = append(private, h)
		} else {
			rest = append(rest, h)
		}
	}
	for _, h := range append(private, rest...) {
		if err := ks.raw.DestroyObject(sh, h); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)) {
			return fmt.Errorf("destroy object: %w", err)
		}
	}
	return nil
}

// findObjects returns the handles of every object matching tmpl.
func findObjects(raw *pkcs11.Ctx, sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) (handles []pkcs11.ObjectHandle, err error) {
	if err := raw.FindObjectsInit(sh, tmpl); err != nil {
		return nil, fmt.Errorf("find objects: %w", err)
	}
	defer func() {
		if ferr := raw.FindObjectsFinal(sh); err == nil && ferr != nil {
			err = fmt.Errorf("find objects: %w", ferr)
		}
	}()
	for {
		hs, _, err := raw.FindObjects(sh, 64)
		if err != nil {
			return nil, fmt.Errorf("find objects: %w", err)
		}
		if len(hs) == 0 {
			return handles, nil
		}
		handles = append(handles, hs...)
	}
}

// bytesToUint decodes a CK_ULONG attribute value, in the host's byte
// order as the module wrote it.
func bytesToUint(b []byte) uint {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b))
	case 4:
		return uint(binary.NativeEndian.Uint32(b))
	}
	return ^uint(0)
}

// hardwareAttributes must all be true on a device private key: it is
// secret and unexportable now, and always was (so it was generated in
// the token, not imported).
var hardwareAttributes = []crypto11.AttributeType{
	pkcs11.CKA_SENSITIVE, pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE,
}

// wrap checks that s is a P-256 key that never could leave the token and
// returns it as the package's signer.
func (ks *Keystore) wrap(label string, s crypto11.Signer) (*key, error) {
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: key is %T, want ECDSA P-256", identity.ErrUnsupportedKey, s.Public())
	}
	attrs, err := ks.ctx.GetAttributes(s, append(hardwareAttributes, pkcs11.CKA_EXTRACTABLE))
	if err != nil {
		return nil, fmt.Errorf("read key attributes: %w", err)
	}
	for _, a := range hardwareAttributes {
		if !attrTrue(attrs[a]) {
			return nil, fmt.Errorf("%w: %s is not true", ErrNotHardwareKey, attributeName(a))
		}
	}
	if attrTrue(attrs[pkcs11.CKA_EXTRACTABLE]) {
		return nil, fmt.Errorf("%w: CKA_EXTRACTABLE is true", ErrNotHardwareKey)
	}
	return &key{ks: ks, label: label, signer: s, pub: pub}, nil
}

func attrTrue(a *crypto11.Attribute) bool {
	return a != nil && len(a.Value) == 1 && a.Value[0] != 0
}

func attributeName(a crypto11.AttributeType) string {
	switch a {
	case pkcs11.CKA_SENSITIVE:
		return "CKA_SENSITIVE"
	case pkcs11.CKA_ALWAYS_SENSITIVE:
		return "CKA_ALWAYS_SENSITIVE"
	case pkcs11.CKA_NEVER_EXTRACTABLE:
		return "CKA_NEVER_EXTRACTABLE"
	}
	return fmt.Sprintf("attribute 0x%x", a)
}

// key is a private key in the token, as a crypto.Signer.
type key struct {
	ks     *Keystore
	label  string
	signer crypto11.Signer
	pub    *ecdsa.PublicKey
}

// Public returns the key's *ecdsa.PublicKey.
func (k *key) Public() crypto.PublicKey { return k.pub }

// Sign signs digest, the output of opts.HashFunc(), with CKM_ECDSA inside
// the token, and returns an ASN.1 DER signature as crypto.Signer requires.
// The token draws the nonce; rand is not used. A failure of the token, or
// a closed keystore, wraps [identity.ErrKeystore].
func (k *key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() == 0 || !opts.HashFunc().Available() {
		return nil, errors.New("pkcs11: sign: ECDSA signs a digest; opts must name its hash")
	}
	if len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("pkcs11: sign: digest of %d bytes, want %d for %v", len(digest), opts.HashFunc().Size(), opts.HashFunc())
	}
	k.ks.mu.RLock()
	defer k.ks.mu.RUnlock()
	if k.ks.closed {
		return nil, fmt.Errorf("%w: sign with key %q: %w", identity.ErrKeystore, k.label, ErrClosed)
	}
	sig, err := k.signer.Sign(nil, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: pkcs11: sign with key %q in token %q: %w", identity.ErrKeystore, k.label, k.ks.token, err)
	}
	return sig, nil
}
