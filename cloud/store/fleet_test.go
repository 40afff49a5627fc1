// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testbroker"
	"github.com/d2c-iot/d2c/internal/testpeer"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/wire"
)

// The fleet suite (issue 12, "tests against real peers"): verifiers and
// registrars side by side on one store, a real mosquitto with the
// configuration the SDK generates, devices with session-key encryption
// (the default), a verifier killed mid-stream and restarted, another
// started late, and attacks injected through the broker.
const (
	fleetDevices  = 6
	fleetReadings = 48 // per device, one envelope each
	fleetRoundGap = 25 * time.Millisecond
	// fleetWait bounds every wait for the fleet to reach a state.
	fleetWait = 30 * time.Second

	rotatingDevice  = "fleet-0" // a new session key every 4 envelopes
	rebootingDevice = "fleet-5" // reboots twice mid-stream
	stream          = "temp"
)

// The rounds (one reading per device each) at which things happen.
const (
	roundCrash     = 10 // verifier-1 killed
	roundLate      = 16 // verifier-3 started, every device's key delivered
	roundRestart   = 22 // verifier-1 started again
	roundReboot1   = 26 // rebootingDevice to boot 2
	roundReboot2   = 31 // rebootingDevice to boot 3
	roundAttacks   = 36
	attackReplays  = 20 // captured envelopes replayed at roundAttacks
	rotateEvery    = 4
	firstKeptLimit = 8 // the store keeps 8 key deliveries per device (keptKeyDeliveries)
)

// fleetServices: each verifier process has its own certificate (the
// broker takes the certificate's CN as client ID: one session each);
// mallory stands for a hostile broker, reading and injecting on every
// device's topics.
var fleetServices = []broker.ServiceRights{
	{Name: "verifier-1", Read: []string{wire.AllUp}},
	{Name: "verifier-2", Read: []string{wire.AllUp}},
	{Name: "verifier-3", Read: []string{wire.AllUp}},
	{Name: "mallory", Read: []string{wire.AllUp}, Write: []string{wire.AllUp}},
}

// TestFleetPostgresProcesses: three verifier processes and two
// registrar processes on one PostgreSQL database.
func TestFleetPostgresProcesses(t *testing.T) {
	runFleet(t, newPostgresDB(t), true)
}

// TestFleetSQLiteOneProcess: the same suite with the verifiers and
// registrars in this process, each on its own handle of one SQLite file.
func TestFleetSQLiteOneProcess(t *testing.T) {
	runFleet(t, "sqlite:"+filepath.Join(t.TempDir(), "fleet.db"), false)
}

// fleet is the cloud half (CA, broker, store, replicas), the devices and
// the attacker of one run.
type fleet struct {
	t        *testing.T
	dir      string
	url      string
	procs    bool // verifiers and registrars in processes of their own
	ca       *identity.CA
	tokenKey crypto.Signer
	cloudKey *ecdsa.PrivateKey
	roots    *x509.CertPool
	broker   *testpeer.Broker
	db       *Store // the test's own handle, for the assertions
	replicas []*replica
	// attacks counts, by kind, the refusals the attacks injected so far
	// must cause; any other refusal is a genuine message lost.
	attacks map[string]int
}

func newFleet(t *testing.T, url string, procs bool) *fleet {
	t.Helper()
	f := &fleet{t: t, dir: t.TempDir(), url: url, procs: procs, attacks: map[string]int{}}
	var err error
	if f.ca, err = identity.InitCA(filepath.Join(f.dir, "ca"), identity.CAConfig{Fleet: "fleet test"}); err != nil {
		t.Fatal(err)
	}
	if f.tokenKey, err = identity.ReadKeyFile(filepath.Join(f.dir, "ca", identity.CATokenKeyFile)); err != nil {
		t.Fatal(err)
	}
	if f.cloudKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteKeyFile(filepath.Join(f.dir, "cloud.key"), f.cloudKey); err != nil {
		t.Fatal(err)
	}
	f.roots = x509.NewCertPool()
	f.roots.AddCert(f.ca.Root())
	f.db = openStore(t, url) // migrates before any replica starts
	f.broker = startMosquitto(t, f.ca, fleetServices)
	return f
}

// startMosquitto runs mosquitto with the configuration and ACL that
// broker.MosquittoConfig generates, on a free 127.0.0.1 port.
func startMosquitto(t *testing.T, ca *identity.CA, services []broker.ServiceRights) *testpeer.Broker {
	t.Helper()
	return testbroker.Mosquitto(t, ca, services)
}

// replica is one verifier: a process, or a Cloud in this process.
type replica struct {
	name  string
	start time.Time
	proc  *child

	cloud *transport.Cloud
	v     *transport.Verifier
	mu    sync.Mutex
	rep   replicaReport
}

// replicaReport is what a verifier did.
type replicaReport struct {
	accepted   map[string]int // records accepted, by device
	refused    map[string]int // refusals, by kind (refusalKind)
	refusals   []string       // "kind topic: error"
	duplicates uint64
}

func (f *fleet) startVerifier(name string) *replica {
	f.t.Helper()
	r := &replica{name: name, start: time.Now(), rep: replicaReport{accepted: map[string]int{}, refused: map[string]int{}}}
	if f.procs {
		if _, err := os.Stat(filepath.Join(f.dir, name+".pem")); err != nil {
			writeTLSFiles(f.t, f.dir, name, testpki.Service(f.t, f.ca, name))
		}
		r.proc = startChild(f.t, name, "verifier", urlEnv+"="+f.url, dirEnv+"="+f.dir, brokerEnv+"="+f.broker.Addr, nameEnv+"="+name)
		r.proc.await(f.t, "ready", fleetWait)
	} else {
		s := openStore(f.t, f.url)
		var err error
		r.cloud, r.v, err = verifierReplica(f.t.Context(), s, f.broker.Addr, f.roots, testpki.Service(f.t, f.ca, name), f.cloudKey,
			func(rec transport.Record) {
				r.mu.Lock()
				r.rep.accepted[rec.Device]++
				r.mu.Unlock()
			},
			func(topic string, err error) {
				r.mu.Lock()
				r.rep.refused[refusalKind(err)]++
				r.rep.refusals = append(r.rep.refusals, refusalKind(err)+" "+topic+": "+err.Error())
				r.mu.Unlock()
			})
		if err != nil {
			f.t.Fatal(err)
		}
		f.t.Cleanup(func() { r.stop() })
	}
	f.replicas = append(f.replicas, r)
	return r
}

// crash ends the verifier abruptly: SIGKILL for a process; in this
// process, closing its connection with nothing else (what it had not
// acknowledged, the broker sends again).
func (r *replica) crash() {
	if r.proc != nil {
		r.proc.kill()
		return
	}
	r.stop()
}

// stop ends the verifier in order.
func (r *replica) stop() {
	if r.proc != nil {
		r.proc.stop()
		return
	}
	r.mu.Lock()
	c := r.cloud
	r.cloud = nil
	r.mu.Unlock()
	if c != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.Close(ctx)
	}
}

// report returns what the verifier did so far.
func (r *replica) report() replicaReport {
	if r.proc == nil {
		r.mu.Lock()
		defer r.mu.Unlock()
		rep := r.rep
		rep.accepted, rep.refused, rep.refusals = maps.Clone(rep.accepted), maps.Clone(rep.refused), slices.Clone(rep.refusals)
		rep.duplicates = r.v.Stats().Duplicates
		return rep
	}
	rep := replicaReport{accepted: map[string]int{}, refused: map[string]int{}}
	for _, e := range r.proc.logs() {
		switch e.Msg {
		case "record":
			rep.accepted[e.Device]++
		case "refused":
			rep.refused[e.Kind]++
			rep.refusals = append(rep.refusals, e.Kind+" "+e.Topic+": "+e.Err)
		case "stats":
			rep.duplicates = e.Duplicates
		}
	}
	return rep
}

// total sums the reports of every verifier of the run (killed ones too).
func (f *fleet) total() replicaReport {
	sum := replicaReport{accepted: map[string]int{}, refused: map[string]int{}}
	for _, r := range f.replicas {
		rep := r.report()
		for k, v := range rep.accepted {
			sum.accepted[k] += v
		}
		for k, v := range rep.refused {
			sum.refused[k] += v
		}
		sum.refusals = append(sum.refusals, rep.refusals...)
		sum.duplicates += rep.duplicates
	}
	return sum
}

// startRegistrar starts a registrar recording into the store and returns
// its URL and a count of the enrollments it served.
func (f *fleet) startRegistrar(name string) (string, func() int) {
	f.t.Helper()
	if f.procs {
		writeTLSFiles(f.t, f.dir, name, testpki.Server(f.t, f.ca, "127.0.0.1"))
		c := startChild(f.t, name, "registrar", urlEnv+"="+f.url, dirEnv+"="+f.dir, nameEnv+"="+name)
		addr := strings.TrimPrefix(c.await(f.t, "addr ", fleetWait), "addr ")
		if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
			f.t.Fatalf("%s listens on %q, want 127.0.0.1", name, addr)
		}
		f.t.Cleanup(c.stop)
		return "https://" + addr, func() int {
			n := 0
			for _, e := range c.logs() {
				if e.Msg == "est ok" && e.Op == "simpleenroll" {
					n++
				}
			}
			return n
		}
	}
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: f.ca, TokenKeys: []crypto.PublicKey{f.tokenKey.Public()}, Registry: openStore(f.t, f.url)})
	if err != nil {
		f.t.Fatal(err)
	}
	var served atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == identity.ESTSimpleEnroll {
			served.Add(1)
		}
		reg.ServeHTTP(w, req)
	}))
	srv.TLS = reg.TLSConfig(testpki.Server(f.t, f.ca, "127.0.0.1"))
	srv.StartTLS()
	f.t.Cleanup(srv.Close)
	return srv.URL, func() int { return int(served.Load()) }
}

// device is one device of the fleet: its identity store and its client
// (again after each reboot).
type device struct {
	id        string
	store     *identity.Store
	enc       *transport.Encryption
	client    *transport.Client
	past      transport.ClientStats // Stored and Acked of the clients closed by reboots
	published int
}

func (f *fleet) enroll(id, registrar string) *device {
	f.t.Helper()
	s, err := identity.OpenStore(filepath.Join(f.dir, "dev-"+id), identity.StoreConfig{})
	if err != nil {
		f.t.Fatal(err)
	}
	tok, err := identity.TokenIssuer{Key: f.tokenKey}.Issue(id)
	if err != nil {
		f.t.Fatal(err)
	}
	fp := sha256.Sum256(f.ca.Root().Raw)
	est := identity.ESTClient{URL: registrar, BootstrapFingerprint: fp[:]}
	if _, err := s.Enroll(f.t.Context(), est, identity.EnrollRequest{DeviceID: id, Auth: identity.EnrollAuth{Token: tok}}); err != nil {
		f.t.Fatalf("enroll %s through %s: %v", id, registrar, err)
	}
	d := &device{id: id, store: s, enc: &transport.Encryption{CloudKey: &f.cloudKey.PublicKey}}
	if id == rotatingDevice {
		d.enc.RotateAfter = rotateEvery
	}
	return d
}

// dial (re)starts the device's client: a new boot.
func (f *fleet) dial(d *device) {
	f.t.Helper()
	c, err := transport.Dial(f.t.Context(), transport.ClientConfig{Broker: f.broker.Addr, Store: d.store, Encryption: d.enc,
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond, SecurityReportInterval: -1})
	if err != nil {
		f.t.Fatal(err)
	}
	d.client = c
	f.t.Cleanup(func() {
		if d.client != c {
			return // closed by a reboot
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	ctx, cancel := context.WithTimeout(f.t.Context(), fleetWait)
	defer cancel()
	if err := c.AwaitConnection(ctx); err != nil {
		f.t.Fatalf("%s: %v", d.id, err)
	}
}

// reboot closes the device's client (what is queued stays in its outbox)
// and dials again, with the next boot counter.
func (f *fleet) reboot(d *device) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.t.Context(), 5*time.Second)
	defer cancel()
	if err := d.client.Close(ctx); err != nil {
		f.t.Logf("%s close: %v", d.id, err)
	}
	st := d.client.Stats()
	d.past.Stored += st.Stored
	d.past.Acked += st.Acked
	f.dial(d)
}

func (d *device) stats() (stored, acked uint64, queued int) {
	st := d.client.Stats()
	return d.past.Stored + st.Stored, d.past.Acked + st.Acked, st.QueueDepth
}

func (f *fleet) publish(d *device) {
	f.t.Helper()
	body := fmt.Sprintf("%s/%d", d.id, d.published)
	if err := d.client.Publish(f.t.Context(), stream, transport.Reading{Time: time.Now(), Body: []byte(body)}); err != nil {
		f.t.Fatalf("%s publish %d: %v", d.id, d.published, err)
	}
	d.published++
}

// mallory is the attacker: a raw MQTT client that reads every device's
// messages (not its own: NoLocal) and publishes on any device's topics,
// as a hostile broker can.
type mallory struct {
	t     *testing.T
	c     *paho.Client
	phase atomic.Int32 // stamped on each capture
	mu    sync.Mutex
	seen  []capture
}

type capture struct {
	topic   string
	payload []byte
	phase   int32
}

const malloryMaxCaptures = 4096

func (f *fleet) mallory() *mallory {
	f.t.Helper()
	cert := testpki.Service(f.t, f.ca, "mallory")
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", f.broker.Addr,
		&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.roots, ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}})
	if err != nil {
		f.t.Fatal(err)
	}
	m := &mallory{t: f.t}
	m.c = paho.NewClient(paho.ClientConfig{
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			m.mu.Lock()
			if len(m.seen) < malloryMaxCaptures {
				m.seen = append(m.seen, capture{pr.Packet.Topic, bytes.Clone(pr.Packet.Payload), m.phase.Load()})
			}
			m.mu.Unlock()
			return true, nil
		}},
	})
	ctx, cancel := context.WithTimeout(f.t.Context(), fleetWait)
	defer cancel()
	if _, err := m.c.Connect(ctx, &paho.Connect{ClientID: "svc:mallory", CleanStart: true, KeepAlive: 30}); err != nil {
		f.t.Fatalf("mallory connect: %v", err)
	}
	f.t.Cleanup(func() { m.c.Disconnect(&paho.Disconnect{}) })
	sa, err := m.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: wire.AllUp, QoS: 1, NoLocal: true}}})
	if err != nil || len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		f.t.Fatalf("mallory subscribe: %v %v", sa, err)
	}
	return m
}

// captured returns the payloads captured on topic in phase (-1: any).
func (m *mallory) captured(topic string, phase int32) [][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out [][]byte
	for _, c := range m.seen {
		if c.topic == topic && (phase < 0 || c.phase == phase) {
			out = append(out, c.payload)
		}
	}
	return out
}

// inject publishes payload on topic; the broker must take it (the attack
// is on the verifiers, not the ACL).
func (m *mallory) inject(topic string, payload []byte) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(m.t.Context(), fleetWait)
	defer cancel()
	resp, err := m.c.Publish(ctx, &paho.Publish{QoS: 1, Topic: topic, Payload: payload})
	if err != nil || resp == nil || resp.ReasonCode >= 0x80 {
		m.t.Fatalf("mallory publish on %s: %v %v", topic, resp, err)
	}
}

// waitFor polls cond until it holds, failing the test with what after
// fleetWait.
func (f *fleet) waitFor(what string, cond func() bool) {
	f.t.Helper()
	for deadline := time.Now().Add(fleetWait); !cond(); time.Sleep(20 * time.Millisecond) {
		f.checkRefusals()
		if time.Now().After(deadline) {
			f.t.Fatalf("waited %v for %s\n%s", fleetWait, what, f.diagnosis())
		}
	}
}

// checkRefusals fails the test at once if the verifiers refused more
// messages than the attacks account for: a genuine message was refused,
// after the broker had acknowledged it to its device, and is lost.
func (f *fleet) checkRefusals() {
	f.t.Helper()
	want := sumValues(f.attacks)
	if got := f.total(); sumValues(got.refused) > want {
		f.t.Fatalf("the verifiers refused %d message(s), the attacks so far account for %d: a genuine message was refused, and is lost\n%s",
			sumValues(got.refused), want, f.diagnosis())
	}
}

// diagnosis describes the state of the run, for a failure.
func (f *fleet) diagnosis() string {
	var b strings.Builder
	rows, err := f.db.db.Query("SELECT device, boot, COUNT(*), MIN(seq), MAX(seq) FROM records GROUP BY device, boot ORDER BY device, boot")
	if err == nil {
		for rows.Next() {
			var (
				dev                string
				boot, n, low, high int
			)
			if rows.Scan(&dev, &boot, &n, &low, &high) == nil {
				fmt.Fprintf(&b, "records of %s boot %d: %d, seq %d to %d\n", dev, boot, n, low, high)
			}
		}
		rows.Close()
	}
	for _, r := range f.replicas {
		rep := r.report()
		fmt.Fprintf(&b, "%s (started %s): accepted %v, duplicates %d, refused %v\n", r.name, r.start.Format("15:04:05.000"), rep.accepted, rep.duplicates, rep.refused)
		for _, x := range rep.refusals {
			fmt.Fprintf(&b, "  refused: %s\n", x)
		}
	}
	return b.String()
}

func (f *fleet) count(query string, args ...any) int {
	f.t.Helper()
	var n int
	if err := f.db.db.QueryRow(f.db.q(query), args...).Scan(&n); err != nil {
		f.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// deliveries returns the key deliveries the store keeps for device.
func (f *fleet) deliveries(device string) [][]byte {
	f.t.Helper()
	rows, err := f.db.db.Query(f.db.q("SELECT delivery FROM session_keys WHERE device = ?"), device)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			f.t.Fatal(err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		f.t.Fatal(err)
	}
	return out
}

// storedBodies returns the body of every reading in the records table,
// by device, with the number of times each appears.
func (f *fleet) storedBodies() map[string]map[string]int {
	f.t.Helper()
	rows, err := f.db.db.Query("SELECT device, readings FROM records")
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]map[string]int{}
	for rows.Next() {
		var (
			dev string
			b   []byte
			rs  []readingRow
		)
		if err := rows.Scan(&dev, &b); err != nil {
			f.t.Fatal(err)
		}
		if err := f.db.modes.Dec.Unmarshal(b, &rs); err != nil {
			f.t.Fatalf("readings of a %s record: %v", dev, err)
		}
		if out[dev] == nil {
			out[dev] = map[string]int{}
		}
		for _, r := range rs {
			out[dev][string(r.Body)]++
		}
	}
	if err := rows.Err(); err != nil {
		f.t.Fatal(err)
	}
	return out
}

// runFleet runs the suite on the store at url. Two registrars and two
// verifiers start; six devices enroll, three through each registrar, and
// publish 48 readings each, one envelope per reading, encrypted with
// session keys (rotatingDevice rotates its key every 4 envelopes). Between
// rounds: verifier-1 is killed (round 10); verifier-3 starts once every
// device's key delivery is stored (16); verifier-1 starts again (22);
// rebootingDevice reboots twice (26, 31); mallory replays captured
// envelopes, replays boot-1 envelopes of rebootingDevice and the first key
// delivery of rotatingDevice, forges envelopes and a key delivery with
// another key, alters an envelope and moves one to another device's topic
// (36). Once every device's outbox is drained, mallory replays every
// envelope of one device again. Then, from the database: every reading
// is in the records table exactly once and nothing else is; from the
// verifiers: every attack refused or dropped as a duplicate, no genuine
// message refused, and verifier-3 opened envelopes of keys delivered
// before it started.
func runFleet(t *testing.T, url string, procs bool) {
	start := time.Now()
	f := newFleet(t, url, procs)
	reg1, served1 := f.startRegistrar("registrar-1")
	reg2, served2 := f.startRegistrar("registrar-2")
	v1 := f.startVerifier("verifier-1")
	f.startVerifier("verifier-2")
	m := f.mallory()

	// Enrollment through both registrars, alternately.
	var devs []*device
	byID := map[string]*device{}
	for i := range fleetDevices {
		reg := reg1
		if i%2 == 1 {
			reg = reg2
		}
		d := f.enroll(fmt.Sprintf("fleet-%d", i), reg)
		devs = append(devs, d)
		byID[d.id] = d
	}
	if a, b := served1(), served2(); a != fleetDevices/2 || b != fleetDevices/2 {
		t.Fatalf("registrars served %d and %d enrollments, want %d each", a, b, fleetDevices/2)
	}
	if n := f.count("SELECT COUNT(*) FROM certificates WHERE status = 'valid'"); n != fleetDevices {
		t.Fatalf("%d valid certificates recorded, want %d", n, fleetDevices)
	}
	for _, d := range devs {
		f.dial(d)
	}
	setup := time.Since(start)

	// The stream, with the events between rounds.
	var (
		v3         *replica
		replayed   int    // captured envelopes replayed (duplicates to be)
		dupsBefore uint64 // duplicates counted before the first replays
		firstKey   []byte // rotatingDevice's first key delivery
	)
	allOf := func(dev string) func() bool {
		return func() bool {
			return f.count("SELECT COUNT(*) FROM records WHERE device = ?", dev) == byID[dev].published
		}
	}
	for round := range fleetReadings {
		switch round {
		case roundCrash:
			v1.crash()
		case roundLate:
			// Every device has delivered its key: the late verifier
			// must open envelopes of keys delivered before it started.
			f.waitFor("every device's key delivery", func() bool {
				return f.count("SELECT COUNT(DISTINCT device) FROM session_keys") == fleetDevices
			})
			v3 = f.startVerifier("verifier-3")
		case roundRestart:
			f.startVerifier("verifier-1")
		case roundReboot1, roundReboot2:
			// Rebooting twice makes boot 1 a replay: first let the
			// cloud take everything of the boot before.
			f.waitFor(rebootingDevice+"'s records before its reboot", allOf(rebootingDevice))
			m.phase.Add(1)
			f.reboot(byID[rebootingDevice])
		case roundAttacks:
			dupsBefore = f.total().duplicates
			replayed += f.attack(m, &firstKey)
		}
		for _, d := range devs {
			f.publish(d)
		}
		time.Sleep(fleetRoundGap)
		f.checkRefusals()
	}
	streaming := time.Since(start) - setup

	// Every reading stored by a device is acknowledged by the broker...
	for _, d := range devs {
		f.waitFor(d.id+"'s outbox drained", func() bool {
			stored, acked, queued := d.stats()
			return queued == 0 && stored == acked
		})
	}
	// ... and is in the records table.
	f.waitFor("every reading in the records table", func() bool {
		return f.count("SELECT COUNT(*) FROM records") >= fleetDevices*fleetReadings
	})
	// A last wave of replays: every telemetry envelope captured from one
	// device, once the cloud holds them all.
	for _, env := range m.captured(wire.TelemetryTopic("fleet-3", stream), -1) {
		m.inject(wire.TelemetryTopic("fleet-3", stream), env)
		replayed++
	}
	f.waitFor("the replays dropped as duplicates", func() bool { return f.total().duplicates >= dupsBefore+uint64(replayed) })
	f.waitFor("the attacks refused", func() bool {
		got := f.total().refused
		for k, n := range f.attacks {
			if got[k] < n {
				return false
			}
		}
		return true
	})
	time.Sleep(200 * time.Millisecond) // anything late would show now

	// 0 lost, 0 duplicates, nothing of an attack.
	bodies := f.storedBodies()
	total := 0
	for _, d := range devs {
		stored, acked, _ := d.stats()
		got := bodies[d.id]
		for i := range d.published {
			body := fmt.Sprintf("%s/%d", d.id, i)
			if got[body] != 1 {
				t.Errorf("%s: reading %q in the records table %d times, want once", d.id, body, got[body])
			}
			delete(got, body)
		}
		for body, n := range got {
			t.Errorf("%s: reading %q (%d times) in the records table was never published by the device", d.id, body, n)
		}
		if n := f.count("SELECT COUNT(*) FROM records WHERE device = ?", d.id); n != d.published {
			t.Errorf("%s: %d records, %d published", d.id, n, d.published)
		}
		total += d.published
		t.Logf("%s: published %d readings; stored %d messages (key deliveries included), acked %d", d.id, d.published, stored, acked)
	}
	if n := f.count("SELECT COUNT(*) FROM records"); n != total {
		t.Errorf("%d records, %d readings published", n, total)
	}
	for dev := range bodies {
		if byID[dev] == nil {
			t.Errorf("records of %q, which is no device of the fleet", dev)
		}
	}
	if top := f.count("SELECT MAX(top) FROM replay WHERE device = 'fleet-1'"); top >= fleetReadings {
		t.Errorf("fleet-1's replay window moved to %d: a forged sequence number was taken", top)
	}
	// The replayed first key delivery evicted nothing: the store keeps
	// the 8 newest, and not it.
	kept := f.deliveries(rotatingDevice)
	if len(kept) != firstKeptLimit {
		t.Errorf("%d key deliveries kept for %s, want %d", len(kept), rotatingDevice, firstKeptLimit)
	}
	for _, k := range kept {
		if bytes.Equal(k, firstKey) {
			t.Errorf("the replayed first key delivery of %s is kept", rotatingDevice)
		}
	}
	rep := f.total()
	f.checkRefusals()
	for kind, n := range f.attacks {
		if rep.refused[kind] < n {
			t.Errorf("%d refusals of kind %s, want at least %d", rep.refused[kind], kind, n)
		}
	}
	late := v3.report()
	lateOld := 0 // records of devices whose only key was delivered before verifier-3 started
	for _, id := range []string{"fleet-1", "fleet-2", "fleet-3", "fleet-4"} {
		if n := f.count("SELECT COUNT(*) FROM session_keys WHERE device = ? AND received_ms < ?", id, v3.start.UnixMilli()); n != 1 ||
			len(f.deliveries(id)) != 1 {
			t.Errorf("%s: %d key deliveries kept, %d of them received before verifier-3 started; want its one key, delivered before", id, len(f.deliveries(id)), n)
		}
		lateOld += late.accepted[id]
	}
	if lateOld == 0 {
		t.Errorf("the late verifier accepted no record sealed with a key delivered before it started (it accepted %v)", late.accepted)
	}
	if t.Failed() {
		t.Logf("refusals: %s", strings.Join(rep.refusals, "\n"))
	}
	t.Logf("%d readings from %d devices: each in the records table once; %d replays dropped as duplicates (%d duplicates counted in all); refusals %v",
		total, len(devs), replayed, rep.duplicates-dupsBefore, rep.refused)
	t.Logf("late verifier: %d records, %d of them sealed with keys delivered before it started; verifier accepts by device: %v", sumValues(late.accepted), lateOld, rep.accepted)
	t.Logf("setup %v, stream %v, total %v", setup.Round(time.Millisecond), streaming.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// attack injects, through the broker, the attacks of the suite and adds
// the refusals each must cause to f.attacks; it returns how many captured
// envelopes it replayed (each a duplicate).
func (f *fleet) attack(m *mallory, firstKey *[]byte) int {
	f.t.Helper()
	want := f.attacks
	// Replays of captured envelopes: duplicates, dropped.
	replayed := 0
	for i := 1; i <= 4 && replayed < attackReplays; i++ {
		envs := m.captured(wire.TelemetryTopic(fmt.Sprintf("fleet-%d", i), stream), -1)
		for _, env := range envs[:min(len(envs), attackReplays/4)] {
			m.inject(wire.TelemetryTopic(fmt.Sprintf("fleet-%d", i), stream), env)
			replayed++
		}
	}
	// Replays of the rebooting device's boot 1, now two boots old.
	boot1 := m.captured(wire.TelemetryTopic(rebootingDevice, stream), 0)
	if len(boot1) < 5 {
		f.t.Fatalf("captured %d envelopes of %s's boot 1", len(boot1), rebootingDevice)
	}
	for _, env := range boot1[:5] {
		m.inject(wire.TelemetryTopic(rebootingDevice, stream), env)
	}
	want["replay"] += 5
	// The rotating device's first key delivery, replayed once the store
	// keeps 8 newer ones.
	keys := m.captured(wire.KeyTopic(rotatingDevice), -1)
	if len(keys) == 0 {
		f.t.Fatal("no key delivery captured")
	}
	*firstKey = keys[0]
	f.waitFor(rotatingDevice+"'s first key delivery evicted by 8 newer", func() bool {
		kept := f.deliveries(rotatingDevice)
		return len(kept) == firstKeptLimit && !slices.ContainsFunc(kept, func(k []byte) bool { return bytes.Equal(k, keys[0]) })
	})
	m.inject(wire.KeyTopic(rotatingDevice), keys[0])
	want["replay"]++
	// Forgeries: signed with another key, with a sequence number far
	// ahead (accepted, it would make the device's next readings replays).
	other, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		f.t.Fatal(err)
	}
	forged := func(id string, enc *transport.Encryption) transport.Sealed {
		s, err := transport.NewSealer(id, other, enc, nil)
		if err != nil {
			f.t.Fatal(err)
		}
		out, err := s.Seal(transport.Record{Stream: stream, Boot: 1, Seq: 10_000, Time: time.Now(),
			Readings: []transport.Reading{{Time: time.Now(), Body: []byte("forged")}}})
		if err != nil {
			f.t.Fatal(err)
		}
		return out
	}
	plain := forged("fleet-1", nil)
	m.inject(wire.TelemetryTopic("fleet-1", stream), plain.Envelope)
	want["signature"]++
	enc := forged("fleet-2", &transport.Encryption{CloudKey: &f.cloudKey.PublicKey})
	m.inject(wire.KeyTopic("fleet-2"), enc.KeyDelivery) // its signature is not fleet-2's
	want["signature"]++
	m.inject(wire.TelemetryTopic("fleet-2", stream), enc.Envelope) // its key was never accepted
	// An envelope naming a key no verifier holds is parked (its delivery
	// might be on its way to another verifier), never accepted: it waits,
	// counted against fleet-2's parking bound, until it expires.
	f.waitFor("the envelope under a forged key parked", func() bool {
		var n int
		if err := f.db.db.QueryRow(f.db.q("SELECT COUNT(*) FROM parked WHERE device = ?"), "fleet-2").Scan(&n); err != nil {
			f.t.Fatal(err)
		}
		return n >= 1
	})
	// A genuine envelope altered (its GCM tag), and one moved to another
	// device's topic.
	genuine := m.captured(wire.TelemetryTopic("fleet-3", stream), -1)
	if len(genuine) == 0 {
		f.t.Fatal("no fleet-3 envelope captured")
	}
	parts := bytes.Split(bytes.Clone(genuine[0]), []byte("."))
	if len(parts) != 5 || len(parts[4]) < 10 {
		f.t.Fatalf("a fleet-3 envelope is not a compact JWE: %d parts", len(parts))
	}
	if parts[4][5] == 'A' { // another base64url letter
		parts[4][5] = 'B'
	} else {
		parts[4][5] = 'A'
	}
	m.inject(wire.TelemetryTopic("fleet-3", stream), bytes.Join(parts, []byte(".")))
	want["decrypt"]++
	// Moved to fleet-4's topic, it names a key fleet-4 never delivered:
	// parked, never accepted.
	m.inject(wire.TelemetryTopic("fleet-4", stream), genuine[0])
	f.waitFor("the moved envelope parked", func() bool {
		var n int
		if err := f.db.db.QueryRow(f.db.q("SELECT COUNT(*) FROM parked WHERE device = ?"), "fleet-4").Scan(&n); err != nil {
			f.t.Fatal(err)
		}
		return n >= 1
	})
	return replayed
}
