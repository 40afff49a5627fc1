// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package textutil holds small text helpers shared by the transport
// packages.
package textutil

import (
	"strings"

	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/internal/strictjson"
)

// Clip shortens s to 80 bytes and replaces invalid UTF-8, for quoting
// untrusted input in error messages.
func Clip(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// DecodeStrictJSON decodes the JSON body of a reading of a reserved
// stream into v in the one form that encodes it: no duplicate or
// case-variant member, no unknown member, nothing after the value, nesting
// bounded by limits.BodyJSONDepth (internal/strictjson).
func DecodeStrictJSON(b []byte, v any) error {
	return strictjson.Unmarshal(b, v, limits.BodyJSONDepth)
}
