// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package textutil holds small text helpers shared by the transport
// packages.
package textutil

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
)

// Clip shortens s to 80 bytes and replaces invalid UTF-8, for quoting
// untrusted input in error messages.
func Clip(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// DecodeStrictJSON decodes exactly one JSON value into v, refusing unknown
// fields and anything after the value.
func DecodeStrictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}
