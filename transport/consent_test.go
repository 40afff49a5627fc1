// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/atomicfile/crashfs"
	"github.com/d2c-iot/d2c/internal/statefile"
	"github.com/d2c-iot/d2c/transport/consent"
	"github.com/d2c-iot/d2c/transport/internal/outboxhook"
	"github.com/d2c-iot/d2c/transport/outbox"
	"github.com/d2c-iot/d2c/transport/wire"
)

const testPurpose = "heart-rate alerts to the wearer's doctor"

var testPolicies = map[string]consent.Policy{
	"heart": {Stream: "heart", Purpose: testPurpose, Personal: true},
	"temp":  {Stream: "temp"},
}

func TestConsentStoreRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "consent.state")
	s, err := openConsentStore(nil, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Consent("heart"); ok || len(s.List()) != 0 {
		t.Fatalf("a new store holds %v", s.List())
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("opening wrote the file: %v", err)
	}
	at := time.UnixMilli(1795000000000)
	for _, r := range []consentRecord{
		{Stream: "heart", Purpose: testPurpose, Granted: true, Time: at.UnixMilli()},
		{Stream: "gps", Purpose: "route history", Granted: true, Time: at.UnixMilli(), Pending: true},
		{Stream: "heart", Purpose: testPurpose, Time: at.Add(time.Minute).UnixMilli()},
	} {
		if _, err := s.put(r); err != nil {
			t.Fatal(err)
		}
	}
	s2, err := openConsentStore(nil, path)
	if err != nil {
		t.Fatal(err)
	}
	got := s2.List()
	want := []consent.State{
		{Stream: "gps", Purpose: "route history", Granted: false /* pending */, Time: at, Change: 2},
		{Stream: "heart", Purpose: testPurpose, Granted: false, Time: at.Add(time.Minute), Change: 3},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after reopen:\n got %v\nwant %v", got, want)
	}
	if err := s2.reported(s2.pending()); err != nil {
		t.Fatal(err)
	}
	if c, _ := s2.Consent("gps"); !c.Granted {
		t.Fatalf("reported grant not in force: %+v", c)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("consent.state: %v %v, want mode 0600", fi.Mode(), err)
	}

	// Corruption is refused, never read as "no consent recorded".
	b, _ := os.ReadFile(path)
	b[len(b)-1] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openConsentStore(nil, path); !errors.Is(err, statefile.ErrCorrupt) {
		t.Fatalf("corrupt store: %v, want ErrCorrupt", err)
	}
	// So is a well-formed file that breaks the store's invariants.
	codec, _ := statefile.New(consentStateKind, consent.MaxStreams)
	for name, st := range map[string]consentState{
		"change above counter": {Change: 1, Streams: []consentRecord{{Stream: "a", Change: 2}}},
		"unsorted":             {Change: 2, Streams: []consentRecord{{Stream: "b", Change: 1}, {Stream: "a", Change: 2}}},
		"bad stream":           {Change: 1, Streams: []consentRecord{{Stream: "a/b", Change: 1}}},
	} {
		if err := codec.Save(nil, path, st); err != nil {
			t.Fatal(err)
		}
		if _, err := openConsentStore(nil, path); !errors.Is(err, statefile.ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}

func TestStreamPoliciesValidated(t *testing.T) {
	for name, ps := range map[string][]consent.Policy{
		"reserved":          {{Stream: wire.ConsentStream}},
		"reserved prefix":   {{Stream: "d2c.mine"}},
		"invalid name":      {{Stream: "a/b"}},
		"twice":             {{Stream: "a"}, {Stream: "a"}},
		"personal, no why":  {{Stream: "a", Personal: true}},
		"control character": {{Stream: "a", Purpose: "x\n", Personal: true}},
		"purpose too long":  {{Stream: "a", Purpose: strings.Repeat("x", consent.MaxPurpose+1), Personal: true}},
	} {
		if _, err := validateStreamPolicies(ps); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := validateStreamPolicies([]consent.Policy{{Stream: "temp"}, {Stream: "heart", Purpose: testPurpose, Personal: true}}); err != nil {
		t.Fatal(err)
	}
}

// consentRig is a consent gate over a real outbox and store, with a
// sealer of a test fleet, without a client.
type consentRig struct {
	fleet *testFleet
	seq   atomic.Uint64
}

func newConsentRig(t *testing.T) *consentRig {
	f := newTestFleet(t)
	f.device("dev-1", identity.ECDSAP256)
	return &consentRig{fleet: f}
}

func (r *consentRig) seal(o PublishOptions, rs []Reading) ([]outbox.Message, error) {
	s, err := NewSealer("dev-1", r.fleet.devices["dev-1"], nil, func() time.Time { return r.fleet.now })
	if err != nil {
		return nil, err
	}
	seq := r.seq.Add(1)
	out, err := s.Seal(Record{Stream: o.Stream, Boot: 1, Seq: seq, Time: r.fleet.now, Readings: rs})
	if err != nil {
		return nil, err
	}
	return []outbox.Message{{Topic: wire.TelemetryTopic("dev-1", o.Stream), Payload: out.Envelope, Priority: o.Priority, Stream: o.Stream, Boot: 1, Seq: seq}}, nil
}

func (r *consentRig) gate(store *consentStore, ob *outbox.Outbox) *consentGate {
	var mu sync.Mutex // as the client's sealMu: outbox IDs rise with seq
	sealAndStore := func(ctx context.Context, reqs ...sealRequest) ([]uint64, error) {
		mu.Lock()
		var msgs []outbox.Message
		for _, q := range reqs {
			m, err := r.seal(q.opts, q.readings)
			if err != nil {
				mu.Unlock()
				return nil, err
			}
			msgs = append(msgs, m...)
		}
		a, err := ob.Enqueue(msgs)
		mu.Unlock()
		if err != nil {
			return nil, err
		}
		return a.Wait(ctx)
	}
	return newConsentGate(store, testPolicies, ob, func() time.Time { return r.fleet.now }, slog.New(slog.DiscardHandler), sealAndStore)
}

// contents splits an outbox's messages into the bodies of plain messages
// by stream and the consent events, verified and decoded.
func (r *consentRig) contents(t *testing.T, ob *outbox.Outbox) (bodies map[string][]string, events []consent.Event) {
	t.Helper()
	v := r.fleet.verifier(nil)
	bodies = map[string][]string{}
	for _, m := range obAll(ob) {
		if m.Stream != wire.ConsentStream {
			bodies[m.Stream] = append(bodies[m.Stream], string(m.Payload))
			continue
		}
		rec, err := v.Verify(t.Context(), m.Topic, m.Payload)
		if err != nil {
			t.Fatalf("consent event in the outbox: %v", err)
		}
		ev, err := consent.ParseEvent(rec)
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, ev)
	}
	return bodies, events
}

func TestConsentGate(t *testing.T) {
	r := newConsentRig(t)
	dir := t.TempDir()
	store, err := openConsentStore(nil, filepath.Join(dir, "consent.state"))
	if err != nil {
		t.Fatal(err)
	}
	ob := obOpen(t, outbox.Config{Dir: filepath.Join(dir, "outbox")})
	defer obClose(t, ob)
	g := r.gate(store, ob)
	ctx := t.Context()

	if _, err := g.hold("heart"); !errors.Is(err, consent.ErrNoConsent) {
		t.Fatalf("personal stream without consent: %v", err)
	}
	if release, err := g.hold("temp"); err != nil {
		t.Fatalf("non-personal stream: %v", err)
	} else {
		release()
	}
	if err := g.grant(ctx, "temp", ""); err == nil {
		t.Fatal("grant for a stream not declared personal accepted")
	}
	if err := g.grant(ctx, "heart", "advertising"); err == nil {
		t.Fatal("grant for another purpose than the declared one accepted")
	}
	if err := g.withdraw(ctx, "temp"); err == nil {
		t.Fatal("withdraw for a stream not declared personal accepted")
	}
	if err := g.grant(ctx, "heart", testPurpose); err != nil {
		t.Fatal(err)
	}
	if err := g.grant(ctx, "heart", testPurpose); err != nil { // no change, no event
		t.Fatal(err)
	}
	release, err := g.hold("heart")
	if err != nil {
		t.Fatal(err)
	}
	release()
	if c := g.consent("heart"); !c.Granted || c.Change != 1 || c.Purpose != testPurpose {
		t.Fatalf("after grant: %+v", c)
	}
	obAppend(t, ob, obMsg("heart", "h-0", 0), obMsg("temp", "t-0", 0), obMsg("heart", "h-1", 0))

	// A withdrawal waits for a Publish that passed its check.
	release, err = g.hold("heart")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.withdraw(ctx, "heart") }()
	for deadline := time.Now().Add(5 * time.Second); (*g.open.Load())["heart"]; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the withdrawal did not close the stream at once")
		}
	}
	select {
	case err := <-done:
		t.Fatalf("withdraw returned (%v) while a Publish held the gate", err)
	case <-time.After(50 * time.Millisecond):
	}
	obAppend(t, ob, obMsg("heart", "h-2", 0)) // the Publish in progress stores its envelope
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if g.beginSend("heart") {
		t.Fatal("a message of the withdrawn stream may still be sent")
	}
	if !g.beginSend("temp") {
		t.Fatal("a stream that needs no consent is held back")
	}
	g.endSend("temp")
	if _, err := g.hold("heart"); !errors.Is(err, consent.ErrNoConsent) {
		t.Fatalf("after withdrawal: %v", err)
	}
	bodies, events := r.contents(t, ob)
	if len(bodies["heart"]) != 0 || len(bodies["temp"]) != 1 {
		t.Fatalf("after withdrawal the outbox holds %v", bodies)
	}
	if len(events) != 2 || !events[0].Granted || events[1].Granted || events[1].Change != 2 || events[1].Seq <= events[0].Seq {
		t.Fatalf("consent events %+v", events)
	}
	// The events go first and alone.
	if m := ob.Next(1, nil); len(m) != 1 || m[0].Stream != wire.ConsentStream || m[0].Priority != 255 {
		t.Fatalf("first message out: %+v", m)
	}
	// Withdrawing again purges, records nothing, sends nothing.
	obAppend(t, ob, obMsg("heart", "h-3", 0))
	if err := g.withdraw(ctx, "heart"); err != nil {
		t.Fatal(err)
	}
	if bodies, events := r.contents(t, ob); len(bodies["heart"]) != 0 || len(events) != 2 {
		t.Fatalf("second withdrawal: %v, %d events", bodies, len(events))
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := g.grant(cancelled, "heart", testPurpose); !errors.Is(err, context.Canceled) {
		t.Fatalf("grant with a cancelled context: %v", err)
	}
}

// TestConsentCrash cuts the power at every file-system operation of a
// grant and of a withdrawal (store writes, outbox purge, event append):
// the store always reads back, old or new; a withdrawal that returned has
// durably purged the stream and queued its event; and after the restart's
// reconciliation (what Dial does), a recorded withdrawal has purged the
// stream and its event is queued, a recorded grant is in force and
// announced, and nothing else was touched.
func TestConsentCrash(t *testing.T) {
	r := newConsentRig(t)
	ctx := t.Context()
	base := t.TempDir()

	// Templates: heart granted with 4 messages queued, and nothing granted.
	// Each holds store/ (consent.state) and outbox/.
	granted, none := filepath.Join(base, "granted"), filepath.Join(base, "none")
	for _, d := range []string{granted, none} {
		if err := os.MkdirAll(filepath.Join(d, "store"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	{
		s, err := openConsentStore(nil, filepath.Join(granted, "store", "consent.state"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.put(consentRecord{Stream: "heart", Purpose: testPurpose, Granted: true, Time: r.fleet.now.UnixMilli()}); err != nil {
			t.Fatal(err)
		}
		ob := obOpen(t, outbox.Config{Dir: filepath.Join(granted, "outbox")})
		obAppend(t, ob, obMsg("heart", "h-0", 0), obMsg("temp", "t-0", 0), obMsg("heart", "h-1", 0))
		obAppend(t, ob, obMsg("heart", "h-2", 0), obMsg("heart", "h-3", 0), obMsg("temp", "t-1", 0))
		obClose(t, ob)
	}
	{
		ob := obOpen(t, outbox.Config{Dir: filepath.Join(none, "outbox")})
		obAppend(t, ob, obMsg("temp", "t-0", 0), obMsg("temp", "t-1", 0))
		obClose(t, ob)
	}

	type session struct {
		cfs *crashfs.FS
		err error
		dir string
	}
	run := func(template string, failAt int, op func(*consentGate) error) session {
		dir := filepath.Join(t.TempDir(), "state")
		crashfs.CopyDir(t, filepath.Join(template, "store"), filepath.Join(dir, "store"))
		crashfs.CopyDir(t, filepath.Join(template, "outbox"), filepath.Join(dir, "outbox"))
		cfs := &crashfs.FS{FailAt: failAt}
		fsys := &serialFS{fs: cfs}
		store, err := openConsentStore(fsys, filepath.Join(dir, "store", "consent.state"))
		if err != nil {
			t.Fatal(err) // reading does not go through the FS
		}
		o, err := outboxhook.Open(fsys, outbox.Config{Dir: filepath.Join(dir, "outbox")})
		if err != nil {
			return session{cfs, err, dir}
		}
		ob := o.(*outbox.Outbox)
		err = op(r.gate(store, ob))
		ob.Close()
		return session{cfs, err, dir}
	}
	// restart opens the state as the next process does, checks what the
	// interrupted call left, reconciles, and returns the outcome.
	restart := func(t *testing.T, s session, check func(store *consentStore, bodies map[string][]string, events []consent.Event)) (*consentStore, map[string][]string, []consent.Event) {
		t.Helper()
		store, err := openConsentStore(nil, filepath.Join(s.dir, "store", "consent.state"))
		if err != nil {
			t.Fatalf("consent store after the crash: %v", err)
		}
		ob := obOpen(t, outbox.Config{Dir: filepath.Join(s.dir, "outbox")})
		defer obClose(t, ob)
		bodies, events := r.contents(t, ob)
		check(store, bodies, events)
		g := r.gate(store, ob)
		g.reconcile(ctx)
		if p := store.pending(); len(p) != 0 {
			t.Fatalf("events still pending after reconciliation: %+v", p)
		}
		bodies, events = r.contents(t, ob)
		if len(bodies["temp"]) != 2 {
			t.Fatalf("other stream touched: %v", bodies)
		}
		return store, bodies, events
	}
	crashLoop := func(t *testing.T, template string, op func(*consentGate) error, check func(t *testing.T, s session)) {
		clean := run(template, 0, op)
		if clean.err != nil {
			t.Fatal(clean.err)
		}
		covered := 0
		for i := 1; ; i++ {
			s := run(template, i, op)
			if !s.cfs.Crashed() {
				if s.err != nil {
					t.Fatalf("run %d: %v", i, s.err)
				}
				break
			}
			t.Run(fmt.Sprintf("crash-%02d", i), func(t *testing.T) { check(t, s) })
			covered++
			if i > 10*clean.cfs.Ops() {
				t.Fatal("crash runs do not end")
			}
		}
		if covered < 10 {
			t.Fatalf("only %d crash points", covered)
		}
		t.Logf("%d crash points (clean run: %d operations)", covered, clean.cfs.Ops())
	}

	t.Run("withdraw", func(t *testing.T) {
		withdraw := func(g *consentGate) error { return g.withdraw(ctx, "heart") }
		crashLoop(t, granted, withdraw, func(t *testing.T, s session) {
			store, bodies, events := restart(t, s, func(store *consentStore, bodies map[string][]string, events []consent.Event) {
				rec, _ := store.get("heart")
				switch {
				case rec.Change == 1 && rec.Granted && s.err != nil: // old state
				case rec.Change == 2 && !rec.Granted: // new state
				default:
					t.Fatalf("store after the crash: %+v (withdraw returned %v)", rec, s.err)
				}
				if s.err == nil {
					if len(bodies["heart"]) != 0 {
						t.Fatalf("withdraw returned nil, yet after the crash the outbox holds %v", bodies["heart"])
					}
					if len(events) == 0 || events[len(events)-1].Granted {
						t.Fatalf("withdraw returned nil, yet its event is not stored: %+v", events)
					}
				}
			})
			c, _ := store.Consent("heart")
			if c.Change == 2 {
				if len(bodies["heart"]) != 0 {
					t.Fatalf("withdrawal recorded, messages left after reconciliation: %v", bodies["heart"])
				}
				if len(events) == 0 || events[len(events)-1].Granted || events[len(events)-1].Change != 2 {
					t.Fatalf("withdrawal recorded, events after reconciliation: %+v", events)
				}
			} else if len(bodies["heart"]) != 4 || len(events) != 0 || !c.Granted {
				t.Fatalf("withdrawal not recorded, yet the outbox holds %v and events %+v (consent %+v)", bodies, events, c)
			}
		})
	})

	t.Run("grant", func(t *testing.T) {
		grant := func(g *consentGate) error { return g.grant(ctx, "heart", testPurpose) }
		crashLoop(t, none, grant, func(t *testing.T, s session) {
			store, _, events := restart(t, s, func(store *consentStore, _ map[string][]string, events []consent.Event) {
				if s.err == nil {
					if c, _ := store.Consent("heart"); c.Change == 0 {
						t.Fatalf("grant returned nil, store holds %+v", c)
					}
					if len(events) == 0 || !events[0].Granted {
						t.Fatalf("grant returned nil, yet its event is not stored: %+v", events)
					}
				}
			})
			g := r.gate(store, nil)
			if c := g.consent("heart"); c.Granted {
				if len(events) == 0 || !events[len(events)-1].Granted {
					t.Fatalf("grant in force after the restart, but never announced: %+v", events)
				}
			} else if len(events) != 0 && events[len(events)-1].Granted {
				t.Fatalf("grant announced but not in force: %+v, %+v", c, events)
			}
		})
	})
}

// serialFS runs the operations of an FS one at a time: crashfs is meant
// for one writer, and here the store and the outbox's committer write
// concurrently through the same power supply.
type serialFS struct {
	mu sync.Mutex
	fs atomicfile.FS
}

type serialFile struct {
	s *serialFS
	f atomicfile.File
}

func (s *serialFS) file(f atomicfile.File, err error) (atomicfile.File, error) {
	if err != nil {
		return nil, err
	}
	return &serialFile{s, f}, nil
}

func (s *serialFS) CreateTemp(dir, pattern string) (atomicfile.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.file(s.fs.CreateTemp(dir, pattern))
}

func (s *serialFS) OpenFile(name string, flag int, perm fs.FileMode) (atomicfile.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.file(s.fs.OpenFile(name, flag, perm))
}

func (s *serialFS) Rename(oldpath, newpath string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fs.Rename(oldpath, newpath)
}

func (s *serialFS) Remove(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fs.Remove(name)
}

func (s *serialFS) SyncDir(dir string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fs.SyncDir(dir)
}

func (s *serialFS) MkdirAll(dir string, perm fs.FileMode) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fs.MkdirAll(dir, perm)
}

func (s *serialFS) Symlink(oldname, newname string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fs.Symlink(oldname, newname)
}

func (f *serialFile) Name() string { return f.f.Name() }

func (f *serialFile) Write(p []byte) (int, error) {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	return f.f.Write(p)
}

func (f *serialFile) Sync() error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	return f.f.Sync()
}

func (f *serialFile) Close() error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	return f.f.Close()
}

func (f *serialFile) Chmod(mode fs.FileMode) error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	return f.f.Chmod(mode)
}

func consentRecordOf(t *testing.T, boot, seq uint64, body string) Record {
	t.Helper()
	return Record{Device: "dev-1", Stream: wire.ConsentStream, Boot: boot, Seq: seq, Time: time.UnixMilli(1795000000000),
		Readings: []Reading{{Time: time.UnixMilli(1795000000000), Body: []byte(body)}}}
}

func consentJSON(stream string, granted bool, change int) string {
	return fmt.Sprintf(`{"v":1,"stream":%q,"purpose":%q,"granted":%v,"change":%d,"time":1795000000000}`, stream, testPurpose, granted, change)
}

func TestParseConsentEvent(t *testing.T) {
	ev, err := consent.ParseEvent(consentRecordOf(t, 3, 17, consentJSON("heart", true, 4)))
	if err != nil {
		t.Fatal(err)
	}
	want := consent.Event{Device: "dev-1", Stream: "heart", Purpose: testPurpose, Granted: true, Change: 4,
		Time: time.UnixMilli(1795000000000), Boot: 3, Seq: 17}
	if ev != want {
		t.Fatalf("got %+v\nwant %+v", ev, want)
	}
	for name, body := range map[string]string{
		"unknown field":  `{"v":1,"stream":"heart","purpose":"p","granted":true,"change":1,"time":0,"x":1}`,
		"version":        `{"v":2,"stream":"heart","purpose":"p","granted":true,"change":1,"time":0}`,
		"no version":     `{"stream":"heart","purpose":"p","granted":true,"change":1,"time":0}`,
		"bad stream":     `{"v":1,"stream":"a/#","purpose":"p","granted":true,"change":1,"time":0}`,
		"reserved":       `{"v":1,"stream":"d2c.security","purpose":"p","granted":true,"change":1,"time":0}`,
		"no purpose":     `{"v":1,"stream":"heart","granted":true,"change":1,"time":0}`,
		"change 0":       `{"v":1,"stream":"heart","purpose":"p","granted":true,"change":0,"time":0}`,
		"trailing":       consentJSON("heart", true, 1) + `{}`,
		"not an object":  `[1]`,
		"wrong type":     `{"v":1,"stream":"heart","purpose":"p","granted":"yes","change":1,"time":0}`,
		"negative count": `{"v":1,"stream":"heart","purpose":"p","granted":true,"change":-1,"time":0}`,
	} {
		if _, err := consent.ParseEvent(consentRecordOf(t, 1, 1, body)); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	rec := consentRecordOf(t, 1, 1, consentJSON("heart", true, 1))
	rec.Readings = append(rec.Readings, rec.Readings[0])
	if _, err := consent.ParseEvent(rec); !errors.Is(err, wire.ErrMalformed) {
		t.Errorf("two readings: %v", err)
	}
	rec.Stream = "heart"
	if _, err := consent.ParseEvent(rec); !errors.Is(err, wire.ErrMalformed) {
		t.Errorf("other stream: %v", err)
	}
}

func TestConsentLedger(t *testing.T) {
	tele := func(boot, seq uint64) Record {
		return Record{Device: "dev-1", Stream: "heart", Boot: boot, Seq: seq}
	}
	var l consent.Ledger
	observe := func(boot, seq uint64, granted bool, change int) {
		t.Helper()
		if _, err := l.Observe(consentRecordOf(t, boot, seq, consentJSON("heart", granted, change))); err != nil {
			t.Fatal(err)
		}
	}
	allowed := func(want bool, recs ...Record) {
		t.Helper()
		for _, r := range recs {
			if got := l.Allowed(r); got != want {
				t.Errorf("Allowed(boot %d seq %d) = %v, want %v", r.Boot, r.Seq, got, want)
			}
		}
	}
	// No event: not governed.
	allowed(true, tele(1, 1))
	// Granted at (2, 10): later records pass, earlier do not.
	observe(2, 10, true, 1)
	allowed(true, tele(2, 11), tele(3, 0))
	allowed(false, tele(2, 9), tele(1, 50))
	// Withdrawn at (2, 20): everything sealed before it (in flight) and
	// after it is dropped.
	observe(2, 20, false, 2)
	allowed(false, tele(2, 15), tele(2, 21), tele(3, 0))
	// A late, older grant changes nothing.
	observe(2, 5, true, 1)
	allowed(false, tele(2, 21))
	// Granted again at (3, 4): records after it pass, records between the
	// withdrawal and the grant, or before the withdrawal, do not.
	observe(3, 4, true, 3)
	allowed(true, tele(3, 5), tele(4, 0))
	allowed(false, tele(3, 3), tele(2, 25), tele(2, 15))
	// A repeated grant (same consent, event sent twice) keeps the earliest.
	observe(3, 9, true, 3)
	allowed(true, tele(3, 6))
	// A withdrawal arriving after a later grant (out of order) does not
	// undo that grant.
	observe(3, 2, false, 2)
	allowed(true, tele(3, 5))
	// Withdraw@(5,10), grant@(5,20), withdraw@(5,30), grant@(5,40),
	// arriving as 10, 20, 40, 30: the grant at 40 must survive the late
	// withdrawal at 30.
	observe(5, 10, false, 4)
	observe(5, 20, true, 5)
	observe(5, 40, true, 7)
	observe(5, 30, false, 6)
	allowed(true, tele(5, 50))
	allowed(false, tele(5, 35), tele(5, 25), tele(5, 15))
	// Other streams, devices and the reserved streams are not affected.
	allowed(true, Record{Device: "dev-1", Stream: "temp", Boot: 2, Seq: 21}, Record{Device: "dev-2", Stream: "heart", Boot: 2, Seq: 21},
		Record{Device: "dev-1", Stream: wire.SecurityStream, Boot: 2, Seq: 21})
	l.Forget("dev-1")
	allowed(true, tele(2, 21))

	// Bounded: the least recently seen devices are forgotten.
	small := consent.Ledger{MaxDevices: 3}
	for i := range 10 {
		rec := consentRecordOf(t, 1, 1, consentJSON("heart", false, 1))
		rec.Device = fmt.Sprintf("dev-%d", i)
		if _, err := small.Observe(rec); err != nil {
			t.Fatal(err)
		}
		if small.Len() > 3 {
			t.Fatalf("%d devices tracked, MaxDevices 3", small.Len())
		}
	}
	if small.Allowed(Record{Device: "dev-9", Stream: "heart", Boot: 1, Seq: 2}) || !small.Allowed(Record{Device: "dev-0", Stream: "heart", Boot: 1, Seq: 2}) {
		t.Fatal("eviction order")
	}
	// A device cannot grow its entry without bound.
	for i := range consent.MaxStreams + 1 {
		_, err := small.Observe(consentRecordOf(t, 1, uint64(i+1), consentJSON(fmt.Sprintf("s%d", i), true, i+1)))
		if (err != nil) != (i == consent.MaxStreams) {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
}
