// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto"
	"encoding/pem"
	"path/filepath"
)

func dirOf(path string) string { return filepath.Dir(path) }

type equaler interface{ Equal(crypto.PublicKey) bool }

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// pemDecode returns the bytes of the first PEM block if it has type typ.
func pemDecode(data []byte, typ string) ([]byte, bool) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != typ {
		return nil, false
	}
	return b.Bytes, true
}
