// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

// KeyType names a device key algorithm. The zero value is ECDSA P-256.
type KeyType int

const (
	// ECDSAP256 is ECDSA on NIST P-256 with SHA-256 (ES256): the default,
	// accepted by every broker and cloud IoT service.
	ECDSAP256 KeyType = iota
	// Ed25519 is EdDSA on Curve25519, for fleets whose brokers accept it.
	Ed25519
)

// String returns the name used by the CLI: "p256" or "ed25519".
func (t KeyType) String() string {
	switch t {
	case ECDSAP256:
		return "p256"
	case Ed25519:
		return "ed25519"
	}
	return fmt.Sprintf("KeyType(%d)", int(t))
}

// ParseKeyType parses "p256" (or "ecdsa", "") and "ed25519".
func ParseKeyType(s string) (KeyType, error) {
	switch s {
	case "", "p256", "ecdsa", "ecdsa-p256":
		return ECDSAP256, nil
	case "ed25519":
		return Ed25519, nil
	}
	return 0, fmt.Errorf("%w: %q (want p256 or ed25519)", ErrUnsupportedKey, s)
}

// GenerateKey generates a new private key of type t on this device, from
// crypto/rand. The rest of d2c only ever uses it as a crypto.Signer.
func GenerateKey(t KeyType) (crypto.Signer, error) {
	switch t {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("%w: %v", ErrUnsupportedKey, t)
}

// keyTypeOf reports the KeyType of a public key, or an ErrUnsupportedKey.
func keyTypeOf(pub crypto.PublicKey) (KeyType, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return ECDSAP256, nil
		}
		return 0, fmt.Errorf("%w: ECDSA curve %s", ErrUnsupportedKey, k.Curve.Params().Name)
	case ed25519.PublicKey:
		return Ed25519, nil
	}
	return 0, fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
}

// MarshalPrivateKey encodes a software key as a PKCS#8 PEM block. Keys held
// in hardware cannot be marshalled.
func MarshalPrivateKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKey decodes a PKCS#8 PEM private key (ECDSA P-256 or Ed25519).
func ParsePrivateKey(pemBytes []byte) (crypto.Signer, error) {
	if len(pemBytes) > limits.PEMFile {
		return nil, fmt.Errorf("%w: key PEM over %d bytes", ErrTooLarge, limits.PEMFile)
	}
	b, _ := pem.Decode(pemBytes)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%w: no PKCS#8 PRIVATE KEY PEM block", ErrMalformed)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: PKCS#8: %v", ErrMalformed, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %T", ErrUnsupportedKey, k)
	}
	if _, err := keyTypeOf(s.Public()); err != nil {
		return nil, err
	}
	return s, nil
}

// WriteKeyFile writes a software key to path as PKCS#8 PEM, mode 0600,
// atomically (a temporary file, fsynced, renamed over path, the directory
// fsynced).
func WriteKeyFile(path string, k crypto.Signer) error {
	return writeKeyFile(nil, path, k)
}

// writeKeyFile is [WriteKeyFile] through fsys (nil: the operating system),
// so that the store's crash tests can cut the power inside it.
func writeKeyFile(fsys atomicfile.FS, path string, k crypto.Signer) error {
	b, err := MarshalPrivateKey(k)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(fsys, path, b)
}

// ReadKeyFile reads a PKCS#8 PEM key written by [WriteKeyFile]. It refuses,
// with [ErrKeyPermissions], a file that group or others may read or write.
func ReadKeyFile(path string) (crypto.Signer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("identity: key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("identity: key file %s: %w", path, fs.ErrInvalid)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o (want 0600: chmod 600 %s)", ErrKeyPermissions, path, st.Mode().Perm(), path)
	}
	b, err := atomicfile.ReadFile(path, limits.PEMFile)
	if errors.Is(err, atomicfile.ErrTooLarge) {
		return nil, fmt.Errorf("%w: key file %s", ErrTooLarge, path)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: key file: %w", err)
	}
	k, err := ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// MarshalPublicKey encodes a public key as a PKIX "PUBLIC KEY" PEM block.
func MarshalPublicKey(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ReadPublicKeyFile reads a PKIX PEM public key (ECDSA P-256 or Ed25519),
// such as the token public key a registrar verifies tokens with.
func ReadPublicKeyFile(path string) (crypto.PublicKey, error) {
	b, err := atomicfile.ReadFile(path, limits.PEMFile)
	if errors.Is(err, atomicfile.ErrTooLarge) {
		return nil, fmt.Errorf("%w: public key file %s", ErrTooLarge, path)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: public key file: %w", err)
	}
	der, ok := pemDecode(b, "PUBLIC KEY")
	if !ok {
		return nil, fmt.Errorf("%w: %s: no PUBLIC KEY PEM block", ErrMalformed, path)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, path, err)
	}
	if _, err := keyTypeOf(pub); err != nil {
		return nil, err
	}
	return pub, nil
}
