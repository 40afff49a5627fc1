// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command device measures the resident memory of the device program
// (examples/device) at steady state. It runs the program as a separate
// process against a fleet built in a temporary directory on 127.0.0.1 (a
// fleet CA, an EST registrar, the embedded broker with mutual TLS, a
// verifier for the cloud's side and an update repository over HTTPS), and
// reads the process's VmRSS from /proc/<pid>/status at the end of each
// phase:
//
//  1. enrolled, connected, its first reading verified;
//  2. publishing an encrypted, signed reading every -interval for -publish;
//  3. after a renewal: the first certificate is issued so that it is due
//     for renewal -publish after enrollment (give or take the renewer's
//     jitter, up to 36 s), then -settle of publishing;
//  4. after an update check that installs a release of -image bytes,
//     restarts into it on trial and confirms it, then -settle;
//  5. after an update check that finds nothing new, then -publish more.
//
// Each line also gives the peak RSS of the phase (VmHWM, reset at the
// phase's start through /proc/<pid>/clear_refs). Linux only.
//
// By default it builds examples/device for this machine the way a device
// build is made (CGO_ENABLED=0, -trimpath, -ldflags='-s -w', -tags
// nethttpomithttp2). -device names another binary: one cross-compiled for
// another architecture, run by the emulator that -exec names:
//
//	go run ./bench/device
//	CGO_ENABLED=0 GOARCH=arm64 go build -trimpath -ldflags='-s -w' -tags nethttpomithttp2 -o /tmp/device-arm64 ./examples/device
//	go run ./bench/device -device /tmp/device-arm64 -exec 'qemu-aarch64 -R 16G'
//
// Under an emulator (qemu-user) the process's RSS holds the emulator too
// (its libraries, heap and translated code); the "guest" column counts only
// the mappings inside the guest's address space, which is what the program
// itself uses, and approximates a native run. A 64-bit guest needs its
// address space reserved (qemu's -R) for the column to be found; qemu-arm
// and qemu-mipsel reserve a 32-bit guest's by themselves.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/wire"
	"github.com/d2c-iot/d2c/update"
)

const deviceID = "sensor-0001"

type config struct {
	device, exec              string
	interval, publish, settle time.Duration
	image                     int
}

func main() {
	var c config
	flag.StringVar(&c.device, "device", "", "device binary to run (default: build examples/device for this machine)")
	flag.StringVar(&c.exec, "exec", "", "emulator to run -device with, e.g. qemu-aarch64 (default: none)")
	flag.DurationVar(&c.interval, "interval", time.Second, "the device's publishing interval")
	flag.DurationVar(&c.publish, "publish", time.Minute, "length of the publishing phases, 10s to 3m")
	flag.DurationVar(&c.settle, "settle", 20*time.Second, "publishing after a renewal and after an update")
	flag.IntVar(&c.image, "image", 1<<20, "size of the update image in bytes")
	flag.Parse()
	if c.publish < 10*time.Second || c.publish > 3*time.Minute || c.settle < 0 || c.interval < time.Second || c.image < 1 || c.image > 1<<30 {
		fmt.Fprintln(os.Stderr, "bench/device: -publish must be 10s to 3m, -interval at least 1s, -image 1 byte to 1 GiB")
		os.Exit(2)
	}
	if err := run(os.Stdout, c); err != nil {
		fmt.Fprintln(os.Stderr, "bench/device:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, c config) (err error) {
	// An interrupt stops the device before the program exits.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	dir, err := os.MkdirTemp("", "d2c-bench-device-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	if c.device == "" {
		c.device = filepath.Join(dir, "d2c-device")
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-tags", "nethttpomithttp2", "-o", c.device,
			"github.com/d2c-iot/d2c/examples/device")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build examples/device: %v\n%s", err, out)
		}
	}
	if c.device, err = filepath.Abs(c.device); err != nil {
		return err
	}
	f, err := newFleet(ctx, dir, c)
	if err != nil {
		return err
	}
	defer f.close()

	// The device, configured as in its package documentation.
	fp := sha256.Sum256(f.ca.Root().Raw)
	conf := strings.Join([]string{
		"identity-dir = " + filepath.Join(dir, "device", "identity"),
		"state-dir = " + filepath.Join(dir, "device", "state"),
		"device-id = " + deviceID,
		"est-url = " + f.est.URL,
		"root-fingerprint = " + hex.EncodeToString(fp[:]),
		"token-file = " + filepath.Join(dir, "token"),
		"broker = " + f.broker.Addr(),
		"cloud-key = " + filepath.Join(dir, "cloud.pub"),
		"command-key = " + filepath.Join(dir, "command.pub"),
		"update-url = " + f.repo.URL,
		"update-root = " + filepath.Join(dir, "root.json"),
		"hardware-class = gateway-v1",
		"slots-dir = " + filepath.Join(dir, "device", "slots"),
		"interval = " + c.interval.String(),
		"", // the file ends with a newline
	}, "\n")
	if err := os.WriteFile(filepath.Join(dir, "device.conf"), []byte(conf), 0o600); err != nil {
		return err
	}
	logPath := filepath.Join(dir, "device.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	argv := []string{c.device, "--config", filepath.Join(dir, "device.conf")}
	if c.exec != "" {
		argv = append(strings.Fields(c.exec), argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	p := &probe{pid: cmd.Process.Pid, guestELF: c.device, emulated: c.exec != "", exited: make(chan struct{})}
	go func() { p.exitErr = cmd.Wait(); close(p.exited) }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if err != nil {
			if b, rerr := os.ReadFile(logPath); rerr == nil {
				err = fmt.Errorf("%w\ndevice log:\n%s", err, tail(b, 40))
			}
		}
	}()

	fmt.Fprintf(w, "device binary: %s (%s bytes)", c.device, thousands(fileSize(c.device)))
	if c.exec != "" {
		fmt.Fprintf(w, ", run by %s", c.exec)
	}
	fmt.Fprintf(w, "\nhost: linux/%s, %s; a reading every %s, update image %s bytes\n\n", runtime.GOARCH, time.Now().UTC().Format("2006-01-02 15:04 MST"),
		c.interval, thousands(int64(c.image)))
	header := "phase                                        VmRSS   RssAnon  RssFile  peak"
	if p.emulated {
		header += "   guest"
	}
	fmt.Fprintln(w, header+"   (MiB)")
	report := func(phase string) error {
		s, err := p.sample()
		if err != nil {
			return fmt.Errorf("%s: %w", phase, err)
		}
		line := fmt.Sprintf("%-42s %7.1f %9.1f %8.1f %5.1f", phase, mib(s.rss), mib(s.anon), mib(s.file), mib(s.hwm))
		if p.emulated {
			line += fmt.Sprintf(" %7.1f", mib(s.guest))
		}
		fmt.Fprintln(w, line)
		p.resetPeak()
		return nil
	}

	// 1. Enrollment (by the short-lived CA), then the first reading.
	started := time.Now()
	if err := p.await(ctx, f.issued, 3*time.Minute, "enrollment"); err != nil {
		return err
	}
	if err := p.await(ctx, f.readings, 2*time.Minute, "a verified reading"); err != nil {
		return err
	}
	if err := report("enrolled, first reading verified"); err != nil {
		return err
	}
	// 2. Publishing.
	if err := p.publishFor(ctx, f, c.publish); err != nil {
		return err
	}
	if err := report(fmt.Sprintf("publishing for %s", c.publish)); err != nil {
		return err
	}
	// 3. The renewal, due c.publish after enrollment plus up to 36 s.
	if err := p.await(ctx, f.issued, time.Until(started.Add(c.publish+2*time.Minute)), "the renewal"); err != nil {
		return err
	}
	if err := p.publishFor(ctx, f, c.settle); err != nil {
		return err
	}
	if err := report(fmt.Sprintf("after a renewal, +%s", c.settle)); err != nil {
		return err
	}
	// 4. An update check that installs a release.
	if err := f.publishRelease(1, c.image); err != nil {
		return err
	}
	if err := f.send(ctx, update.CheckCommand); err != nil {
		return err
	}
	if err := p.await(ctx, f.confirmed, 5*time.Minute, "the update confirmed"); err != nil {
		return err
	}
	if err := p.publishFor(ctx, f, c.settle); err != nil {
		return err
	}
	if err := report(fmt.Sprintf("after an update installed, +%s", c.settle)); err != nil {
		return err
	}
	// 5. An update check that finds nothing, then steady publishing.
	if err := f.send(ctx, update.CheckCommand); err != nil {
		return err
	}
	if err := p.publishFor(ctx, f, c.publish); err != nil {
		return err
	}
	if err := report(fmt.Sprintf("after a check (no update), +%s", c.publish)); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nreadings verified by the cloud: %d\n", f.count())
	return nil
}

// fleet is the cloud side: CA, registrar, broker, verifier, commander and
// update repository.
type fleet struct {
	ca                  *identity.CA
	est, repo           *httptest.Server
	broker              *devbroker.Broker
	cloud, commander    *transport.Cloud
	used                *identity.FileUsedTokens
	commandKey          crypto.Signer
	releases            *repository
	issued              chan struct{} // a certificate was issued
	readings, confirmed chan struct{} // a reading was verified; an update confirmed

	mu       sync.Mutex
	verified int
}

func newFleet(ctx context.Context, dir string, c config) (f *fleet, err error) {
	f = &fleet{issued: make(chan struct{}, 4), readings: make(chan struct{}, 1), confirmed: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	caDir := filepath.Join(dir, "ca")
	if f.ca, err = identity.InitCA(caDir, identity.CAConfig{}); err != nil {
		return nil, err
	}
	// The first certificate comes from the same CA with a one-minute
	// lifetime and a clock ahead, so that it falls due for renewal
	// c.publish after enrollment (renewal at 2/3 of the lifetime, which
	// starts 5 minutes back, plus up to 1/10 of it as jitter: 36 s).
	// Renewed certificates have the default 90 days.
	ahead := c.publish + time.Minute
	short, err := identity.LoadCA(caDir, identity.CAConfig{DeviceValidity: time.Minute, Time: func() time.Time { return time.Now().Add(ahead) }})
	if err != nil {
		return nil, err
	}
	tokenKey, err := identity.ReadKeyFile(filepath.Join(caDir, identity.CATokenKeyFile))
	if err != nil {
		return nil, err
	}
	if f.used, err = identity.OpenUsedTokens(filepath.Join(dir, "used-tokens.state"), nil); err != nil {
		return nil, err
	}
	registrar := func(ca *identity.CA) (*identity.Registrar, error) {
		return identity.NewRegistrar(identity.RegistrarConfig{CA: ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, UsedTokens: f.used})
	}
	enroll, err := registrar(short)
	if err != nil {
		return nil, err
	}
	renew, err := registrar(f.ca)
	if err != nil {
		return nil, err
	}
	registry := &transport.MemoryCertificates{}
	f.est = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := renew
		if r.URL.Path == identity.ESTSimpleEnroll {
			h = enroll
		}
		recordIssued(h, func(cert *x509.Certificate) {
			registry.Add(cert, f.ca.Issuing())
			f.issued <- struct{}{}
		}).ServeHTTP(w, r)
	}))
	serverCert, err := issue(f.ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return f.ca.IssueServer(pub, "127.0.0.1") })
	if err != nil {
		return nil, err
	}
	f.est.TLS = renew.TLSConfig(serverCert)
	f.est.StartTLS()
	token, err := identity.TokenIssuer{Key: tokenKey, Time: short.Now}.Issue(deviceID)
	if err != nil {
		return nil, err
	}

	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Root())
	if f.broker, err = devbroker.Start(ctx, devbroker.Config{
		Certificate: serverCert, ClientRoots: roots, Revocation: f.ca,
		Services: []broker.ServiceRights{
			{Name: "verifier", Read: []string{wire.AllUp}},
			{Name: "commander", Write: []string{wire.TopicPrefix + "+/down/cmd"}},
		},
	}); err != nil {
		return nil, err
	}
	cloudKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return nil, err
	}
	verifier, err := transport.NewVerifier(transport.VerifierConfig{Certificates: registry, DecryptionKey: cloudKey.(*ecdsa.PrivateKey),
		RequireEncryption: true, Policy: identity.DeviceCertPolicy{Roots: roots, Revocations: f.ca}})
	if err != nil {
		return nil, err
	}
	if f.cloud, err = f.dialCloud(ctx, "verifier", roots, verifier); err != nil {
		return nil, err
	}
	if f.commander, err = f.dialCloud(ctx, "commander", roots, nil); err != nil {
		return nil, err
	}
	if f.commandKey, err = identity.GenerateKey(identity.ECDSAP256); err != nil {
		return nil, err
	}

	if f.releases, err = newRepository(); err != nil {
		return nil, err
	}
	f.repo = httptest.NewUnstartedServer(f.releases)
	f.repo.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{serverCert}}
	f.repo.StartTLS()

	files := map[string][]byte{"token": []byte(token), "root.json": f.releases.root}
	for name, pub := range map[string]crypto.PublicKey{"cloud.pub": cloudKey.Public(), "command.pub": f.commandKey.Public()} {
		if files[name], err = identity.MarshalPublicKey(pub); err != nil {
			return nil, err
		}
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (f *fleet) dialCloud(ctx context.Context, name string, roots *x509.CertPool, v *transport.Verifier) (*transport.Cloud, error) {
	cert, err := issue(f.ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return f.ca.IssueService(pub, name) })
	if err != nil {
		return nil, err
	}
	cfg := transport.CloudConfig{Broker: f.broker.Addr(), Certificate: cert, Roots: roots}
	if v != nil {
		cfg.Verifier, cfg.OnRecord = v, f.onRecord
	}
	c, err := transport.DialCloud(ctx, cfg)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.AwaitConnection(wctx); err != nil {
		c.Close(context.Background())
		return nil, err
	}
	return c, nil
}

// onRecord counts verified readings and notes update confirmations.
func (f *fleet) onRecord(_ context.Context, r transport.Record) {
	if r.Stream == update.ReportStream {
		var res update.Result
		if len(r.Readings) > 0 && json.Unmarshal(r.Readings[0].Body, &res) == nil && res.Event == "confirmed" {
			notify(f.confirmed)
		}
		return
	}
	if r.Stream == "temperature" {
		f.mu.Lock()
		f.verified += len(r.Readings)
		f.mu.Unlock()
		notify(f.readings)
	}
}

func (f *fleet) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.verified
}

// send signs a command and sends it to the device.
func (f *fleet) send(ctx context.Context, name string) error {
	env, err := (&transport.CommandSigner{Key: f.commandKey}).Sign(transport.Command{Device: deviceID, Name: name})
	if err != nil {
		return err
	}
	return f.commander.SendCommand(ctx, deviceID, env)
}

func (f *fleet) publishRelease(version uint64, size int) error {
	image := bytes.Repeat([]byte("firmware"), size/8+1)[:size]
	return f.releases.publish(version, image)
}

func (f *fleet) close() {
	for _, c := range []*transport.Cloud{f.cloud, f.commander} {
		if c != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c.Close(ctx)
			cancel()
		}
	}
	if f.broker != nil {
		f.broker.Close()
	}
	for _, s := range []*httptest.Server{f.est, f.repo} {
		if s != nil {
			s.Close()
		}
	}
	if f.used != nil {
		f.used.Close()
	}
}

// recordIssued wraps a registrar and reports every certificate it issues.
func recordIssued(h http.Handler, issued func(*x509.Certificate)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != identity.ESTSimpleEnroll && r.URL.Path != identity.ESTSimpleReenroll {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code == http.StatusOK {
			if certs, err := identity.DecodeCertsOnly(rec.Body.Bytes()); err == nil {
				issued(certs[0])
			}
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
}

func issue(ca *identity.CA, sign func(crypto.PublicKey) (*x509.Certificate, error)) (tls.Certificate, error) {
	k, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	c, err := sign(k.Public())
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw, ca.Issuing().Raw}, PrivateKey: k}, nil
}

// repository is an update repository: root v1, then the releases
// published.
type repository struct {
	mu                  sync.Mutex
	files               map[string][]byte
	root                []byte
	rel, tsKey, rootKey crypto.Signer
	timestamps          uint64
}

func newRepository() (*repository, error) {
	r := &repository{files: map[string][]byte{}}
	for _, k := range []*crypto.Signer{&r.rootKey, &r.rel, &r.tsKey} {
		var err error
		if *k, err = identity.GenerateKey(identity.ECDSAP256); err != nil {
			return nil, err
		}
	}
	root := &update.Root{Version: 1, Expires: time.Now().Add(24 * time.Hour)}
	for role, k := range map[update.Role]crypto.Signer{update.RoleRoot: r.rootKey, update.RoleRelease: r.rel, update.RoleTimestamp: r.tsKey} {
		if err := root.SetRole(role, 1, k.Public()); err != nil {
			return nil, err
		}
	}
	var err error
	if r.root, err = root.Sign(r.rootKey); err != nil {
		return nil, err
	}
	r.files["1.root.json"] = r.root
	return r, nil
}

func (r *repository) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	b, ok := r.files[strings.TrimPrefix(req.URL.Path, "/")]
	r.mu.Unlock()
	if !ok {
		http.NotFound(w, req)
		return
	}
	http.ServeContent(w, req, req.URL.Path, time.Time{}, bytes.NewReader(b))
}

func (r *repository) publish(version uint64, image []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	name := fmt.Sprintf("firmware-%d.bin", version)
	art, err := update.NewArtifact("firmware", name, bytes.NewReader(image), nil)
	if err != nil {
		return err
	}
	rel := &update.Release{Version: version, SecurityCounter: 1, HardwareClass: "gateway-v1",
		Artifacts: []update.Artifact{art}, Expires: time.Now().Add(24 * time.Hour)}
	rb, err := rel.Sign(r.rel)
	if err != nil {
		return err
	}
	r.timestamps++
	ts, err := update.NewTimestamp(r.timestamps, time.Now().Add(time.Hour), rb)
	if err != nil {
		return err
	}
	tb, err := ts.Sign(r.tsKey)
	if err != nil {
		return err
	}
	r.files[name], r.files[fmt.Sprintf("%d.release.json", version)], r.files["timestamp.json"] = image, rb, tb
	return nil
}

// probe reads the device process's memory from /proc.
type probe struct {
	pid      int
	guestELF string
	emulated bool
	exited   chan struct{} // closed when the process has exited
	exitErr  error         // why, once exited is closed
}

// stat is one sample, in bytes.
type stat struct{ rss, anon, file, hwm, guest int64 }

func (p *probe) sample() (stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return stat{}, err
	}
	var s stat
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		dst := map[string]*int64{"VmRSS": &s.rss, "RssAnon": &s.anon, "RssFile": &s.file, "VmHWM": &s.hwm}[k]
		if dst != nil {
			*dst = kB(v)
		}
	}
	if p.emulated {
		if s.guest, err = guestRSS(p.pid, p.guestELF); err != nil {
			return stat{}, err
		}
	}
	return s, nil
}

// resetPeak resets VmHWM to the current RSS (proc(5), clear_refs "5").
func (p *probe) resetPeak() {
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p.pid), []byte("5"), 0)
}

// await waits for an event, failing if the device exits first.
func (p *probe) await(ctx context.Context, c <-chan struct{}, timeout time.Duration, what string) error {
	select {
	case <-c:
		return nil
	case <-p.exited:
		return fmt.Errorf("the device exited (%v) before %s", p.exitErr, what)
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(timeout):
		return fmt.Errorf("no %s within %s", what, timeout.Round(time.Second))
	}
}

// publishFor lets the device publish for d, checking that readings keep
// arriving.
func (p *probe) publishFor(ctx context.Context, f *fleet, d time.Duration) error {
	before := f.count()
	select {
	case <-p.exited:
		return fmt.Errorf("the device exited: %v", p.exitErr)
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
	}
	if d >= 10*time.Second && f.count() == before {
		return fmt.Errorf("no reading verified in %s", d)
	}
	return nil
}

// guestRSS returns the resident bytes of an emulated process's guest.
// qemu-user maps the guest binary at the guest base plus its link address,
// and keeps the guest's address space reserved as one contiguous run of
// mappings from the guest base: the guest's memory is the resident part of
// that run, apart from the emulator's own (its executable, libraries, heap
// and translation buffer, elsewhere). A 32-bit guest always has the run (4
// GiB); a 64-bit one only when the emulator reserves it (qemu's -R).
func guestRSS(pid int, guestELF string) (int64, error) {
	ef, err := elf.Open(guestELF)
	if err != nil {
		return 0, err
	}
	var link uint64 = 1<<64 - 1
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD {
			link = min(link, p.Vaddr&^0xfff)
		}
	}
	ef.Close()
	guest, err := filepath.EvalSymlinks(guestELF)
	if err != nil {
		return 0, err
	}
	type mapping struct {
		start, end, rss uint64
		path            string
	}
	fh, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, err
	}
	defer fh.Close()
	var maps []mapping
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if start, end, ok := strings.Cut(fields[0], "-"); ok && !strings.HasSuffix(fields[0], ":") {
			m := mapping{}
			m.start, _ = strconv.ParseUint(start, 16, 64)
			m.end, _ = strconv.ParseUint(end, 16, 64)
			if len(fields) >= 6 {
				m.path = fields[5]
			}
			maps = append(maps, m)
		} else if fields[0] == "Rss:" && len(fields) >= 2 && len(maps) > 0 {
			maps[len(maps)-1].rss = uint64(kB(fields[1]))
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	base, found := uint64(0), false
	for _, m := range maps {
		if m.path == guest {
			base, found = m.start-link, true
			break
		}
	}
	if !found {
		return 0, errors.New("guest binary not mapped: is -exec an emulator?")
	}
	var sum, end uint64
	for _, m := range maps {
		if m.end <= base {
			continue
		}
		if end != 0 && m.start != end {
			break
		}
		sum, end = sum+m.rss, m.end
	}
	if end-base < 1<<30 {
		return 0, errors.New("the guest address space is not reserved: run a 64-bit guest with qemu's -R (-exec 'qemu-aarch64 -R 16G')")
	}
	return int64(sum), nil
}

// kB parses "  1234 kB" into bytes.
func kB(s string) int64 {
	n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(s), " kB"), 10, 64)
	return n << 10
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
