// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package replay

import (
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/d2c-iot/d2c/transport/wire"
)

func TestReplayWindow(t *testing.T) {
	w := New(0)
	steps := []struct {
		boot, seq uint64
		want      error
	}{
		{1, 0, nil}, {1, 1, nil}, {1, 1, wire.ErrDuplicate}, {1, 5, nil}, {1, 3, nil}, {1, 3, wire.ErrDuplicate},
		{1, 4, nil}, {1, 300, nil}, {1, 44, wire.ErrReplay}, {1, 45, nil}, {1, 45, wire.ErrDuplicate},
		{1, 299, nil}, {1, 300, wire.ErrDuplicate},
		{2, 0, nil}, {1, 298, nil}, {1, 298, wire.ErrDuplicate}, {2, 0, wire.ErrDuplicate}, {2, 1, nil},
		{3, 0, nil}, {1, 297, wire.ErrReplay}, {2, 2, nil}, {0, 0, wire.ErrReplay},
	}
	for i, s := range steps {
		err := w.Check("d", s.boot, s.seq)
		if s.want == nil && err != nil || s.want != nil && !errors.Is(err, s.want) {
			t.Fatalf("step %d (boot %d seq %d): %v, want %v", i, s.boot, s.seq, err, s.want)
		}
	}
	if err := w.Check("other", 1, 1); err != nil {
		t.Fatalf("devices must not share state: %v", err)
	}
}

// TestReplayWindowMatchesModel checks the bit window against a set, with
// random out-of-order arrivals.
func TestReplayWindowMatchesModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	w := New(0)
	seen := map[uint64]bool{}
	var top uint64
	first := true
	for range 200_000 {
		seq := top + uint64(r.IntN(40))
		if top > 300 {
			seq = top - 300 + uint64(r.IntN(340))
		}
		err := w.Check("d", 1, seq)
		var want error
		switch {
		case first:
		case seq+wire.ReplayWindowSize <= top:
			want = wire.ErrReplay
		case seen[seq]:
			want = wire.ErrDuplicate
		}
		if want == nil && err != nil || want != nil && !errors.Is(err, want) {
			t.Fatalf("seq %d top %d: %v, want %v", seq, top, err, want)
		}
		if err == nil {
			seen[seq] = true
			if seq > top || first {
				top = seq
			}
			first = false
		}
	}
}

func TestReplayWindowBounded(t *testing.T) {
	w := New(2)
	w.Check("a", 1, 1)
	w.Check("b", 1, 1)
	if err := w.Check("c", 1, 1); !errors.Is(err, ErrFull) {
		t.Fatalf("third device: %v, want ErrReplayStateFull", err)
	}
	if err := w.Check("a", 1, 1); !errors.Is(err, wire.ErrDuplicate) {
		t.Fatalf("known device still tracked: %v", err)
	}
}
