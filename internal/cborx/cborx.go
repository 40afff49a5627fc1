// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package cborx holds the CBOR encoding and decoding modes shared by d2c.
//
// Encoding is RFC 8949 section 4.2.1 core deterministic encoding. Decoding is
// strict, for bytes that may come from outside: duplicate map keys,
// indefinite lengths, tags and unknown struct fields are refused, and nesting
// and sizes are bounded.
package cborx

import (
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Modes are the encoding and decoding modes; build them with [New].
type Modes struct {
	Enc cbor.EncMode
	Dec cbor.DecMode
}

// New builds the deterministic encoder and the strict decoder. maxElems
// bounds the elements of any one array or map.
func New(maxElems int) (Modes, error) {
	maxElems = max(maxElems, 16) // the library's floor
	enc, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		return Modes{}, fmt.Errorf("cborx: encoder: %w", err)
	}
	dec, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		MaxNestedLevels:   16,
		MaxArrayElements:  maxElems,
		MaxMapPairs:       maxElems,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		UTF8:              cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		return Modes{}, fmt.Errorf("cborx: decoder: %w", err)
	}
	return Modes{Enc: enc, Dec: dec}, nil
}
