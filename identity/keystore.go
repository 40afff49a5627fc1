// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"context"
	"crypto"
	"errors"
)

// ErrKeystore wraps failures of a hardware keystore (a token removed, a
// TPM that stopped answering, a wrong PIN). The store never falls back to
// a software key when the keystore fails.
var ErrKeystore = errors.New("identity: keystore")

// Keystore keeps device private keys inside hardware (a PKCS#11 token, a
// TPM), where they are generated and used but never exported. A [Store]
// with a Keystore asks it for the key of each generation by a label, and
// keeps only that label on disk (file key-NNNNNNNN.ref) next to the
// certificate; without one, keys are PKCS#8 files (0600) in the store.
//
// Implementations: identity/pkcs11 and identity/tpm. The store serializes
// its calls.
type Keystore interface {
	// Create generates a new key of type kt under label, replacing any
	// key a crash may have left under the same label, and returns it as
	// a crypto.Signer. The key must be durable in the keystore when
	// Create returns. A key type the keystore cannot make is an error.
	Create(ctx context.Context, label string, kt KeyType) (crypto.Signer, error)
	// Open returns the key under label.
	Open(ctx context.Context, label string) (crypto.Signer, error)
	// Delete destroys the key under label; a missing key is not an
	// error.
	Delete(ctx context.Context, label string) error
}
