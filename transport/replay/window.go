// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package replay

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/d2c-iot/d2c/transport/wire"
)

// ErrFull is returned when the replay window tracks its maximum
// number of devices; a new device is refused rather than old state
// forgotten (forgetting would let replays through).
var ErrFull = errors.New("transport: replay state full")

// Window classifies each device's (boot, seq) pairs as fresh,
// duplicate or replay, in the manner of the IPsec anti-replay window
// (RFC 4303 section 3.4.3), kept for the current and the previous boot so
// that messages queued before a reboot still arrive. It is safe for
// concurrent use.
//
// State lives in memory, about 150 bytes a device; several verifier
// processes must route each device to one process (see docs/protocol.md).
type Window struct {
	max int

	mu      sync.Mutex
	devices map[string]*replayState
}

type window struct {
	boot uint64
	top  uint64
	bits [wire.ReplayWindowSize / 64]uint64 // bit i: seq top-i was seen
}

type replayState struct {
	cur, prev window
	hasPrev   bool
}

// New returns a window for at most maxDevices devices (default
// 1,000,000 when 0).
func New(maxDevices int) *Window {
	if maxDevices <= 0 {
		maxDevices = 1_000_000
	}
	return &Window{max: maxDevices, devices: map[string]*replayState{}}
}

// Check classifies (boot, seq) for device and records it if fresh. It
// returns nil for a fresh message, an error wrapping [wire.ErrDuplicate] for one
// already seen within the window (a QoS 1 redelivery), and one wrapping
// [wire.ErrReplay] for one older than the window or from an earlier boot.
func (w *Window) Check(device string, boot, seq uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, ok := w.devices[device]
	if !ok {
		if len(w.devices) >= w.max {
			return fmt.Errorf("%w: %d devices", ErrFull, w.max)
		}
		st = &replayState{cur: window{boot: boot, top: seq}}
		st.cur.bits[0] = 1
		w.devices[device] = st
		return nil
	}
	switch {
	case boot > st.cur.boot:
		st.prev, st.hasPrev = st.cur, true
		st.cur = window{boot: boot, top: seq}
		st.cur.bits[0] = 1
		return nil
	case boot == st.cur.boot:
		return st.cur.check(device, seq)
	case st.hasPrev && boot == st.prev.boot:
		return st.prev.check(device, seq)
	}
	return fmt.Errorf("%w: %s boot %d is before boot %d", wire.ErrReplay, device, boot, st.cur.boot)
}

func (win *window) check(device string, seq uint64) error {
	if seq > win.top {
		win.shift(seq - win.top)
		win.top = seq
		win.bits[0] |= 1
		return nil
	}
	d := win.top - seq
	if d >= wire.ReplayWindowSize {
		return fmt.Errorf("%w: %s boot %d seq %d is %d behind the newest", wire.ErrReplay, device, win.boot, seq, d)
	}
	word, bit := d/64, d%64
	if win.bits[word]&(1<<bit) != 0 {
		return fmt.Errorf("%w: %s boot %d seq %d", wire.ErrDuplicate, device, win.boot, seq)
	}
	win.bits[word] |= 1 << bit
	return nil
}

// shift moves the window n positions: bit i becomes bit i+n.
func (win *window) shift(n uint64) {
	if n >= wire.ReplayWindowSize {
		win.bits = [wire.ReplayWindowSize / 64]uint64{}
		return
	}
	words, bits := int(n/64), n%64
	for i := len(win.bits) - 1; i >= 0; i-- {
		var v uint64
		if j := i - words; j >= 0 {
			v = win.bits[j] << bits
			if bits != 0 && j-1 >= 0 {
				v |= win.bits[j-1] >> (64 - bits)
			}
		}
		win.bits[i] = v
	}
}

// Accept implements transport.ReplayState in memory: Check for each record (a
// device over the window's capacity gets [ErrFull] as its
// verdict).
func (w *Window) Accept(_ context.Context, recs []wire.Record) ([]error, error) {
	out := make([]error, len(recs))
	for i, r := range recs {
		out[i] = w.Check(r.Device, r.Boot, r.Seq)
	}
	return out, nil
}

// Forget removes a device's state (decommissioning).
func (w *Window) Forget(_ context.Context, device string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.devices, device)
	return nil
}

// Len returns the number of devices tracked.
func (w *Window) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.devices)
}
