// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package tpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/google/go-tpm/tpm2"

	"github.com/d2c-iot/d2c/identity"
)

// key is a TPM key as a crypto.Signer.
type key struct {
	ks    *Keystore
	label string
	epoch uint64
	blob  *keyBlob
	pub   *ecdsa.PublicKey
}

// Public returns the key's *ecdsa.PublicKey.
func (k *key) Public() crypto.PublicKey { return k.pub }

// Sign signs digest, a SHA-256 hash, with TPM2_Sign (ECDSA) and returns
// the ASN.1 DER signature, as [crypto.Signer] requires. opts must name
// crypto.SHA256; rand is ignored (the TPM draws its own nonce).
func (k *key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() != crypto.SHA256 {
		return nil, fmt.Errorf("tpm: sign with %q: the key signs SHA-256 digests only", k.label)
	}
	if len(digest) != crypto.SHA256.Size() {
		return nil, fmt.Errorf("tpm: sign with %q: digest of %d bytes, want %d", k.label, len(digest), crypto.SHA256.Size())
	}
	ks := k.ks
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.closed {
		return nil, fmt.Errorf("%w: %w", identity.ErrKeystore, ErrClosed)
	}
	if ks.epochs[k.label] != k.epoch {
		return nil, fmt.Errorf("%w: tpm: sign with %q: the key was deleted or replaced", identity.ErrKeystore, k.label)
	}
	obj, err := ks.loadLocked(k.blob, k.label)
	if err != nil {
		return nil, fmt.Errorf("%w: tpm: load key %q: %w", identity.ErrKeystore, k.label, err)
	}
	rsp, err := tpm2.Sign{
		KeyHandle: obj,
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
		},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(ks.tpm)
	if err != nil {
		// The next signature loads the key afresh.
		ks.flushLoadedLocked()
		return nil, fmt.Errorf("%w: tpm: sign with %q: %w", identity.ErrKeystore, k.label, err)
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("%w: tpm: sign with %q: %w", identity.ErrKeystore, k.label, err)
	}
	r := new(big.Int).SetBytes(sig.SignatureR.Buffer)
	s := new(big.Int).SetBytes(sig.SignatureS.Buffer)
	if r.Sign() == 0 || s.Sign() == 0 {
		return nil, fmt.Errorf("tpm: sign with %q: empty signature", k.label)
	}
	// The ECDSA-Sig-Value of RFC 5480 section 2.2 (and RFC 3279).
	return asn1.Marshal(struct{ R, S *big.Int }{r, s})
}

// checkPublic checks that blob's public area is a key this package makes
// (see keyTemplate) and returns its public key.
func checkPublic(blob *keyBlob) (*ecdsa.PublicKey, error) {
	pub, err := blob.public.Contents()
	if err != nil {
		return nil, fmt.Errorf("public area: %w", err)
	}
	a := pub.ObjectAttributes
	if pub.Type != tpm2.TPMAlgECC || pub.NameAlg != tpm2.TPMAlgSHA256 ||
		!a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.SignEncrypt || a.Decrypt || a.Restricted {
		return nil, errors.New("public area: not a fixedTPM ECC signing key")
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("public area: %w", err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 {
		return nil, fmt.Errorf("public area: curve %v, want NIST P-256", parms.CurveID)
	}
	if parms.Scheme.Scheme != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("public area: scheme %v, want ECDSA", parms.Scheme.Scheme)
	}
	if d, err := parms.Scheme.Details.ECDSA(); err != nil || d.HashAlg != tpm2.TPMAlgSHA256 {
		return nil, errors.New("public area: scheme is not ECDSA with SHA-256")
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("public area: %w", err)
	}
	x, y := point.X.Buffer, point.Y.Buffer
	if len(x) > 32 || len(y) > 32 {
		return nil, errors.New("public area: point coordinates longer than 32 bytes")
	}
	// Uncompressed point encoding (SEC 1 section 2.3.3); parsing checks
	// that the point is on the curve.
	enc := make([]byte, 65)
	enc[0] = 4
	copy(enc[1+32-len(x):33], x)
	copy(enc[33+32-len(y):], y)
	k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), enc)
	if err != nil {
		return nil, fmt.Errorf("public area: %w", err)
	}
	return k, nil
}
