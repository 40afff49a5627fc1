// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command transport measures what d2c's telemetry path costs next to what
// it is built from, and prints the comparisons side by side, in one run:
//
//   - the device's seal (CBOR encode + ES256 sign, optionally encrypt)
//     against the raw ECDSA P-256 signature, and the cloud's verify +
//     classify against the raw verification; a bare go-jose + CBOR
//     pipeline (no d2c code) as a second baseline; allocations per
//     envelope;
//   - bytes on the wire per envelope against the body bytes it carries;
//   - the durable outbox: group commit (many appenders share each fsync)
//     against one fsync per message and against a memory file system;
//   - QoS 1 messages per second through a mosquitto it starts on
//     127.0.0.1 (mutual TLS, configuration from broker.MosquittoConfig):
//     the SDK client (signed, durable) against bare paho (unsigned payload
//     of the same size, same Receive Maximum window) and against the
//     pipeline a developer would write for the same guarantees without d2c
//     (bare paho + a go-jose signature over a CBOR record + one fsync per
//     message before it is published), and verified readings per second
//     at the cloud, one reading and 100 readings per envelope.
//
// It uses only d2c's public API. Everything it creates (a fleet CA, a
// registrar on 127.0.0.1, the device's state, the broker's files) lives in
// one temporary directory, removed before it exits, and the broker is
// killed at the end. mosquitto 2.x must be installed (Debian package
// mosquitto). Run it with:
//
//	go run ./bench/transport [-benchtime 500ms] [-count 3]
//
// Each crypto measurement and its baseline run alternately -count times,
// for about -benchtime each, and the fastest run of each is printed; the
// rest use fixed message counts. The whole run takes about a minute.
package main

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
	"encoding/binary"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/fxamacker/cbor/v2"
	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/bench/internal/benchutil"
	"github.com/d2c-iot/d2c/bench/internal/fstype"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/outbox"
	"github.com/d2c-iot/d2c/transport/wire"
)

const (
	deviceID = "bench-1"
	stream   = "temp"
	bodySize = 150 // bytes of one reading's body
)

func main() {
	benchtime := flag.Duration("benchtime", 500*time.Millisecond, "how long to run each crypto measurement")
	count := flag.Int("count", 3, "how many times to run each crypto measurement and its baseline, alternately; the fastest of each counts")
	only := flag.String("sections", "1234", "which sections to run: 1 crypto, 2 wire bytes, 3 outbox, 4 through mosquitto")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(pf)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench/transport:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	if *benchtime <= 0 || *benchtime > 5*time.Second {
		fmt.Fprintln(os.Stderr, "bench/transport: -benchtime must be in (0, 5s]")
		os.Exit(2)
	}
	if *count < 1 || *count > 10 {
		fmt.Fprintln(os.Stderr, "bench/transport: -count must be 1 to 10")
		os.Exit(2)
	}
	testing.Init()
	if err := flag.Set("test.benchtime", benchtime.String()); err != nil {
		fmt.Fprintln(os.Stderr, "bench/transport:", err)
		os.Exit(2)
	}
	if err := run(os.Stdout, *benchtime, *count, *only); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench/transport:", err)
		os.Exit(1)
	}
}

// fleet is a CA, a registrar served over HTTPS on 127.0.0.1, one enrolled
// device and a cloud key, all in a temporary directory.
type fleet struct {
	dir      string
	ca       *identity.CA
	tokenKey crypto.Signer
	server   *http.Server
	roots    *x509.CertPool
	store    *identity.Store
	device   *identity.Identity
	certs    *transport.MemoryCertificates
	cloud    *ecdsa.PrivateKey
}

func newFleet() (_ *fleet, err error) {
	dir, err := os.MkdirTemp("", "d2c-bench-transport-")
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
	if f.tokenKey, err = identity.ReadKeyFile(filepath.Join(dir, "ca", identity.CATokenKeyFile)); err != nil {
		return nil, err
	}
	used, err := identity.OpenUsedTokens(filepath.Join(dir, "used-tokens.state"), nil)
	if err != nil {
		return nil, err
	}
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: f.ca,
		TokenKeys: []crypto.PublicKey{f.tokenKey.Public()}, UsedTokens: used})
	if err != nil {
		return nil, err
	}
	srvCert, err := f.serverCert()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f.server = &http.Server{Handler: reg, TLSConfig: reg.TLSConfig(srvCert), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = f.server.ServeTLS(ln, "", "") }()
	f.roots = x509.NewCertPool()
	f.roots.AddCert(f.ca.Root())

	// Enroll the device over EST, as a real one does, and register its
	// certificate with the cloud.
	if f.store, err = identity.OpenStore(filepath.Join(dir, "device"), identity.StoreConfig{}); err != nil {
		return nil, err
	}
	tok, err := identity.TokenIssuer{Key: f.tokenKey}.Issue(deviceID)
	if err != nil {
		return nil, err
	}
	fp := sha256.Sum256(f.ca.Root().Raw)
	est := identity.ESTClient{URL: "https://" + ln.Addr().String(), BootstrapFingerprint: fp[:]}
	if f.device, err = f.store.Enroll(context.Background(), est, identity.EnrollRequest{DeviceID: deviceID, Auth: identity.EnrollAuth{Token: tok}}); err != nil {
		return nil, err
	}
	f.certs.Add(f.device.Chain...)
	f.cloud, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return f, err
}

func (f *fleet) serverCert() (tls.Certificate, error) {
	k, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	c, err := f.ca.IssueServer(k.Public(), "127.0.0.1")
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw, f.ca.Issuing().Raw}, PrivateKey: k}, nil
}

func (f *fleet) serviceCert(name string) (tls.Certificate, error) {
	k, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	c, err := f.ca.IssueService(k.Public(), name)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw, f.ca.Issuing().Raw}, PrivateKey: k}, nil
}

func (f *fleet) verifier() (*transport.Verifier, error) {
	return transport.NewVerifier(transport.VerifierConfig{Certificates: f.certs,
		Policy: identity.DeviceCertPolicy{Roots: f.roots, Revocations: f.ca}, DecryptionKey: f.cloud})
}

func (f *fleet) close() {
	if f.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = f.server.Shutdown(ctx)
		cancel()
	}
	_ = os.RemoveAll(f.dir)
}

// The encryption modes, by name.
func (f *fleet) encryption(mode string) *transport.Encryption {
	switch mode {
	case "session":
		return &transport.Encryption{CloudKey: &f.cloud.PublicKey, CloudKeyID: "cloud-1"}
	case "permsg":
		return &transport.Encryption{CloudKey: &f.cloud.PublicKey, CloudKeyID: "cloud-1", Mode: transport.PerMessage}
	}
	return nil
}

var body = bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz"), 5)[:bodySize]

func record(seq uint64, n int) transport.Record {
	now := time.Now()
	rs := make([]transport.Reading, n)
	for i := range rs {
		rs[i] = transport.Reading{Time: now, Body: body}
	}
	return transport.Record{Stream: stream, Boot: 1, Seq: seq, Time: now, Readings: rs}
}

// sealBench seals envelopes of n readings with enc.
func (f *fleet) sealBench(mode string, n int) func(b *testing.B) error {
	return func(b *testing.B) error {
		s, err := transport.NewSealer(deviceID, f.device.Key, f.encryption(mode), nil)
		if err != nil {
			return err
		}
		if _, err := s.Seal(record(0, n)); err != nil { // starts the session key, if any
			return err
		}
		rec := record(1, n)
		b.ResetTimer()
		for b.Loop() {
			rec.Seq++
			if _, err := s.Seal(rec); err != nil {
				return err
			}
		}
		return nil
	}
}

// verifyBench verifies fresh envelopes (a new seq each, so that the replay
// window accepts every one), sealed ahead 512 at a time with the timer
// stopped.
func (f *fleet) verifyBench(mode string, n int) func(b *testing.B) error {
	return func(b *testing.B) error {
		s, err := transport.NewSealer(deviceID, f.device.Key, f.encryption(mode), nil)
		if err != nil {
			return err
		}
		v, err := f.verifier()
		if err != nil {
			return err
		}
		ctx := context.Background()
		topic := wire.TelemetryTopic(deviceID, stream)
		var pool [][]byte
		var seq uint64
		refill := func() error {
			pool = pool[:0]
			for range 512 {
				out, err := s.Seal(record(seq, n))
				if err != nil {
					return err
				}
				seq++
				if out.KeyDelivery != nil {
					if _, err := v.Verify(ctx, wire.KeyTopic(deviceID), out.KeyDelivery); err != nil {
						return err
					}
				}
				pool = append(pool, out.Envelope)
			}
			return nil
		}
		if err := refill(); err != nil {
			return err
		}
		if _, err := v.Verify(ctx, topic, pool[0]); err != nil { // chain verification, then cached
			return err
		}
		i := 1
		b.ResetTimer()
		for b.Loop() {
			if i == len(pool) {
				b.StopTimer()
				if err := refill(); err != nil {
					return err
				}
				i = 0
				b.StartTimer()
			}
			if _, err := v.Verify(ctx, topic, pool[i]); err != nil {
				return err
			}
			i++
		}
		return nil
	}
}

// joseRecord is the record of the bare go-jose pipeline.
type joseRecord struct {
	Device   string        `cbor:"1,keyasint"`
	Stream   string        `cbor:"2,keyasint"`
	Boot     uint64        `cbor:"3,keyasint"`
	Seq      uint64        `cbor:"4,keyasint"`
	Time     int64         `cbor:"5,keyasint"`
	Readings []joseReading `cbor:"6,keyasint"`
}

type joseReading struct {
	_    struct{} `cbor:",toarray"`
	Time int64
	Body []byte
}

func newJoseRecord() joseRecord {
	ms := time.Now().UnixMilli()
	return joseRecord{Device: deviceID, Stream: stream, Boot: 1, Time: ms, Readings: []joseReading{{Time: ms, Body: body}}}
}

type row struct {
	name, baseName string
	per            float64 // readings per envelope, for the readings/s column
	op, base       func(b *testing.B) error
}

func (f *fleet) cryptoRows() []row {
	digest := sha256.Sum256(body)
	rawSig, _ := f.device.Key.Sign(rand.Reader, digest[:], crypto.SHA256)
	pub := f.device.Key.Public().(*ecdsa.PublicKey)
	rawSign := func(b *testing.B) error {
		for b.Loop() {
			d := sha256.Sum256(body)
			if _, err := f.device.Key.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
				return err
			}
		}
		return nil
	}
	rawVerify := func(b *testing.B) error {
		for b.Loop() {
			d := sha256.Sum256(body)
			if !ecdsa.VerifyASN1(pub, d[:], rawSig) {
				return errors.New("raw signature does not verify")
			}
		}
		return nil
	}
	joseSign := func(b *testing.B) error {
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: f.device.Key}, nil)
		if err != nil {
			return err
		}
		rec := newJoseRecord()
		for b.Loop() {
			rec.Seq++
			payload, err := cbor.Marshal(rec)
			if err != nil {
				return err
			}
			jws, err := signer.Sign(payload)
			if err != nil {
				return err
			}
			if _, err := jws.CompactSerialize(); err != nil {
				return err
			}
		}
		return nil
	}
	joseVerify := func(b *testing.B) error {
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: f.device.Key}, nil)
		if err != nil {
			return err
		}
		payload, err := cbor.Marshal(newJoseRecord())
		if err != nil {
			return err
		}
		jws, err := signer.Sign(payload)
		if err != nil {
			return err
		}
		compact, err := jws.CompactSerialize()
		if err != nil {
			return err
		}
		for b.Loop() {
			obj, err := jose.ParseSignedCompact(compact, []jose.SignatureAlgorithm{jose.ES256})
			if err != nil {
				return err
			}
			p, err := obj.Verify(pub)
			if err != nil {
				return err
			}
			var rec joseRecord
			if err := cbor.Unmarshal(p, &rec); err != nil {
				return err
			}
		}
		return nil
	}
	const sign, verify = "raw P-256 sign", "raw P-256 verify"
	return []row{
		{"seal signed (encode + sign)", sign, 1, f.sealBench("", 1), rawSign},
		{"go-jose + cbor send, no d2c", sign, 1, joseSign, rawSign},
		{"seal session key (+ A256GCM)", sign, 1, f.sealBench("session", 1), rawSign},
		{"seal per message (+ ECDH-ES)", sign, 1, f.sealBench("permsg", 1), rawSign},
		{"seal batch of 100 readings", sign, 100, f.sealBench("", 100), rawSign},
		{"verify + classify signed", verify, 1, f.verifyBench("", 1), rawVerify},
		{"go-jose + cbor receive, no d2c", verify, 1, joseVerify, rawVerify},
		{"verify + classify session key", verify, 1, f.verifyBench("session", 1), rawVerify},
		{"verify + classify per message", verify, 1, f.verifyBench("permsg", 1), rawVerify},
		{"verify + classify batch of 100", verify, 100, f.verifyBench("", 100), rawVerify},
	}
}

func run(w io.Writer, benchtime time.Duration, count int, sections string) error {
	start := time.Now()
	f, err := newFleet()
	if err != nil {
		return err
	}
	defer f.close()
	fmt.Fprintf(w, "d2c transport benchmark: %s %s/%s, %s, %d CPUs, benchtime %v, count %d, %d-byte reading bodies\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, benchutil.CPUModel(), runtime.NumCPU(), benchtime, count, bodySize)

	// 1. Crypto path against its primitives. Each operation and its
	// baseline run alternately count times and the fastest run of each
	// counts, so that a ratio compares neighbours and a burst of load from
	// elsewhere on the machine weighs less.
	if strings.Contains(sections, "1") {
		if err := f.crypto(w, count); err != nil {
			return err
		}
	}
	if strings.Contains(sections, "2") {
		if err := f.wireBytes(w); err != nil {
			return err
		}
	}
	if strings.Contains(sections, "3") {
		if err := f.outbox(w); err != nil {
			return err
		}
	}
	if strings.Contains(sections, "4") {
		if err := f.broker(w); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "\ntotal run time %.1f s\n", time.Since(start).Seconds())
	return nil
}

// crypto measures the envelope crypto path against its primitives.
func (f *fleet) crypto(w io.Writer, count int) error {
	fmt.Fprintf(w, "\n1. Envelope crypto path (one envelope per op)\n\n")
	const rowFmt = "%-32s %9s %8s %11s %9s | %-16s %9s | %6s\n"
	fmt.Fprintf(w, rowFmt, "operation", "ns/op", "allocs", "envs/s", "readings/s", "baseline", "ns/op", "ratio")
	for _, r := range f.cryptoRows() {
		var op, base testing.BenchmarkResult
		for i := range count {
			o, err := benchutil.Measure(r.op)
			if err != nil {
				return fmt.Errorf("%s: %w", r.name, err)
			}
			b, err := benchutil.Measure(r.base)
			if err != nil {
				return fmt.Errorf("%s: %w", r.baseName, err)
			}
			if i == 0 || o.NsPerOp() < op.NsPerOp() {
				op = o
			}
			if i == 0 || b.NsPerOp() < base.NsPerOp() {
				base = b
			}
		}
		fmt.Fprintf(w, rowFmt, r.name, strconv.FormatInt(op.NsPerOp(), 10), strconv.FormatInt(op.AllocsPerOp(), 10),
			fmt.Sprintf("%.0f", perSecond(op.NsPerOp(), 1)), fmt.Sprintf("%.0f", perSecond(op.NsPerOp(), r.per)),
			r.baseName, strconv.FormatInt(base.NsPerOp(), 10), fmt.Sprintf("%.2fx", float64(op.NsPerOp())/float64(max(base.NsPerOp(), 1))))
	}
	fmt.Fprintln(w, "\nfastest of the runs; ratio = operation ns/op / baseline ns/op; raw = SHA-256 of the body + ECDSA P-256\nthrough crypto.Signer (sign) or ecdsa.VerifyASN1 (verify); allocs = allocations per envelope")
	return nil
}

func perSecond(nsPerOp int64, per float64) float64 {
	if nsPerOp == 0 {
		return 0
	}
	return 1e9 / float64(nsPerOp) * per
}

// wireBytes prints the size of each kind of envelope against its body.
func (f *fleet) wireBytes(w io.Writer) error {
	fmt.Fprintf(w, "\n2. Bytes on the wire per envelope (MQTT payload; topic %q, %d bytes, not counted)\n\n",
		wire.TelemetryTopic(deviceID, stream), len(wire.TelemetryTopic(deviceID, stream)))
	const rowFmt = "%-28s %10s %10s %10s %12s\n"
	fmt.Fprintf(w, rowFmt, "envelope", "body B", "wire B", "wire/body", "wire/reading")
	for _, c := range []struct {
		name, mode string
		n          int
	}{{"signed", "", 1}, {"session key", "session", 1}, {"per message", "permsg", 1}, {"signed, batch of 100", "", 100}, {"session key, batch of 100", "session", 100}} {
		s, err := transport.NewSealer(deviceID, f.device.Key, f.encryption(c.mode), nil)
		if err != nil {
			return err
		}
		out, err := s.Seal(record(1, c.n))
		if err != nil {
			return err
		}
		wire := len(out.Envelope)
		bodyBytes := c.n * bodySize
		fmt.Fprintf(w, rowFmt, c.name, strconv.Itoa(bodyBytes), strconv.Itoa(wire), fmt.Sprintf("%.2f", float64(wire)/float64(bodyBytes)),
			fmt.Sprintf("%.1f", float64(wire)/float64(c.n)))
		if out.KeyDelivery != nil && c.n == 1 {
			fmt.Fprintf(w, "  (a session key delivery, %d bytes, goes before the first envelope of each key: every 100,000 envelopes or 24 h)\n", len(out.KeyDelivery))
		}
	}
	return nil
}

// outbox compares durable appends with group commit, one fsync per
// message, and the same group commit on a memory file system.
func (f *fleet) outbox(w io.Writer) error {
	s, err := transport.NewSealer(deviceID, f.device.Key, nil, nil)
	if err != nil {
		return err
	}
	out, err := s.Seal(record(1, 1))
	if err != nil {
		return err
	}
	msg := outbox.Message{Topic: wire.TelemetryTopic(deviceID, stream), Payload: out.Envelope, Stream: stream}
	diskDir := filepath.Join(f.dir, "outbox-disk")
	memBase := "/dev/shm"
	memNote := "tmpfs at /dev/shm"
	if fi, err := os.Stat(memBase); err != nil || !fi.IsDir() {
		memBase, memNote = f.dir, "no /dev/shm: same directory as the disk case, "+fstype.Of(f.dir)
	}
	memDir, err := os.MkdirTemp(memBase, "d2c-bench-outbox-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(memDir)

	fmt.Fprintf(w, "\n3. Durable outbox: Append of one %d-byte signed envelope, returning once stored\n\n", len(out.Envelope))
	const rowFmt = "%-44s %8s %10s %10s %9s\n"
	fmt.Fprintf(w, rowFmt, "case", "msgs", "msgs/s", "us/msg", "vs fsync")
	type outboxCase struct {
		name      string
		dir       string
		appenders int
		msgs      int
	}
	cases := []outboxCase{
		{fmt.Sprintf("fsync per message (1 appender, %s)", fstype.Of(f.dir)), filepath.Join(diskDir, "serial"), 1, 400},
		{fmt.Sprintf("group commit (64 appenders, %s)", fstype.Of(f.dir)), filepath.Join(diskDir, "group"), 64, 20000},
		{"group commit (64 appenders, memory)", filepath.Join(memDir, "group"), 64, 20000},
	}
	var serialRate float64
	for i, c := range cases {
		rate, err := appendRate(c.dir, msg, c.appenders, c.msgs)
		if err != nil {
			return fmt.Errorf("outbox %s: %w", c.name, err)
		}
		if i == 0 {
			serialRate = rate
		}
		fmt.Fprintf(w, rowFmt, c.name, strconv.Itoa(c.msgs), fmt.Sprintf("%.0f", rate), fmt.Sprintf("%.1f", 1e6/rate),
			fmt.Sprintf("%.1fx", rate/serialRate))
	}
	fmt.Fprintf(w, "\ndisk: %s (%s); memory: %s (%s)\n", f.dir, fstype.Of(f.dir), memDir, memNote)
	return nil
}

// appendRate opens an outbox in dir and appends msgs messages from
// appenders goroutines; it returns messages stored per second.
func appendRate(dir string, msg outbox.Message, appenders, msgs int) (float64, error) {
	o, err := outbox.Open(outbox.Config{Dir: dir, MaxMessages: msgs + 1, MaxBytes: int64(msgs+1) * int64(len(msg.Topic)+len(msg.Payload))})
	if err != nil {
		return 0, err
	}
	defer o.Close()
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, appenders)
	start := time.Now()
	for range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(msgs) {
				if _, err := o.Append(ctx, msg); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	if st := o.Stats(); st.Appended != uint64(msgs) {
		return 0, fmt.Errorf("%d messages stored, want %d", st.Appended, msgs)
	}
	return float64(msgs) / elapsed.Seconds(), nil
}

// mosquitto is a broker process started for the run.
type mosquitto struct {
	addr string
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{}
}

// startMosquitto writes the configuration broker.MosquittoConfig
// generates, the certificates and the ACL in dir, starts mosquitto on a
// free 127.0.0.1 port and waits until it accepts connections.
func (f *fleet) startMosquitto(dir string, services []broker.ServiceRights) (*mosquitto, error) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
			if _, serr := os.Stat(filepath.Join(d, "mosquitto")); serr == nil {
				bin, err = filepath.Join(d, "mosquitto"), nil
				break
			}
		}
	}
	if err != nil {
		return nil, errors.New("mosquitto not found (install the Debian package mosquitto)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	write := func(name string, data []byte) (string, error) {
		p := filepath.Join(dir, name)
		return p, os.WriteFile(p, data, 0o600)
	}
	srv, err := f.serverCert()
	if err != nil {
		return nil, err
	}
	keyPEM, err := identity.MarshalPrivateKey(srv.PrivateKey.(crypto.Signer))
	if err != nil {
		return nil, err
	}
	crl, err := f.ca.CRL()
	if err != nil {
		return nil, err
	}
	mc := broker.MosquittoConfig{ACLFile: filepath.Join(dir, "acl"), Services: services}
	if mc.CAFile, err = write("ca.pem", identity.EncodeCertificatesPEM(f.ca.Root(), f.ca.Issuing())); err != nil {
		return nil, err
	}
	if mc.CertFile, err = write("server.pem", append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate[0]}),
		identity.EncodeCertificatesPEM(f.ca.Issuing())...)); err != nil {
		return nil, err
	}
	if mc.KeyFile, err = write("server.key", keyPEM); err != nil {
		return nil, err
	}
	if mc.CRLFile, err = write("crl.pem", pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl})); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mc.Listen = ln.Addr().String()
	ln.Close()
	conf, err := mc.Conf()
	if err != nil {
		return nil, err
	}
	acl, err := mc.ACL()
	if err != nil {
		return nil, err
	}
	if _, err := write("acl", []byte(acl)); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		// As root, mosquitto switches to the user "mosquitto" before it
		// reads the TLS files, which are private to this user.
		conf += "user root\n"
	}
	confPath, err := write("mosquitto.conf", []byte(conf))
	if err != nil {
		return nil, err
	}
	m := &mosquitto{addr: mc.Listen, out: new(bytes.Buffer), done: make(chan struct{})}
	m.cmd = exec.Command(bin, "-c", confPath)
	m.cmd.Stdout, m.cmd.Stderr = m.out, m.out
	m.cmd.Dir = dir
	if err := m.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = m.cmd.Wait(); close(m.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-m.done:
			return nil, fmt.Errorf("mosquitto exited: %s", m.out)
		default:
		}
		if c, err := net.DialTimeout("tcp", m.addr, 200*time.Millisecond); err == nil {
			c.Close()
			return m, nil
		}
		if time.Now().After(deadline) {
			m.stop()
			return nil, fmt.Errorf("mosquitto not accepting on %s after 10 s: %s", m.addr, m.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (m *mosquitto) stop() {
	_ = m.cmd.Process.Kill()
	<-m.done
}

// pahoConnect opens a bare paho client over mutual TLS with cert: the
// baseline a developer would write, with paho's recommended thread-safe
// wrapper around tls.Conn.
func (f *fleet) pahoConnect(ctx context.Context, addr, clientID string, cert tls.Certificate, onPublish func(paho.PublishReceived) (bool, error)) (*paho.Client, *paho.Connack, error) {
	conn, err := tls.Dial("tcp", addr, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.roots, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{cert}})
	if err != nil {
		return nil, nil, err
	}
	cfg := paho.ClientConfig{ClientID: clientID, Conn: packets.NewThreadSafeConn(conn)}
	if onPublish != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){onPublish}
	}
	c := paho.NewClient(cfg)
	ack, err := c.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true})
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return c, ack, nil
}

// broker runs the QoS 1 comparisons through a mosquitto started here.
func (f *fleet) broker(w io.Writer) error {
	services := []broker.ServiceRights{{Name: "sink", Read: []string{wire.AllUp}}, {Name: "verifier", Read: []string{wire.AllUp}}}
	m, err := f.startMosquitto(filepath.Join(f.dir, "mosquitto"), services)
	if err != nil {
		return err
	}
	defer m.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	// A subscriber that receives everything (QoS 1) and counts it, so that
	// the broker answers PUBACK 0 (a PUBACK "no matching subscribers" makes
	// the SDK keep the message and retry later).
	sinkCert, err := f.serviceCert("sink")
	if err != nil {
		return err
	}
	var sunk atomic.Int64
	sink, _, err := f.pahoConnect(ctx, m.addr, identity.ServicePrefix+"sink", sinkCert, func(paho.PublishReceived) (bool, error) {
		sunk.Add(1)
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("sink: %w", err)
	}
	if _, err := sink.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: wire.AllUp, QoS: 1}}}); err != nil {
		return fmt.Errorf("sink subscribe: %w", err)
	}

	s, err := transport.NewSealer(deviceID, f.device.Key, nil, nil)
	if err != nil {
		return err
	}
	sample, err := s.Seal(record(1, 1))
	if err != nil {
		return err
	}
	const n = 10000
	fmt.Fprintf(w, "\n4. QoS 1 through mosquitto (%s) on %s, mutual TLS 1.3, broker and clients on this machine\n\n", mosquittoVersion(), m.addr)
	pid := m.cmd.Process.Pid
	// The rows are printed once all are measured, each with its rate over
	// the unsigned bare-paho row's.
	type qosRow struct {
		name   string
		secs   float64
		c0, c1 cpuSample
	}
	var rows []qosRow

	// (a) The SDK client: each Publish seals (ES256), stores durably
	// (group commit), and the delivery loop publishes at QoS 1 within the
	// broker's Receive Maximum, one write per packet.
	stateDir := filepath.Join(f.dir, "device-state")
	c0 := sampleCPU(pid)
	sdkSecs, err := f.sdkPublish(ctx, m.addr, stateDir, n, 32, 1, nil)
	if err != nil {
		return fmt.Errorf("SDK client: %w", err)
	}
	rows = append(rows, qosRow{"SDK client: signed, durable (32 publishing goroutines)", sdkSecs, c0, sampleCPU(pid)})

	// (a') The SDK client delivering a backlog sealed and stored while the
	// broker was unreachable: the delivery path alone.
	var b0, b1 cpuSample
	backlogSecs, err := f.sdkBacklog(ctx, m.addr, stateDir, n, func() { b0 = sampleCPU(pid) }, func() { b1 = sampleCPU(pid) })
	if err != nil {
		return fmt.Errorf("SDK backlog: %w", err)
	}
	rows = append(rows, qosRow{"SDK client: delivery of a stored backlog only", backlogSecs, b0, b1})

	// (b) Bare paho: the same device certificate and topic, an unsigned
	// payload of the signed envelope's size, QoS 1, as many publishes in
	// flight as the broker's Receive Maximum.
	payload := bytes.Repeat([]byte{'x'}, len(sample.Envelope))
	dev, ack, err := f.pahoConnect(ctx, m.addr, deviceID, f.device.TLSCertificate(), nil)
	if err != nil {
		return fmt.Errorf("bare paho: %w", err)
	}
	window := 65535
	if ack.Properties != nil && ack.Properties.ReceiveMaximum != nil {
		window = int(*ack.Properties.ReceiveMaximum)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	var pubErr atomic.Pointer[error]
	topic := wire.TelemetryTopic(deviceID, stream)
	p0 := sampleCPU(pid)
	start := time.Now()
	for range window {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= n {
				resp, err := dev.Publish(ctx, &paho.Publish{QoS: 1, Topic: topic, Payload: payload,
					Properties: &paho.PublishProperties{ContentType: wire.ContentType}})
				if err == nil && resp != nil && resp.ReasonCode >= 0x80 {
					err = fmt.Errorf("PUBACK reason 0x%02x", resp.ReasonCode)
				}
				if err != nil {
					pubErr.Store(&err)
					return
				}
			}
		}()
	}
	wg.Wait()
	pahoSecs := time.Since(start).Seconds()
	p1 := sampleCPU(pid)
	_ = dev.Disconnect(&paho.Disconnect{ReasonCode: 0})
	if e := pubErr.Load(); e != nil {
		return fmt.Errorf("bare paho: %w", *e)
	}
	rows = append(rows, qosRow{fmt.Sprintf("bare paho: unsigned %d-byte payload, window %d", len(payload), window), pahoSecs, p0, p1})

	// (c) The same guarantees without d2c: bare paho as in (b), a go-jose
	// signature over a CBOR record, and one fsync per message.
	var n0, n1 cpuSample
	naiveSecs, naiveSize, err := f.naivePublish(ctx, m.addr, filepath.Join(f.dir, "naive"), n, func() { n0 = sampleCPU(pid) }, func() { n1 = sampleCPU(pid) })
	if err != nil {
		return fmt.Errorf("bare paho + go-jose + fsync: %w", err)
	}
	rows = append(rows, qosRow{fmt.Sprintf("bare paho + go-jose %d B + fsync each, window %d", naiveSize, window), naiveSecs, n0, n1})

	const rowFmt = "%-52s %7s %9s %10s %8s | %12s %12s %8s\n"
	fmt.Fprintf(w, rowFmt, "publisher", "msgs", "seconds", "msgs/s", "vs paho", "us/msg here", "us/msg broker", "machine")
	for _, r := range rows {
		fmt.Fprintf(w, rowFmt, r.name, strconv.Itoa(n), fmt.Sprintf("%.2f", r.secs), fmt.Sprintf("%.0f", n/r.secs),
			fmt.Sprintf("%.2fx", pahoSecs/r.secs), fmt.Sprintf("%.1f", (r.c1.self-r.c0.self)/n*1e6),
			fmt.Sprintf("%.1f", (r.c1.broker-r.c0.broker)/n*1e6),
			fmt.Sprintf("%.0f%%", (r.c1.machine-r.c0.machine)/r.secs/float64(runtime.NumCPU())*100))
	}
	// Give the subscriber up to 2 s to receive what is still on its way.
	for deadline := time.Now().Add(2 * time.Second); sunk.Load() < 4*n && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Fprintf(w, "\nvs paho = msgs/s over the unsigned bare-paho row's. SDK / bare paho: %.2f end to end (seal, store, deliver),\n"+
		"%.2f for delivery alone. SDK / bare paho + go-jose + fsync per message (the same guarantees without d2c): %.2f.\n"+
		"Every row keeps the broker's Receive Maximum (%d) in flight. The subscriber (QoS 1) received %d of the %d messages.\n",
		pahoSecs/sdkSecs, pahoSecs/backlogSecs, naiveSecs/sdkSecs, window, sunk.Load(), 4*n)
	_ = sink.Disconnect(&paho.Disconnect{ReasonCode: 0})

	// Verified readings per second at the cloud: the SDK device publishes,
	// a cloud service (DialCloud + Verifier) verifies and classifies.
	fmt.Fprintf(w, "\nverified at the cloud (DialCloud + Verifier), from the first Publish to the last record verified:\n\n")
	const vFmt = "%-36s %9s %9s %9s %10s %12s\n"
	fmt.Fprintf(w, vFmt, "device publishes", "envelopes", "readings", "seconds", "envs/s", "readings/s")
	for _, c := range []struct{ envelopes, per int }{{2000, 1}, {200, 100}} {
		v, err := f.verifier()
		if err != nil {
			return err
		}
		var readings, refused atomic.Int64
		allIn := make(chan struct{})
		want := int64(c.envelopes * c.per)
		cert, err := f.serviceCert("verifier")
		if err != nil {
			return err
		}
		cloud, err := transport.DialCloud(ctx, transport.CloudConfig{Broker: m.addr, ServerName: "127.0.0.1", Certificate: cert, Roots: f.roots, Verifier: v,
			OnRecord: func(_ context.Context, r transport.Record) {
				if readings.Add(int64(len(r.Readings))) == want {
					close(allIn)
				}
			},
			OnRefused: func(string, error) { refused.Add(1) }})
		if err != nil {
			return err
		}
		if err := cloud.AwaitConnection(ctx); err != nil {
			cloud.Close(context.Background())
			return err
		}
		time.Sleep(300 * time.Millisecond) // the subscription is made after the connection is up
		// A fresh device state per run: messages an earlier run left
		// unacknowledged in the outbox must not count here.
		secs, err := f.sdkPublish(ctx, m.addr, filepath.Join(f.dir, fmt.Sprintf("device-verified-%d", c.per)), c.envelopes, 32, c.per, func() error {
			select {
			case <-allIn:
				return nil
			case <-ctx.Done():
				return fmt.Errorf("verified %d of %d readings (%d refused)", readings.Load(), want, refused.Load())
			}
		})
		cloud.Close(context.Background())
		if err != nil {
			return fmt.Errorf("verified run: %w", err)
		}
		fmt.Fprintf(w, vFmt, fmt.Sprintf("%d reading(s) per envelope", c.per), strconv.Itoa(c.envelopes), strconv.Itoa(c.envelopes*c.per),
			fmt.Sprintf("%.2f", secs), fmt.Sprintf("%.0f", float64(c.envelopes)/secs), fmt.Sprintf("%.0f", float64(want)/secs))
		if r := refused.Load(); r != 0 {
			return fmt.Errorf("the cloud refused %d envelopes", r)
		}
	}
	return nil
}

// sdkPublish dials the SDK client, publishes envelopes of per readings
// from workers goroutines, and waits until the broker acknowledged them
// all (or, with wait, until wait returns). It returns the seconds from the
// first Publish to the end.
func (f *fleet) sdkPublish(ctx context.Context, addr, stateDir string, envelopes, workers, per int, wait func() error) (float64, error) {
	client, err := transport.Dial(ctx, transport.ClientConfig{Broker: addr, Store: f.store, StateDir: stateDir,
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond,
		Outbox: outbox.Config{MaxMessages: envelopes + 16}})
	if err != nil {
		return 0, err
	}
	defer client.Close(context.Background())
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = client.AwaitConnection(cctx)
	cancel()
	if err != nil {
		return 0, err
	}
	acked0 := client.Stats().Acked
	readings := make([]transport.Reading, per)
	var next atomic.Int64
	var wg sync.WaitGroup
	var pubErr atomic.Pointer[error]
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rs := slices.Clone(readings)
			for next.Add(1) <= int64(envelopes) {
				now := time.Now()
				for i := range rs {
					rs[i] = transport.Reading{Time: now, Body: body}
				}
				if err := client.Publish(ctx, stream, rs...); err != nil {
					pubErr.Store(&err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if e := pubErr.Load(); e != nil {
		return 0, *e
	}
	if wait != nil {
		if err := wait(); err != nil {
			return 0, err
		}
	} else {
		for client.Stats().Acked-acked0 < uint64(envelopes) {
			if ctx.Err() != nil {
				return 0, fmt.Errorf("%d of %d acknowledged: %w", client.Stats().Acked-acked0, envelopes, ctx.Err())
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return time.Since(start).Seconds(), nil
}

// sdkBacklog seals and stores envelopes while the broker is unreachable,
// then dials the broker with the same state and returns the seconds from
// the connection to the last PUBACK.
func (f *fleet) sdkBacklog(ctx context.Context, addr, stateDir string, envelopes int, begin, end func()) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	dead := ln.Addr().String()
	ln.Close()
	offline, err := transport.Dial(ctx, transport.ClientConfig{Broker: dead, Store: f.store, StateDir: stateDir,
		Outbox: outbox.Config{MaxMessages: envelopes + 16}})
	if err != nil {
		return 0, err
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	var pubErr atomic.Pointer[error]
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(envelopes) {
				if err := offline.Publish(ctx, stream, transport.Reading{Time: time.Now(), Body: body}); err != nil {
					pubErr.Store(&err)
					return
				}
			}
		}()
	}
	wg.Wait()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_ = offline.Close(cctx) // not connected: nothing to disconnect
	cancel()
	if e := pubErr.Load(); e != nil {
		return 0, *e
	}
	client, err := transport.Dial(ctx, transport.ClientConfig{Broker: addr, Store: f.store, StateDir: stateDir,
		Outbox: outbox.Config{MaxMessages: envelopes + 16}})
	if err != nil {
		return 0, err
	}
	defer client.Close(context.Background())
	cctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	err = client.AwaitConnection(cctx)
	cancel()
	if err != nil {
		return 0, err
	}
	begin()
	start := time.Now()
	for client.Stats().Acked < uint64(envelopes) {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("%d of %d acknowledged: %w", client.Stats().Acked, envelopes, ctx.Err())
		}
		time.Sleep(2 * time.Millisecond)
	}
	secs := time.Since(start).Seconds()
	end()
	return secs, nil
}

// naivePublish is the pipeline a developer would write for the SDK's
// guarantees without d2c, from the bare libraries alone. Each message is a
// CBOR record signed with go-jose (ES256, with the kid and typ d2c puts in
// its header, so that the payload has about the signed envelope's size),
// appended to a log file and fsynced on its own (one write and one fsync
// per message under the log's lock: no group commit), and only then
// published at QoS 1 with bare paho over the connection setup of the
// unsigned row. After its PUBACK, its record is marked acknowledged in
// place (one write, not fsynced: a lost mark only sends the message again,
// as a lost removal does in the outbox). As many goroutines as the
// broker's Receive Maximum each carry one message at a time through the
// pipeline. It returns the seconds from the first record signed to the
// last PUBACK, and the size of the payload of sequence number 1.
func (f *fleet) naivePublish(ctx context.Context, addr, dir string, n int, begin, end func()) (float64, int, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, 0, err
	}
	logFile, err := os.OpenFile(filepath.Join(dir, "pending.log"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, 0, err
	}
	defer logFile.Close()
	d, err := os.Open(dir) // the new file's name must survive a power cut too
	if err != nil {
		return 0, 0, err
	}
	err = d.Sync()
	d.Close()
	if err != nil {
		return 0, 0, err
	}
	opts := (&jose.SignerOptions{}).WithType("d2c-tele+jws").WithHeader("kid", deviceID)
	seal := func(signer jose.Signer, seq uint64) ([]byte, error) {
		rec := newJoseRecord()
		rec.Seq = seq
		payload, err := cbor.Marshal(rec)
		if err != nil {
			return nil, err
		}
		jws, err := signer.Sign(payload)
		if err != nil {
			return nil, err
		}
		compact, err := jws.CompactSerialize()
		return []byte(compact), err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: f.device.Key}, opts)
	if err != nil {
		return 0, 0, err
	}
	sample, err := seal(signer, 1)
	if err != nil {
		return 0, 0, err
	}

	var (
		mu      sync.Mutex
		logSize int64 // the end of the log, under mu
	)
	// store appends one record (state byte, length, CRC-32, payload) and
	// fsyncs it before returning its offset.
	store := func(payload []byte) (int64, error) {
		rec := make([]byte, 9+len(payload))
		binary.BigEndian.PutUint32(rec[1:5], uint32(len(payload)))
		binary.BigEndian.PutUint32(rec[5:9], crc32.ChecksumIEEE(payload))
		copy(rec[9:], payload)
		mu.Lock()
		defer mu.Unlock()
		if _, err := logFile.WriteAt(rec, logSize); err != nil {
			return 0, err
		}
		if err := logFile.Sync(); err != nil {
			return 0, err
		}
		off := logSize
		logSize += int64(len(rec))
		return off, nil
	}
	acked := []byte{1}

	dev, ack, err := f.pahoConnect(ctx, addr, deviceID, f.device.TLSCertificate(), nil)
	if err != nil {
		return 0, 0, err
	}
	defer dev.Disconnect(&paho.Disconnect{ReasonCode: 0})
	window := 65535
	if ack.Properties != nil && ack.Properties.ReceiveMaximum != nil {
		window = int(*ack.Properties.ReceiveMaximum)
	}
	topic := wire.TelemetryTopic(deviceID, stream)
	var seq, next atomic.Int64
	var wg sync.WaitGroup
	var pubErr atomic.Pointer[error]
	begin()
	start := time.Now()
	for range window {
		wg.Add(1)
		go func() {
			defer wg.Done()
			signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: f.device.Key}, opts)
			for err == nil && next.Add(1) <= int64(n) {
				var payload []byte
				if payload, err = seal(signer, uint64(seq.Add(1))); err != nil {
					break
				}
				var off int64
				if off, err = store(payload); err != nil {
					break
				}
				var resp *paho.PublishResponse
				resp, err = dev.Publish(ctx, &paho.Publish{QoS: 1, Topic: topic, Payload: payload,
					Properties: &paho.PublishProperties{ContentType: "application/jose"}})
				if err == nil && resp != nil && resp.ReasonCode >= 0x80 {
					err = fmt.Errorf("PUBACK reason 0x%02x", resp.ReasonCode)
				}
				if err == nil {
					_, err = logFile.WriteAt(acked, off)
				}
			}
			if err != nil {
				pubErr.Store(&err)
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	end()
	if e := pubErr.Load(); e != nil {
		return 0, 0, *e
	}
	return secs, len(sample), nil
}

// mosquittoVersion returns "mosquitto x.y.z" from its -h output.
func mosquittoVersion() string {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto"
	}
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	first, _, _ := strings.Cut(string(out), "\n")
	if v, ok := strings.CutPrefix(strings.TrimSpace(first), "mosquitto version "); ok {
		return "mosquitto " + v
	}
	return "mosquitto"
}
