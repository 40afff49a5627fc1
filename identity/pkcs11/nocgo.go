// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build !cgo

package pkcs11

import (
	"context"
	"crypto"
	"errors"

	"github.com/d2c-iot/d2c/identity"
)

var _ identity.Keystore = (*Keystore)(nil)

// errNoCgo is what every call returns in a program built without cgo.
var errNoCgo = errors.New("pkcs11: built without cgo: PKCS#11 needs cgo (build with CGO_ENABLED=1 and a C compiler)")

// Keystore keeps device keys in one PKCS#11 token. This program was built
// without cgo, which loading a PKCS#11 module needs: every method fails.
type Keystore struct{}

// Open fails: this program was built without cgo, which loading a PKCS#11
// module needs.
func Open(Config) (*Keystore, error) { return nil, errNoCgo }

// Close does nothing.
func (ks *Keystore) Close() error { return nil }

// Create fails: built without cgo.
func (ks *Keystore) Create(context.Context, string, identity.KeyType) (crypto.Signer, error) {
	return nil, errNoCgo
}

// CreateNew fails: built without cgo.
func (ks *Keystore) CreateNew(context.Context, string, identity.KeyType) (crypto.Signer, error) {
	return nil, errNoCgo
}

// Open fails: built without cgo.
func (ks *Keystore) Open(context.Context, string) (crypto.Signer, error) {
	return nil, errNoCgo
}

// open fails: built without cgo.
func (ks *Keystore) open(context.Context, []byte, string) (crypto.Signer, error) {
	return nil, errNoCgo
}

// Delete fails: built without cgo.
func (ks *Keystore) Delete(context.Context, string) error { return errNoCgo }
