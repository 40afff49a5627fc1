// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package replay

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/statefile"
	"github.com/d2c-iot/d2c/transport/wire"
)

// replayKind names replay-window snapshots (internal/statefile).
const replayKind = "d2c-replay-window"

// replayEntries bounds the devices one snapshot holds: what fits in a state
// file (about 100 bytes a device).
const replayEntries = 150_000

type replaySnapshot struct {
	Devices []replayEntry `cbor:"1,keyasint"`
}

type replayEntry struct {
	_       struct{} `cbor:",toarray"`
	Device  string
	Cur     windowRecord
	Prev    windowRecord
	HasPrev bool
}

type windowRecord struct {
	_    struct{} `cbor:",toarray"`
	Boot uint64
	Top  uint64
	Bits []uint64
}

func newReplayCodec() (*statefile.Codec, error) { return statefile.New(replayKind, replayEntries) }

// Save writes the window's state to path, atomically and checksummed, so
// that a verifier that restarts with [Load] still refuses the
// replays it refused before. Call it periodically and at shutdown: after a
// crash, only messages accepted since the last Save could be accepted once
// more. A snapshot holds at most 150,000 devices; shard larger fleets over
// several verifier processes (they must route each device to one process
// anyway, see docs/protocol.md).
func (w *Window) Save(path string) error {
	codec, err := newReplayCodec()
	if err != nil {
		return err
	}
	w.mu.Lock()
	snap := replaySnapshot{Devices: make([]replayEntry, 0, len(w.devices))}
	for id, st := range w.devices {
		snap.Devices = append(snap.Devices, replayEntry{Device: id, Cur: st.cur.record(), Prev: st.prev.record(), HasPrev: st.hasPrev})
	}
	w.mu.Unlock()
	if len(snap.Devices) > replayEntries {
		return fmt.Errorf("transport: save replay window: %d devices, a snapshot holds at most %d", len(snap.Devices), replayEntries)
	}
	slices.SortFunc(snap.Devices, func(a, b replayEntry) int {
		switch {
		case a.Device < b.Device:
			return -1
		case a.Device > b.Device:
			return 1
		}
		return 0
	})
	if err := codec.Save(nil, path, &snap); err != nil {
		return fmt.Errorf("transport: save replay window: %w", err)
	}
	return nil
}

func (win window) record() windowRecord {
	return windowRecord{Boot: win.boot, Top: win.top, Bits: slices.Clone(win.bits[:])}
}

// Load returns the window saved at path by [Window.Save]
// (a new, empty one when the file does not exist) for at most maxDevices
// devices (default as [New]). A corrupt snapshot is an error,
// never an empty window: that would let every earlier message through.
func Load(path string, maxDevices int) (*Window, error) {
	w := New(maxDevices)
	codec, err := newReplayCodec()
	if err != nil {
		return nil, err
	}
	var snap replaySnapshot
	err = codec.Load(path, &snap)
	if errors.Is(err, fs.ErrNotExist) {
		return w, nil
	}
	if err != nil {
		return nil, fmt.Errorf("transport: load replay window: %w", err)
	}
	if len(snap.Devices) > w.max {
		return nil, fmt.Errorf("transport: load replay window: %d devices, more than %d", len(snap.Devices), w.max)
	}
	for _, e := range snap.Devices {
		if err := identity.ValidateDeviceID(e.Device); err != nil {
			return nil, fmt.Errorf("transport: load replay window: %w", err)
		}
		cur, err := e.Cur.window()
		if err != nil {
			return nil, err
		}
		prev, err := e.Prev.window()
		if err != nil {
			return nil, err
		}
		w.devices[e.Device] = &replayState{cur: cur, prev: prev, hasPrev: e.HasPrev}
	}
	return w, nil
}

func (r windowRecord) window() (window, error) {
	var win window
	if len(r.Bits) != len(win.bits) {
		return win, fmt.Errorf("transport: load replay window: %w: a window of %d words", wire.ErrMalformed, len(r.Bits))
	}
	win.boot, win.top = r.Boot, r.Top
	copy(win.bits[:], r.Bits)
	return win, nil
}
