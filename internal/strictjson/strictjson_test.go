// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package strictjson

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/internal/fuzzcorpus"
)

// body has the kinds of fields d2c's signed JSON uses.
type body struct {
	V       int               `json:"v"`
	Stream  string            `json:"stream"`
	Granted bool              `json:"granted"`
	Counts  map[string]uint64 `json:"counts"`
	Output  []byte            `json:"output,omitempty"`
	Reason  string            `json:"reason,omitempty"`
}

const valid = `{"v":1,"stream":"heart","granted":true,"counts":{"a":2},"output":"AAE=","reason":"x"}`

func TestUnmarshal(t *testing.T) {
	var b body
	if err := Unmarshal([]byte(valid), &b, 8); err != nil {
		t.Fatal(err)
	}
	if b.V != 1 || !b.Granted || b.Counts["a"] != 2 || string(b.Output) != "\x00\x01" {
		t.Fatalf("%+v", b)
	}
	// White space, member order and escapes are free.
	free := "{ \"reason\":\"\\u0078\",\n\"output\":\"AAE=\", \"counts\":{\"a\":2}, \"granted\":true,\"stream\":\"heart\",\"v\":1 }"
	var c body
	if err := Unmarshal([]byte(free), &c, 8); err != nil || !reflect.DeepEqual(b, c) {
		t.Fatalf("reordered: %+v, %v", c, err)
	}
}

// TestUnmarshalRefuses: each form encoding/json alone accepts, or that
// another parser would read otherwise, is refused.
func TestUnmarshalRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"duplicate member":          `{"v":1,"stream":"heart","granted":false,"granted":true,"counts":{"a":2}}`,
		"duplicate in a nested map": `{"v":1,"stream":"heart","granted":true,"counts":{"a":2,"a":3}}`,
		"case variant":              `{"v":1,"stream":"heart","Granted":true,"counts":{"a":2}}`,
		"case variant beside":       `{"v":1,"stream":"heart","granted":false,"GRANTED":true,"counts":{"a":2}}`,
		"unknown member":            `{"v":1,"stream":"heart","granted":true,"counts":{"a":2},"x":1}`,
		"missing member":            `{"v":1,"granted":true,"counts":{"a":2}}`,
		"null for a value":          `{"v":1,"stream":null,"granted":true,"counts":{"a":2}}`,
		"zero optional present":     `{"v":1,"stream":"heart","granted":true,"counts":{"a":2},"reason":""}`,
		"empty optional bytes":      `{"v":1,"stream":"heart","granted":true,"counts":{"a":2},"output":""}`,
		"non-canonical base64":      `{"v":1,"stream":"heart","granted":true,"counts":{"a":2},"output":"AAF="}`,
		"number form":               `{"v":1.0,"stream":"heart","granted":true,"counts":{"a":2}}`,
		"exponent":                  `{"v":1e0,"stream":"heart","granted":true,"counts":{"a":2}}`,
		"trailing data":             valid + ` {}`,
		"two values":                valid + valid,
		"not UTF-8":                 `{"v":1,"stream":"h` + "\xff" + `","granted":true,"counts":{"a":2}}`,
		"too deep":                  `{"v":1,"stream":"heart","granted":true,"counts":{"a":2},"x":[[[[[[[[1]]]]]]]]}`,
		"not an object":             `[1]`,
		"truncated":                 valid[:len(valid)-1],
		"empty":                     ``,
	} {
		var b body
		if err := Unmarshal([]byte(doc), &b, 8); err == nil {
			t.Errorf("%s: accepted %s", name, doc)
		}
	}
}

func TestFuzzCorpusPresent(t *testing.T) { fuzzcorpus.Check(t, ".") }

// FuzzUnmarshal: whatever Unmarshal accepts encodes back to a document it
// accepts again with the same value, and a document it accepts is read
// the same by encoding/json alone (no differential left).
func FuzzUnmarshal(f *testing.F) {
	f.Add([]byte(valid))
	f.Fuzz(func(t *testing.T, data []byte) {
		var b body
		if Unmarshal(data, &b, 8) != nil {
			return
		}
		var plain body
		if err := json.Unmarshal(data, &plain); err != nil || !reflect.DeepEqual(plain, b) {
			t.Fatalf("encoding/json reads %s otherwise: %+v, %v", data, plain, err)
		}
		re, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		var again body
		if err := Unmarshal(re, &again, 8); err != nil || !reflect.DeepEqual(again, b) {
			t.Fatalf("re-encoding %s: %+v, %v", re, again, err)
		}
		if strings.Count(string(data), `"v"`) > 1 {
			t.Fatalf("accepted a duplicate member: %s", data)
		}
	})
}

// TestCheckNames: names equal but for case (Unicode simple folding, as
// encoding/json matches them) and lone surrogate escapes are refused
// wherever they are; a surrogate pair and case variants in different
// objects are not.
func TestCheckNames(t *testing.T) {
	for _, doc := range []string{
		`{"a":1,"A":2}`,
		`{"x":{"kelvin":1,"\u212aelvin":2}}`, // K (Kelvin sign) folds to k
		`{"s":"a\ud800b"}`,
		`{"s":"a\udc00"}`,
		`{"s":"\ud800\u0041"}`,
		`{"s":"\ud800`,
	} {
		if err := CheckNames([]byte(doc), 8); err == nil {
			t.Errorf("accepted %s", doc)
		}
	}
	for _, doc := range []string{
		`{"a":{"A":1},"b":[{"A":1},{"a":2}]}`,
		`{"s":"\ud83d\ude00 \\ud800 \u00e9"}`,
	} {
		if err := CheckNames([]byte(doc), 8); err != nil {
			t.Errorf("%s: %v", doc, err)
		}
	}
}
