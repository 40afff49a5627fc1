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
	"strings"
	"unicode"
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
	if err := CheckNames(data, maxDepth); err != nil {
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

// CheckNames checks what every reader of data must agree on, for JSON
// whose members a caller reads only in part (a CycloneDX SBOM, where
// unknown members are the rule): one value of valid UTF-8 with nothing
// after it, nested at most maxDepth deep, no string escaping half of a
// UTF-16 surrogate pair (Go reads one as U+FFFD, other parsers keep it),
// and in no object two member names that are equal or equal but for case
// (Unicode simple folding, as encoding/json matches names: "components"
// and "Components" would fill one field in Go and two in other parsers).
func CheckNames(data []byte, maxDepth int) error {
	if !utf8.Valid(data) {
		return errors.New("not UTF-8")
	}
	if err := checkSurrogates(data); err != nil {
		return err
	}
	return checkTokens(data, maxDepth)
}

// checkSurrogates refuses a \u escape of a lone surrogate in a string.
func checkSurrogates(data []byte) error {
	inString := false
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch {
		case !inString:
			inString = c == '"'
		case c == '"':
			inString = false
		case c == '\\' && i+1 < len(data):
			i++
			if data[i] != 'u' {
				continue
			}
			v, ok := hex4(data, i+1)
			switch {
			case !ok:
				continue // the decoder refuses it
			case v >= 0xd800 && v < 0xdc00:
				w, ok := uint16(0), false
				if i+6 < len(data) && data[i+5] == '\\' && data[i+6] == 'u' {
					w, ok = hex4(data, i+7)
				}
				if !ok || w < 0xdc00 || w >= 0xe000 {
					return fmt.Errorf("a lone UTF-16 surrogate \\u%04x", v)
				}
				i += 10
			case v >= 0xdc00 && v < 0xe000:
				return fmt.Errorf("a lone UTF-16 surrogate \\u%04x", v)
			default:
				i += 4
			}
		}
	}
	return nil
}

// hex4 reads 4 hexadecimal digits at data[i:].
func hex4(data []byte, i int) (uint16, bool) {
	if i+4 > len(data) {
		return 0, false
	}
	var v uint16
	for _, c := range data[i : i+4] {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint16(d)
	}
	return v, true
}

// foldKey returns name with every rune replaced by the smallest rune of
// its Unicode simple-folding orbit: two names have one key when they are
// equal but for case.
func foldKey(name string) string {
	var b strings.Builder
	for _, r := range name {
		min := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < min {
				min = f
			}
		}
		b.WriteRune(min)
	}
	return b.String()
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
			key := foldKey(name)
			if seen[key] {
				return fmt.Errorf("duplicate member %q (names are compared without regard to case)", truncate(name))
			}
			seen[key] = true
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
