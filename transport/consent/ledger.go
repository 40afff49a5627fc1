// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package consent

// Consent per telemetry stream, cloud half: consent events and the ledger
// that applies them to verified records.

import (
	"container/list"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Event is a device's consent change for one stream, as carried on
// [wire.ConsentStream] (docs/protocol.md, "Reserved streams").
type Event struct {
	Device  string
	Stream  string // the stream whose consent changed
	Purpose string
	Granted bool      // true: granted; false: withdrawn
	Change  uint64    // the device's consent change counter, from 1
	Time    time.Time // when the change happened, by the device's clock
	// Boot and Seq place the event in the device's message sequence: a
	// telemetry record of Stream sealed after the change has a higher
	// (Boot, Seq), one sealed before it a lower.
	Boot, Seq uint64
}

// ParseEvent decodes the consent event of a verified record of
// [wire.ConsentStream] (one reading, a JSON body). The decoding is strict:
// unknown fields, another version, an invalid stream or purpose are
// refused with an error wrapping [wire.ErrMalformed].
func ParseEvent(r wire.Record) (Event, error) {
	if r.Stream != wire.ConsentStream {
		return Event{}, fmt.Errorf("%w: consent event: record of stream %q, want %q", wire.ErrMalformed, textutil.Clip(r.Stream), wire.ConsentStream)
	}
	if len(r.Readings) != 1 {
		return Event{}, fmt.Errorf("%w: consent event: %d readings, want 1", wire.ErrMalformed, len(r.Readings))
	}
	var b eventBody
	if err := textutil.DecodeStrictJSON(r.Readings[0].Body, &b); err != nil {
		return Event{}, fmt.Errorf("%w: consent event: %v", wire.ErrMalformed, err)
	}
	switch {
	case b.V != 1:
		return Event{}, fmt.Errorf("%w: consent event: version %d, want 1", wire.ErrMalformed, b.V)
	case wire.ValidateStream(b.Stream) != nil || wire.IsReserved(b.Stream):
		return Event{}, fmt.Errorf("%w: consent event: stream %q", wire.ErrMalformed, textutil.Clip(b.Stream))
	case ValidatePurpose(b.Purpose) != nil:
		return Event{}, fmt.Errorf("%w: consent event: purpose %q", wire.ErrMalformed, textutil.Clip(b.Purpose))
	case b.Change == 0:
		return Event{}, fmt.Errorf("%w: consent event: change 0", wire.ErrMalformed)
	}
	return Event{Device: r.Device, Stream: b.Stream, Purpose: b.Purpose, Granted: b.Granted, Change: b.Change,
		Time: time.UnixMilli(b.Time), Boot: r.Boot, Seq: r.Seq}, nil
}

// position is a place in a device's message sequence.
type position struct{ boot, seq uint64 }

func (p position) less(q position) bool {
	return p.boot < q.boot || p.boot == q.boot && p.seq < q.seq
}

// DefaultMaxDevices is the default of [Ledger.MaxDevices].
const DefaultMaxDevices = 100_000

// Ledger applies devices' consent events to their telemetry, for a
// cloud service that must discard what was sent without consent in force
// or after its withdrawal. Feed it every verified record of
// [wire.ConsentStream] with [Ledger.Observe], and ask
// [Ledger.Allowed] about every other record:
//
//	OnRecord: func(ctx context.Context, r transport.Record) {
//		if r.Stream == wire.ConsentStream {
//			ev, err := ledger.Observe(r) // and keep ev in the service's own records
//			...
//			return
//		}
//		if !ledger.Allowed(r) {
//			return // consent withdrawn: discard
//		}
//		...
//	}
//
// Ordering is by the device's (boot, seq) sequence, which the consent
// events and the telemetry of every stream share, never by clocks: a
// record is dropped if it was sealed before the stream's latest withdrawal
// (it was in flight when consent was withdrawn, and the device could not
// recall it) or after it without a later grant before it. A record sealed
// after a grant that is in force passes. A stream the ledger has no event
// for is not governed by it: every record passes (the device refuses to
// send a personal stream without consent; the ledger is the cloud's
// second line).
//
// The device sends each consent event alone, at top priority, before
// anything sealed after it, so the event reaches a single cloud consumer
// first. With several verifier processes (shared subscriptions), route a
// device's records to one process, as the replay window requires anyway.
//
// The ledger lives in memory, bounded by MaxDevices (least recently seen
// devices forgotten first, which ungoverns their streams): a service keeps
// the consent events in its own database and replays them into Observe at
// start. It is safe for concurrent use. Set the fields before first use.
type Ledger struct {
	// MaxDevices bounds the devices tracked. Default
	// DefaultMaxDevices.
	MaxDevices int

	mu      sync.Mutex
	devices map[string]*list.Element // of *ledgerDevice
	lru     list.List                // most recent first
}

type ledgerDevice struct {
	id      string
	streams map[string]*streamConsent
}

// streamConsent is what the ledger keeps of one stream: the position of
// its latest withdrawal, and the grants after it, ascending. Only the first
// grant decides; the later ones are kept because a withdrawal that arrives
// late may fall between them (at most maxGrantsKept: beyond that the
// latest are dropped, which can only drop records, never pass one).
type streamConsent struct {
	withdrawn    position
	hasWithdrawn bool
	grants       []position
}

// maxGrantsKept bounds the grants a stream keeps after its latest
// withdrawal.
const maxGrantsKept = 16

// Observe applies the consent event of a verified record of
// [wire.ConsentStream] and returns it. Events may arrive out of order: each is
// placed by its (boot, seq).
func (l *Ledger) Observe(r wire.Record) (Event, error) {
	ev, err := ParseEvent(r)
	if err != nil {
		return ev, err
	}
	return ev, l.ObserveEvent(ev)
}

// ObserveEvent applies a consent event already parsed (replayed from a
// store at start, for example).
func (l *Ledger) ObserveEvent(ev Event) error {
	p := position{ev.Boot, ev.Seq}
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.device(ev.Device, true)
	sc := d.streams[ev.Stream]
	if sc == nil {
		if len(d.streams) >= MaxStreams {
			return fmt.Errorf("%w: consent event: device %q has events for more than %d streams", wire.ErrMalformed, textutil.Clip(ev.Device), MaxStreams)
		}
		sc = &streamConsent{}
		d.streams[ev.Stream] = sc
	}
	if ev.Granted {
		if sc.hasWithdrawn && !sc.withdrawn.less(p) {
			return nil // superseded by a later withdrawal
		}
		i := sort.Search(len(sc.grants), func(i int) bool { return !sc.grants[i].less(p) })
		if i < len(sc.grants) && sc.grants[i] == p {
			return nil // the same event again
		}
		sc.grants = slices.Insert(sc.grants, i, p)
		if len(sc.grants) > maxGrantsKept {
			sc.grants = sc.grants[:maxGrantsKept]
		}
	} else if !sc.hasWithdrawn || sc.withdrawn.less(p) {
		sc.withdrawn, sc.hasWithdrawn = p, true
		// Grants before it ended here.
		sc.grants = slices.DeleteFunc(sc.grants, func(g position) bool { return !p.less(g) })
	}
	return nil
}

// Allowed reports whether a verified telemetry record may be kept under
// the consent events observed for its device and stream (see
// [Ledger]). Records of the reserved streams always pass.
func (l *Ledger) Allowed(r wire.Record) bool {
	if wire.IsReserved(r.Stream) {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.device(r.Device, false)
	if d == nil {
		return true
	}
	sc := d.streams[r.Stream]
	if sc == nil {
		return true
	}
	p := position{r.Boot, r.Seq}
	if sc.hasWithdrawn && !sc.withdrawn.less(p) {
		return false // sealed before the latest withdrawal
	}
	return len(sc.grants) > 0 && sc.grants[0].less(p)
}

// Forget drops everything the ledger holds about device (when the device
// is decommissioned and its records erased, or re-enrolled with a new
// boot counter).
func (l *Ledger) Forget(device string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.devices[device]; e != nil {
		l.lru.Remove(e)
		delete(l.devices, device)
	}
}

// Len returns the number of devices tracked.
func (l *Ledger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.devices)
}

// device returns the entry of id, most recently used from now, creating
// it (and evicting the least recently used beyond MaxDevices) if create.
func (l *Ledger) device(id string, create bool) *ledgerDevice {
	if e := l.devices[id]; e != nil {
		l.lru.MoveToFront(e)
		return e.Value.(*ledgerDevice)
	}
	if !create {
		return nil
	}
	if l.devices == nil {
		l.devices = map[string]*list.Element{}
	}
	limit := l.MaxDevices
	if limit <= 0 {
		limit = DefaultMaxDevices
	}
	for len(l.devices) >= limit {
		old := l.lru.Back()
		l.lru.Remove(old)
		delete(l.devices, old.Value.(*ledgerDevice).id)
	}
	d := &ledgerDevice{id: id, streams: map[string]*streamConsent{}}
	l.devices[id] = l.lru.PushFront(d)
	return d
}
