// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/consent"
	"github.com/d2c-iot/d2c/transport/wire"
)

// gateProxy forwards TCP connections to a broker while it is up; while it
// is down, it closes every connection at once, so that for the device the
// broker is down while the cloud stays connected to it.
type gateProxy struct {
	ln       net.Listener
	upstream string
	up       atomic.Bool
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

func newGateProxy(t *testing.T, upstream string) *gateProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gateProxy{ln: ln, upstream: upstream, conns: map[net.Conn]struct{}{}}
	g.up.Store(true)
	g.wg.Go(g.serve)
	t.Cleanup(func() {
		ln.Close()
		g.SetUp(false)
		g.wg.Wait()
	})
	return g
}

func (g *gateProxy) Addr() string { return g.ln.Addr().String() }

func (g *gateProxy) serve() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		if !g.up.Load() {
			c.Close()
			continue
		}
		u, err := net.DialTimeout("tcp", g.upstream, 2*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		g.mu.Lock()
		g.conns[c], g.conns[u] = struct{}{}, struct{}{}
		g.mu.Unlock()
		for _, p := range [][2]net.Conn{{c, u}, {u, c}} {
			g.wg.Go(func() {
				io.Copy(p[0], p[1])
				p[0].Close()
				p[1].Close()
			})
		}
	}
}

// SetUp lets connections through (true) or cuts them all and refuses new
// ones (false).
func (g *gateProxy) SetUp(up bool) {
	g.up.Store(up)
	if up {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.conns {
		c.Close()
	}
	clear(g.conns)
}

func (c *collector) snapshot() []transport.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]transport.Record(nil), c.recs...)
}

const heartPurpose = "heart-rate alerts to the wearer's doctor"

// TestConsentEndToEnd runs consent through the embedded broker: a personal
// stream is refused without consent; after a grant its readings reach the
// cloud behind the consent event; consent withdrawn while the broker is
// unreachable purges the readings queued meanwhile, and after a restart
// and the reconnection none of them reaches the cloud while the withdrawal
// event does; the stream stays refused across the restart; a new grant
// opens it again. The cloud applies the events with a consent.Ledger.
func TestConsentEndToEnd(t *testing.T) {
	f := newE2EFleet(t)
	store := f.enroll("wearable-1")
	col := newCollector()
	v := f.verifier()
	f.dialCloud(f.broker.Addr(), col, v)
	px := newGateProxy(t, f.broker.Addr())
	cfg := transport.ClientConfig{Broker: px.Addr(), ServerName: "127.0.0.1", Store: store,
		Streams: []consent.Policy{
			{Stream: "heart", Purpose: heartPurpose, Personal: true},
			{Stream: "battery", Purpose: "device health"},
		},
		RetryMin: 50 * time.Millisecond, RetryMax: 300 * time.Millisecond}
	ctx := t.Context()
	dial := func() *transport.Client {
		t.Helper()
		dev, err := transport.Dial(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return dev
	}
	closeDev := func(dev *transport.Client) {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		dev.Close(cctx)
	}
	publish := func(dev *transport.Client, stream, body string) error {
		return dev.Publish(ctx, stream, transport.Reading{Time: time.Now(), Body: []byte(body)})
	}
	mustPublish := func(dev *transport.Client, stream string, bodies ...string) {
		t.Helper()
		for _, b := range bodies {
			if err := publish(dev, stream, b); err != nil {
				t.Fatalf("Publish %s %s: %v", stream, b, err)
			}
		}
	}
	waitRecords := func(n int) {
		t.Helper()
		col.wait(t, n, 15*time.Second)
	}

	dev := dial()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := dev.AwaitConnection(cctx); err != nil {
		t.Fatal(err)
	}

	// 1. No consent: refused, nothing stored. Reserved streams and grants
	// that do not match the declaration are refused too.
	if err := publish(dev, "heart", "h-refused"); !errors.Is(err, consent.ErrNoConsent) {
		t.Fatalf("Publish to a personal stream without consent: %v, want ErrNoConsent", err)
	}
	if st := dev.Stats(); st.Stored != 0 {
		t.Fatalf("refused Publish stored something: %+v", st)
	}
	if err := publish(dev, wire.ConsentStream, "{}"); err == nil {
		t.Fatal("Publish on the reserved consent stream accepted")
	}
	if err := dev.GrantConsent(ctx, "heart", "marketing"); err == nil {
		t.Fatal("consent to another purpose than the declared one accepted")
	}
	if err := dev.GrantConsent(ctx, "battery", "device health"); err == nil {
		t.Fatal("consent for a stream not declared personal accepted")
	}

	// 2. Grant, publish: delivered, after the consent event.
	if err := dev.GrantConsent(ctx, "heart", heartPurpose); err != nil {
		t.Fatal(err)
	}
	if c := dev.Consent("heart"); !c.Granted || c.Change != 1 || c.Purpose != heartPurpose {
		t.Fatalf("Consent after grant: %+v", c)
	}
	mustPublish(dev, "heart", "h-0", "h-1", "h-2")
	mustPublish(dev, "battery", "b-0")
	waitRecords(5)
	waitDrained(t, dev, 5*time.Second)

	// 3. The broker becomes unreachable; readings queue; consent is
	// withdrawn.
	failures := dev.Stats().ConnectFailures
	px.SetUp(false)
	if !waitFor(10*time.Second, func() bool { return dev.Stats().ConnectFailures > failures }) {
		t.Fatalf("device did not notice the broker is gone: %+v", dev.Stats())
	}
	mustPublish(dev, "heart", "h-3", "h-4", "h-5")
	mustPublish(dev, "battery", "b-1")
	if st := dev.Stats(); st.QueueDepth != 4 {
		t.Fatalf("queued while the broker is down: %+v, want 4", st)
	}
	if err := dev.WithdrawConsent(ctx, "heart"); err != nil {
		t.Fatal(err)
	}
	if err := publish(dev, "heart", "h-after"); !errors.Is(err, consent.ErrNoConsent) {
		t.Fatalf("Publish after withdrawal: %v, want ErrNoConsent", err)
	}
	if st := dev.Stats(); st.QueueDepth != 2 { // b-1 and the withdrawal event
		t.Fatalf("after withdrawal the outbox holds %d messages, want 2 (b-1, consent event)", st.QueueDepth)
	}

	// 4. Restart, still offline: the withdrawal holds.
	closeDev(dev)
	dev = dial()
	defer func() { closeDev(dev) }()
	if c := dev.Consent("heart"); c.Granted || c.Change != 2 {
		t.Fatalf("Consent after restart: %+v, want withdrawn at change 2", c)
	}
	if err := publish(dev, "heart", "h-restarted"); !errors.Is(err, consent.ErrNoConsent) {
		t.Fatalf("Publish after restart: %v, want ErrNoConsent", err)
	}
	if st := dev.Stats(); st.QueueDepth != 2 {
		t.Fatalf("after restart the outbox holds %d messages, want 2", st.QueueDepth)
	}

	// 5. The broker is back: b-1 and the withdrawal event arrive, none of
	// the purged readings.
	px.SetUp(true)
	waitDrained(t, dev, 15*time.Second)
	waitRecords(7)

	// 6. A new grant opens the stream again.
	if err := dev.GrantConsent(ctx, "heart", heartPurpose); err != nil {
		t.Fatal(err)
	}
	mustPublish(dev, "heart", "h-6")
	waitRecords(9)
	waitDrained(t, dev, 5*time.Second)
	time.Sleep(300 * time.Millisecond) // anything late would show now

	// The cloud's view, in arrival order, through a ledger.
	var ledger consent.Ledger
	var events []consent.Event
	var kept, got []string
	for _, r := range col.snapshot() {
		if r.Stream == wire.ConsentStream {
			ev, err := ledger.Observe(r)
			if err != nil {
				t.Fatal(err)
			}
			events = append(events, ev)
			continue
		}
		body := string(r.Readings[0].Body)
		got = append(got, body)
		if ledger.Allowed(r) {
			kept = append(kept, body)
		}
	}
	if want := "h-0 h-1 h-2 b-0 b-1 h-6"; sortedJoin(got) != sortedJoin(strings.Fields(want)) {
		t.Fatalf("cloud received %v, want %s", got, want)
	}
	if sortedJoin(kept) != sortedJoin(got) {
		t.Fatalf("ledger kept %v of %v", kept, got)
	}
	if len(events) != 3 || !events[0].Granted || events[1].Granted || !events[2].Granted ||
		events[0].Change != 1 || events[1].Change != 2 || events[2].Change != 3 ||
		events[0].Stream != "heart" || events[1].Purpose != heartPurpose || events[1].Device != "wearable-1" {
		t.Fatalf("consent events %+v", events)
	}
	// A reading from before the withdrawal delivered late (in flight
	// during it) is discarded by the ledger; one sealed after the new
	// grant passes.
	if ledger.Allowed(transport.Record{Device: "wearable-1", Stream: "heart", Boot: events[1].Boot, Seq: events[1].Seq - 1}) {
		t.Error("ledger keeps a reading sealed before the withdrawal")
	}
	if vs := v.Stats(); vs.Accepted != 9 || vs.Refused != 0 || vs.Replays != 0 {
		t.Errorf("verifier %+v, want 9 accepted", vs)
	}
}

func sortedJoin(s []string) string { return fmt.Sprint(slices.Sorted(slices.Values(s))) }
