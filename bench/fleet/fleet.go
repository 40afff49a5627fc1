// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx": the orchestrator's own queries

	"github.com/d2c-iot/d2c/bench/internal/benchutil"
	"github.com/d2c-iot/d2c/bench/internal/fstype"
	"github.com/d2c-iot/d2c/bench/internal/procstat"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/pgpeer"
)

// fleet is one run: its directories, peers, replicas and simulators.
type fleet struct {
	cfg   config
	p     *progress
	res   *result
	work  string // configuration, CA, logs
	state string // the devices' stores
	d2c   string
	ps    procs
	jan   *janitor
	pg    *pgpeer.Cluster
	pgPID int
	db    *sql.DB

	brokerBin, brokerConf, brokerAddr string
	broker                            *proc
	brokerRole                        role

	replicas    []*replica
	serviceRole role

	sims    []*sim
	simRole role
	cmdSeq  int
	changed chan struct{} // a simulator's status changed
}

// replica is one "d2c cloud serve" process slot, started again after a
// kill with the same configuration.
type replica struct {
	name, conf, ready string
	slot              int
	p                 *proc
	ops               string // host:port of /metrics
	registrar         string // EST base URL
	metrics           []map[string]float64
}

// sim is one simulator process.
type sim struct {
	index int
	p     *proc
	in    io.WriteCloser
	mu    sync.Mutex
	st    simStatus
	eof   chan struct{} // its stdout ended
}

func runFleet(ctx context.Context, cfg config, w io.Writer) (*result, error) {
	f := &fleet{cfg: cfg, p: &progress{w: w, start: time.Now()}, changed: make(chan struct{}, 1)}
	f.res = &result{
		Machine: fmt.Sprintf("%s %s/%s, %s, %d CPUs", runtime.Version(), runtime.GOOS, runtime.GOARCH, benchutil.CPUModel(), runtime.NumCPU()),
		Devices: cfg.devices, Procs: cfg.procs, Readings: cfg.readings, RateOffered: cfg.rate, PeriodSeconds: cfg.period().Seconds(),
		Encrypted: cfg.encrypt, BodyBytes: bodySize, LoadStart: procstat.LoadAverage(),
		BrokerDownSeconds: cfg.brokerDown.Seconds(),
	}
	f.brokerRole.name, f.serviceRole.name, f.simRole.name = "broker", "service", "simulators"
	defer f.cleanup()
	err := f.run(ctx)
	f.res.LoadEnd = procstat.LoadAverage()
	f.res.WallSeconds = time.Since(f.p.start).Seconds()
	f.res.judge()
	if err != nil {
		f.p.printf("stopped: %v", err)
		f.res.Failures = append(f.res.Failures, "run stopped: "+err.Error())
	}
	return f.res, err
}

// cleanup kills every child, stops PostgreSQL and removes the
// directories (unless -keep).
func (f *fleet) cleanup() {
	defer f.jan.done()
	f.ps.killAll()
	if f.db != nil {
		f.db.Close()
	}
	if f.pg != nil {
		f.pg.Kill()
		if f.cfg.keep {
			f.p.printf("kept PostgreSQL's directory %s", f.pg.Dir)
		} else {
			os.RemoveAll(f.pg.Dir)
		}
	}
	for _, d := range []string{f.work, f.state} {
		if d == "" {
			continue
		}
		if f.cfg.keep {
			f.p.printf("kept %s", d)
		} else {
			os.RemoveAll(d)
		}
	}
}

func (f *fleet) run(ctx context.Context) error {
	if err := f.setup(ctx); err != nil {
		return err
	}
	cpu0 := f.cpu()

	// 1. Enrollment.
	f.p.printf("enrolling %d devices through the 2 replicas' registrars (%d simulators, %d at a time each)", f.cfg.devices, len(f.sims), enrollWorkers)
	t := time.Now()
	if err := f.send(ctx, "enroll", 0); err != nil {
		return err
	}
	st, err := f.waitFleet(ctx, "every device enrolled", 30*time.Minute, func(s simStatus) bool { return s.Enrolled+s.EnrollErrs == f.cfg.devices })
	f.res.Enrolled, f.res.EnrollErrors = st.Enrolled, st.EnrollErrs
	f.res.EnrollSeconds = time.Since(t).Seconds()
	if err != nil {
		return err
	}
	if st.EnrollErrs > 0 {
		return fmt.Errorf("%d enrollments failed, e.g. %s", st.EnrollErrs, f.simErr())
	}
	f.p.printf("enrolled %d devices in %.1f s", st.Enrolled, f.res.EnrollSeconds)
	cpu1 := f.cpu()

	// 2. Connection.
	t = time.Now()
	if err := f.send(ctx, "dial", 0); err != nil {
		return err
	}
	st, err = f.waitFleet(ctx, "every device connected", 10*time.Minute, func(s simStatus) bool { return s.Connected == f.cfg.devices })
	f.res.Connected = st.Connected
	f.res.ConnectSeconds = time.Since(t).Seconds()
	if err != nil {
		return err
	}
	f.p.printf("connected %d devices in %.1f s (%d failed attempts retried)", st.Connected, f.res.ConnectSeconds, st.ConnFails)
	cpu2 := f.cpu()

	// 3. The stream, with the restarts; 4. the catch-up.
	if err := f.stream(ctx); err != nil {
		return err
	}
	cpu3 := f.cpu()
	f.res.Usage = usageTable(f, cpu0, cpu1, cpu2, cpu3)

	// 5. The check.
	if err := f.check(ctx); err != nil {
		return err
	}
	if err := f.storeUsage(ctx); err != nil {
		return err
	}
	f.shutdown()
	return nil
}

// setup builds d2c, starts PostgreSQL, makes the fleet CA and the
// certificates, starts mosquitto, the replicas and the simulators.
func (f *fleet) setup(ctx context.Context) (err error) {
	f.jan = startJanitor()
	if f.work, err = os.MkdirTemp("", "d2c-bench-fleet-"); err != nil {
		return err
	}
	f.removeLater(f.work)
	stateRoot := f.cfg.state
	if stateRoot == "" && fstype.Of("/dev/shm") == "tmpfs" {
		stateRoot = "/dev/shm"
	}
	if f.state, err = os.MkdirTemp(stateRoot, "d2c-bench-fleet-devices-"); err != nil {
		return err
	}
	f.removeLater(f.state)
	f.res.StateDir = fmt.Sprintf("%s (%s)", f.state, fstype.Of(f.state))
	per := (f.cfg.devices + f.cfg.procs - 1) / f.cfg.procs
	if lim := inheritFileLimit(); lim != 0 && lim < uint64(per*fdsPerDev+500) {
		return fmt.Errorf("this process may open %d files; a simulator of %d devices needs about %d: raise -procs", lim, per, per*fdsPerDev+500)
	} else if lim != 0 && lim < uint64(f.cfg.devices+1000) {
		return fmt.Errorf("this process may open %d files; mosquitto needs about %d for %d devices", lim, f.cfg.devices+1000, f.cfg.devices)
	}

	if f.d2c = f.cfg.d2c; f.d2c == "" {
		f.d2c = filepath.Join(f.work, "d2c")
		f.p.printf("building d2c")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", f.d2c, "github.com/d2c-iot/d2c/cmd/d2c").CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build d2c (run from the module, or pass -d2c): %v\n%s", err, out)
		}
	}
	if f.brokerBin, err = lookSbin("mosquitto"); err != nil {
		return err
	}
	f.res.Mosquitto = mosquittoVersion(f.brokerBin)

	f.p.printf("starting PostgreSQL")
	if f.pg, _, err = pgpeer.Start(); err != nil {
		return err
	}
	f.jan.tell("pg", f.pg.Dir)
	f.removeLater(f.pg.Dir)
	if b, err := os.ReadFile(filepath.Join(f.pg.Dir, "data", "postmaster.pid")); err == nil {
		first, _, _ := strings.Cut(string(b), "\n")
		f.pgPID, _ = strconv.Atoi(strings.TrimSpace(first))
	}
	if f.db, err = sql.Open("pgx", f.pg.URL); err != nil {
		return err
	}
	f.db.SetMaxOpenConns(2)
	if err := f.db.QueryRowContext(ctx, "SHOW server_version").Scan(&f.res.PostgreSQL); err != nil {
		return fmt.Errorf("PostgreSQL: %w", err)
	}

	// The fleet CA and the certificates, as an operator makes them.
	f.p.printf("making the fleet CA and certificates with d2c")
	path := func(p ...string) string { return filepath.Join(append([]string{f.work}, p...)...) }
	if err := os.Mkdir(path("broker"), 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(path("broker", "persist"), 0o700); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"ca", "init", "--ca", path("ca"), "--fleet", "d2c bench fleet"},
		{"ca", "server-cert", "--ca", path("ca"), "--host", "127.0.0.1", "--cert", path("broker", "server.crt"), "--key", path("broker", "server.key")},
		{"ca", "service-cert", "--ca", path("ca"), "--service", "verifier-1", "--cert", path("verifier-1.crt"), "--key", path("verifier-1.key")},
		{"ca", "service-cert", "--ca", path("ca"), "--service", "verifier-2", "--cert", path("verifier-2.crt"), "--key", path("verifier-2.key")},
		// The first CRL, from the store (this migrates it); the replicas'
		// CRL role writes the next ones to the same file.
		{"ca", "crl", "--ca", path("ca"), "--db", f.pg.URL, "--out", path("broker", "crl.pem")},
	} {
		if err := f.runD2C(ctx, args...); err != nil {
			return err
		}
	}
	cloudKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return err
	}
	if err := identity.WriteKeyFile(path("cloud.key"), cloudKey); err != nil {
		return err
	}
	pub, err := identity.MarshalPublicKey(cloudKey.Public())
	if err != nil {
		return err
	}
	if err := os.WriteFile(path("cloud.pub"), pub, 0o644); err != nil {
		return err
	}

	if err := f.startBroker(ctx); err != nil {
		return err
	}

	// Two replicas of the service on the one store.
	group := make([]byte, 16)
	rand.Read(group)
	for i := range 2 {
		name := fmt.Sprintf("replica-%d", i+1)
		verifier := map[string]any{"broker": f.brokerAddr, "server_name": "127.0.0.1",
			"cert": fmt.Sprintf("verifier-%d.crt", i+1), "key": fmt.Sprintf("verifier-%d.key", i+1),
			"group": base64.RawURLEncoding.EncodeToString(group)}
		if f.cfg.encrypt {
			verifier["cloud_key"], verifier["require_encryption"] = "cloud.key", true
		}
		conf := map[string]any{
			"db": f.pg.URL, "ca": "ca", "ops": "127.0.0.1:0",
			"registrar": map[string]any{"listen": "127.0.0.1:0", "hosts": []string{"127.0.0.1"}},
			"verifier":  verifier,
			"crl":       map[string]any{"out": path("broker", "crl.pem"), "every": "1m"},
		}
		b, _ := json.MarshalIndent(conf, "", "  ")
		r := &replica{name: name, conf: path(name + ".json"), ready: path(name + ".ready"), slot: i}
		if err := os.WriteFile(r.conf, b, 0o600); err != nil {
			return err
		}
		if err := f.startReplica(ctx, r); err != nil {
			return err
		}
		f.replicas = append(f.replicas, r)
	}
	return f.startSims(ctx)
}

// removeLater tells the janitor to remove dir should this process die
// (unless -keep).
func (f *fleet) removeLater(dir string) {
	if !f.cfg.keep {
		f.jan.tell("dir", dir)
	}
}

// runD2C runs the d2c binary to completion.
func (f *fleet) runD2C(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, f.d2c, args...)
	dieWithParent(cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("d2c %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// startBroker writes mosquitto's configuration with "d2c broker config"
// on a free port and starts it, on another port if that one was taken
// meanwhile.
func (f *fleet) startBroker(ctx context.Context) error {
	dir := filepath.Join(f.work, "broker")
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		f.brokerAddr = "127.0.0.1:" + strconv.Itoa(port)
		if err := f.runD2C(ctx, "broker", "config", "--ca", filepath.Join(f.work, "ca"),
			"--cert", filepath.Join(dir, "server.crt"), "--key", filepath.Join(dir, "server.key"), "--crl", filepath.Join(dir, "crl.pem"),
			"--listen", f.brokerAddr, "--service", "verifier-1", "--service", "verifier-2",
			"--persistence", filepath.Join(dir, "persist"), "--out", dir); err != nil {
			return err
		}
		f.brokerConf = filepath.Join(dir, "mosquitto.conf")
		if os.Geteuid() == 0 {
			// As root, mosquitto switches to the user "mosquitto" before
			// it reads the certificates, which live in a private
			// directory.
			conf, err := os.OpenFile(f.brokerConf, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, err = conf.WriteString("\n# added by bench/fleet: keep root, to read the run's private files\nuser root\n")
			conf.Close()
			if err != nil {
				return err
			}
		}
		err = f.runBroker(ctx)
		if errors.Is(err, errPortTaken) && attempt < 3 {
			continue
		}
		if err == nil {
			f.p.printf("mosquitto listening on %s", f.brokerAddr)
		}
		return err
	}
}

// runBroker starts mosquitto with the configuration written, and waits
// until it accepts connections.
func (f *fleet) runBroker(ctx context.Context) error {
	cmd := exec.Command(f.brokerBin, "-c", f.brokerConf)
	cmd.Dir = filepath.Dir(f.brokerConf)
	logPath := filepath.Join(f.work, "broker", "mosquitto.log")
	p, err := f.ps.start("mosquitto", logPath, cmd)
	if err != nil {
		return err
	}
	if err := awaitAccept(ctx, f.brokerAddr, p, 2*time.Minute); err != nil {
		p.kill()
		if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "Address already in use") {
			return errPortTaken
		}
		return err
	}
	f.broker = p
	f.brokerRole.add(0, p)
	return nil
}

// startReplica starts (again) the replica's "d2c cloud serve" and waits
// for its ready file: registrar listening, verifier subscribed, CRL
// written. A process that exits before it is ready (cloud.Run gives the
// verifier 30 s to connect to the broker) is started again after
// replicaRestartDelay, as its systemd unit would do (Restart=on-failure),
// up to replicaStarts times; the failures are counted.
func (f *fleet) startReplica(ctx context.Context, r *replica) error {
	for attempt := 1; ; attempt++ {
		err := f.startReplicaOnce(ctx, r)
		if !errors.Is(err, errExitedEarly) || attempt == replicaStarts {
			return err
		}
		f.res.ReplicaStartFailures++
		f.p.printf("%v; starting it again in %v", err, replicaRestartDelay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(replicaRestartDelay):
		}
	}
}

const (
	replicaStarts       = 10
	replicaRestartDelay = 2 * time.Second
)

var errExitedEarly = errors.New("exited before it was ready")

func (f *fleet) startReplicaOnce(ctx context.Context, r *replica) error {
	os.Remove(r.ready) // a killed replica leaves its own
	cmd := exec.Command(f.d2c, "cloud", "serve", "--config", r.conf, "--ready-file", r.ready)
	cmd.Dir = f.work
	p, err := f.ps.start(r.name, filepath.Join(f.work, r.name+".log"), cmd)
	if err != nil {
		return err
	}
	f.serviceRole.add(r.slot, p)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, err := os.ReadFile(r.ready)
		if err == nil {
			var addrs struct{ Registrar, Ops string }
			if err := json.Unmarshal(b, &addrs); err == nil && addrs.Registrar != "" && addrs.Ops != "" {
				r.p, r.registrar, r.ops = p, "https://"+addrs.Registrar, addrs.Ops
				r.metrics = append(r.metrics, nil)
				f.p.printf("%s ready (pid %d): registrar %s, ops %s", r.name, p.pid(), addrs.Registrar, addrs.Ops)
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("%s (pid %d) %w (%v): %s", r.name, p.pid(), errExitedEarly, p.err, lastLine(p.logTail()))
		}
		if time.Now().After(deadline) {
			p.kill()
			return fmt.Errorf("%s not ready within 2 minutes: %s", r.name, p.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// lastLine returns the last line of s.
func lastLine(s string) string {
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// scrape reads the replica's counters into the slot of its current
// process; false if it could not within the time given.
func (r *replica) scrape(ctx context.Context, within time.Duration) bool {
	if r.p == nil || r.p.exited() {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.ops+"/metrics", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 4<<20))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j] // labels summed
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			m[name] += v
		}
	}
	if sc.Err() != nil {
		return false
	}
	r.metrics[len(r.metrics)-1] = m
	return true
}

// counter sums a counter over the replicas and their processes (a killed
// process counts as of its last scrape).
func (f *fleet) counter(name string) float64 {
	var sum float64
	for _, r := range f.replicas {
		for _, m := range r.metrics {
			sum += m[name]
		}
	}
	return sum
}

// startSims issues the tokens, writes the simulators' configurations and
// starts them.
func (f *fleet) startSims(ctx context.Context) error {
	tokenKey, err := identity.ReadKeyFile(filepath.Join(f.work, "ca", identity.CATokenKeyFile))
	if err != nil {
		return err
	}
	fp, err := os.ReadFile(filepath.Join(f.work, "ca", "root.sha256"))
	if err != nil {
		return err
	}
	ttl := min(f.cfg.timeout+10*time.Minute, identity.MaxTokenTTL)
	issuer := identity.TokenIssuer{Key: tokenKey, TTL: ttl}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cloudPub := ""
	if f.cfg.encrypt {
		cloudPub = filepath.Join(f.work, "cloud.pub")
	}
	f.p.printf("issuing %d enrollment tokens; starting %d simulators", f.cfg.devices, f.cfg.procs)
	per := (f.cfg.devices + f.cfg.procs - 1) / f.cfg.procs
	for i := range f.cfg.procs {
		first, last := i*per, min((i+1)*per, f.cfg.devices)
		if first >= last {
			break
		}
		sc := simConfig{Index: i, First: first, FleetSize: f.cfg.devices, Fingerprint: string(fp), Broker: f.brokerAddr,
			CloudPub: cloudPub, StateDir: f.state, Readings: f.cfg.readings, PeriodNS: int64(f.cfg.period()), BodySize: bodySize,
			Workers: enrollWorkers, DialWorkers: dialWorkers, RetryMinNS: int64(f.cfg.retryMin), RetryMaxNS: int64(f.cfg.retryMax)}
		for _, r := range f.replicas {
			sc.Registrars = append(sc.Registrars, r.registrar)
		}
		for d := first; d < last; d++ {
			id := deviceID(d)
			tok, err := issuer.Issue(id)
			if err != nil {
				return err
			}
			sc.Devices, sc.Tokens = append(sc.Devices, id), append(sc.Tokens, tok)
		}
		b, _ := json.Marshal(sc)
		cfgPath := filepath.Join(f.work, fmt.Sprintf("sim-%d.json", i))
		if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
			return err
		}
		cmd := exec.Command(self, simFlag, cfgPath)
		in, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		pr, pw, err := os.Pipe()
		if err != nil {
			return err
		}
		cmd.Stdout = pw
		p, err := f.ps.start(fmt.Sprintf("simulator-%d", i), filepath.Join(f.work, fmt.Sprintf("sim-%d.log", i)), cmd)
		pw.Close()
		if err != nil {
			pr.Close()
			return err
		}
		s := &sim{index: i, p: p, in: in, eof: make(chan struct{})}
		s.st.Devices = last - first
		go f.readStatus(s, pr)
		f.sims = append(f.sims, s)
		f.simRole.add(i, p)
	}
	return nil
}

// How many devices of one simulator enroll at once, and connect at once
// in the first connection (after a broker restart they all reconnect,
// paced by their backoff alone).
const (
	enrollWorkers = 8
	dialWorkers   = 16
)

func deviceID(i int) string { return fmt.Sprintf("fleet-%05d", i) }

// readStatus keeps the simulator's latest status.
func (f *fleet) readStatus(s *sim, r io.ReadCloser) {
	defer close(s.eof)
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var st simStatus
		if json.Unmarshal(sc.Bytes(), &st) != nil {
			continue
		}
		s.mu.Lock()
		s.st = st
		s.mu.Unlock()
		select {
		case f.changed <- struct{}{}:
		default:
		}
	}
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// send gives every simulator a command and waits until each has carried
// it out.
func (f *fleet) send(ctx context.Context, op string, startNS int64) error {
	f.cmdSeq++
	line, _ := json.Marshal(simCommand{Seq: f.cmdSeq, Op: op, StartNS: startNS})
	for _, s := range f.sims {
		if _, err := s.in.Write(append(line, '\n')); err != nil {
			return fmt.Errorf("simulator %d: %s: %w: %s", s.index, op, err, s.p.logTail())
		}
	}
	seq := f.cmdSeq
	_, err := f.waitFleet(ctx, "the simulators to carry out "+op, 5*time.Minute, func(simStatus) bool {
		for _, s := range f.sims {
			s.mu.Lock()
			ack := s.st.Ack
			s.mu.Unlock()
			if ack < seq {
				return false
			}
		}
		return true
	})
	return err
}

// status adds up the simulators' statuses, and returns the first failure
// of one of them (an error it reported, or its exit).
func (f *fleet) status() (simStatus, error) {
	var (
		t       simStatus
		first   error
		allBack = true
	)
	for _, s := range f.sims {
		s.mu.Lock()
		st := s.st
		s.mu.Unlock()
		if st.Err != "" && first == nil {
			first = fmt.Errorf("simulator %d: %s", s.index, st.Err)
		}
		if s.p.exited() && first == nil {
			first = fmt.Errorf("simulator %d exited (%v): %s", s.index, s.p.err, s.p.logTail())
		}
		t.Devices += st.Devices
		t.Enrolled += st.Enrolled
		t.EnrollErrs += st.EnrollErrs
		t.Connected += st.Connected
		t.Reconnect += st.Reconnect
		t.Published += st.Published
		t.Done += st.Done
		t.Drained += st.Drained
		t.Stored += st.Stored
		t.Acked += st.Acked
		t.Refused += st.Refused
		t.Queued += st.Queued
		t.Connects += st.Connects
		t.ConnFails += st.ConnFails
		t.LastPubNS = max(t.LastPubNS, st.LastPubNS)
		t.AllBackNS = max(t.AllBackNS, st.AllBackNS)
		if st.AllBackNS == 0 {
			allBack = false
		}
	}
	if !allBack {
		t.AllBackNS = 0
	}
	return t, first
}

// simErr returns the first error a simulator reported.
func (f *fleet) simErr() string {
	for _, s := range f.sims {
		s.mu.Lock()
		e := s.st.Err
		s.mu.Unlock()
		if e != "" {
			return e
		}
	}
	return "(none reported)"
}

// waitFleet waits until cond holds for the simulators' total, within the
// time given.
func (f *fleet) waitFleet(ctx context.Context, what string, within time.Duration, cond func(simStatus) bool) (simStatus, error) {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		st, err := f.status()
		if cond(st) {
			return st, nil
		}
		if err != nil {
			return st, err
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("waiting for %s: %w (now %s)", what, ctx.Err(), st.brief())
		case <-deadline.C:
			return st, fmt.Errorf("waiting for %s: not within %v (now %s)", what, within, st.brief())
		case <-f.changed:
		case <-time.After(time.Second):
		}
	}
}

func (s simStatus) brief() string {
	return fmt.Sprintf("enrolled %d, connected %d, reconnected %d, published %d, drained %d, queued %d, stored %d, acked %d",
		s.Enrolled, s.Connected, s.Reconnect, s.Published, s.Drained, s.Queued, s.Stored, s.Acked)
}

// records counts the rows of the records table.
func (f *fleet) records(ctx context.Context) (int, error) {
	var n int
	err := f.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM records").Scan(&n)
	return n, err
}

// stream runs the stream and its disruptions, then the catch-up.
func (f *fleet) stream(ctx context.Context) error {
	total := f.cfg.devices * f.cfg.readings
	period := f.cfg.period()
	start := time.Now().Add(500 * time.Millisecond)
	f.p.printf("stream: %d readings per device, one every %v (%.0f readings/s offered)", f.cfg.readings, period.Round(time.Millisecond), f.cfg.rate)
	if err := f.send(ctx, "publish", start.UnixNano()); err != nil {
		return err
	}
	var (
		steadyFrom      time.Time // one period in: every device has published
		steadyFromCount int
		brokerUp        time.Time // the restarted broker accepts connections
		allBack         bool      // every device has connected to it
		killDone        bool
		lastScrape      time.Time
		lastReport      = time.Now()
	)
	for {
		st, err := f.status()
		if err != nil {
			return err
		}
		now := time.Now()
		if now.Sub(lastReport) >= 10*time.Second {
			n, err := f.records(ctx)
			if err != nil {
				return err
			}
			f.p.printf("stream: %d of %d readings stored by the devices, %d in the store, %d queued in outboxes; %d devices back after the broker restart",
				st.Published, total, n, st.Queued, st.Reconnect)
			lastReport = now
		}
		if steadyFrom.IsZero() && now.After(start.Add(period)) {
			if steadyFromCount, err = f.records(ctx); err != nil {
				return err
			}
			steadyFrom = now
		}
		if now.Sub(lastScrape) > 2*time.Second {
			for _, r := range f.replicas {
				r.scrape(ctx, 2*time.Second)
			}
			lastScrape = now
		}
		if !brokerUp.IsZero() && !allBack {
			f.res.Reconnected = st.Reconnect
			if st.Reconnect == f.cfg.devices && st.AllBackNS != 0 {
				// The simulators note when their last device came back.
				allBack = true
				f.res.ReconnectSeconds = time.Unix(0, st.AllBackNS).Sub(brokerUp).Seconds()
				f.p.printf("broker: all %d devices reconnected %.1f s after it accepted again", st.Reconnect, f.res.ReconnectSeconds)
			} else if now.Sub(brokerUp) > 10*time.Minute {
				return fmt.Errorf("%d of %d devices reconnected within 10 minutes of the broker restart", st.Reconnect, f.cfg.devices)
			}
		}
		switch {
		case brokerUp.IsZero() && (st.Published >= total*35/100 && now.After(start.Add(2*period)) || st.Published == total):
			n, err := f.records(ctx)
			if err != nil {
				return err
			}
			if !steadyFrom.IsZero() {
				f.res.SteadyWindowSeconds = now.Sub(steadyFrom).Seconds()
				f.res.SteadyReadingsPerSecond = float64(n-steadyFromCount) / f.res.SteadyWindowSeconds
			}
			f.res.BrokerRestartAtPublished = st.Published
			if brokerUp, err = f.restartBroker(ctx); err != nil {
				return err
			}
			continue
		case !brokerUp.IsZero() && !killDone && st.Published >= total*65/100 && (allBack || st.Published >= total*90/100):
			// After the fleet is back, if it comes back in time: a
			// replica starting in a reconnection storm competes with
			// every device for the broker's handshakes.
			f.res.ReplicaKillAtPublished = st.Published
			if err := f.killReplica(ctx); err != nil {
				return err
			}
			killDone = true
			continue
		}
		if st.Published == total && allBack && killDone {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stream: %w (%s)", ctx.Err(), st.brief())
		case <-time.After(200 * time.Millisecond):
		}
	}
	f.res.Midstream = f.res.BrokerRestartAtPublished < total && f.res.ReplicaKillAtPublished < total

	// The catch-up: every outbox drained, every reading in the store;
	// given up after a minute without progress.
	st, _ := f.status()
	lastPub := time.Unix(0, st.LastPubNS)
	f.res.Published = st.Published
	f.res.StreamSeconds = lastPub.Sub(start).Seconds()
	f.p.printf("every reading stored by the devices (%d), %.1f s after the stream's start; waiting for the store", st.Published, f.res.StreamSeconds)
	var (
		lastN, lastDrained = -1, -1
		progressAt         = time.Now()
		n                  int
	)
	for {
		st, err := f.status()
		if err != nil {
			return err
		}
		if n, err = f.records(ctx); err != nil {
			return err
		}
		if n != lastN || st.Drained != lastDrained {
			lastN, lastDrained, progressAt = n, st.Drained, time.Now()
		}
		f.res.Drained, f.res.InStore = st.Drained, n
		f.res.DeviceRefused, f.res.Queued = st.Refused, st.Queued
		if st.Drained == f.cfg.devices && n >= total {
			break
		}
		if time.Since(progressAt) > time.Minute {
			f.p.printf("no progress for a minute: %s; %d records in the store", st.brief(), n)
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("catch-up: %w (%s; %d records)", ctx.Err(), st.brief(), n)
		case <-time.After(250 * time.Millisecond):
		}
	}
	allIn := time.Now()
	f.res.CatchUpSeconds = allIn.Sub(lastPub).Seconds()
	f.res.StreamReadingsPerSecond = float64(n) / allIn.Sub(start).Seconds()
	for _, r := range f.replicas {
		for range 3 {
			if r.scrape(ctx, 10*time.Second) {
				break
			}
		}
	}
	f.p.printf("%d records in the store, %.1f s after the last reading was stored; %d of %d outboxes drained", n, f.res.CatchUpSeconds, f.res.Drained, f.cfg.devices)
	f.res.VerifierAccepted = f.counter("d2c_records_accepted_total")
	f.res.VerifierDuplicates = f.counter("d2c_messages_duplicate_total")
	f.res.VerifierRefused = f.counter("d2c_messages_refused_total")
	f.res.VerifierParked = f.counter("d2c_envelopes_parked_total")
	return nil
}

// restartBroker stops mosquitto as an orderly restart does (SIGTERM: it
// saves sessions and queued messages) and starts it again after
// brokerDown; it returns when the new broker accepts connections.
func (f *fleet) restartBroker(ctx context.Context) (time.Time, error) {
	if err := f.send(ctx, "mark", 0); err != nil {
		return time.Time{}, err
	}
	f.p.printf("broker: stopping (SIGTERM) after %d readings stored by the devices", f.res.BrokerRestartAtPublished)
	stopAt := time.Now()
	f.broker.stop(time.Minute)
	select {
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	case <-time.After(f.cfg.brokerDown):
	}
	if err := f.runBroker(ctx); err != nil {
		return time.Time{}, fmt.Errorf("broker restart: %w", err)
	}
	up := time.Now()
	f.res.BrokerRestarted = true
	f.res.BrokerDownSeconds = up.Sub(stopAt).Seconds()
	f.p.printf("broker: accepting again (pid %d), %.1f s after the stop", f.broker.pid(), f.res.BrokerDownSeconds)
	return up, nil
}

// killReplica kills replica 2 (SIGKILL: no shutdown of any kind) and
// starts it again after replicaDown.
func (f *fleet) killReplica(ctx context.Context) error {
	r := f.replicas[len(f.replicas)-1]
	r.scrape(ctx, 10*time.Second)
	f.p.printf("%s: SIGKILL (pid %d) after %d readings stored by the devices", r.name, r.p.pid(), f.res.ReplicaKillAtPublished)
	killAt := time.Now()
	r.p.kill()
	f.res.ReplicaKilled = true
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(f.cfg.replicaDown):
	}
	if err := f.startReplica(ctx, r); err != nil {
		return fmt.Errorf("replica restart: %w", err)
	}
	f.res.ReplicaRestarted = true
	f.res.ReplicaDownSeconds = time.Since(killAt).Seconds()
	return nil
}

// cpuSample is the CPU seconds used so far by each role.
type cpuSample struct{ broker, service, postgres, sims float64 }

func (f *fleet) cpu() cpuSample {
	var s cpuSample
	s.broker, _ = f.brokerRole.usage()
	s.service, _ = f.serviceRole.usage()
	s.sims, _ = f.simRole.usage()
	s.postgres = procstat.Tree(f.pgPID)
	return s
}

// check reads the records table back and compares it with what the
// devices published: device d's reading k, in boot 1 under seq k (a
// device's first boot, seq from 0; no other record is sent: security
// reports are off).
func (f *fleet) check(ctx context.Context) error {
	f.p.printf("checking the records table")
	r := f.cfg.readings
	seen := make([]uint16, f.cfg.devices*r)
	rows, err := f.db.QueryContext(ctx, "SELECT device, stream, boot, seq, readings FROM records")
	if err != nil {
		return err
	}
	defer rows.Close()
	problem := func(format string, args ...any) {
		f.res.Unexpected++
		if len(f.res.Examples) < 10 {
			f.res.Examples = append(f.res.Examples, fmt.Sprintf(format, args...))
		}
	}
	rowsRead := 0
	for rows.Next() {
		var (
			dev, str  string
			boot, seq int64
			blob      []byte
		)
		if err := rows.Scan(&dev, &str, &boot, &seq, &blob); err != nil {
			return err
		}
		rowsRead++
		idx, ok := deviceIndex(dev, f.cfg.devices)
		if !ok {
			problem("a record of %q, no device of the fleet", dev)
			continue
		}
		if str != stream || boot != 1 || seq < 0 || seq >= int64(r) {
			problem("a record of %s on stream %q, boot %d, seq %d: never published", dev, str, boot, seq)
			continue
		}
		bodies, err := decodeReadings(blob)
		if err != nil {
			problem("%s boot %d seq %d: readings: %v", dev, boot, seq, err)
			continue
		}
		want := readingBody(dev, int(seq), bodySize)
		if len(bodies) != 1 || string(bodies[0]) != string(want) {
			problem("%s boot %d seq %d: %d readings, not the one published under it", dev, boot, seq, len(bodies))
			continue
		}
		seen[idx*r+int(seq)]++
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for i, n := range seen {
		switch {
		case n == 0:
			f.res.Lost++
			if len(f.res.Examples) < 10 {
				f.res.Examples = append(f.res.Examples, fmt.Sprintf("lost: %s boot 1 seq %d", deviceID(i/r), i%r))
			}
		case n > 1:
			f.res.Duplicates += int(n) - 1
		}
	}
	f.res.Expected = len(seen)
	f.res.InStore = rowsRead
	f.p.printf("records: %d expected, %d in the store; lost %d, accepted twice %d, unexpected %d", len(seen), rowsRead, f.res.Lost, f.res.Duplicates, f.res.Unexpected)
	return nil
}

// deviceIndex parses a device ID of the fleet.
func deviceIndex(id string, n int) (int, bool) {
	rest, ok := strings.CutPrefix(id, "fleet-")
	if !ok || len(rest) != 5 {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i < 0 || i >= n || deviceID(i) != id {
		return 0, false
	}
	return i, true
}

// storeTables are the store's tables, in the order printed.
var storeTables = []string{"records", "replay", "session_keys", "parked", "devices", "certificates", "used_tokens", "crls",
	"commands", "consent", "attestation_nonces"}

// storeUsage measures each table: rows and bytes on disk.
func (f *fleet) storeUsage(ctx context.Context) error {
	for _, t := range storeTables {
		u := tableUsage{Table: t}
		if err := f.db.QueryRowContext(ctx, "SELECT COUNT(*), pg_total_relation_size('"+t+"') FROM "+t).Scan(&u.Rows, &u.Bytes); err != nil {
			return fmt.Errorf("store usage of %s: %w", t, err)
		}
		f.res.Store = append(f.res.Store, u)
	}
	return f.db.QueryRowContext(ctx, "SELECT pg_database_size(current_database())").Scan(&f.res.DatabaseBytes)
}

// shutdown ends the run in order: the simulators close their clients,
// the replicas and the broker stop.
func (f *fleet) shutdown() {
	line, _ := json.Marshal(simCommand{Seq: f.cmdSeq + 1, Op: "close"})
	for _, s := range f.sims {
		_, _ = s.in.Write(append(line, '\n'))
	}
	for _, s := range f.sims {
		select {
		case <-s.p.done:
		case <-time.After(time.Minute):
			s.p.kill()
		}
	}
	for _, r := range f.replicas {
		r.p.stop(15 * time.Second)
	}
	f.broker.stop(time.Minute)
}

// lookSbin finds a program in $PATH or the sbin directories, where
// Debian installs daemons.
func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in $PATH or /usr/sbin: install the Debian package %s", name, name)
}

// mosquittoVersion returns "x.y.z" from mosquitto -h.
func mosquittoVersion(bin string) string {
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	first, _, _ := strings.Cut(string(out), "\n")
	if v, ok := strings.CutPrefix(strings.TrimSpace(first), "mosquitto version "); ok {
		return v
	}
	return "unknown"
}
