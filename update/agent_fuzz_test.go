// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"errors"
	"testing"

	"github.com/d2c-iot/d2c/internal/statefile"
)

// FuzzAgentState decodes agent state files as a restarted agent reads them
// from disk after a torn write or a bit flip: it must refuse with
// statefile.ErrCorrupt or decode a state that encodes again, never panic.
// Seeds: testdata/fuzz/FuzzAgentState (real states of every phase).
//
//	go test ./update/ -run '^$' -fuzz '^FuzzAgentState$' -fuzztime 20s
func FuzzAgentState(f *testing.F) {
	codec, err := statefile.New(stateKind, 4096)
	if err != nil {
		f.Fatal(err)
	}
	for _, st := range sampleStates() {
		b, err := codec.Marshal(st)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var st state
		if err := codec.Unmarshal(data, &st); err != nil {
			if !errors.Is(err, statefile.ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if _, err := codec.Marshal(&st); err != nil {
			t.Fatalf("decoded state does not encode: %v", err)
		}
	})
}

// sampleStates are states of each phase, for seeds.
func sampleStates() []*state {
	p := &pending{Version: 2, SecurityCounter: 2, Artifact: "image", Length: 1 << 20, SHA256: make([]byte, 32),
		URI: "image-2.bin", Slot: "b", Prev: "a", Starts: 1, Since: 1_700_000_000_000}
	return []*state{
		{Gen: 1, Root: []byte(`{"payload":"e30","signatures":[]}`), Installed: Installed{Slot: "a"}},
		{Gen: 7, Root: []byte("root"), Floors: Floors{TimestampVersion: 3, ReleaseVersion: 2, SecurityCounter: 1},
			Installed: Installed{Version: 1, SecurityCounter: 1, Slot: "a", SHA256: make([]byte, 32), Artifact: "image"},
			Phase:     PhaseTrial, Pending: p, Last: &Result{Event: "installed", Version: 2, From: 1, Time: 1_700_000_000_000}},
		{Gen: 8, Phase: PhaseDownloading, Pending: p},
	}
}
