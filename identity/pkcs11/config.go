// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package pkcs11

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// Bounds on configuration and labels.
const (
	// maxTokenLabel is the size of CK_TOKEN_INFO.label (PKCS#11 3.0
	// section 3.2, CK_TOKEN_INFO).
	maxTokenLabel = 32
	// maxPINFile bounds the PIN file: PINs are short, and tokens cap them
	// well below this (CK_TOKEN_INFO.ulMaxPinLen).
	maxPINFile = 256
	// maxKeyLabel bounds a key label (CKA_LABEL).
	maxKeyLabel = 128
)

// Sentinel errors of the package. Token failures that the caller cannot
// fix by configuration (a removed token, a closed keystore) also wrap
// [identity.ErrKeystore] when they come out of a signature, so that the
// code holding only the crypto.Signer can tell a hardware failure apart.
var (
	// ErrNoKey: no key pair is stored under the label.
	ErrNoKey = errors.New("pkcs11: no key under this label")
	// ErrClosed: the keystore was closed; its keys no longer sign.
	ErrClosed = errors.New("pkcs11: keystore closed")
	// ErrNotHardwareKey: a key exists under the label but could have left
	// the token (not sensitive, extractable, or once either), so it is not
	// used as a device key.
	ErrNotHardwareKey = errors.New("pkcs11: key can leave the token")
	// ErrKeyExists: [Keystore.CreateNew] found objects under the label,
	// which it does not replace.
	ErrKeyExists = errors.New("pkcs11: objects already exist under this label")
)

// Config selects a PKCS#11 token and logs into it. There is no usable
// zero value: Module, TokenLabel and one of PIN or PINFile are required,
// and [Open] refuses a configuration without them rather than guessing.
type Config struct {
	// Module is the absolute path of the token's PKCS#11 library, for
	// example /usr/lib/softhsm/libsofthsm2.so. Required; a relative path
	// is refused, so that the dynamic loader's search path never picks
	// the library.
	Module string
	// TokenLabel selects the token by its label (at most 32 bytes).
	// Required.
	TokenLabel string
	// PIN is the user PIN. Exactly one of PIN and PINFile is required.
	// It is never logged nor put into an error message, and [Config.String]
	// redacts it.
	PIN string
	// PINFile is the path of a file holding the user PIN (one trailing
	// newline is ignored). The file must not be readable or writable by
	// group or others. Exactly one of PIN and PINFile is required.
	PINFile string
}

// String describes the configuration with the PIN redacted, so that
// printing or logging a Config never reveals it.
func (c Config) String() string {
	pin := ""
	if c.PIN != "" {
		pin = "[redacted]"
	}
	return fmt.Sprintf("pkcs11.Config{Module: %q, TokenLabel: %q, PIN: %q, PINFile: %q}", c.Module, c.TokenLabel, pin, c.PINFile)
}

// GoString is [Config.String], so that %#v redacts the PIN too.
func (c Config) GoString() string { return c.String() }

// Validate reports whether the configuration is complete. It does not read
// the PIN file nor load the module.
func (c Config) Validate() error {
	switch {
	case c.Module == "":
		return errors.New("pkcs11: config: Module (path of the PKCS#11 library) is required")
	case !filepath.IsAbs(c.Module):
		return fmt.Errorf("pkcs11: config: Module %q is not an absolute path", c.Module)
	case c.TokenLabel == "":
		return errors.New("pkcs11: config: TokenLabel is required")
	case len(c.TokenLabel) > maxTokenLabel:
		return fmt.Errorf("pkcs11: config: TokenLabel is %d bytes, more than the %d of a PKCS#11 token label", len(c.TokenLabel), maxTokenLabel)
	case c.PIN == "" && c.PINFile == "":
		return errors.New("pkcs11: config: one of PIN and PINFile is required")
	case c.PIN != "" && c.PINFile != "":
		return errors.New("pkcs11: config: PIN and PINFile are both set; set one")
	}
	return nil
}

// pin returns the user PIN, from the configuration or its file.
func (c Config) pin() (string, error) {
	if c.PIN != "" {
		return c.PIN, nil
	}
	st, err := os.Stat(c.PINFile)
	if err != nil {
		return "", fmt.Errorf("pkcs11: PIN file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("pkcs11: PIN file %s is not a regular file", c.PINFile)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%w: PIN file %s has mode %04o (want 0600: chmod 600 %s)", identity.ErrKeyPermissions, c.PINFile, st.Mode().Perm(), c.PINFile)
	}
	b, err := atomicfile.ReadFile(c.PINFile, maxPINFile)
	if errors.Is(err, atomicfile.ErrTooLarge) {
		return "", fmt.Errorf("%w: PIN file %s is over %d bytes", identity.ErrTooLarge, c.PINFile, maxPINFile)
	}
	if err != nil {
		return "", fmt.Errorf("pkcs11: PIN file: %w", err)
	}
	pin := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pin == "" {
		return "", fmt.Errorf("pkcs11: PIN file %s is empty", c.PINFile)
	}
	return pin, nil
}

// checkLabel refuses a key label the keystore does not store.
func checkLabel(label string) error {
	if label == "" || len(label) > maxKeyLabel || !utf8.ValidString(label) || strings.ContainsRune(label, 0) {
		return fmt.Errorf("pkcs11: invalid key label %q (1 to %d bytes of UTF-8, no NUL)", label, maxKeyLabel)
	}
	return nil
}

// keyID derives the CKA_ID of the key pair under label, so that both
// halves are found by label and by ID, and a tool listing the token shows
// which objects belong together. It is the first 16 bytes of
// SHA-256("d2c key id\x00" || label).
func keyID(label string) []byte {
	sum := sha256.Sum256([]byte("d2c key id\x00" + label))
	return sum[:16]
}
