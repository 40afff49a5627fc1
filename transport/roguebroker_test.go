// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

// Rogue-broker tests: the device (Dial) and the cloud service (DialCloud)
// against internal/roguebroker, a broker that completes mutual TLS with a
// fleet server certificate and then breaks the protocol on purpose. For
// each behaviour the client must not panic, must stay within a stated
// memory bound, must lose no message it acknowledged as stored (each is
// PUBACKed by the broker once it turns honest, or still in the outbox),
// must run no command that is not validly signed, and must reconnect
// with a growing, jittered backoff. Every wait is bounded.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/audit"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/internal/roguebroker"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

// rogueMemoryBound bounds what a client may allocate in all (TotalAlloc,
// every goroutine of the test process) while a rogue broker attacks it
// over several connections. The 8-byte attack alone would cost 256 MiB
// per connection if the packet were allocated from its header.
const rogueMemoryBound = 32 << 20

// forTest returns a copy of the fleet that reports to t: subtests share
// the fleet's CA, registrar and keys.
func (f *e2eFleet) forTest(t *testing.T) *e2eFleet {
	g := *f
	g.t = t
	return &g
}

// rogueServer starts a rogue broker with the fleet's server certificate
// that verifies client certificates against the fleet CA, as a real
// broker of the fleet would.
func (f *e2eFleet) rogueServer(b roguebroker.Behaviour, mod func(*roguebroker.Config)) *roguebroker.Server {
	f.t.Helper()
	cfg := roguebroker.Config{Behaviour: b, TLS: &tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{serverCert(f.t, f.ca)}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: f.roots}}
	if mod != nil {
		mod(&cfg)
	}
	s, err := roguebroker.Start(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { s.Close() })
	return s
}

// rogueDevice is a device connected to a rogue broker, taking commands
// signed by the fleet command key, with a fast backoff (50 ms to 1 s).
type rogueDevice struct {
	*transport.Client
	ran atomic.Int64 // OnCommand calls

	mu      sync.Mutex
	refused []error // commands and messages refused (OnRefused)
}

func (f *e2eFleet) rogueDevice(id, addr string) *rogueDevice {
	f.t.Helper()
	d := &rogueDevice{}
	d.Client = dialDevice(f.t, transport.ClientConfig{Broker: addr, Store: f.enroll(id),
		CommandKeys: []crypto.PublicKey{f.cmdKey.Public()},
		OnCommand:   func(context.Context, transport.Command) { d.ran.Add(1) },
		OnRefused: func(r transport.Refusal) {
			d.mu.Lock()
			d.refused = append(d.refused, r.Err)
			d.mu.Unlock()
		},
		RetryMin: 50 * time.Millisecond, RetryMax: time.Second, SecurityReportInterval: -1})
	return d
}

func (d *rogueDevice) refusals() []error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.refused)
}

// memDuring runs fn and returns the bytes allocated meanwhile (TotalAlloc,
// the whole process) and the highest HeapAlloc seen, sampled every 5 ms.
func memDuring(fn func()) (total, peak uint64) {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var stop atomic.Bool
	var maxHeap atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for !stop.Load() {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > maxHeap.Load() {
				maxHeap.Store(ms.HeapAlloc)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	stopSampling := sync.OnceFunc(func() {
		stop.Store(true)
		<-done
	})
	defer stopSampling() // also when fn fails the test
	fn()
	stopSampling()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc, maxHeap.Load()
}

// livePeak runs fn and returns how far the live heap (HeapAlloc just
// after a collection, every 20 ms) rose above what was live before it:
// what fn made the process hold, not what earlier tests left or what it
// has yet to collect.
func livePeak(fn func()) uint64 {
	var base runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&base)
	var stop atomic.Bool
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for !stop.Load() {
			runtime.GC()
			runtime.ReadMemStats(&ms)
			peak.Store(max(peak.Load(), ms.HeapAlloc))
			time.Sleep(20 * time.Millisecond)
		}
	}()
	fn()
	stop.Store(true)
	<-done
	return peak.Load() - min(peak.Load(), base.HeapAlloc)
}

// waitConnects waits until the rogue broker has read n CONNECTs.
func waitConnects(t *testing.T, s *roguebroker.Server, n int, within time.Duration) []roguebroker.Connect {
	t.Helper()
	if !waitFor(within, func() bool { return len(s.Connects()) >= n }) {
		t.Fatalf("%d connections within %v, want %d", len(s.Connects()), within, n)
	}
	return s.Connects()
}

// checkGrowingGaps fails unless the gaps between the first connections grow:
// with full jitter each gap is random below 50 ms << k (capped at 1 s),
// so the longest of gaps 3 and later exceeds the longest of the first two
// unless the delays do not grow (all four below about 100 ms: p < 0.001).
// It also fails if the gaps are all equal (no jitter). It wants at least
// 8 connections.
func checkGrowingGaps(t *testing.T, cs []roguebroker.Connect) {
	t.Helper()
	var gaps []time.Duration
	for i := 1; i < len(cs) && i < 8; i++ {
		gaps = append(gaps, cs[i].Time.Sub(cs[i-1].Time))
	}
	if len(gaps) < 7 {
		t.Fatalf("%d connections, want 8 to judge the backoff", len(cs))
	}
	t.Logf("reconnection gaps: %v", gaps)
	if slices.Max(gaps[3:]) <= slices.Max(gaps[:2]) {
		t.Errorf("the backoff does not grow: gaps %v", gaps)
	}
	if slices.Min(gaps) == slices.Max(gaps) {
		t.Errorf("the gaps are all equal (%v): no jitter", gaps[0])
	}
}

// checkNoLoss fails unless every body in want was PUBACKed by the broker
// (on some connection) and the device's outbox is empty: each message the
// device acknowledged as stored reached the broker, which acknowledged it.
// It verifies the payloads as the cloud would.
//
// The wait is long (20 s) for TestRogueBrokerForgetsSessions: see there.
func (f *e2eFleet) checkNoLoss(s *roguebroker.Server, d *rogueDevice, want []string) {
	f.t.Helper()
	waitDrained(f.t, d.Client, 20*time.Second)
	v := f.verifier()
	acked := map[string]bool{}
	for _, m := range s.Received() {
		if !m.Acked {
			continue
		}
		rec, err := v.Verify(f.t.Context(), m.Topic, m.Payload)
		if errors.Is(err, wire.ErrDuplicate) {
			continue
		}
		if err != nil {
			f.t.Errorf("the broker received a message that does not verify on %s: %v", m.Topic, err)
			continue
		}
		for _, r := range rec.Readings {
			acked[string(r.Body)] = true
		}
	}
	for _, b := range want {
		if !acked[b] {
			f.t.Errorf("message %q, acknowledged as stored, left the outbox without a PUBACK from the broker", b)
		}
	}
}

// signedCommands returns n genuine commands for device, signed by the
// fleet command key.
func (f *e2eFleet) signedCommands(device string, n int) [][]byte {
	f.t.Helper()
	signer := &transport.CommandSigner{Key: f.cmdKey}
	var out [][]byte
	for i := range n {
		env, err := signer.Sign(transport.Command{Device: device, Name: "unlock", Body: fmt.Appendf(nil, "%d", i)})
		if err != nil {
			f.t.Fatal(err)
		}
		out = append(out, env)
	}
	return out
}

// forgedCommands returns commands for device that must not run: unsigned
// ("alg":"none"), signed by the attacker's key, a genuine one with its
// signature altered, and garbage.
func (f *e2eFleet) forgedCommands(device string, attackerKey crypto.Signer) [][]byte {
	f.t.Helper()
	genuine := string(f.signedCommands(device, 1)[0])
	parts := strings.Split(genuine, ".")
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"x","typ":"d2c-cmd+jws"}`)) + "." + parts[1] + "."
	sig := []byte(parts[2])
	if k := len(sig) / 2; sig[k] == 'A' {
		sig[k] = 'B'
	} else {
		sig[k] = 'A'
	}
	altered := parts[0] + "." + parts[1] + "." + string(sig)
	mis, err := (&transport.CommandSigner{Key: attackerKey}).Sign(transport.Command{Device: device, Name: "unlock"})
	if err != nil {
		f.t.Fatal(err)
	}
	return [][]byte{[]byte(none), mis, []byte(altered), []byte("garbage")}
}

// TestRogueBrokerBreaksFraming: packets over the Maximum Packet Size the
// device advertised (the 8-byte 256 MiB header, well-formed PUBLISH
// packets of 1 and 64 MiB) and malformed ones (reserved type 0, a 5-byte remaining
// length, a truncated PUBLISH), at every connection. The device allocates
// nothing of the announced size, drops each connection with the
// violation as its error, counts it, backs off, keeps its queue, and
// delivers it all once the broker is honest. Each subtest waits for the
// honest broker in parallel with the others, after its attack (measured
// alone).
func TestRogueBrokerBreaksFraming(t *testing.T) {
	fleet := newE2EFleet(t)
	for i, tc := range []struct {
		name string
		b    roguebroker.Behaviour
		size int   // OversizedPublish's packet size
		want error // the connection error; nil: an ordinary connection loss
	}{
		{"HugeLength", roguebroker.HugeLength, 0, transport.ErrPacketTooLarge},
		{"OversizedPublish-1MiB", roguebroker.OversizedPublish, 1 << 20, transport.ErrPacketTooLarge},
		// Large enough that reading it would pass the memory bound.
		{"OversizedPublish-64MiB", roguebroker.OversizedPublish, 64 << 20, transport.ErrPacketTooLarge},
		{"ReservedType", roguebroker.ReservedType, 0, transport.ErrBrokerProtocol},
		{"LongLength", roguebroker.LongLength, 0, transport.ErrBrokerProtocol},
		{"Truncated", roguebroker.Truncated, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := fleet.forTest(t)
			s := f.rogueServer(tc.b, func(c *roguebroker.Config) { c.OversizedSize = tc.size })
			var d *rogueDevice
			var want []string
			var cs []roguebroker.Connect
			total, peak := memDuring(func() {
				d = f.rogueDevice(fmt.Sprintf("framing-%d", i), s.Addr())
				want = publishN(t, d.Client, "m", 0, 20)
				cs = waitConnects(t, s, 8, 15*time.Second)
			})
			t.Logf("%s: %d connections, %.1f MiB allocated in all, heap peak %.1f MiB", tc.name, len(cs), float64(total)/(1<<20), float64(peak)/(1<<20))
			if total > rogueMemoryBound {
				t.Errorf("%.1f MiB allocated during the attack, bound %d MiB", float64(total)/(1<<20), rogueMemoryBound>>20)
			}
			if got := cs[0].MaximumPacketSize; got != limits.MQTTPacket {
				t.Errorf("CONNECT advertised Maximum Packet Size %d, want %d", got, limits.MQTTPacket)
			}
			checkGrowingGaps(t, cs)
			st := d.Stats()
			t.Logf("during the attack: %+v", st)
			if tc.want != nil {
				if err := d.LastConnectError(); !errors.Is(err, tc.want) {
					t.Errorf("LastConnectError = %v, want %v", err, tc.want)
				}
				if st.ProtocolErrors == 0 {
					t.Errorf("no protocol error counted: %+v", st)
				}
			}
			if st.Acked != 0 || st.QueueDepth != len(want) {
				t.Errorf("during the attack: %+v, want nothing acknowledged and %d queued", st, len(want))
			}
			s.SetBehaviour(roguebroker.Honest)
			t.Parallel() // wait for the honest broker beside the other subtests
			f.checkNoLoss(s, d, want)
		})
	}
}

// TestRogueBrokerForgetsSessions: the framing attack from a broker that
// reports no session at every connection (as one restarted without
// persistence does), then turns honest: nothing is lost.
//
// It logs how long delivery took: up to paho's PacketTimeout (10 s), since
// paho discards the PUBLISH packets in flight when a CONNACK reports no
// session (State.clean) without answering their Publish calls, which keep
// their messages in flight until that timeout (reported with issue 11).
func TestRogueBrokerForgetsSessions(t *testing.T) {
	f := newE2EFleet(t)
	s := f.rogueServer(roguebroker.HugeLength, func(c *roguebroker.Config) { c.ForgetSessions = true })
	d := f.rogueDevice("forgotten", s.Addr())
	want := publishN(t, d.Client, "m", 0, 20)
	waitConnects(t, s, 4, 10*time.Second)
	s.SetBehaviour(roguebroker.Honest)
	start := time.Now()
	f.checkNoLoss(s, d, want)
	t.Logf("delivered %v after the broker turned honest", time.Since(start).Round(time.Millisecond))
}

// TestRogueBrokerBadConnack: a CONNACK with repeated properties (Receive
// Maximum, Topic Alias Maximum), with a property that belongs only in a
// PUBLISH, with Receive Maximum 0; and a CONNACK that never comes. The
// device keeps every message until an honest broker acknowledges it.
func TestRogueBrokerBadConnack(t *testing.T) {
	fleet := newE2EFleet(t)
	for i, b := range []roguebroker.Behaviour{roguebroker.RepeatedProperties, roguebroker.ForbiddenProperty,
		roguebroker.ZeroReceiveMaximum, roguebroker.NoConnack} {
		t.Run(b.String(), func(t *testing.T) {
			f := fleet.forTest(t)
			s := f.rogueServer(b, nil)
			var d *rogueDevice
			var want []string
			total, _ := memDuring(func() {
				d = f.rogueDevice(fmt.Sprintf("connack-%d", i), s.Addr())
				want = publishN(t, d.Client, "m", 0, 20)
				waitConnects(t, s, 1, 10*time.Second)
				time.Sleep(500 * time.Millisecond)
			})
			st := d.Stats()
			t.Logf("%v: %d connections, %.1f MiB allocated, %+v, last error %v", b, len(s.Connects()), float64(total)/(1<<20), st, d.LastConnectError())
			if total > rogueMemoryBound {
				t.Errorf("%.1f MiB allocated during the attack", float64(total)/(1<<20))
			}
			if b != roguebroker.NoConnack {
				// Checked before paho reads it: a protocol error, counted.
				if !errors.Is(d.LastConnectError(), transport.ErrBrokerProtocol) || st.ProtocolErrors == 0 {
					t.Errorf("%v: last error %v, %d protocol errors; want ErrBrokerProtocol, counted", b, d.LastConnectError(), st.ProtocolErrors)
				}
				if st.Connects != 0 {
					t.Errorf("%v: %d connections taken as up", b, st.Connects)
				}
			}
			s.SetBehaviour(roguebroker.Honest)
			s.DropConnections()
			f.checkNoLoss(s, d, want)
		})
	}
}

// TestRogueBrokerPubacks: PUBACKs for packet identifiers the device never
// used, and every PUBACK twice. Nothing leaves the outbox that the broker
// did not acknowledge.
func TestRogueBrokerPubacks(t *testing.T) {
	fleet := newE2EFleet(t)
	for i, b := range []roguebroker.Behaviour{roguebroker.UnknownPuback, roguebroker.DuplicatePuback} {
		t.Run(b.String(), func(t *testing.T) {
			f := fleet.forTest(t)
			s := f.rogueServer(b, nil)
			d := f.rogueDevice(fmt.Sprintf("puback-%d", i), s.Addr())
			want := publishN(t, d.Client, "m", 0, 100)
			f.checkNoLoss(s, d, want)
			more := publishN(t, d.Client, "n", 0, 100)
			f.checkNoLoss(s, d, more)
			if st := d.Stats(); st.Acked != uint64(len(want)+len(more)) {
				t.Errorf("%d acknowledged, want %d: %+v", st.Acked, len(want)+len(more), st)
			}
		})
	}
}

// TestRogueBrokerInjects: what arrives outside the device's command
// subscription (a retained message, a topic it never subscribed to, a
// topic alias it never allowed) is ignored even when it is a validly
// signed command; unsigned and mis-signed commands on its real command
// topic are refused. Nothing runs.
func TestRogueBrokerInjects(t *testing.T) {
	fleet := newE2EFleet(t)
	attackerKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name     string
		b        roguebroker.Behaviour
		payloads func(f *e2eFleet, device string) [][]byte
		topic    func(device string) string
		ignored  int // messages the device must count as ignored
		refused  int // commands it must refuse
	}{
		{name: "retained-signed-commands", b: roguebroker.Retained, payloads: func(f *e2eFleet, d string) [][]byte { return f.signedCommands(d, 3) }, ignored: 3},
		{name: "signed-commands-on-its-telemetry-topic", b: roguebroker.Unsolicited, payloads: func(f *e2eFleet, d string) [][]byte { return f.signedCommands(d, 3) },
			topic: func(d string) string { return wire.TelemetryTopic(d, "temp") }, ignored: 6},
		{name: "signed-commands-on-another-command-topic", b: roguebroker.Unsolicited, payloads: func(f *e2eFleet, d string) [][]byte { return f.signedCommands(d, 3) },
			topic: func(string) string { return wire.CommandTopic("someone-else") }, ignored: 6},
		// The first copy names the command topic (and an alias): refused
		// as unsigned; the second has only the alias, no topic: ignored.
		{name: "topic-alias", b: roguebroker.TopicAlias, payloads: func(f *e2eFleet, d string) [][]byte { return [][]byte{f.forgedCommands(d, attackerKey)[0]} },
			ignored: 1, refused: 1},
		{name: "forged-commands", b: roguebroker.Commands, payloads: func(f *e2eFleet, d string) [][]byte { return f.forgedCommands(d, attackerKey) }, refused: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := fleet.forTest(t)
			id := fmt.Sprintf("inject-%d", i)
			s := f.rogueServer(tc.b, func(c *roguebroker.Config) {
				c.Payloads = tc.payloads(f, id)
				if tc.topic != nil {
					c.Topic = tc.topic(id)
				}
			})
			d := f.rogueDevice(id, s.Addr())
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := d.AwaitConnection(ctx); err != nil {
				t.Fatal(err)
			}
			if !waitFor(5*time.Second, func() bool {
				st := d.Stats()
				return st.Ignored >= uint64(tc.ignored) && st.CommandsRefused >= uint64(tc.refused)
			}) {
				t.Fatalf("ignored/refused not counted: %+v", d.Stats())
			}
			time.Sleep(100 * time.Millisecond) // anything still on its way
			st := d.Stats()
			if d.ran.Load() != 0 || st.CommandsRun != 0 {
				t.Errorf("the device ran %d injected commands: %+v", d.ran.Load(), st)
			}
			if st.Ignored != uint64(tc.ignored) || st.CommandsRefused != uint64(tc.refused) {
				t.Errorf("ignored %d, refused %d; want %d and %d", st.Ignored, st.CommandsRefused, tc.ignored, tc.refused)
			}
			if n := len(d.refusals()); n != tc.refused {
				t.Errorf("OnRefused told of %d refusals, want %d", n, tc.refused)
			}
			// The connection is still good for telemetry.
			f.checkNoLoss(s, d, publishN(t, d.Client, "m", 0, 5))
		})
	}
}

// TestRogueBrokerDisconnectStorm: a CONNACK and at once a closed
// connection, or a DISCONNECT "session taken over" (0x8E), at every
// connection. Each connection counts as a failed attempt, so the device
// backs off exponentially with jitter instead of reconnecting in a loop;
// it keeps its queue and delivers it once the broker is honest.
func TestRogueBrokerDisconnectStorm(t *testing.T) {
	fleet := newE2EFleet(t)
	for i, b := range []roguebroker.Behaviour{roguebroker.DisconnectStorm, roguebroker.SessionTakeover} {
		t.Run(b.String(), func(t *testing.T) {
			f := fleet.forTest(t)
			s := f.rogueServer(b, nil)
			var d *rogueDevice
			var want []string
			var cs []roguebroker.Connect
			total, _ := memDuring(func() {
				d = f.rogueDevice(fmt.Sprintf("storm-%d", i), s.Addr())
				want = publishN(t, d.Client, "m", 0, 20)
				cs = waitConnects(t, s, 8, 15*time.Second)
			})
			t.Logf("%v: %d connections in %v, %.1f MiB allocated", b, len(cs), cs[len(cs)-1].Time.Sub(cs[0].Time).Round(time.Millisecond), float64(total)/(1<<20))
			if total > rogueMemoryBound {
				t.Errorf("%.1f MiB allocated during the storm", float64(total)/(1<<20))
			}
			checkGrowingGaps(t, cs)
			if st := d.Stats(); st.Acked != 0 || st.QueueDepth != len(want) {
				t.Errorf("during the storm: %+v", st)
			}
			s.SetBehaviour(roguebroker.Honest)
			t.Parallel() // wait for the honest broker beside the other subtests
			f.checkNoLoss(s, d, want)
		})
	}
}

// TestRogueBrokerCloud: the cloud service (DialCloud) against the same
// framing attacks: it allocates nothing of the announced size, logs the
// violation as an error wrapping the sentinel, and reconnects. A retained
// copy of a genuine envelope is refused as a replay, never verified into
// a record.
func TestRogueBrokerCloud(t *testing.T) {
	fleet := newE2EFleet(t)
	for _, tc := range []struct {
		b    roguebroker.Behaviour
		want error
	}{
		{roguebroker.HugeLength, transport.ErrPacketTooLarge},
		{roguebroker.OversizedPublish, transport.ErrPacketTooLarge},
		{roguebroker.ReservedType, transport.ErrBrokerProtocol},
		{roguebroker.LongLength, transport.ErrBrokerProtocol},
		{roguebroker.Truncated, nil},
	} {
		t.Run(tc.b.String(), func(t *testing.T) {
			f := fleet.forTest(t)
			s := f.rogueServer(tc.b, nil)
			logs := &logRecorder{}
			col := newCollector()
			total, peak := memDuring(func() {
				c, err := transport.DialCloud(t.Context(), transport.CloudConfig{Broker: s.Addr(), Certificate: f.serviceCert("verifier"),
					Roots: f.roots, Verifier: f.verifier(), OnRecord: col.onRecord, OnRefused: col.onRefused, Logger: slog.New(logs)})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close(context.Background())
				waitConnects(t, s, 3, 15*time.Second)
			})
			t.Logf("%v: %d connections, %.1f MiB allocated, heap peak %.1f MiB", tc.b, len(s.Connects()), float64(total)/(1<<20), float64(peak)/(1<<20))
			if total > rogueMemoryBound {
				t.Errorf("%.1f MiB allocated during the attack", float64(total)/(1<<20))
			}
			if tc.want != nil && !slices.ContainsFunc(logs.errs(), func(err error) bool { return errors.Is(err, tc.want) }) {
				t.Errorf("no logged error wraps %v: %v", tc.want, logs.errs())
			}
			if col.count() != 0 {
				t.Errorf("%d records from a rogue broker that sent none", col.count())
			}
		})
	}
	t.Run("Retained", func(t *testing.T) {
		f := fleet.forTest(t)
		id, err := f.enroll("cloud-retained").Current()
		if err != nil {
			t.Fatal(err)
		}
		sealer, err := transport.NewSealer(id.DeviceID, id.Key, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		out, err := sealer.Seal(transport.Record{Stream: "temp", Boot: 1, Seq: 1, Time: time.Now(), Readings: []transport.Reading{{Time: time.Now(), Body: []byte("old")}}})
		if err != nil {
			t.Fatal(err)
		}
		s := f.rogueServer(roguebroker.Retained, func(c *roguebroker.Config) {
			c.Topic, c.Payloads = wire.TelemetryTopic(id.DeviceID, "temp"), [][]byte{out.Envelope}
		})
		col := newCollector()
		f.dialCloud(s.Addr(), col, f.verifier())
		if !waitFor(5*time.Second, func() bool { return len(col.refusals()) > 0 }) {
			t.Fatal("the retained envelope was not refused")
		}
		if errs := col.refusals(); !errors.Is(errs[0], wire.ErrReplay) {
			t.Errorf("refused with %v, want ErrReplay", errs[0])
		}
		if col.count() != 0 {
			t.Errorf("a retained envelope reached the application")
		}
	})
}

// TestRogueBrokerFlood: PUBLISH packets just under the packet bound, at
// QoS 0 (no flow control), as fast as the connection takes them: on the
// device's command topic, to a device whose every refusal is fsynced to
// its audit log and reported by the application (10 ms each); on a
// telemetry topic, to a cloud service whose application records every
// refusal (1 ms each). Each client must read
// no faster than it handles: what it holds stays within the bound
// however long the flood.
func TestRogueBrokerFlood(t *testing.T) {
	fleet := newE2EFleet(t)
	const n = 250
	flood := func(f *e2eFleet, topic string) *roguebroker.Server {
		return f.rogueServer(roguebroker.Flood, func(c *roguebroker.Config) {
			c.Payloads, c.FloodCount, c.Topic = [][]byte{bytes.Repeat([]byte("x"), limits.Envelope)}, n, topic
		})
	}
	// paho queues inbound PUBLISH packets in a channel as deep as the
	// Receive Maximum the client advertised, 65,535 when CONNECT names
	// none, and QoS 0 is not flow-controlled at all: without one, this
	// flood held 55 MiB live in the device and 53 MiB in the cloud (1,500
	// packets: 471 MiB), against 11 and 20 MiB with it.
	checkAdvertised := func(t *testing.T, c roguebroker.Connect) {
		if c.ReceiveMaximum == 0 || c.ReceiveMaximum > 64 {
			t.Fatalf("the client advertised Receive Maximum %d: nothing bounds its inbound queue", c.ReceiveMaximum)
		}
	}
	check := func(t *testing.T, peak uint64, refused int) {
		t.Logf("%d packets of %d KiB: live heap peak %.1f MiB, %d refused", n, limits.Envelope>>10, float64(peak)/(1<<20), refused)
		if peak > rogueMemoryBound {
			t.Errorf("the live heap reached %.1f MiB during the flood, bound %d MiB", float64(peak)/(1<<20), rogueMemoryBound>>20)
		}
		if refused != n {
			t.Errorf("%d of %d flooded messages refused", refused, n)
		}
	}
	t.Run("device", func(t *testing.T) {
		f := fleet.forTest(t)
		s := flood(f, "")
		alog, err := audit.Open(audit.Config{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer alog.Close()
		var ran atomic.Int64
		d := dialDevice(t, transport.ClientConfig{Broker: s.Addr(), Store: f.enroll("flooded"), Audit: alog,
			CommandKeys: []crypto.PublicKey{f.cmdKey.Public()},
			OnCommand:   func(context.Context, transport.Command) { ran.Add(1) },
			OnRefused:   func(transport.Refusal) { time.Sleep(10 * time.Millisecond) },
			RetryMin:    50 * time.Millisecond, RetryMax: time.Second, SecurityReportInterval: -1})
		checkAdvertised(t, waitConnects(t, s, 1, 10*time.Second)[0])
		peak := livePeak(func() {
			waitFor(20*time.Second, func() bool { return d.Stats().CommandsRefused >= n })
		})
		check(t, peak, int(d.Stats().CommandsRefused))
		if ran.Load() != 0 {
			t.Errorf("ran %d flooded commands", ran.Load())
		}
	})
	t.Run("cloud", func(t *testing.T) {
		f := fleet.forTest(t)
		s := flood(f, wire.TelemetryTopic("flooded", "temp"))
		var refused atomic.Int64
		c, err := transport.DialCloud(t.Context(), transport.CloudConfig{Broker: s.Addr(), Certificate: f.serviceCert("verifier"),
			Roots: f.roots, Verifier: f.verifier(), OnRefused: func(string, error) { refused.Add(1); time.Sleep(time.Millisecond) }})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		checkAdvertised(t, waitConnects(t, s, 1, 10*time.Second)[0])
		peak := livePeak(func() {
			waitFor(20*time.Second, func() bool { return refused.Load() >= n })
		})
		check(t, peak, int(refused.Load()))
	})
}

// TestRogueBrokerLateSuback: a broker too busy to answer the cloud
// service's first SUBSCRIBE in time (paho gives up after 10 s) is asked
// again on the same connection, so the service comes up instead of
// waiting for a SUBACK that will never come.
func TestRogueBrokerLateSuback(t *testing.T) {
	f := newE2EFleet(t)
	s := f.rogueServer(roguebroker.LateSuback, nil)
	c, err := transport.DialCloud(t.Context(), transport.CloudConfig{Broker: s.Addr(), Certificate: f.serviceCert("verifier"),
		Roots: f.roots, Verifier: f.verifier()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := c.AwaitConnection(ctx); err != nil {
		t.Fatalf("the service never subscribed: %v", err)
	}
	if n := len(s.Connects()); n != 1 {
		t.Errorf("%d connections, want the subscription asked again on the first", n)
	}
}
