// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package strictjson decodes JSON that was signed, in exactly one way.
//
// The signature covers bytes, but the receiver acts on the parsed values,
// and encoding/json is lenient where other parsers differ: it keeps the
// last of two members of one name (others keep the first), and it matches
// member names without regard to case ("Granted" fills the field tagged
// "granted"). A signed document built to exploit either would read one
// way to d2c and another to a service that parses the same bytes with
// another library. [Unmarshal] accepts only the one form that encodes the
// value: d2c's update metadata (docs/update-format.md, "JSON strictness")
// and the JSON bodies of the reserved telemetry streams
// (docs/protocol.md) are decoded through it.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"unicode/utf8"
)

// Unmarshal decodes one JSON value from data into v (a pointer to a
// struct whose fields carry json tags) and refuses anything but the one
// form that encodes it:
//
//   - bytes that are not UTF-8;
//   - a duplicate member name in any object;
//   - nesting deeper than maxDepth;
//   - anything after the value but white space;
//   - unknown members;
//   - a member spelled in another case than its field ("Version" for
//     "version"), a missing member, a null where a value is required, or
//     an optional (omitempty) member present with its zero value.
//
// The first four are checked by a token pass before decoding; the last by
// comparing the document, decoded generically, with the re-encoding of v
// decoded the same way. Values are compared as decoded, so white space,
// member order and string escapes are free, but numbers must be written
// as encoding/json writes them (no "1.0", no "1e3").
func Unmarshal(data []byte, v any, maxDepth int) error {
	if !utf8.Valid(data) {
		return errors.New("not UTF-8")
	}
	if err := checkTokens(data, maxDepth); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	got, err := generic(data)
	if err != nil {
		return err
	}
	re, err := json.Marshal(v)
	if err != nil {
		return err
	}
	want, err := generic(re)
	if err != nil {
		return err
	}
	if !reflect.DeepEqual(got, want) {
		return errors.New("member names, presence or numbers not in the canonical form")
	}
	return nil
}

// generic decodes data into maps, slices, strings, bools and json.Number.
func generic(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

// checkTokens walks data token by token: one value, no duplicate member
// names, bounded depth, nothing but white space after the value.
func checkTokens(data []byte, maxDepth int) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := walkValue(dec, 0, maxDepth); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}

func walkValue(dec *json.Decoder, depth, maxDepth int) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	if depth >= maxDepth {
		return fmt.Errorf("nested deeper than %d", maxDepth)
	}
	switch d {
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			name, ok := tok.(string)
			if !ok {
				return errors.New("object member name is not a string")
			}
			if seen[name] {
				return fmt.Errorf("duplicate member %q", truncate(name))
			}
			seen[name] = true
			if err := walkValue(dec, depth+1, maxDepth); err != nil {
				return err
			}
		}
	case '[':
		for dec.More() {
			if err := walkValue(dec, depth+1, maxDepth); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unexpected %v", d)
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

// truncate shortens a string from outside for an error message, keeping
// it valid UTF-8.
func truncate(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	return string(bytes.ToValidUTF8([]byte(s), []byte("?")))
}
