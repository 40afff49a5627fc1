// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package jws

import (
	"bytes"
	"crypto"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/wire"
)

// goJoseVerify is the reference: go-jose with d2c's strict segment check.
func goJoseVerify(b []byte, pub crypto.PublicKey) ([]byte, error) {
	if err := strictSegments(b); err != nil {
		return nil, err
	}
	jws, err := jose.ParseSignedCompact(string(b), Algorithms())
	if err != nil {
		return nil, err
	}
	return Verify(jws, pub)
}

// TestFastJWSDifferential checks the fast path against go-jose in both
// directions, for both key types: what one signs the other verifies, go-jose
// writes the same canonical header, and on thousands of single-byte
// mutations both accept or refuse alike.
func TestFastJWSDifferential(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for _, kt := range []identity.KeyType{identity.ECDSAP256, identity.Ed25519} {
		t.Run(kt.String(), func(t *testing.T) {
			key, _ := identity.GenerateKey(kt)
			fs, err := NewFastSigner(key, "dev-x", wire.TelemetryType)
			if err != nil {
				t.Fatal(err)
			}
			js, err := NewSigner(key, "dev-x", wire.TelemetryType)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 50 {
				payload := make([]byte, r.IntN(300))
				for j := range payload {
					payload[j] = byte(r.Uint32())
				}
				fast, err := fs.Sign(payload)
				if err != nil {
					t.Fatal(err)
				}
				got, err := goJoseVerify(fast, key.Public())
				if err != nil || !bytes.Equal(got, payload) {
					t.Fatalf("go-jose refuses the fast path's JWS: %v", err)
				}
				o, err := js.Sign(payload)
				if err != nil {
					t.Fatal(err)
				}
				ref, _ := o.CompactSerialize()
				if h1, h2 := bytes.SplitN(fast, []byte("."), 2)[0], bytes.SplitN([]byte(ref), []byte("."), 2)[0]; !bytes.Equal(h1, h2) {
					t.Fatalf("headers differ: fast %s, go-jose %s", h1, h2)
				}
				got, err = FastVerify([]byte(ref), "dev-x", wire.TelemetryType, key.Public())
				if err != nil || !bytes.Equal(got, payload) {
					t.Fatalf("the fast path refuses go-jose's JWS: %v", err)
				}
				if i > 10 {
					continue
				}
				// Mutations: both must agree on every one.
				for range 200 {
					m := bytes.Clone(fast)
					m[r.IntN(len(m))] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."[r.IntN(65)]
					_, errRef := goJoseVerify(m, key.Public())
					_, errFast := FastVerify(m, "dev-x", wire.TelemetryType, key.Public())
					if errors.Is(errFast, ErrNotCanonical) {
						continue // the general path (go-jose) decides
					}
					if (errRef == nil) != (errFast == nil) {
						t.Fatalf("mutation %q: go-jose %v, fast path %v", m, errRef, errFast)
					}
				}
			}
		})
	}
}
