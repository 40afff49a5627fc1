// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package replay

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/d2c-iot/d2c/transport/wire"
)

// TestReplayWindowSaved: a verifier restarted from a saved window still
// tells duplicates and replays from fresh messages, for the current and
// the previous boot; a missing file is an empty window, a corrupt one an
// error (never an empty window).
func TestReplayWindowSaved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	w := New(0)
	for seq := range uint64(300) {
		if err := w.Check("dev-1", 1, seq); err != nil {
			t.Fatal(err)
		}
	}
	for _, seq := range []uint64{0, 2, 5} { // boot 2 after a reboot
		if err := w.Check("dev-1", 2, seq); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Check("dev-2", 7, 10); err != nil {
		t.Fatal(err)
	}
	if err := w.Save(path); err != nil {
		t.Fatal(err)
	}
	r, err := Load(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Len() != 2 {
		t.Fatalf("loaded %d devices, want 2", r.Len())
	}
	for _, c := range []struct {
		device    string
		boot, seq uint64
		want      error
	}{
		{"dev-1", 1, 299, wire.ErrDuplicate}, // previous boot, inside its window
		{"dev-1", 1, 10, wire.ErrReplay},     // previous boot, below its window
		{"dev-1", 2, 2, wire.ErrDuplicate},
		{"dev-1", 2, 3, nil}, // never seen
		{"dev-1", 0, 1, wire.ErrReplay},
		{"dev-2", 7, 10, wire.ErrDuplicate},
		{"dev-2", 7, 11, nil},
	} {
		if err := r.Check(c.device, c.boot, c.seq); !errors.Is(err, c.want) || (c.want == nil && err != nil) {
			t.Errorf("%s boot %d seq %d after the restart: %v, want %v", c.device, c.boot, c.seq, err, c.want)
		}
	}
	// Missing: empty. Corrupt: an error.
	if e, err := Load(filepath.Join(t.TempDir(), "none"), 0); err != nil || e.Len() != 0 {
		t.Fatalf("missing snapshot: %v", err)
	}
	b, _ := os.ReadFile(path)
	b[len(b)/2] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, 0); err == nil {
		t.Fatal("a corrupt snapshot loaded")
	}
}
