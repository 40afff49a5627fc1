// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// TestDeltasMember: the release's "deltas" member decodes strictly and
// round-trips; each rule of docs/update-format.md refuses its violation.
func TestDeltasMember(t *testing.T) {
	fx := newFzFixture(t)
	good := fzWithDeltas(t, payloadOf(t, fx.r.releaseBytes), "")
	rel, err := decodeRelease(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(rel.Deltas) != 1 || rel.Deltas[0].FromVersion != 2 {
		t.Fatalf("decoded %+v", rel.Deltas)
	}
	if re, err := rel.encode(); err != nil || !bytes.Equal(re, good) {
		t.Fatalf("round trip: %v\n%s\n%s", err, re, good)
	}
	edit := func(old, repl string) []byte { return []byte(strings.Replace(string(good), old, repl, 1)) }
	many := `"deltas":[` + strings.Repeat(`{"artifact":"rootfs.img","from_version":2,"from_length":12,"from_sha256":"`+strings.Repeat("a", 64)+`","length":40,"sha256":"`+strings.Repeat("b", 64)+`","uri":"x"},`, 17)
	many = many[:len(many)-1] + `]}`
	for _, c := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty array", fzWithDeltas(t, payloadOf(t, fx.r.releaseBytes), `"deltas":[]`), ErrMalformed},
		{"null", fzWithDeltas(t, payloadOf(t, fx.r.releaseBytes), `"deltas":null`), ErrMalformed},
		{"unknown artifact", edit(`"artifact":"rootfs.img"`, `"artifact":"kernel"`), ErrMalformed},
		{"from the release itself", edit(`"from_version":2`, `"from_version":3`), ErrMalformed},
		{"from version 0", edit(`"from_version":2`, `"from_version":0`), ErrMalformed},
		{"negative length", edit(`"from_length":12`, `"from_length":-1`), ErrMalformed},
		{"uppercase hex", edit(`"from_sha256":"`, `"from_sha256":"A`), ErrMalformed},
		{"unknown member", edit(`"from_version":2`, `"from_version":2,"block":1`), ErrMalformed},
		{"member case", edit(`"from_version"`, `"From_version"`), ErrMalformed},
		{"missing uri", edit(`,"uri":"rootfs-3.from-2.delta"`, ``), ErrMalformed},
		{"space in uri", edit(`rootfs-3.from-2.delta`, `rootfs 3`), ErrMalformed},
		{"two deltas from one base", edit(`"deltas":[{`, `"deltas":[{"artifact":"rootfs.img","from_version":1,"from_length":12,"from_sha256":"`+
			"e0bebd22819993"+strings.Repeat("0", 50)+`","length":1,"sha256":"`+strings.Repeat("0", 64)+`","uri":"y"},{`), nil},
		{"17 deltas", []byte(string(good[:bytes.Index(good, []byte(`"deltas":`))]) + many), ErrTooLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := decodeRelease(c.b)
			if c.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	dup := rel.clone()
	dup.Deltas = append(dup.Deltas, dup.Deltas[0])
	dup.Deltas[1].FromVersion = 1
	if _, err := dup.encode(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("two deltas from one base digest: %v", err)
	}
}
