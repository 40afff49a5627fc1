// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

// Fault tests: the device process killed mid-stream, the connection cut
// before PUBACKs, a backlog larger than the broker's Receive Maximum, a full
// outbox, messages the broker refuses, revoked and expired certificates.
// Every broker is real (mosquitto) or the embedded development broker, on
// 127.0.0.1; every wait is bounded.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/outbox"
	"github.com/d2c-iot/d2c/transport/wire"
)

// ---------------------------------------------------------------------------
// Helpers

// waitFor polls cond every 10 ms until it holds or within passes; it reports
// whether it held.
func waitFor(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// bodies counts the records received per reading body.
func (c *collector) bodies() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int, len(c.recs))
	for _, r := range c.recs {
		for _, rd := range r.Readings {
			m[string(rd.Body)]++
		}
	}
	return m
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.recs)
}

func (c *collector) refusals() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.refused)
}

// checkExactlyOnce fails unless every body in want reached the application
// exactly once, and each body in maybe at most once, and nothing else
// arrived. It returns the number of records received.
func checkExactlyOnce(t *testing.T, col *collector, want []string, maybe map[string]bool) int {
	t.Helper()
	got := col.bodies()
	lost, dup := 0, 0
	wanted := make(map[string]bool, len(want))
	for _, b := range want {
		wanted[b] = true
		switch n := got[b]; {
		case n == 0:
			lost++
			if lost <= 5 {
				t.Errorf("message %q, acknowledged as stored, never reached the application", b)
			}
		case n > 1:
			dup++
			if dup <= 5 {
				t.Errorf("message %q reached the application %d times", b, n)
			}
		}
	}
	for b, n := range got {
		switch {
		case wanted[b]:
		case !maybe[b]:
			t.Errorf("unexpected message %q reached the application (%d times)", b, n)
		case n > 1:
			t.Errorf("message %q reached the application %d times", b, n)
		}
	}
	if lost > 0 || dup > 0 {
		t.Errorf("%d of %d messages lost, %d reached the application more than once", lost, len(want), dup)
	}
	return col.count()
}

// dialCloud connects a verifying cloud service to addr and waits until it
// is connected (plus a moment for its subscription).
func (f *e2eFleet) dialCloud(addr string, col *collector, v *transport.Verifier) *transport.Cloud {
	f.t.Helper()
	c, err := transport.DialCloud(f.t.Context(), transport.CloudConfig{Broker: addr, Certificate: f.serviceCert("verifier"),
		Roots: f.roots, Verifier: v, OnRecord: col.onRecord, OnRefused: col.onRefused})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close(context.Background()) })
	ctx, cancel := context.WithTimeout(f.t.Context(), 10*time.Second)
	defer cancel()
	if err := c.AwaitConnection(ctx); err != nil {
		f.t.Fatalf("cloud connection to %s: %v", addr, err)
	}
	time.Sleep(200 * time.Millisecond) // let the subscription settle
	return c
}

// dialDevice starts a device client, closed at the end of the test.
func dialDevice(t *testing.T, cfg transport.ClientConfig) *transport.Client {
	t.Helper()
	dev, err := transport.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		dev.Close(ctx)
	})
	return dev
}

// publishN publishes the bodies <prefix>-<from> ... <prefix>-<to-1>, one
// message each, and returns them.
func publishN(t *testing.T, dev *transport.Client, prefix string, from, to int) []string {
	t.Helper()
	var bodies []string
	for i := from; i < to; i++ {
		b := fmt.Sprintf("%s-%d", prefix, i)
		if err := dev.Publish(t.Context(), "temp", transport.Reading{Time: time.Now(), Body: []byte(b)}); err != nil {
			t.Fatalf("Publish %s: %v", b, err)
		}
		bodies = append(bodies, b)
	}
	return bodies
}

// waitDrained waits until the device's outbox is empty.
func waitDrained(t *testing.T, dev *transport.Client, within time.Duration) {
	t.Helper()
	if !waitFor(within, func() bool { return dev.Stats().QueueDepth == 0 }) {
		t.Fatalf("outbox not drained within %v: %+v", within, dev.Stats())
	}
}

// logRecorder is a slog handler keeping every record, for assertions on
// what the SDK logs.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

// errs returns the "err" attribute of every record that has one.
func (h *logRecorder) errs() []error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []error
	for _, r := range h.recs {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" {
				if err, ok := a.Value.Any().(error); ok {
					out = append(out, err)
				} else {
					out = append(out, errors.New(a.Value.String()))
				}
			}
			return true
		})
	}
	return out
}

// ---------------------------------------------------------------------------
// A proxy between the device and the broker

// proxy forwards TCP connections from a 127.0.0.1 listener to the broker.
// It can hold the broker-to-device direction (so that PUBACKs do not
// arrive) and cut every connection. In MQTT mode it terminates the device's
// TLS with a fleet server certificate for 127.0.0.1 and opens its own TLS
// connection to the broker with the device's certificate, so that it sees
// the MQTT packets: it records the Receive Maximum of each CONNACK, the
// most QoS 1 PUBLISH packets in flight on a connection (sent, not yet
// PUBACKed) and the PUBACK reason codes.
type proxy struct {
	t        *testing.T
	ln       net.Listener
	upstream string
	down     *tls.Config // MQTT mode: the TLS server config facing the device
	up       *tls.Config // MQTT mode: the TLS client config facing the broker

	accepted atomic.Int64 // connections accepted from the device
	bridged  atomic.Int64 // of which the broker accepted the TCP connection

	mu          sync.Mutex
	conns       map[net.Conn]struct{}
	hold        chan struct{} // non-nil: broker-to-device bytes wait until it is closed
	receiveMax  []int         // per CONNACK; -1 when absent
	maxInflight int
	publishes   int            // QoS 1 PUBLISH packets from the device, DUP included
	dups        int            // of which with the DUP flag
	topics      map[string]int // QoS 1 PUBLISH packets by topic
	pubacks     map[byte]int   // PUBACK reason codes from the broker
	wg          sync.WaitGroup // accept loop and pipes
	closed      bool
}

// newProxy starts a plain TCP proxy to upstream.
func newProxy(t *testing.T, upstream string) *proxy {
	t.Helper()
	return startProxy(t, &proxy{upstream: upstream})
}

// newMQTTProxy starts a proxy to upstream that sees the MQTT packets of the
// device whose identity is id.
func (f *e2eFleet) newMQTTProxy(upstream string, id *identity.Identity) *proxy {
	f.t.Helper()
	return startProxy(f.t, &proxy{upstream: upstream,
		down: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{serverCert(f.t, f.ca)},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: f.roots},
		up: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{id.TLSCertificate()},
			RootCAs: f.roots, ServerName: "127.0.0.1"},
	})
}

func startProxy(t *testing.T, p *proxy) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.t, p.ln, p.conns, p.pubacks, p.topics = t, ln, map[net.Conn]struct{}{}, map[byte]int{}, map[string]int{}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		u, err := net.DialTimeout("tcp", p.upstream, 2*time.Second)
		if err != nil {
			c.Close() // broker unreachable: so is the proxy
			continue
		}
		p.bridged.Add(1)
		if p.down != nil {
			c, u = tls.Server(c, p.down), tls.Client(u, p.up)
		}
		if !p.track(c, u) {
			c.Close()
			u.Close()
			return
		}
		st := &connState{inflight: map[uint16]bool{}}
		p.wg.Add(2)
		go p.pipe(u, c, st, false)
		go p.pipe(c, u, st, true)
	}
}

// connState is the MQTT view of one bridged connection.
type connState struct {
	inflight map[uint16]bool // under proxy.mu
}

func (p *proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

// pipe copies src to dst until either fails, then closes both. toDevice is
// the broker-to-device direction, the one Hold stops.
func (p *proxy) pipe(dst, src net.Conn, st *connState, toDevice bool) {
	defer p.wg.Done()
	defer func() {
		src.Close()
		dst.Close()
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		p.mu.Unlock()
	}()
	if p.down == nil {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if toDevice {
					p.waitHold()
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	r := bufio.NewReader(src)
	for {
		pkt, hdr, err := readMQTTPacket(r)
		if err != nil {
			return
		}
		if toDevice {
			p.waitHold()
		}
		p.observe(pkt, hdr, st, toDevice)
		if _, err := dst.Write(pkt); err != nil {
			return
		}
	}
}

// readMQTTPacket reads one whole MQTT control packet: the fixed header
// (first byte, variable byte integer length; hdr bytes) and the body.
func readMQTTPacket(r *bufio.Reader) (pkt []byte, hdr int, err error) {
	first, err := r.ReadByte()
	if err != nil {
		return nil, 0, err
	}
	pkt = []byte{first}
	n, shift := 0, 0
	for {
		if len(pkt) == 5 {
			return nil, 0, errors.New("malformed remaining length")
		}
		b, err := r.ReadByte()
		if err != nil {
			return nil, 0, err
		}
		pkt = append(pkt, b)
		n |= int(b&0x7f) << shift
		shift += 7
		if b&0x80 == 0 {
			break
		}
	}
	hdr = len(pkt)
	pkt = append(pkt, make([]byte, n)...)
	if _, err := io.ReadFull(r, pkt[hdr:]); err != nil {
		return nil, 0, err
	}
	return pkt, hdr, nil
}

// observe counts what an MQTT packet means.
func (p *proxy) observe(pkt []byte, hdr int, st *connState, toDevice bool) {
	body := pkt[hdr:]
	typ := pkt[0] >> 4
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case !toDevice && typ == packets.PUBLISH && (pkt[0]>>1)&3 > 0 && len(body) >= 2:
		tl := int(body[0])<<8 | int(body[1])
		if len(body) < 2+tl+2 {
			return
		}
		id := uint16(body[2+tl])<<8 | uint16(body[3+tl])
		p.publishes++
		p.topics[string(body[2:2+tl])]++
		if pkt[0]&0x08 != 0 {
			p.dups++
		}
		st.inflight[id] = true
		p.maxInflight = max(p.maxInflight, len(st.inflight))
	case toDevice && typ == packets.PUBACK && len(body) >= 2:
		id := uint16(body[0])<<8 | uint16(body[1])
		reason := byte(0)
		if len(body) > 2 {
			reason = body[2]
		}
		delete(st.inflight, id)
		p.pubacks[reason]++
	case toDevice && typ == packets.CONNACK:
		cp, err := packets.ReadPacket(bytes.NewReader(pkt))
		if err != nil {
			p.t.Errorf("proxy: CONNACK does not parse: %v", err)
			return
		}
		rm := -1
		if ca, ok := cp.Content.(*packets.Connack); ok && ca.Properties != nil && ca.Properties.ReceiveMaximum != nil {
			rm = int(*ca.Properties.ReceiveMaximum)
		}
		p.receiveMax = append(p.receiveMax, rm)
	}
}

// proxyStats is a snapshot of what an MQTT proxy saw.
type proxyStats struct {
	ReceiveMax  []int
	MaxInflight int
	Publishes   int
	Dups        int
	Pubacks     map[byte]int
	Topics      map[string]int
}

func (p *proxy) stats() proxyStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return proxyStats{ReceiveMax: slices.Clone(p.receiveMax), MaxInflight: p.maxInflight, Publishes: p.publishes, Dups: p.dups,
		Pubacks: maps.Clone(p.pubacks), Topics: maps.Clone(p.topics)}
}

func (p *proxy) waitHold() {
	p.mu.Lock()
	h := p.hold
	p.mu.Unlock()
	if h != nil {
		<-h
	}
}

// Hold stops the broker-to-device bytes of every connection (the PUBACKs
// among them) until Cut.
func (p *proxy) Hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hold == nil {
		p.hold = make(chan struct{})
	}
}

// Cut closes every open connection, as a network failure would, and ends
// a Hold: later connections flow.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	if p.hold != nil {
		close(p.hold)
		p.hold = nil
	}
}

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

// ---------------------------------------------------------------------------
// 1. The device process is killed mid-stream.

// Environment of TestHelperDeviceProcess.
const (
	envChildStore  = "D2C_FAULT_CHILD_STORE"
	envChildBroker = "D2C_FAULT_CHILD_BROKER"
	envChildFrom   = "D2C_FAULT_CHILD_FROM"
	envChildTo     = "D2C_FAULT_CHILD_TO"
	envChildTag    = "D2C_FAULT_CHILD_TAG"
)

// TestHelperDeviceProcess is the device of TestFaultDeviceKilled, run in a
// child process (the test binary again). Without its environment variables
// it returns at once: it is not a test of its own. It publishes the
// messages <tag>-<from> ... <tag>-<to-1>, prints "stored <i>" once Publish
// returned for message i (the message is durably stored), then waits until
// its outbox is empty and prints "drained".
func TestHelperDeviceProcess(t *testing.T) {
	dir := os.Getenv(envChildStore)
	if dir == "" {
		return // not a child
	}
	from, err1 := strconv.Atoi(os.Getenv(envChildFrom))
	to, err2 := strconv.Atoi(os.Getenv(envChildTo))
	tag := os.Getenv(envChildTag)
	if err := errors.Join(err1, err2); err != nil || tag == "" {
		t.Fatalf("child: bad environment: %v", err)
	}
	store, err := identity.OpenStore(dir, identity.StoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := transport.Dial(t.Context(), transport.ClientConfig{Broker: os.Getenv(envChildBroker), ServerName: "127.0.0.1",
		Store: store, RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < to; i++ {
		body := fmt.Sprintf("%s-%d", tag, i)
		if err := dev.Publish(t.Context(), "temp", transport.Reading{Time: time.Now(), Body: []byte(body)}); err != nil {
			t.Fatalf("child: Publish %s: %v", body, err)
		}
		fmt.Printf("stored %d\n", i)
	}
	if !waitFor(30*time.Second, func() bool { return dev.Stats().QueueDepth == 0 }) {
		t.Fatalf("child: outbox not drained: %+v", dev.Stats())
	}
	fmt.Printf("drained\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := dev.Close(ctx); err != nil {
		t.Logf("child: close: %v", err)
	}
}

// deviceProcess is a running TestHelperDeviceProcess.
type deviceProcess struct {
	cmd    *exec.Cmd
	stored chan int // each "stored <i>", closed at the end of its output
	done   chan struct{}
	mu     sync.Mutex
	lines  []string // every other line, for failure messages
}

func startDeviceProcess(t *testing.T, store, broker, tag string, from, to int) *deviceProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperDeviceProcess$", "-test.count=1", "-test.timeout=60s")
	cmd.Env = append(os.Environ(), envChildStore+"="+store, envChildBroker+"="+broker,
		envChildFrom+"="+strconv.Itoa(from), envChildTo+"="+strconv.Itoa(to), envChildTag+"="+tag)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &deviceProcess{cmd: cmd, stored: make(chan int, to-from+1), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer close(p.stored)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if s, ok := strings.CutPrefix(line, "stored "); ok {
				if i, err := strconv.Atoi(s); err == nil {
					p.stored <- i
					continue
				}
			}
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
		}
	}()
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-p.done
			_ = cmd.Wait()
		})
	})
	return p
}

func (p *deviceProcess) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// TestFaultDeviceKilled runs the device in a child process publishing
// through mosquitto; while PUBACKs are held back (so that the outbox holds
// a backlog, part of it already at the broker), the parent kills it with
// SIGKILL, then starts a new process on the same state that publishes the
// rest. Every message the first process was told was stored reaches the
// application, none twice.
func TestFaultDeviceKilled(t *testing.T) {
	f := newE2EFleet(t)
	broker := f.startMosquitto()
	store := f.enroll("proc-1")
	col := newCollector()
	v := f.verifier()
	f.dialCloud(broker.Addr, col, v)
	px := newProxy(t, broker.Addr)

	const n, holdAt, killAt = 400, 50, 150
	first := startDeviceProcess(t, store.Dir(), px.Addr(), "a", 0, n)
	var acked []string
	last := -1
	timeout := time.After(30 * time.Second)
	for last < killAt {
		select {
		case i, ok := <-first.stored:
			if !ok {
				t.Fatalf("first device process ended before message %d:\n%s", killAt, first.output())
			}
			acked = append(acked, fmt.Sprintf("a-%d", i))
			last = i
			if i == holdAt {
				px.Hold() // from here on the device hears no PUBACK
			}
		case <-timeout:
			t.Fatalf("first device process stored %d messages in 30 s:\n%s", len(acked), first.output())
		}
	}
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := range first.stored { // what it printed before it died
		acked = append(acked, fmt.Sprintf("a-%d", i))
		last = i
	}
	err := first.cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("first device process: %v, want killed by SIGKILL\n%s", err, first.output())
	}
	if last >= n-1 {
		t.Fatalf("first device process stored all %d messages before the kill: nothing left mid-stream", n)
	}
	px.Cut()
	receivedAtKill := col.count()

	// What the dead process left in its outbox (its lock died with it).
	ob, err := outbox.Open(outbox.Config{Dir: filepath.Join(store.Dir(), "transport", "outbox")})
	if err != nil {
		t.Fatalf("open the killed device's outbox: %v", err)
	}
	left := ob.Stats()
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("first process: %d messages acknowledged as stored (0..%d) before SIGKILL; the cloud had received %d; its outbox held %d (quarantined %d)",
		len(acked), last, receivedAtKill, left.Len, left.Quarantined)
	if left.Len == 0 {
		t.Errorf("the outbox was empty at the kill: the test did not kill the device with a backlog")
	}

	// The first process may have stored the next message without printing
	// it (killed between the two): it may arrive too, once.
	maybe := map[string]bool{fmt.Sprintf("a-%d", last+1): true}
	second := startDeviceProcess(t, store.Dir(), broker.Addr, "b", last+1, n)
	want := slices.Clone(acked)
	for i := last + 1; i < n; i++ {
		want = append(want, fmt.Sprintf("b-%d", i))
	}
	select {
	case <-second.done:
	case <-time.After(45 * time.Second):
		t.Fatalf("second device process did not finish in 45 s:\n%s", second.output())
	}
	if err := second.cmd.Wait(); err != nil || !strings.Contains(second.output(), "drained") {
		t.Fatalf("second device process: %v\n%s", err, second.output())
	}
	if !waitFor(15*time.Second, func() bool { return col.count() >= len(want) }) {
		t.Logf("received %d of %d records in 15 s", col.count(), len(want))
	}
	time.Sleep(300 * time.Millisecond) // let any redelivery arrive
	got := checkExactlyOnce(t, col, want, maybe)
	vs := v.Stats()
	if vs.Replays != 0 || vs.Refused != 0 || len(col.refusals()) != 0 {
		t.Errorf("the verifier refused messages: %+v %v", vs, col.refusals())
	}
	t.Logf("received %d records for %d expected; verifier %+v (the duplicates are the messages the broker had when the device died)", got, len(want), vs)
}

// ---------------------------------------------------------------------------
// 2. The connection drops while messages wait for their PUBACK.

// TestFaultConnectionDropBeforePuback holds the broker's PUBACKs at a TCP
// proxy while the broker has already forwarded the messages to the cloud,
// then cuts the connection: the device sends them again after it
// reconnects, the verifier drops the second copies as duplicates, and the
// application sees each message once.
func TestFaultConnectionDropBeforePuback(t *testing.T) {
	f := newE2EFleet(t)
	broker := f.startMosquitto()
	store := f.enroll("drop-1")
	col := newCollector()
	v := f.verifier()
	f.dialCloud(broker.Addr, col, v)
	px := newProxy(t, broker.Addr)
	dev := dialDevice(t, transport.ClientConfig{Broker: px.Addr(), ServerName: "127.0.0.1", Store: store,
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := dev.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}

	want := publishN(t, dev, "m", 0, 40)
	col.wait(t, 40, 10*time.Second)
	waitDrained(t, dev, 5*time.Second)

	// PUBACKs held: the broker takes the next messages and forwards them,
	// the device never hears it.
	px.Hold()
	const held = 10 // below mosquitto's Receive Maximum (20): all go out
	want = append(want, publishN(t, dev, "m", 40, 40+held)...)
	col.wait(t, 40+held, 10*time.Second)
	if st := dev.Stats(); st.Acked != 40 || st.QueueDepth != held {
		t.Fatalf("with PUBACKs held: %+v, want 40 acked and %d queued", st, held)
	}
	px.Cut()

	// The device reconnects and resends; then more messages flow.
	if !waitFor(10*time.Second, func() bool { return dev.Stats().Connects >= 2 }) {
		t.Fatalf("device did not reconnect: %+v", dev.Stats())
	}
	want = append(want, publishN(t, dev, "m", 40+held, 100)...)
	waitDrained(t, dev, 10*time.Second)
	col.wait(t, 100, 10*time.Second)
	time.Sleep(300 * time.Millisecond) // let any redelivery arrive
	checkExactlyOnce(t, col, want, nil)
	vs := v.Stats()
	if vs.Duplicates < 1 {
		t.Errorf("verifier counted %d duplicates: the %d messages whose PUBACK was lost should have come again", vs.Duplicates, held)
	}
	if vs.Accepted != 100 || vs.Replays != 0 || vs.Refused != 0 || len(col.refusals()) != 0 {
		t.Errorf("verifier %+v, refusals %v: want 100 accepted, no replay, no refusal", vs, col.refusals())
	}
	t.Logf("device %+v; verifier %+v; proxy connections %d", dev.Stats(), vs, px.accepted.Load())
}

// ---------------------------------------------------------------------------
// 3. A backlog larger than the broker's Receive Maximum.

// TestFaultBacklogOverReceiveMaximum stores 20 times mosquitto's Receive
// Maximum (set to 5 with max_inflight_messages, which mosquitto announces
// as Receive Maximum in its CONNACK) while the broker is down, then starts
// it: all arrive, and an MQTT-aware proxy never sees more than 5 PUBLISH
// packets in flight.
func TestFaultBacklogOverReceiveMaximum(t *testing.T) {
	const receiveMax = 5
	f := newE2EFleet(t)
	broker := f.startMosquittoWith(mosquittoOptions{Global: []string{"max_inflight_messages " + strconv.Itoa(receiveMax)}})
	store := f.enroll("backlog-1")
	id, err := store.Current()
	if err != nil {
		t.Fatal(err)
	}
	px := f.newMQTTProxy(broker.Addr, id)
	broker.Kill()

	dev := dialDevice(t, transport.ClientConfig{Broker: px.Addr(), ServerName: "127.0.0.1", Store: store,
		RetryMin: 50 * time.Millisecond, RetryMax: 300 * time.Millisecond})
	const n = 20 * receiveMax
	want := publishN(t, dev, "b", 0, n)
	if !waitFor(5*time.Second, func() bool { return dev.Stats().ConnectFailures >= 2 }) {
		t.Fatalf("device with the broker down: %+v", dev.Stats())
	}
	if st := dev.Stats(); st.QueueDepth != n || st.Acked != 0 || st.Connects != 0 {
		t.Fatalf("backlog with the broker down: %+v, want %d queued, nothing sent", st, n)
	}

	broker.Restart(t)
	col := newCollector()
	v := f.verifier()
	f.dialCloud(broker.Addr, col, v)
	waitDrained(t, dev, 20*time.Second)
	col.wait(t, n, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	checkExactlyOnce(t, col, want, nil)

	ps := px.stats()
	if len(ps.ReceiveMax) == 0 {
		t.Fatalf("the proxy saw no CONNACK")
	}
	for _, rm := range ps.ReceiveMax {
		if rm != receiveMax {
			t.Fatalf("broker announced Receive Maximum %v, want %d (max_inflight_messages)", ps.ReceiveMax, receiveMax)
		}
	}
	if ps.MaxInflight > receiveMax {
		t.Errorf("device had %d PUBLISH packets in flight, above the broker's Receive Maximum %d", ps.MaxInflight, receiveMax)
	}
	if ps.MaxInflight < 2 {
		t.Errorf("device had at most %d PUBLISH in flight: the window of %d is not used", ps.MaxInflight, receiveMax)
	}
	if ps.Pubacks[0]+ps.Pubacks[0x10] < n {
		t.Errorf("PUBACKs %v for %d messages", ps.Pubacks, n)
	}
	t.Logf("Receive Maximum %v; at most %d in flight; %d PUBLISH (%d DUP); PUBACK reasons %v; device %+v",
		ps.ReceiveMax, ps.MaxInflight, ps.Publishes, ps.Dups, ps.Pubacks, dev.Stats())
}

// ---------------------------------------------------------------------------
// 4. The outbox is full.

// TestFaultOutboxFull fills a small outbox while the broker is down:
// Publish fails with ErrOutboxFull and stores nothing more, and once the
// broker is up everything stored arrives and there is room again.
func TestFaultOutboxFull(t *testing.T) {
	const maxMsgs = 8
	f := newE2EFleet(t)
	broker := f.startMosquitto()
	store := f.enroll("full-1")
	broker.Kill()
	dev := dialDevice(t, transport.ClientConfig{Broker: broker.Addr, Store: store, Outbox: outbox.Config{MaxMessages: maxMsgs},
		RetryMin: 50 * time.Millisecond, RetryMax: 300 * time.Millisecond})
	want := publishN(t, dev, "f", 0, maxMsgs)
	for i := range 3 {
		err := dev.Publish(t.Context(), "temp", transport.Reading{Time: time.Now(), Body: fmt.Appendf(nil, "over-%d", i)})
		if !errors.Is(err, outbox.ErrFull) {
			t.Fatalf("Publish into a full outbox: %v, want ErrOutboxFull", err)
		}
	}
	if st := dev.Stats(); st.QueueDepth != maxMsgs || st.Stored != maxMsgs {
		t.Fatalf("full outbox: %+v, want %d stored and queued", st, maxMsgs)
	}

	broker.Restart(t)
	col := newCollector()
	v := f.verifier()
	f.dialCloud(broker.Addr, col, v)
	waitDrained(t, dev, 15*time.Second)
	want = append(want, publishN(t, dev, "f", maxMsgs, 2*maxMsgs)...) // room again
	waitDrained(t, dev, 10*time.Second)
	col.wait(t, 2*maxMsgs, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	checkExactlyOnce(t, col, want, nil) // and no "over-" message
	t.Logf("device %+v; verifier %+v", dev.Stats(), v.Stats())
}

// ---------------------------------------------------------------------------
// 5. The broker refuses a message for good.

// TestFaultBrokerRefusalSurfaced puts a message on another device's topic
// into the device's outbox: the broker answers PUBACK 0x87, OnRefused hears
// of it, the message is dropped rather than retried, and the device's own
// messages flow. Against mosquitto and the development broker.
func TestFaultBrokerRefusalSurfaced(t *testing.T) {
	for _, name := range []string{"mosquitto", "devbroker"} {
		t.Run(name, func(t *testing.T) {
			f := newE2EFleet(t)
			addr := f.broker.Addr()
			if name == "mosquitto" {
				addr = f.startMosquitto().Addr
			}
			store := f.enroll("refuse-1")
			id, err := store.Current()
			if err != nil {
				t.Fatal(err)
			}
			col := newCollector()
			v := f.verifier()
			f.dialCloud(addr, col, v)

			// Before Dial: a message on another device's topic in the outbox.
			stateDir := filepath.Join(store.Dir(), "transport")
			if err := os.MkdirAll(stateDir, 0o700); err != nil {
				t.Fatal(err)
			}
			ob, err := outbox.Open(outbox.Config{Dir: filepath.Join(stateDir, "outbox")})
			if err != nil {
				t.Fatal(err)
			}
			foreign := wire.TelemetryTopic("someone-else", "temp")
			ids, err := ob.Append(t.Context(), outbox.Message{Topic: foreign, Payload: []byte("not mine"), Stream: "temp"})
			if err != nil {
				t.Fatal(err)
			}
			if err := ob.Close(); err != nil {
				t.Fatal(err)
			}

			var mu sync.Mutex
			var refusals []transport.Refusal
			px := f.newMQTTProxy(addr, id) // to see the PUBACK reason on the wire
			dev := dialDevice(t, transport.ClientConfig{Broker: px.Addr(), ServerName: "127.0.0.1", Store: store,
				RetryMin: 50 * time.Millisecond, RetryMax: 300 * time.Millisecond,
				OnRefused: func(r transport.Refusal) {
					mu.Lock()
					refusals = append(refusals, r)
					mu.Unlock()
				}})
			want := publishN(t, dev, "own", 0, 20)
			waitDrained(t, dev, 10*time.Second)
			col.wait(t, 20, 10*time.Second)

			// Nothing more goes out for the refused message over 2 s.
			before := dev.Stats()
			time.Sleep(2 * time.Second)
			after := dev.Stats()
			if after.Sent != before.Sent || after.Refused != 1 || after.QueueDepth != 0 || after.Acked != 20 {
				t.Errorf("refused message retried or kept: before %+v, 2 s later %+v", before, after)
			}
			ps := px.stats()
			if ps.Topics[foreign] != 1 || ps.Pubacks[0x87] != 1 {
				t.Errorf("the proxy saw %d PUBLISH on %s and PUBACK reasons %v: want the refused message sent once, refused once with 0x87",
					ps.Topics[foreign], foreign, ps.Pubacks)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(refusals) != 1 {
				t.Fatalf("OnRefused called %d times: %+v", len(refusals), refusals)
			}
			r := refusals[0]
			if !errors.Is(r.Err, transport.ErrRefusedByBroker) || r.Topic != foreign || r.MessageID != ids[0] || !strings.Contains(r.Reason, "0x87") {
				t.Errorf("refusal %+v, want ErrRefusedByBroker for message %d on %s with reason 0x87", r, ids[0], foreign)
			}
			checkExactlyOnce(t, col, want, nil)
			t.Logf("refusal %q; device %+v; PUBACK reasons %v", r.Reason, after, ps.Pubacks)
		})
	}
}

// ---------------------------------------------------------------------------
// 6. Revoked and expired certificates.

// Backoff bounds. A client with backoff RetryMin << (n-1), capped at
// RetryMax, with full jitter makes attempt 0 at once, then waits uniformly
// in (0, RetryMin], (0, 2 RetryMin], (0, 4 RetryMin]... With RetryMin 100 ms
// and RetryMax 5 s, a Monte Carlo of 2e7 runs puts the probability of 12
// or more attempts within 2 s at 1e-7 (13 or more: below 1e-8); a hot loop
// makes hundreds. The waits up to (0, 800 ms] sum to at most 1.5 s, so at
// least 5 attempts start within 2 s; 3 are required, leaving room for slow
// handshakes.
const (
	backoffMin, backoffMax = 100 * time.Millisecond, 5 * time.Second
	backoffWindow          = 2 * time.Second
	maxAttempts            = 12
	minAttempts            = 3
)

func checkBackoff(t *testing.T, st transport.ClientStats) {
	t.Helper()
	if st.ConnectFailures < minAttempts || st.ConnectFailures > maxAttempts {
		t.Errorf("%d failed connection attempts in %v with RetryMin %v, RetryMax %v: want %d to %d (exponential backoff, full jitter)",
			st.ConnectFailures, backoffWindow, backoffMin, backoffMax, minAttempts, maxAttempts)
	}
}

// TestFaultRevokedAndExpiredCertificate: a revoked device cannot connect
// (the broker refuses its certificate), says why, and backs off; an expired
// device does not even try (ErrCertificateRejected wrapping
// identity.ErrCertExpired) and backs off too.
func TestFaultRevokedAndExpiredCertificate(t *testing.T) {
	for _, name := range []string{"mosquitto", "devbroker"} {
		t.Run("revoked/"+name, func(t *testing.T) {
			f := newE2EFleet(t)
			store := f.enroll("revoked-1")
			id, err := store.Current()
			if err != nil {
				t.Fatal(err)
			}
			if err := f.ca.Revoke(id.Certificate(), 1); err != nil { // keyCompromise
				t.Fatal(err)
			}
			addr := f.broker.Addr() // checks the CA's revocations at every handshake
			if name == "mosquitto" {
				addr = f.startMosquitto().Addr // started with the new CRL
			}
			col := newCollector()
			f.dialCloud(addr, col, f.verifier())
			logs := &logRecorder{}
			dev := dialDevice(t, transport.ClientConfig{Broker: addr, Store: store, RetryMin: backoffMin, RetryMax: backoffMax,
				Logger: slog.New(logs)})
			publishN(t, dev, "r", 0, 3)
			time.Sleep(backoffWindow)
			st := dev.Stats()
			checkBackoff(t, st)
			if st.Connects != 0 || st.Acked != 0 || st.QueueDepth != 3 || col.count() != 0 {
				t.Errorf("revoked device: %+v, cloud received %d: want no connection, nothing delivered, 3 queued", st, col.count())
			}
			errs := logs.errs()
			if len(errs) == 0 {
				t.Fatalf("no error logged")
			}
			for i, err := range errs {
				if !errors.Is(err, transport.ErrCertificateRejected) || !strings.Contains(err.Error(), "certificate") {
					t.Errorf("connect error %d of %d: %q, want ErrCertificateRejected naming the certificate", i+1, len(errs), err)
				}
			}
			t.Logf("%d attempts in %v; first error: %v", st.ConnectFailures, backoffWindow, errs[0])
		})
	}

	t.Run("expired", func(t *testing.T) {
		f := newE2EFleet(t)
		enrolled := f.enroll("expired-1")
		id, err := enrolled.Current()
		if err != nil {
			t.Fatal(err)
		}
		// The same store, opened by a device whose clock reads 10 years on.
		later := func() time.Time { return time.Now().AddDate(10, 0, 0) }
		if !later().After(id.Certificate().NotAfter) {
			t.Fatalf("certificate valid until %v: 10 years on is not past it", id.Certificate().NotAfter)
		}
		store, err := identity.OpenStore(enrolled.Dir(), identity.StoreConfig{Time: later})
		if err != nil {
			t.Fatal(err)
		}
		px := newProxy(t, f.broker.Addr()) // counts the connections that reach the network
		logs := &logRecorder{}
		dev := dialDevice(t, transport.ClientConfig{Broker: px.Addr(), ServerName: "127.0.0.1", Store: store,
			RetryMin: backoffMin, RetryMax: backoffMax, Logger: slog.New(logs)})
		publishN(t, dev, "e", 0, 3)
		time.Sleep(backoffWindow)
		st := dev.Stats()
		checkBackoff(t, st)
		if st.Connects != 0 || st.QueueDepth != 3 {
			t.Errorf("expired device: %+v, want no connection and 3 queued", st)
		}
		if n := px.accepted.Load(); n != 0 {
			t.Errorf("expired device opened %d TCP connections, want none (refused locally)", n)
		}
		errs := logs.errs()
		if len(errs) == 0 {
			t.Fatalf("no error logged")
		}
		for _, err := range errs {
			if !errors.Is(err, transport.ErrCertificateRejected) || !errors.Is(err, identity.ErrCertExpired) {
				t.Errorf("connect error %v, want ErrCertificateRejected wrapping identity.ErrCertExpired", err)
				break
			}
		}
		t.Logf("%d attempts in %v; first error: %v", st.ConnectFailures, backoffWindow, errs[0])
	})
}
