// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

// The test binary plays other processes of the fleet's cloud: TestMain
// runs the role named in roleEnv and exits. Its configuration comes in
// the environment and in the files of the fleet directory (dirEnv) that
// the test wrote: the fleet CA in ca/, the cloud's decryption key in
// cloud.key, each service's certificate in <name>.pem and <name>.key.
// A role writes logs (JSON lines) to stderr and the few lines the test
// waits for to stdout; it writes nothing else: the store is the sink.
const (
	roleEnv   = "D2C_STORE_TEST_ROLE"   // "verifier", "registrar" or "writer"
	urlEnv    = "D2C_STORE_TEST_URL"    // the store
	dirEnv    = "D2C_STORE_TEST_DIR"    // the fleet directory
	brokerEnv = "D2C_STORE_TEST_BROKER" // host:port of mosquitto (verifier)
	nameEnv   = "D2C_STORE_TEST_NAME"   // the service's name: its certificate files
)

// runRole plays role until SIGTERM (or, for the writer, SIGKILL) and
// returns the exit code.
func runRole(role string) int {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch role {
	case "verifier":
		err = runVerifier(ctx, log)
	case "registrar":
		err = runRegistrar(ctx, log)
	case "writer":
		err = runWriter(ctx)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		log.Error(role+" failed", "err", err.Error())
		return 1
	}
	return 0
}

// verifierReplica wires one verifier: a Verifier whose certificates,
// revocations, replay state and session keys are s, receiving through
// the broker's shared subscription "verifiers".
func verifierReplica(ctx context.Context, s *Store, broker string, roots *x509.CertPool, cert tls.Certificate, cloudKey *ecdsa.PrivateKey,
	onRecord func(transport.Record), onRefused func(topic string, err error)) (*transport.Cloud, *transport.Verifier, error) {
	v, err := transport.NewVerifier(transport.VerifierConfig{Certificates: s, Policy: identity.DeviceCertPolicy{Roots: roots, Revocations: s},
		DecryptionKey: cloudKey, Replay: s, SessionKeys: s})
	if err != nil {
		return nil, nil, err
	}
	c, err := transport.DialCloud(ctx, transport.CloudConfig{Broker: broker, Certificate: cert, Roots: roots, Verifier: v, Group: "verifiers-Qm9yZWQ1c2VjcmV0",
		OnRecord:  func(_ context.Context, r transport.Record) { onRecord(r) },
		OnRefused: onRefused})
	if err != nil {
		return nil, nil, err
	}
	actx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := c.AwaitConnection(actx); err != nil {
		c.Close(context.Background())
		return nil, nil, fmt.Errorf("verifier: %w", err)
	}
	return c, v, nil
}

// refusalKind names the class of a refusal, for the test to count.
func refusalKind(err error) string {
	switch {
	case errors.Is(err, wire.ErrReplay):
		return "replay"
	case errors.Is(err, wire.ErrDecrypt):
		return "decrypt"
	case errors.Is(err, wire.ErrBadSignature):
		return "signature"
	case errors.Is(err, wire.ErrWrongDevice):
		return "wrong-device"
	case errors.Is(err, wire.ErrUnknownDevice):
		return "unknown-device"
	case errors.Is(err, identity.ErrRevoked):
		return "revoked"
	case errors.Is(err, wire.ErrMalformed):
		return "malformed"
	}
	return "other"
}

// runVerifier is a verifier process: it prints "ready" once subscribed,
// logs every record it accepts ("record") and every message it refuses
// ("refused"), its counters when they change ("stats"), and closes on
// SIGTERM.
func runVerifier(ctx context.Context, log *slog.Logger) error {
	dir, name := os.Getenv(dirEnv), os.Getenv(nameEnv)
	ca, err := identity.LoadCA(filepath.Join(dir, "ca"), identity.CAConfig{})
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key"))
	if err != nil {
		return err
	}
	k, err := identity.ReadKeyFile(filepath.Join(dir, "cloud.key"))
	if err != nil {
		return err
	}
	cloudKey, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return fmt.Errorf("cloud key is a %T", k)
	}
	s, err := Open(ctx, Config{URL: os.Getenv(urlEnv)})
	if err != nil {
		return err
	}
	defer s.Close()
	c, v, err := verifierReplica(ctx, s, os.Getenv(brokerEnv), roots, cert, cloudKey,
		func(r transport.Record) {
			log.Info("record", "device", r.Device, "boot", r.Boot, "seq", r.Seq)
		},
		func(topic string, err error) {
			log.Warn("refused", "topic", topic, "kind", refusalKind(err), "err", err.Error())
		})
	if err != nil {
		return err
	}
	fmt.Println("ready")
	logStats := func(st transport.VerifierStats) {
		log.Info("stats", "accepted", st.Accepted, "duplicates", st.Duplicates, "replays", st.Replays, "refused", st.Refused, "keys", st.KeysDelivered)
	}
	var last transport.VerifierStats
	for tick := time.NewTicker(50 * time.Millisecond); ctx.Err() == nil; {
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
		if st := v.Stats(); st != last {
			logStats(st)
			last = st
		}
	}
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Close(cctx)
	logStats(v.Stats())
	return nil
}

// runRegistrar is a registrar process: EST over HTTPS on a free port of
// 127.0.0.1, recording into the store; it prints "addr <host:port>" once
// listening, and shuts down on SIGTERM.
func runRegistrar(ctx context.Context, log *slog.Logger) error {
	dir, name := os.Getenv(dirEnv), os.Getenv(nameEnv)
	ca, err := identity.LoadCA(filepath.Join(dir, "ca"), identity.CAConfig{})
	if err != nil {
		return err
	}
	tokenKey, err := identity.ReadKeyFile(filepath.Join(dir, "ca", identity.CATokenKeyFile))
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key"))
	if err != nil {
		return err
	}
	s, err := Open(ctx, Config{URL: os.Getenv(urlEnv)})
	if err != nil {
		return err
	}
	defer s.Close()
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, Registry: s, Logger: log})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: reg, TLSConfig: reg.TLSConfig(cert), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(l, "", "") }()
	fmt.Printf("addr %s\n", l.Addr())
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// writeTLSFiles writes c as <name>.pem (the chain) and <name>.key in dir,
// for a role to load.
func writeTLSFiles(t *testing.T, dir, name string, c tls.Certificate) {
	t.Helper()
	var chain []byte
	for _, der := range c.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".pem"), chain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteKeyFile(filepath.Join(dir, name+".key"), c.PrivateKey.(crypto.Signer)); err != nil {
		t.Fatal(err)
	}
}

// child is this test binary started again in a role.
type child struct {
	name   string
	cmd    *exec.Cmd
	stdout lines
	stderr syncBuffer
	done   chan struct{} // closed once the process has exited and its output is read
}

// startChild starts the test binary in role with the environment env
// ("KEY=value"). The process is killed at the end of the test at the
// latest; if the test failed, its stderr is logged.
func startChild(t *testing.T, name, role string, env ...string) *child {
	t.Helper()
	c := &child{name: name, done: make(chan struct{})}
	c.stdout.more = make(chan struct{}, 1)
	c.cmd = exec.Command(os.Args[0], "-test.run=^$", "-test.count=1")
	c.cmd.Env = append(os.Environ(), append([]string{roleEnv + "=" + role}, env...)...)
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			t.Logf("%s (pid %d) stderr:\n%s", name, c.cmd.Process.Pid, clipLog(c.stderr.String()))
		}
	})
	return c
}

// clipLog keeps the end of a long log.
func clipLog(s string) string {
	const keep = 16 << 10
	if len(s) > keep {
		return "…" + s[len(s)-keep:]
	}
	return s
}

// kill ends the process with SIGKILL, as a crash or a power cut would,
// and waits for it.
func (c *child) kill() {
	c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

// stop asks the process to end (SIGTERM) and waits for it, killing it
// after 10 s.
func (c *child) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.kill()
	}
}

// await waits for a line of stdout beginning with prefix and returns it;
// it fails the test if the process exits or time runs out first.
func (c *child) await(t *testing.T, prefix string, within time.Duration) string {
	t.Helper()
	deadline := time.After(within)
	for {
		if l, ok := c.stdout.find(prefix); ok {
			return l
		}
		select {
		case <-c.stdout.more:
		case <-c.done:
			if l, ok := c.stdout.find(prefix); ok {
				return l
			}
			t.Fatalf("%s exited (%v) before printing %q; stderr:\n%s", c.name, c.cmd.ProcessState, prefix, clipLog(c.stderr.String()))
		case <-deadline:
			t.Fatalf("%s did not print %q within %v; stderr:\n%s", c.name, prefix, within, clipLog(c.stderr.String()))
		}
	}
}

// logEntry is one JSON log line of a role.
type logEntry struct {
	Msg        string `json:"msg"`
	Op         string `json:"op"`
	Device     string `json:"device"`
	Kind       string `json:"kind"`
	Topic      string `json:"topic"`
	Err        string `json:"err"`
	Accepted   uint64 `json:"accepted"`
	Duplicates uint64 `json:"duplicates"`
	Replays    uint64 `json:"replays"`
	Refused    uint64 `json:"refused"`
}

// logs parses the process's stderr so far.
func (c *child) logs() []logEntry {
	var out []logEntry
	sc := bufio.NewScanner(strings.NewReader(c.stderr.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e logEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg != "" {
			out = append(out, e)
		}
	}
	return out
}

// lines collects a process's stdout line by line.
type lines struct {
	mu      sync.Mutex
	partial []byte
	all     []string
	more    chan struct{} // signalled when a line arrives
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.all = append(l.all, string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	l.mu.Unlock()
	select {
	case l.more <- struct{}{}:
	default:
	}
	return len(p), nil
}

// find returns the first complete line beginning with prefix.
func (l *lines) find(prefix string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.all {
		if strings.HasPrefix(s, prefix) {
			return s, true
		}
	}
	return "", false
}

// last returns the last complete line beginning with prefix.
func (l *lines) last(prefix string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.all) - 1; i >= 0; i-- {
		if strings.HasPrefix(l.all[i], prefix) {
			return l.all[i], true
		}
	}
	return "", false
}

// syncBuffer is a bytes.Buffer safe for one writer and many readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
