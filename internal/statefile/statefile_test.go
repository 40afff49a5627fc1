// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package statefile

import (
	"bytes"
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/fuzzcorpus"
	"github.com/d2c-iot/d2c/internal/limits"
)

var update = flag.Bool("update", false, "rewrite testdata/golden-v1.state")

// testKind and testState stand for the real state files (used tokens,
// revocations, trusted time): a map, a list of records, bytes and integers.
const testKind = "d2c.test.v1"

type testState struct {
	Counter uint64           `cbor:"1,keyasint"`
	Names   map[string]int64 `cbor:"2,keyasint"`
	Items   []testItem       `cbor:"3,keyasint"`
}

type testItem struct {
	Serial []byte `cbor:"1,keyasint"`
	Label  string `cbor:"2,keyasint"`
}

func goldenState() testState {
	return testState{
		Counter: 7,
		Names:   map[string]int64{"b": -1, "a": 1 << 40, "sensor-1": 1793534400},
		Items:   []testItem{{Serial: []byte{1, 2, 3}, Label: "first"}, {Serial: nil, Label: ""}},
	}
}

func newCodec(t testing.TB, kind string, maxElems int) *Codec {
	t.Helper()
	c, err := New(kind, maxElems)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func marshal(t testing.TB, c *Codec, v any) []byte {
	t.Helper()
	b, err := c.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reseal wraps payload in an envelope of kind with a correct checksum, so
// that a test reaches the payload decoder.
func reseal(t *testing.T, c *Codec, payload []byte) []byte {
	t.Helper()
	b, err := c.modes.Enc.Marshal(envelope{Kind: c.kind, Payload: payload, Sum: c.sum(payload)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	c := newCodec(t, testKind, 64)
	want := goldenState()
	b := marshal(t, c, want)
	if again := marshal(t, c, want); !bytes.Equal(b, again) {
		t.Fatal("encoding is not deterministic")
	}
	var got testState
	if err := c.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "x.state")
	var missing testState
	if err := c.Load(path, &missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want fs.ErrNotExist", err)
	}
	if err := c.Save(nil, path, want); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %04o, want 0600", st.Mode().Perm())
	}
	got = testState{}
	if err := c.Load(path, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("loaded %+v, want %+v", got, want)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries after Save, want only the state file", len(entries))
	}
}

// TestGolden pins the wire format: a state file written by this version
// must decode in every later one, and encoding must not drift. Regenerate
// with -update only for a deliberate format change (and a new kind).
func TestGolden(t *testing.T) {
	c := newCodec(t, testKind, 64)
	path := filepath.Join("testdata", "golden-v1.state")
	b := marshal(t, c, goldenState())
	if *update {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	golden, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, golden) {
		t.Errorf("encoding changed:\n got %x\nwant %x", b, golden)
	}
	var got testState
	if err := c.Unmarshal(golden, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, goldenState()) {
		t.Fatalf("golden decodes to %+v", got)
	}
}

func TestRefused(t *testing.T) {
	c := newCodec(t, testKind, 16)
	valid := marshal(t, c, goldenState())
	var env envelope
	if err := c.modes.Dec.Unmarshal(valid, &env); err != nil {
		t.Fatal(err)
	}
	flipped := func(b []byte, i int) []byte {
		b = bytes.Clone(b)
		b[i] ^= 0x01
		return b
	}
	big := map[string]int64{}
	for i := range 17 {
		big[strings.Repeat("k", i+1)] = int64(i)
	}

	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrCorrupt},
		{"truncated", valid[:len(valid)-1], ErrCorrupt},
		{"trailing byte", append(bytes.Clone(valid), 0), ErrCorrupt},
		{"payload byte flipped", func() []byte {
			e := env
			e.Payload = flipped(e.Payload, len(e.Payload)-1)
			b, _ := c.modes.Enc.Marshal(e)
			return b
		}(), ErrCorrupt},
		{"checksum byte flipped", func() []byte {
			e := env
			e.Sum = flipped(e.Sum, 0)
			b, _ := c.modes.Enc.Marshal(e)
			return b
		}(), ErrCorrupt},
		{"wrong kind", marshal(t, newCodec(t, "d2c.other.v1", 16), goldenState()), ErrCorrupt},
		{"kind field changed", func() []byte {
			e := env
			e.Kind = "d2c.other.v1"
			b, _ := c.modes.Enc.Marshal(e)
			return b
		}(), ErrCorrupt},
		// {1: 7, 1: 8}: duplicate keys in the payload, correct checksum.
		{"duplicate struct keys", reseal(t, c, []byte{0xa2, 0x01, 0x07, 0x01, 0x08}), ErrCorrupt},
		// {2: {"a": 1, "a": 2}}
		{"duplicate map keys", reseal(t, c, []byte{0xa1, 0x02, 0xa2, 0x61, 'a', 0x01, 0x61, 'a', 0x02}), ErrCorrupt},
		// {4: 0}: a field the state does not have.
		{"unknown field", reseal(t, c, []byte{0xa1, 0x04, 0x00}), ErrCorrupt},
		// {2: {_ "a": 1}}: indefinite-length map.
		{"indefinite length", reseal(t, c, []byte{0xa1, 0x02, 0xbf, 0x61, 'a', 0x01, 0xff}), ErrCorrupt},
		// {1: 1(7)}: a tag.
		{"tag", reseal(t, c, []byte{0xa1, 0x01, 0xc1, 0x07}), ErrCorrupt},
		// {3: [{2: "\xff"}]}: invalid UTF-8.
		{"invalid UTF-8", reseal(t, c, []byte{0xa1, 0x03, 0x81, 0xa1, 0x02, 0x61, 0xff}), ErrCorrupt},
		{"payload trailing byte", reseal(t, c, append(bytes.Clone(env.Payload), 0)), ErrCorrupt},
		{"map over the element limit", reseal(t, c, func() []byte {
			b, _ := c.modes.Enc.Marshal(testState{Names: big})
			return b
		}()), ErrCorrupt},
		{"oversized", make([]byte, limits.StateFile+1), atomicfile.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got testState
			err := c.Unmarshal(tt.data, &got)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Unmarshal: %v, want %v", err, tt.want)
			}
			if testing.Verbose() {
				t.Log(err)
			}
		})
	}

	t.Run("oversized file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "big.state")
		if err := os.WriteFile(path, make([]byte, limits.StateFile+1), 0o600); err != nil {
			t.Fatal(err)
		}
		var got testState
		if err := c.Load(path, &got); !errors.Is(err, atomicfile.ErrTooLarge) {
			t.Fatalf("Load: %v, want atomicfile.ErrTooLarge", err)
		}
	})
}

func FuzzUnmarshal(f *testing.F) {
	c := newCodec(f, testKind, 64)
	valid := marshal(f, c, goldenState())
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add(marshal(f, c, testState{}))
	f.Add(marshal(f, newCodec(f, "d2c.other.v1", 64), goldenState()))
	f.Add([]byte{0x83, 0x60, 0x40, 0x40})
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var v testState
		err := c.Unmarshal(data, &v)
		if testing.Verbose() {
			t.Logf("Unmarshal: %+v, %v", v, err)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, atomicfile.ErrTooLarge) {
				t.Fatalf("error %q is neither ErrCorrupt nor ErrTooLarge", err)
			}
			return
		}
		b, err := c.Marshal(v)
		if err != nil {
			t.Fatalf("Marshal of a decoded state: %v", err)
		}
		var back testState
		if err := c.Unmarshal(b, &back); err != nil {
			t.Fatalf("Unmarshal of a re-encoded state: %v", err)
		}
		if !reflect.DeepEqual(v, back) {
			t.Fatalf("round trip changed the state: %+v, then %+v", v, back)
		}
		if again := marshal(t, c, back); !bytes.Equal(b, again) {
			t.Fatal("encoding is not deterministic")
		}
	})
}

// TestFuzzCorporaPresent fails if FuzzUnmarshal has no committed seed
// corpus: a glob that matches nothing would otherwise pass silently.
func TestFuzzCorporaPresent(t *testing.T) {
	fuzzcorpus.Check(t, ".")
}
