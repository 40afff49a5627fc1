// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/transport/wire"
)

// FuzzCommandResult feeds reading bodies to ParseCommandResult: it never
// panics, refuses with wire.ErrMalformed, and what it accepts re-encodes to a
// body that parses to the same result.
func FuzzCommandResult(f *testing.F) {
	for _, s := range fzCommandResultSeeds() {
		f.Add(s.data)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := Record{Device: "dev-1", Stream: wire.CommandResultStream, Boot: 1, Seq: 1, Time: time.UnixMilli(1),
			Readings: []Reading{{Time: time.UnixMilli(2), Body: body}}}
		r, err := ParseCommandResult(rec)
		if err != nil {
			if !errors.Is(err, wire.ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if r.ID == 0 || len(r.Output) > MaxCommandOutput {
			t.Fatalf("accepted %+v", r)
		}
		re, err := json.Marshal(cmdResultBody{V: 1, ID: r.ID, Failed: r.Failed, Output: r.Output})
		if err != nil {
			t.Fatal(err)
		}
		rec.Readings[0].Body = re
		back, err := ParseCommandResult(rec)
		if err != nil || back.ID != r.ID || back.Failed != r.Failed || string(back.Output) != string(r.Output) {
			t.Fatalf("re-encoded %s parses to %+v, %v; want %+v", re, back, err, r)
		}
	})
}

// fzCommandResultSeeds are FuzzCommandResult's seeds: valid results and
// each way a body can be wrong.
func fzCommandResultSeeds() []fzNamed {
	return []fzNamed{
		{"ok", []byte(`{"v":1,"id":7,"failed":false}`)},
		{"failed-output", []byte(`{"v":1,"id":7,"failed":true,"output":"bm8gTEVE"}`)},
		{"version-2", []byte(`{"v":2,"id":7,"failed":false}`)},
		{"id-0", []byte(`{"v":1,"id":0,"failed":false}`)},
		{"unknown-field", []byte(`{"v":1,"id":7,"failed":false,"extra":1}`)},
		{"trailing", []byte(`{"v":1,"id":7,"failed":false}{}`)},
		{"negative-id", []byte(`{"v":1,"id":-1}`)},
		{"id-overflow", []byte(`{"v":1,"id":18446744073709551616}`)},
		{"bad-base64", []byte(`{"v":1,"id":7,"output":"!!"}`)},
		{"array", []byte(`[]`)},
		{"null", []byte(`null`)},
		{"empty", nil},
	}
}
