// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

// Consent per telemetry stream, device half (ETSI EN 303 645 provisions
// 5.8 and 5.11, OWASP IoT I6): the client's consent store and the gate
// Publish and the delivery loop ask. The policies, the consent events and
// the cloud's ledger are in package consent.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/statefile"
	"github.com/d2c-iot/d2c/transport/consent"
	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/outbox"
	"github.com/d2c-iot/d2c/transport/wire"
)

// validateStreamPolicies checks ClientConfig.Streams and indexes it.
func validateStreamPolicies(ps []consent.Policy) (map[string]consent.Policy, error) {
	if len(ps) > consent.MaxStreams {
		return nil, fmt.Errorf("transport: ClientConfig.Streams: %d streams, at most %d", len(ps), consent.MaxStreams)
	}
	m := make(map[string]consent.Policy, len(ps))
	for _, p := range ps {
		if err := wire.ValidateStream(p.Stream); err != nil {
			return nil, fmt.Errorf("transport: ClientConfig.Streams: %w", err)
		}
		if wire.IsReserved(p.Stream) {
			return nil, fmt.Errorf("transport: ClientConfig.Streams: stream %q is reserved", p.Stream)
		}
		if _, dup := m[p.Stream]; dup {
			return nil, fmt.Errorf("transport: ClientConfig.Streams: stream %q declared twice", p.Stream)
		}
		if p.Personal || p.Purpose != "" {
			if err := consent.ValidatePurpose(p.Purpose); err != nil {
				return nil, fmt.Errorf("transport: ClientConfig.Streams: stream %q: %w", p.Stream, err)
			}
		}
		m[p.Stream] = p
	}
	return m, nil
}

// ---------------------------------------------------------------------------
// The store

// consentStore is the device's durable record of consent per stream: the
// file consent.state in the client's state directory, a checksummed CBOR
// state file replaced atomically at every change, so that a power cut
// leaves the old or the new record, never a mix. The [Client] owns it and
// changes it only through [Client.GrantConsent] and
// [Client.WithdrawConsent].
type consentStore struct {
	path  string
	fs    atomicfile.FS
	codec *statefile.Codec

	mu sync.Mutex
	st consentState
}

// consentState is the stored form, kind "d2c.consent.v1".
type consentState struct {
	Change  uint64          `cbor:"1,keyasint"`
	Streams []consentRecord `cbor:"2,keyasint"` // sorted by stream
}

type consentRecord struct {
	Stream  string `cbor:"1,keyasint"`
	Purpose string `cbor:"2,keyasint"`
	Granted bool   `cbor:"3,keyasint"`
	Time    int64  `cbor:"4,keyasint"` // Unix ms
	Change  uint64 `cbor:"5,keyasint"`
	// Pending: the consent event of this change is not yet in the
	// outbox. A grant is in force only once it is.
	Pending bool `cbor:"6,keyasint"`
}

func (r consentRecord) public() consent.State {
	return consent.State{Stream: r.Stream, Purpose: r.Purpose, Granted: r.Granted && !r.Pending,
		Time: time.UnixMilli(r.Time), Change: r.Change}
}

const consentStateKind = "d2c.consent.v1"

func openConsentStore(fsys atomicfile.FS, path string) (*consentStore, error) {
	codec, err := statefile.New(consentStateKind, consent.MaxStreams)
	if err != nil {
		return nil, err
	}
	s := &consentStore{path: path, fs: fsys, codec: codec}
	switch err := codec.Load(path, &s.st); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		// A store that does not read back cannot say which consents were
		// withdrawn: refuse, as for the boot counter.
		return nil, fmt.Errorf("transport: consent store: %w", err)
	}
	if err := s.st.check(); err != nil {
		return nil, fmt.Errorf("transport: consent store %s: %w: %v", path, statefile.ErrCorrupt, err)
	}
	return s, nil
}

func (st *consentState) check() error {
	for i, r := range st.Streams {
		if err := wire.ValidateStream(r.Stream); err != nil {
			return err
		}
		if i > 0 && st.Streams[i-1].Stream >= r.Stream {
			return errors.New("streams not sorted or repeated")
		}
		if r.Purpose != "" {
			if err := consent.ValidatePurpose(r.Purpose); err != nil {
				return err
			}
		}
		if r.Change == 0 || r.Change > st.Change {
			return fmt.Errorf("stream %q: change %d outside 1..%d", r.Stream, r.Change, st.Change)
		}
	}
	return nil
}

// consent.State returns the consent recorded for stream, and whether there is
// one.
func (s *consentStore) Consent(stream string) (consent.State, bool) {
	r, ok := s.get(stream)
	if !ok {
		return consent.State{Stream: stream}, false
	}
	return r.public(), true
}

// List returns every stream's consent, by stream name.
func (s *consentStore) List() []consent.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]consent.State, len(s.st.Streams))
	for i, r := range s.st.Streams {
		out[i] = r.public()
	}
	return out
}

func (s *consentStore) get(stream string) (consentRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.find(stream)
	if !ok {
		return consentRecord{}, false
	}
	return s.st.Streams[i], true
}

func (s *consentStore) find(stream string) (int, bool) {
	return slices.BinarySearchFunc(s.st.Streams, stream, func(r consentRecord, t string) int { return strings.Compare(r.Stream, t) })
}

// put records r as the stream's new state under the next change number
// and returns it. Memory changes only once the file is durable; the change
// counter rises even on error, so that a number that may have reached the
// disk is never given to another change.
func (s *consentStore) put(r consentRecord) (consentRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := consentState{Change: s.st.Change + 1, Streams: slices.Clone(s.st.Streams)}
	r.Change = next.Change
	i, ok := s.find(r.Stream)
	switch {
	case ok:
		next.Streams[i] = r
	case len(next.Streams) >= consent.MaxStreams:
		return r, fmt.Errorf("transport: consent store holds %d streams, the limit", len(next.Streams))
	default:
		next.Streams = slices.Insert(next.Streams, i, r)
	}
	if err := s.codec.Save(s.fs, s.path, next); err != nil {
		s.st.Change = next.Change
		return r, fmt.Errorf("transport: consent store: %w", err)
	}
	s.st = next
	return r, nil
}

// pending returns the records whose consent event is not yet queued.
func (s *consentStore) pending() []consentRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []consentRecord
	for _, r := range s.st.Streams {
		if r.Pending {
			out = append(out, r)
		}
	}
	return out
}

// reported clears the pending flag of the given changes, in memory at
// once and then on disk. A failed write only means the events are sent
// again after a restart, which the cloud tolerates.
func (s *consentStore) reported(recs []consentRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := consentState{Change: s.st.Change, Streams: slices.Clone(s.st.Streams)}
	for _, r := range recs {
		if i, ok := s.find(r.Stream); ok && next.Streams[i].Change == r.Change {
			next.Streams[i].Pending = false
		}
	}
	s.st = next
	if err := s.codec.Save(s.fs, s.path, next); err != nil {
		return fmt.Errorf("transport: consent store: %w", err)
	}
	return nil
}

// ---------------------------------------------------------------------------
// The gate: consent enforcement in the client

// consentGate enforces consent for a client: Publish checks it, the
// delivery loop asks it before sending, GrantConsent and WithdrawConsent
// change it.
type consentGate struct {
	// mu is held shared by a Publish of a personal stream from its consent
	// check until its envelope is stored (so the sequence number it takes
	// is below that of any later consent event), and exclusively by a
	// consent change.
	mu       sync.RWMutex
	store    *consentStore
	policies map[string]consent.Policy
	outbox   *outbox.Outbox
	now      func() time.Time
	log      *slog.Logger
	// seal seals records of SDK streams and stores them in one durable
	// append (a session-key delivery first when one is due).
	seal func(ctx context.Context, reqs ...sealRequest) ([]uint64, error)

	// stopped holds streams whose withdrawal could not be recorded: closed
	// in this process whatever the store says (under mu).
	stopped map[string]bool
	// open holds the personal streams that may be published and sent now;
	// read without a lock by the delivery loop, replaced under openMu.
	open   atomic.Pointer[map[string]bool]
	openMu sync.Mutex

	// sending counts, per personal stream, the messages handed to the
	// MQTT connection and not yet answered; a withdrawal waits for them.
	sendMu  sync.Mutex
	sending map[string]int
}

func newConsentGate(store *consentStore, policies map[string]consent.Policy, ob *outbox.Outbox, now func() time.Time, log *slog.Logger,
	seal func(context.Context, ...sealRequest) ([]uint64, error)) *consentGate {
	g := &consentGate{store: store, policies: policies, outbox: ob, now: now, log: log, seal: seal, stopped: map[string]bool{}}
	g.refresh()
	return g
}

func (g *consentGate) personal(stream string) bool { return g.policies[stream].Personal }

// inForce reports whether r is consent in force for its stream's policy.
func (g *consentGate) inForce(r consentRecord) bool {
	p := g.policies[r.Stream]
	return p.Personal && r.Granted && !r.Pending && r.Purpose == p.Purpose
}

// refresh recomputes the open streams from the store.
func (g *consentGate) refresh() {
	g.openMu.Lock()
	defer g.openMu.Unlock()
	open := map[string]bool{}
	for s := range g.policies {
		if r, ok := g.store.get(s); ok && g.inForce(r) && !g.stopped[s] {
			open[s] = true
		}
	}
	g.open.Store(&open)
}

// close stops stream at once, before anything is written.
func (g *consentGate) close(stream string) {
	g.openMu.Lock()
	defer g.openMu.Unlock()
	open := *g.open.Load()
	if !open[stream] {
		return
	}
	next := make(map[string]bool, len(open))
	for s := range open {
		if s != stream {
			next[s] = true
		}
	}
	g.open.Store(&next)
}

// beginSend reports whether a stored message of stream may be handed to
// the MQTT connection now: any stream not declared personal, and personal
// streams with consent in force. When it returns true for a personal
// stream, the message counts as being sent until endSend, and a withdrawal
// of its stream waits for it. For a closed stream it first waits for a
// consent change under way, so that during a withdrawal the delivery loop
// does not take the same message from the outbox again and again until the
// purge removes it.
func (g *consentGate) beginSend(stream string) bool {
	if !g.personal(stream) {
		return true
	}
	if !(*g.open.Load())[stream] && !g.openAfterChange(stream) {
		return false
	}
	g.sendMu.Lock()
	defer g.sendMu.Unlock()
	// Read under sendMu: a withdrawal closes the stream, then takes
	// sendMu to count what is still being sent.
	if !(*g.open.Load())[stream] {
		return false
	}
	if g.sending == nil {
		g.sending = map[string]int{}
	}
	g.sending[stream]++
	return true
}

// openAfterChange waits for a consent change under way and reports whether
// stream is open after it.
func (g *consentGate) openAfterChange(stream string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return (*g.open.Load())[stream]
}

// endSend ends what beginSend began.
func (g *consentGate) endSend(stream string) {
	if !g.personal(stream) {
		return
	}
	g.sendMu.Lock()
	defer g.sendMu.Unlock()
	g.sending[stream]--
	if g.sending[stream] <= 0 {
		delete(g.sending, stream)
	}
}

// awaitSent waits, within ctx, until no message of stream is being handed
// to the connection (the stream is closed: no new one starts).
func (g *consentGate) awaitSent(ctx context.Context, stream string) error {
	for {
		g.sendMu.Lock()
		n := g.sending[stream]
		g.sendMu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d message(s) of the stream were already handed to the broker connection and may still be sent "+
				"(their sequence numbers are below the withdrawal's: a consent.Ledger drops them): %w", n, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// hold checks consent for a Publish to stream. On success the caller must
// call release once its envelope is stored (or failed to be).
func (g *consentGate) hold(stream string) (release func(), err error) {
	if !g.personal(stream) {
		return func() {}, nil
	}
	g.mu.RLock()
	if !(*g.open.Load())[stream] {
		g.mu.RUnlock()
		return nil, fmt.Errorf("%w: %q", consent.ErrNoConsent, stream)
	}
	return g.mu.RUnlock, nil
}

// consent reports a stream's consent, Granted meaning in force.
func (g *consentGate) consent(stream string) consent.State {
	r, ok := g.store.get(stream)
	if !ok {
		return consent.State{Stream: stream}
	}
	c := r.public()
	c.Granted = g.inForce(r) && (*g.open.Load())[stream]
	return c
}

// grant records consent to purpose for a personal stream, queues its
// consent event, and only then opens the stream.
func (g *consentGate) grant(ctx context.Context, stream, purpose string) error {
	p, ok := g.policies[stream]
	if !ok || !p.Personal {
		return fmt.Errorf("transport: GrantConsent: stream %q is not declared personal in ClientConfig.Streams", textutil.Clip(stream))
	}
	if purpose != p.Purpose {
		return fmt.Errorf("transport: GrantConsent: purpose %q is not the declared purpose of stream %q", textutil.Clip(purpose), stream)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	prev, had := g.store.get(stream)
	if had && g.inForce(prev) {
		// Already in force (its withdrawal, if one failed, never made it
		// to the store): no change, no event.
		delete(g.stopped, stream)
		g.refresh()
		return nil
	}
	if _, err := g.store.put(consentRecord{Stream: stream, Purpose: purpose, Granted: true, Time: g.now().UnixMilli(), Pending: true}); err != nil {
		return err
	}
	delete(g.stopped, stream)
	if err := g.flush(ctx); err != nil {
		// Not in force (its event is not queued): put the previous state
		// back, so that a restart does not bring the grant into force
		// behind the caller's back.
		undo := consentRecord{Stream: stream, Purpose: purpose, Time: g.now().UnixMilli()}
		if had {
			undo = prev
		}
		if _, uerr := g.store.put(undo); uerr != nil {
			// The pending grant stays on disk: keep the stream closed in
			// this process whatever it says.
			g.stopped[stream] = true
			g.log.Error("consent: undo a grant whose event could not be queued", "stream", stream, "err", uerr)
		}
		g.refresh()
		return fmt.Errorf("transport: GrantConsent %q: consent not granted: %w", stream, err)
	}
	g.refresh()
	return nil
}

// withdraw stops a personal stream, records the withdrawal, purges the
// stream's queued messages durably, and queues the consent event, in that
// order.
func (g *consentGate) withdraw(ctx context.Context, stream string) error {
	p, ok := g.policies[stream]
	if !ok || !p.Personal {
		return fmt.Errorf("transport: WithdrawConsent: stream %q is not declared personal in ClientConfig.Streams", textutil.Clip(stream))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Stop first: from here on the delivery loop starts no PUBLISH of the
	// stream, even while Publish calls that passed their check finish.
	g.close(stream)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.close(stream) // again: a grant may have reopened it meanwhile
	g.stopped[stream] = true
	// Messages already handed to the connection (waiting for a Receive
	// Maximum slot, or written and waiting for PUBACK) finish first, so
	// that none is written after the withdrawal returns.
	if err := g.awaitSent(ctx, stream); err != nil {
		_, _ = g.outbox.PurgeStream(stream)
		return fmt.Errorf("transport: WithdrawConsent %q: the stream is stopped, but %w", stream, err)
	}
	cur, had := g.store.get(stream)
	if !had || cur.Granted || cur.Pending {
		purpose := p.Purpose
		if had && cur.Purpose != "" {
			purpose = cur.Purpose
		}
		if _, err := g.store.put(consentRecord{Stream: stream, Purpose: purpose, Time: g.now().UnixMilli(), Pending: true}); err != nil {
			_, _ = g.outbox.PurgeStream(stream) // gone from this process at least
			return fmt.Errorf("transport: WithdrawConsent %q: the stream is stopped and its queue purged in this process, but the withdrawal is not recorded: %w", stream, err)
		}
	}
	delete(g.stopped, stream) // recorded: the store keeps it closed
	if _, err := g.outbox.PurgeStream(stream); err != nil {
		return fmt.Errorf("transport: WithdrawConsent %q: withdrawal recorded; queued messages removed in this process, durably only after a restart: %w", stream, err)
	}
	if err := g.flush(ctx); err != nil {
		return fmt.Errorf("transport: WithdrawConsent %q: withdrawal in force; its consent event is not queued yet (retried at the next consent change, security-report tick and Dial): %w", stream, err)
	}
	return nil
}

// reconcile runs at Dial, before any Publish: it queues the consent
// events a crash left pending, then purges the queued messages of every
// personal stream without consent in force, and of every stream whose
// consent is recorded as withdrawn (a withdrawal interrupted between its
// record and its purge).
func (g *consentGate) reconcile(ctx context.Context) {
	g.mu.Lock()
	defer g.mu.Unlock()
	// Purge first, then queue the events: a full outbox of a withdrawn
	// stream's backlog must not keep its withdrawal event out.
	g.refresh()
	defer func() {
		if err := g.flush(ctx); err != nil {
			g.log.Error("consent: queue pending consent events", "err", err)
		}
		g.refresh()
	}()
	purge := map[string]bool{}
	for s, p := range g.policies {
		if p.Personal && !(*g.open.Load())[s] {
			purge[s] = true
		}
	}
	for _, c := range g.store.List() {
		if !c.Granted {
			purge[c.Stream] = true
		}
	}
	for _, s := range slices.Sorted(maps.Keys(purge)) {
		n, err := g.outbox.PurgeStream(s)
		if err != nil {
			g.log.Error("consent: purge a stream without consent", "stream", s, "err", err)
		} else if n > 0 {
			g.log.Warn("consent: purged queued messages of a stream without consent", "stream", s, "messages", n)
		}
	}
}

// retry queues the consent events a failure left pending (the outbox was
// full, say); the security-report loop calls it at every tick.
func (g *consentGate) retry(ctx context.Context) {
	if len(g.store.pending()) == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.flush(ctx); err != nil {
		g.log.Warn("consent: queue pending consent events", "err", err)
	}
	g.refresh()
}

// flush queues the consent events of every pending record in one durable
// append (all or none), one record per event, at top priority, then
// clears their pending flags. Called with mu held. The append is not
// cancelled with ctx (it waits for one fsync), so that its outcome is
// never in doubt.
func (g *consentGate) flush(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	recs := g.store.pending()
	if len(recs) == 0 {
		return nil
	}
	var reqs []sealRequest
	for _, r := range recs {
		body, err := consent.Event{Stream: r.Stream, Purpose: r.Purpose, Granted: r.Granted, Change: r.Change, Time: time.UnixMilli(r.Time)}.Body()
		if err != nil {
			return err
		}
		reqs = append(reqs, sealRequest{PublishOptions{Stream: wire.ConsentStream, Priority: 255}, []Reading{{Time: time.UnixMilli(r.Time), Body: body}}})
	}
	if _, err := g.seal(ctx, reqs...); err != nil {
		return err
	}
	if err := g.store.reported(recs); err != nil {
		g.log.Warn("consent: events queued, but not yet marked so (they may go twice)", "err", err)
	}
	return nil
}
