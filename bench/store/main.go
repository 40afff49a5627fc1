// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command store measures what the shared cloud store costs a verifier:
// verified readings per second of ONE transport.Verifier, fed batches of
// 32 messages as transport.DialCloud feeds it (its Receive Maximum, one
// VerifyBatch and so one store transaction per batch), side by side in one
// run for:
//
//   - in memory: the verifier's defaults (a replay.Window and
//     session keys in this process), a transport.MemoryCertificates and
//     the fleet CA's revocation list; nothing is written anywhere;
//   - the SQLite store (cloud/store, "sqlite:PATH"): replay windows, the
//     records sink, session-key deliveries, registered certificates and
//     revocation all in the store, one transaction per batch;
//   - the PostgreSQL store, the same on a PostgreSQL cluster the program
//     starts on 127.0.0.1 (internal/pgpeer);
//   - the PostgreSQL store fed one message per VerifyBatch (one
//     transaction, so one commit and one WAL flush, per message): what
//     batching buys;
//   - to show what the flush at each commit costs, two setups that are
//     not durable and not to be run: SQLite on tmpfs (/dev/shm, where
//     fsync does nothing) and PostgreSQL with synchronous_commit off;
//   - to show what overlapping each transaction with the next batch's
//     cryptography would buy (DialCloud does not), both stores with two
//     batches in flight, never two batches outside Accept at once.
//
// A fleet CA issues a certificate to each of -devices devices, each with
// its own key, registered in each store with Store.Enrolled (and in the
// MemoryCertificates for the in-memory row). Envelopes are sealed before
// any timing starts, signed only and session-key encrypted (one reading
// each), and signed with 100 readings each; the devices take turns, so a
// batch of 32 holds 32 devices' envelopes. Each verifier first verifies
// one envelope per device (and the session-key deliveries), untimed, so
// that chain verifications and session keys are cached as in a verifier
// that has been running, and again before each run, so that the store's
// 5-second caches are warm as they are under steady traffic. Every row
// runs -count times, the backends alternating, and the fastest run of
// each row is printed: wall time per message, the part of it spent in the
// store's transaction (ReplayState.Accept) and in the registry
// (certificates and revocation), and the CPU time per message of this
// process (SQLite runs in it) and of the PostgreSQL server.
//
// Everything it creates lives in temporary directories, removed before it
// exits; the PostgreSQL cluster is stopped at the end. PostgreSQL's server
// programs must be installed (Debian package postgresql); run as root, the
// cluster runs as the postgres user. Run it with:
//
//	go run ./bench/store [-count 3] [-msgs 4096] [-devices 256] [-cpuprofile FILE]
//
// The whole run takes under a minute on 2 cores.
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx", for the server's version and settings

	"github.com/d2c-iot/d2c/bench/internal/benchutil"
	"github.com/d2c-iot/d2c/bench/internal/fstype"
	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/pgpeer"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/replay"
	"github.com/d2c-iot/d2c/transport/wire"
)

const (
	stream   = "temp"
	bodySize = 150 // bytes of one reading's body
	// batchSize is what transport.DialCloud passes to one VerifyBatch at
	// most: its Receive Maximum (cloudReceiveMaximum in transport/cloud.go).
	batchSize = 32
)

func main() {
	count := flag.Int("count", 3, "how many times to run each row, the backends alternating; the fastest run of each counts")
	msgs := flag.Int("msgs", 4096, "envelopes of one reading per run of a row (the one-per-transaction row runs an eighth, the 100-reading rows a quarter)")
	devices := flag.Int("devices", 256, "devices in the fleet, each with its own key and certificate; they take turns")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the runs (setup excluded) to this file")
	flag.Parse()
	if *count < 1 || *count > 10 {
		fmt.Fprintln(os.Stderr, "bench/store: -count must be 1 to 10")
		os.Exit(2)
	}
	if *msgs < 256 || *msgs > 1<<17 {
		fmt.Fprintln(os.Stderr, "bench/store: -msgs must be 256 to 131072")
		os.Exit(2)
	}
	if *devices < 1 || *devices > 10000 {
		fmt.Fprintln(os.Stderr, "bench/store: -devices must be 1 to 10000")
		os.Exit(2)
	}
	// An interrupt ends the run through its deferred cleanup: the
	// PostgreSQL cluster stopped, the temporary directories removed.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Stdout, config{count: *count, msgs: *msgs, devices: *devices, cpuProfile: *cpuProfile})
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/store:", err)
		os.Exit(1)
	}
}

type config struct {
	count, msgs, devices int
	cpuProfile           string
}

// commandLine is the command with every flag's value, set or default.
func commandLine() string {
	args := []string{"go run ./bench/store"}
	flag.VisitAll(func(f *flag.Flag) {
		if f.Name == "cpuprofile" && f.Value.String() == "" {
			return
		}
		args = append(args, "-"+f.Name+"="+f.Value.String())
	})
	return strings.Join(args, " ")
}

// device is one device of the fleet: its key and registered chain.
type device struct {
	id    string
	key   crypto.Signer
	chain []*x509.Certificate
}

// fleet is a CA, its devices and the cloud's decryption key, in a
// temporary directory.
type fleet struct {
	dir     string
	ca      *identity.CA
	roots   *x509.CertPool
	cloud   *ecdsa.PrivateKey
	devices []device
	certs   *transport.MemoryCertificates
}

func newFleet(n int) (_ *fleet, err error) {
	dir, err := os.MkdirTemp("", "d2c-bench-store-")
	if err != nil {
		return nil, err
	}
	f := &fleet{dir: dir, certs: &transport.MemoryCertificates{}}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	if f.ca, err = identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{Fleet: "bench fleet"}); err != nil {
		return nil, err
	}
	f.roots = x509.NewCertPool()
	f.roots.AddCert(f.ca.Root())
	if f.cloud, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	for i := range n {
		d := device{id: fmt.Sprintf("bench-%04d", i)}
		if d.key, err = identity.GenerateKey(identity.ECDSAP256); err != nil {
			return nil, err
		}
		der, err := identity.NewCSR(d.key, d.id)
		if err != nil {
			return nil, err
		}
		csr, err := identity.ParseCSR(der)
		if err != nil {
			return nil, err
		}
		cert, err := f.ca.IssueDevice(csr, d.id)
		if err != nil {
			return nil, err
		}
		d.chain = []*x509.Certificate{cert, f.ca.Issuing()}
		f.certs.Add(d.chain...)
		f.devices = append(f.devices, d)
	}
	return f, nil
}

func (f *fleet) close() { _ = os.RemoveAll(f.dir) }

var body = bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz"), 5)[:bodySize]

// mode is a kind of envelope.
type mode struct {
	name     string
	session  bool // session-key encrypted (the SDK's default), else signed only
	readings int  // per envelope
}

var (
	signed    = mode{"signed, 1 reading per envelope", false, 1}
	session   = mode{"session-key encrypted, 1 reading per envelope", true, 1}
	signed100 = mode{"signed, 100 readings per envelope", false, 100}
)

// sealers seal the fleet's envelopes: one signed and one session-key
// sealer per device, and one sequence number per device shared by both,
// so that every verifier sees each device's numbers rise.
type sealers struct {
	f       *fleet
	plain   []*transport.Sealer
	enc     []*transport.Sealer
	seq     []uint64
	started time.Time
}

func newSealers(f *fleet) (*sealers, error) {
	s := &sealers{f: f, seq: make([]uint64, len(f.devices)), started: time.Now()}
	enc := &transport.Encryption{CloudKey: &f.cloud.PublicKey, CloudKeyID: "cloud-1"}
	for _, d := range f.devices {
		p, err := transport.NewSealer(d.id, d.key, nil, nil)
		if err != nil {
			return nil, err
		}
		e, err := transport.NewSealer(d.id, d.key, enc, nil)
		if err != nil {
			return nil, err
		}
		s.plain, s.enc = append(s.plain, p), append(s.enc, e)
	}
	return s, nil
}

// seal seals n envelopes of mode m, the devices taking turns, on every
// core (each device's sealer on one goroutine). Key deliveries (the first
// envelope of each session key) are returned apart: each verifier takes
// them before the envelopes, untimed.
func (s *sealers) seal(m mode, n int) (envs, deliveries []transport.Inbound, err error) {
	type job struct {
		dev int
		seq uint64
	}
	jobs := make([]job, n)
	for i := range jobs {
		d := i % len(s.f.devices)
		s.seq[d]++
		jobs[i] = job{d, s.seq[d]}
	}
	envs = make([]transport.Inbound, n)
	keys := make([]transport.Inbound, len(s.f.devices))
	workers := runtime.NumCPU()
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			now := time.Now()
			rs := make([]transport.Reading, m.readings)
			for i := range rs {
				rs[i] = transport.Reading{Time: now, Body: body}
			}
			for i, j := range jobs {
				if j.dev%workers != w {
					continue
				}
				d := s.f.devices[j.dev]
				sl := s.plain[j.dev]
				if m.session {
					sl = s.enc[j.dev]
				}
				out, err := sl.Seal(transport.Record{Stream: stream, Boot: 1, Seq: j.seq, Time: now, Readings: rs})
				if err != nil {
					errs[w] = err
					return
				}
				envs[i] = transport.Inbound{Topic: wire.TelemetryTopic(d.id, stream), Payload: out.Envelope}
				if out.KeyDelivery != nil {
					keys[j.dev] = transport.Inbound{Topic: wire.KeyTopic(d.id), Payload: out.KeyDelivery}
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	for _, k := range keys {
		if k.Topic != "" {
			deliveries = append(deliveries, k)
		}
	}
	return envs, deliveries, nil
}

// timing adds up the wall time a verifier spends waiting on its replay
// state (Accept: the store's transaction, commit included) and on its
// certificate registry (certificate chains and revocation), so that a row
// shows where its time goes.
type timing struct {
	accept, certs atomic.Int64 // nanoseconds
	// lane, in a pipelined row, is held (a value in it) by the goroutine
	// doing a batch's work outside Accept, so that one batch's signatures
	// are checked while another's transaction commits, never two
	// batches' signatures at once.
	lane chan struct{}
}

func since(t0 time.Time, sum *atomic.Int64) { sum.Add(int64(time.Since(t0))) }

type timedReplay struct {
	transport.ReplayState
	t *timing
}

func (r timedReplay) Accept(ctx context.Context, recs []transport.Record) ([]error, error) {
	if r.t.lane != nil {
		<-r.t.lane
		defer func() { r.t.lane <- struct{}{} }()
	}
	defer since(time.Now(), &r.t.accept)
	return r.ReplayState.Accept(ctx, recs)
}

type timedCerts struct {
	transport.Certificates
	t *timing
}

func (c timedCerts) DeviceCertificates(ctx context.Context, device string) ([][]*x509.Certificate, error) {
	defer since(time.Now(), &c.t.certs)
	return c.Certificates.DeviceCertificates(ctx, device)
}

// timedCachedCerts keeps a cached registry's second lookup visible to the
// verifier.
type timedCachedCerts struct {
	timedCerts
	cc transport.CachedCertificates
}

func (c timedCachedCerts) FreshDeviceCertificates(ctx context.Context, device string) ([][]*x509.Certificate, error) {
	defer since(time.Now(), &c.t.certs)
	return c.cc.FreshDeviceCertificates(ctx, device)
}

func timeCerts(c transport.Certificates, t *timing) transport.Certificates {
	tc := timedCerts{c, t}
	if cc, ok := c.(transport.CachedCertificates); ok {
		return timedCachedCerts{tc, cc}
	}
	return tc
}

type timedRevocations struct {
	identity.RevocationChecker
	t *timing
}

func (r timedRevocations) CheckRevoked(cert *x509.Certificate) error {
	defer since(time.Now(), &r.t.certs)
	return r.RevocationChecker.CheckRevoked(cert)
}

// backend is one verifier under test.
type backend struct {
	name  string
	v     *transport.Verifier
	t     *timing
	batch int // messages per VerifyBatch
	// part is the fraction of each set of envelopes it verifies (the
	// one-per-transaction row would take too long on all of them); 0:
	// none of that mode.
	part map[mode]int
	pg   bool // the PostgreSQL server's CPU time counts
	// inflight is how many batches are verified at once (t.lane
	// serializes all but their Accept calls).
	inflight int
}

// verify verifies msgs in batches and fails unless each one is accepted
// (a key delivery returns a zero record).
func (b *backend) verify(ctx context.Context, msgs []transport.Inbound) error {
	one := func(start int) error {
		batch := msgs[start:min(start+b.batch, len(msgs))]
		if b.t.lane != nil {
			b.t.lane <- struct{}{}
			defer func() { <-b.t.lane }()
		}
		recs, errs := b.v.VerifyBatch(ctx, batch)
		for i, err := range errs {
			if err != nil {
				return fmt.Errorf("%s: message %d: %w", b.name, start+i, err)
			}
			if recs[i].Device == "" && strings.Contains(batch[i].Topic, "/up/tele/") {
				return fmt.Errorf("%s: message %d: no record", b.name, start+i)
			}
		}
		return nil
	}
	if b.inflight <= 1 {
		for start := 0; start < len(msgs); start += b.batch {
			if err := one(start); err != nil {
				return err
			}
		}
		return nil
	}
	var next atomic.Int64
	errs := make([]error, b.inflight)
	var wg sync.WaitGroup
	for g := range b.inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				start := int(next.Add(1)-1) * b.batch
				if start >= len(msgs) {
					return
				}
				if errs[g] = one(start); errs[g] != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// result is one timed run of a row.
type result struct {
	msgs, readings int
	secs           float64
	c0, c1         cpuSample
	accept, certs  time.Duration // wall time in Accept and in the registry
}

func (r result) perSecond() float64 { return float64(r.msgs) / r.secs }

// openStore opens a store at url and registers the fleet's certificates
// in it as the registrar would (Store.Enrolled, no token).
func (f *fleet) openStore(ctx context.Context, url string) (*store.Store, error) {
	s, err := store.Open(ctx, store.Config{URL: url})
	if err != nil {
		return nil, err
	}
	for _, d := range f.devices {
		if err := s.Enrolled(ctx, d.id, "", time.Time{}, d.chain); err != nil {
			s.Close()
			return nil, fmt.Errorf("register %s: %w", d.id, err)
		}
	}
	return s, nil
}

func (f *fleet) storeVerifier(s *store.Store, t *timing) (*transport.Verifier, error) {
	return transport.NewVerifier(transport.VerifierConfig{Certificates: timeCerts(s, t),
		Policy:        identity.DeviceCertPolicy{Roots: f.roots, Revocations: timedRevocations{s, t}},
		DecryptionKey: f.cloud, Replay: timedReplay{s, t}, SessionKeys: s})
}

func run(ctx context.Context, w io.Writer, cfg config) error {
	start := time.Now()
	load0 := loadAverage()
	f, err := newFleet(cfg.devices)
	if err != nil {
		return err
	}
	defer f.close()

	pg, stopPG, err := pgpeer.Start()
	if err != nil {
		return err
	}
	defer stopPG()
	postmaster := 0
	if b, err := os.ReadFile(filepath.Join(pg.Dir, "data", "postmaster.pid")); err == nil {
		first, _, _ := strings.Cut(string(b), "\n")
		postmaster, _ = strconv.Atoi(strings.TrimSpace(first))
	}
	pgFacts, err := postgresFacts(ctx, pg.URL)
	if err != nil {
		return err
	}
	sqlitePath := filepath.Join(f.dir, "store.db")
	sqliteFacts, err := sqliteFacts(ctx, filepath.Join(f.dir, "version.db"))
	if err != nil {
		return err
	}

	fmt.Fprintf(w, "d2c cloud store benchmark: %s %s/%s, %s, %d CPUs, count %d, %d devices, %d-byte reading bodies\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, benchutil.CPUModel(), runtime.NumCPU(), cfg.count, cfg.devices, bodySize)
	fmt.Fprintf(w, "command: %s\n", commandLine())
	fmt.Fprintf(w, "PostgreSQL: %s; data in %s (%s)\n", pgFacts, pg.Dir, fstype.Of(pg.Dir))
	fmt.Fprintf(w, "SQLite: %s, WAL, synchronous=FULL; file %s (%s)\n", sqliteFacts, sqlitePath, fstype.Of(f.dir))
	fmt.Fprintf(w, "load average at start: %s\n", load0)

	// The backends, each with its own verifier and its own database.
	memTiming := &timing{}
	mem, err := transport.NewVerifier(transport.VerifierConfig{Certificates: timeCerts(f.certs, memTiming),
		Policy:        identity.DeviceCertPolicy{Roots: f.roots, Revocations: timedRevocations{f.ca, memTiming}},
		DecryptionKey: f.cloud, Replay: timedReplay{replay.New(0), memTiming}})
	if err != nil {
		return err
	}
	// Two rows without the flush to disk at each commit, to show what it
	// costs; neither is a setup to run (a power cut loses transactions
	// committed, so accepted records, and replay windows go back): SQLite
	// on tmpfs, where fsync does nothing, and PostgreSQL with
	// synchronous_commit off for the database.
	noFsync := map[mode]int{signed: 1}
	shm, err := os.MkdirTemp("/dev/shm", "d2c-bench-store-")
	if err != nil || fstype.Of(shm) != "tmpfs" {
		fmt.Fprintf(w, "no tmpfs at /dev/shm: the SQLite row without fsync is left out\n")
		noFsync = nil
	}
	if err == nil {
		defer os.RemoveAll(shm)
	}
	every := map[mode]int{signed: 1, session: 1, signed100: 1}
	backends := []*backend{{name: "in memory", v: mem, t: memTiming, batch: batchSize, part: every}}
	for _, b := range []struct {
		name, url       string
		batch, inflight int
		part            map[mode]int
	}{
		{"SQLite, as DialCloud", "sqlite:" + filepath.Join(f.dir, "pipelined.db"), batchSize / 2, 2, every},
		{"PostgreSQL, as DialCloud", "postgres", batchSize / 2, 2, every},
		{"SQLite, one batch at a time", "sqlite:" + sqlitePath, batchSize, 1, every},
		{"PostgreSQL, one batch at a time", "postgres", batchSize, 1, every},
		{"PostgreSQL store, 1 per tx", "postgres", 1, 1, map[mode]int{signed: 8, session: 8}},
		{"SQLite on tmpfs, no fsync", "sqlite:" + filepath.Join(shm, "store.db"), batchSize, 1, noFsync},
		{"PostgreSQL, no WAL flush", "postgres-async", batchSize, 1, map[mode]int{signed: 1}},
	} {
		if b.part == nil {
			continue
		}
		url := b.url
		if strings.HasPrefix(url, "postgres") {
			name := fmt.Sprintf("bench%d", len(backends))
			if url, err = pg.CreateDatabase(name); err != nil {
				return err
			}
			if b.url == "postgres-async" {
				if err := execSQL(ctx, pg.URL, "ALTER DATABASE "+name+" SET synchronous_commit = off"); err != nil {
					return err
				}
				if v, err := pgSetting(ctx, url, "synchronous_commit"); err != nil || v != "off" {
					return fmt.Errorf("%s: synchronous_commit %q (%v), want off", b.name, v, err)
				}
			}
		}
		s, err := f.openStore(ctx, url)
		if err != nil {
			return fmt.Errorf("%s: %w", b.name, err)
		}
		defer s.Close()
		t := &timing{}
		if b.inflight > 1 {
			t.lane = make(chan struct{}, 1)
		}
		v, err := f.storeVerifier(s, t)
		if err != nil {
			return err
		}
		backends = append(backends, &backend{name: b.name, v: v, t: t, batch: b.batch, inflight: b.inflight, part: b.part, pg: s.Dialect() == "postgres"})
	}

	// Warm up, untimed: one signed envelope per device, then the
	// session-key deliveries and one session-key envelope per device.
	sl, err := newSealers(f)
	if err != nil {
		return err
	}
	warm, _, err := sl.seal(signed, cfg.devices)
	if err != nil {
		return err
	}
	warmEnc, deliveries, err := sl.seal(session, cfg.devices)
	if err != nil {
		return err
	}
	warm = append(append(warm, deliveries...), warmEnc...)
	for _, b := range backends {
		if err := b.verify(ctx, warm); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}

	// The envelopes of every run, sealed before the first one. Each run
	// starts with one envelope per device, untimed: the store's caches of
	// registered chains and revocation status (5 s) have expired since
	// the backend's previous run, and re-reading them all at the start of
	// a run of under a second would weigh them many times more than the
	// once per device per 5 s of a verifier that runs without a pause.
	sets := []struct {
		mode mode
		n    int
	}{{signed, cfg.msgs}, {session, cfg.msgs}, {signed100, cfg.msgs / 4}}
	type runEnvelopes struct{ warm, timed []transport.Inbound }
	envs := make([][]runEnvelopes, cfg.count) // run, set
	for k := range cfg.count {
		for _, set := range sets {
			var r runEnvelopes
			for _, e := range []struct {
				to *[]transport.Inbound
				n  int
			}{{&r.warm, cfg.devices}, {&r.timed, set.n}} {
				var more []transport.Inbound
				if *e.to, more, err = sl.seal(set.mode, e.n); err != nil {
					return err
				}
				if len(more) > 0 {
					return errors.New("a session key rotated during the run")
				}
			}
			envs[k] = append(envs[k], r)
		}
	}
	fmt.Fprintf(w, "setup (fleet, PostgreSQL, certificates registered, warm-up, sealing) %.1f s\n", time.Since(start).Seconds())

	if cfg.cpuProfile != "" {
		pf, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	best := make([][]result, len(sets)) // set, backend
	for i := range best {
		best[i] = make([]result, len(backends))
	}
	for k := range cfg.count {
		for si, set := range sets {
			for bi, b := range backends {
				part := b.part[set.mode]
				if part == 0 {
					continue
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				if err := b.verify(ctx, envs[k][si].warm); err != nil {
					return err
				}
				msgs := envs[k][si].timed[:len(envs[k][si].timed)/part]
				runtime.GC() // the previous run's garbage is not this one's
				a0, r0 := b.t.accept.Load(), b.t.certs.Load()
				c0, t0 := sampleCPU(postmaster), time.Now()
				if err := b.verify(ctx, msgs); err != nil {
					return err
				}
				r := result{msgs: len(msgs), readings: len(msgs) * set.mode.readings, secs: time.Since(t0).Seconds(), c0: c0, c1: sampleCPU(postmaster),
					accept: time.Duration(b.t.accept.Load() - a0), certs: time.Duration(b.t.certs.Load() - r0)}
				if !b.pg {
					r.c0.postgres, r.c1.postgres = 0, 0
				}
				if k == 0 || r.perSecond() > best[si][bi].perSecond() {
					best[si][bi] = r
				}
			}
		}
	}
	pprof.StopCPUProfile()

	fmt.Fprintf(w, "\nOne verifier; VerifyBatch of %d messages (DialCloud's batch) unless the row says otherwise; the %d devices take turns,\n"+
		"so a batch holds %d devices' envelopes. Fastest of %d runs.\n", batchSize, cfg.devices, min(batchSize, cfg.devices), cfg.count)
	const rowFmt = "%-32s %6s %7s %10s %6s | %7s %7s %7s | %7s %6s %5s\n"
	for si, set := range sets {
		fmt.Fprintf(w, "\n%s\n\n", set.mode.name)
		fmt.Fprintf(w, rowFmt, "verifier", "msgs", "msgs/s", "readings/s", "vs mem", "µs/msg", "Accept", "certs", "self", "pg", "cores")
		base := best[si][0].perSecond()
		for bi, b := range backends {
			r := best[si][bi]
			if r.msgs == 0 {
				continue
			}
			pgCPU := "-"
			if b.pg {
				pgCPU = fmt.Sprintf("%.0f", (r.c1.postgres-r.c0.postgres)/float64(r.msgs)*1e6)
			}
			us := func(d time.Duration) string { return fmt.Sprintf("%.0f", d.Seconds()/float64(r.msgs)*1e6) }
			fmt.Fprintf(w, rowFmt, b.name, strconv.Itoa(r.msgs), fmt.Sprintf("%.0f", r.perSecond()), fmt.Sprintf("%.0f", float64(r.readings)/r.secs),
				fmt.Sprintf("%.2fx", r.perSecond()/base), fmt.Sprintf("%.0f", r.secs/float64(r.msgs)*1e6), us(r.accept), us(r.certs),
				fmt.Sprintf("%.0f", (r.c1.self-r.c0.self)/float64(r.msgs)*1e6), pgCPU, fmt.Sprintf("%.2f", (r.c1.machine-r.c0.machine)/r.secs))
		}
	}
	fmt.Fprintf(w, "\nvs mem = msgs/s over the in-memory row's. Wall µs per message: in all; in ReplayState.Accept (the store's transaction,\n"+
		"commit and fsync included: replay windows and every record accepted, the durable sink); in the registry (certificate\n"+
		"chains and revocation status). CPU µs per message: self = this process (verifier, SQLite, pgx); pg = the PostgreSQL\n"+
		"server (postmaster, backends, WAL writer). cores = busy CPU time of the whole machine / wall time.\n"+
		"The no-fsync and no-WAL-flush rows are not durable (a power cut loses accepted records and rolls replay windows back):\n"+
		"they show what the flush at each commit costs. The \"as DialCloud\" rows do what DialCloud does: its Receive Maximum\n"+
		"(32) split over two batches in flight, one's signatures checked while the other's transaction commits (their Accept\n"+
		"column adds up both). The \"one batch at a time\" rows verify and commit 32 in turn, overlapping nothing.\n")
	fmt.Fprintf(w, "\nload average at end: %s; total run time %.1f s\n", loadAverage(), time.Since(start).Seconds())
	return nil
}

// execSQL runs one statement on the PostgreSQL database at url.
func execSQL(ctx context.Context, url, stmt string) error {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		return fmt.Errorf("postgres: %s: %w", stmt, err)
	}
	return nil
}

// pgSetting returns a setting of a new session on the database at url.
func pgSetting(ctx context.Context, url, name string) (string, error) {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return "", err
	}
	defer db.Close()
	var v string
	if err := db.QueryRowContext(ctx, "SHOW "+name).Scan(&v); err != nil {
		return "", fmt.Errorf("postgres: SHOW %s: %w", name, err)
	}
	return v, nil
}

// postgresFacts returns the server's version and durability settings.
func postgresFacts(ctx context.Context, url string) (string, error) {
	var facts []string
	for _, q := range []string{"server_version", "fsync", "synchronous_commit", "wal_sync_method", "shared_buffers"} {
		v, err := pgSetting(ctx, url, q)
		if err != nil {
			return "", err
		}
		if q == "server_version" {
			v, _, _ = strings.Cut(v, " ")
			facts = append(facts, v)
			continue
		}
		facts = append(facts, q+"="+v)
	}
	return strings.Join(facts, ", "), nil
}

// sqliteFacts returns the SQLite library's version ("sqlite", the pure-Go
// modernc.org/sqlite that cloud/store registers).
func sqliteFacts(ctx context.Context, path string) (string, error) {
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		return "", err
	}
	defer db.Close()
	var v string
	if err := db.QueryRowContext(ctx, "SELECT sqlite_version()").Scan(&v); err != nil {
		return "", fmt.Errorf("sqlite: %w", err)
	}
	return "SQLite " + v + " (modernc.org/sqlite, pure Go)", nil
}
