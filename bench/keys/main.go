// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command keys measures what keeping the device key in hardware costs, side
// by side for three keys: a software key as identity.Store keeps it in a
// file (PKCS#8, loaded into memory), a key in a PKCS#11 token
// (identity/pkcs11 on softhsm2) and a key in a TPM 2.0 (identity/tpm on
// swtpm). For each it prints:
//
//   - signatures per second: ECDSA P-256 over a SHA-256 digest, one
//     crypto.Signer.Sign, what every envelope, CSR and handshake costs;
//   - the time of a TLS 1.3 handshake with client authentication, the
//     client's CertificateVerify signed by the key, against a server on
//     127.0.0.1 that requires and verifies the client certificate (both
//     halves run on this machine, so the time includes the server's work);
//   - the throughput of the SDK's envelope sealing,
//     transport.NewSealer(...).Seal: a 150-byte reading encoded as CBOR
//     and signed as a JWS (no encryption), one signature per envelope.
//
// The program makes everything itself, in temporary directories removed
// at exit: a throwaway softhsm2 token (softhsm2-util, Debian package
// softhsm2), a swtpm simulator listening on 127.0.0.1 (Debian package
// swtpm), killed at exit, and a throwaway fleet CA for the certificates.
// Run it with:
//
//	go run ./bench/keys [-benchtime 300ms] [-count 3]
//
// Each measurement runs for about -benchtime, -count times, the three keys
// in turn; the fastest run of each counts. softhsm2 and swtpm are
// software running on this CPU: real tokens and TPMs are much slower.
package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/bench/internal/benchutil"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/pkcs11"
	"github.com/d2c-iot/d2c/identity/tpm"
	"github.com/d2c-iot/d2c/internal/hwpeer"
	"github.com/d2c-iot/d2c/transport"
)

const deviceID = "bench-keys-1"

func main() {
	benchtime := flag.Duration("benchtime", 300*time.Millisecond, "how long to run each measurement")
	count := flag.Int("count", 3, "how many times to run each measurement, the keys in turn; the fastest run counts")
	flag.Parse()
	if *benchtime <= 0 || *benchtime > 5*time.Second {
		fmt.Fprintln(os.Stderr, "bench/keys: -benchtime must be in (0, 5s]")
		os.Exit(2)
	}
	if *count < 1 || *count > 10 {
		fmt.Fprintln(os.Stderr, "bench/keys: -count must be 1 to 10")
		os.Exit(2)
	}
	testing.Init()
	if err := flag.Set("test.benchtime", benchtime.String()); err != nil {
		fmt.Fprintln(os.Stderr, "bench/keys:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Stdout, *benchtime, *count)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/keys:", err)
		os.Exit(1)
	}
}

// subject is one key under measurement, with its client certificate.
type subject struct {
	name string
	key  crypto.Signer
	cert tls.Certificate
}

// measurement is one column of the table.
type measurement struct {
	name string
	fn   func(b *testing.B, s *subject) error
}

func run(ctx context.Context, w io.Writer, benchtime time.Duration, count int) (err error) {
	dir, err := os.MkdirTemp("", "d2c-bench-keys-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()

	// The three keys.
	fileKey, err := fileKey(dir)
	if err != nil {
		return fmt.Errorf("file key: %w", err)
	}
	hsm, stopHSM, err := hwpeer.StartSoftHSM()
	if err != nil {
		return err
	}
	cleanups = append(cleanups, stopHSM)
	tok, err := hsm.InitToken("d2c-bench")
	if err != nil {
		return err
	}
	p11, err := pkcs11.Open(pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { _ = p11.Close() })
	p11Key, err := p11.Create(ctx, "bench-00000001", identity.ECDSAP256)
	if err != nil {
		return fmt.Errorf("PKCS#11 key: %w", err)
	}
	sw, stopTPM, err := hwpeer.StartSWTPM()
	if err != nil {
		return err
	}
	cleanups = append(cleanups, stopTPM)
	tpmKS, err := tpm.Open(tpm.Config{Addr: sw.Addr, Dir: filepath.Join(dir, "tpm-keys")})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { _ = tpmKS.Close() })
	tpmKey, err := tpmKS.Create(ctx, "bench-00000001", identity.ECDSAP256)
	if err != nil {
		return fmt.Errorf("TPM key: %w", err)
	}

	// Certificates from a throwaway CA, and a TLS server requiring them.
	ca, err := identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{Fleet: "bench keys"})
	if err != nil {
		return err
	}
	subjects := []*subject{
		{name: "file (PKCS#8, in memory)", key: fileKey},
		{name: "PKCS#11 (softhsm2)", key: p11Key},
		{name: "TPM 2.0 (swtpm, TCP)", key: tpmKey},
	}
	for _, s := range subjects {
		if s.cert, err = deviceCert(ca, s.key); err != nil {
			return fmt.Errorf("%s: certificate: %w", s.name, err)
		}
	}
	srv, err := startServer(ca)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, srv.close)

	digest := sha256.Sum256([]byte("a 150-byte telemetry record would be hashed to this digest"))
	body := []byte(strings.Repeat("x", 150))
	measurements := []measurement{
		{"sign", func(b *testing.B, s *subject) error {
			for b.Loop() {
				if _, err := s.key.Sign(nil, digest[:], crypto.SHA256); err != nil {
					return err
				}
			}
			return nil
		}},
		{"TLS handshake", func(b *testing.B, s *subject) error {
			cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: srv.roots, ServerName: "127.0.0.1",
				Certificates: []tls.Certificate{s.cert}}
			for b.Loop() {
				if err := srv.handshake(cfg); err != nil {
					return err
				}
			}
			return nil
		}},
		{"seal", func(b *testing.B, s *subject) error {
			sealer, err := transport.NewSealer(deviceID, s.key, nil, nil)
			if err != nil {
				return err
			}
			now := time.Now()
			var seq uint64
			for b.Loop() {
				rec := transport.Record{Stream: "temperature", Boot: 1, Seq: seq, Time: now,
					Readings: []transport.Reading{{Time: now, Body: body}}}
				seq++
				if _, err := sealer.Seal(rec); err != nil {
					return err
				}
			}
			return nil
		}},
	}

	fmt.Fprintf(w, "d2c key benchmark: %s %s/%s, %s, %d CPUs, benchtime %v, count %d (fastest run counts)\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, benchutil.CPUModel(), runtime.NumCPU(), benchtime, count)
	fmt.Fprintln(w, "ECDSA P-256 over SHA-256 digests; TLS 1.3 full handshakes with client authentication on 127.0.0.1;")
	fmt.Fprintln(w, "seal = transport.Sealer.Seal of one 150-byte reading (CBOR + JWS ES256, no encryption)")
	fmt.Fprintln(w)

	// best[i][j] is the fastest ns/op of measurement j with subject i.
	best := make([][]int64, len(subjects))
	for i := range best {
		best[i] = make([]int64, len(measurements))
	}
	for j, m := range measurements {
		for range count {
			for i, s := range subjects {
				if err := ctx.Err(); err != nil {
					return err
				}
				r, err := benchutil.Measure(func(b *testing.B) error { return m.fn(b, s) })
				if err != nil {
					return fmt.Errorf("%s, %s: %w", m.name, s.name, err)
				}
				if ns := r.NsPerOp(); best[i][j] == 0 || ns < best[i][j] {
					best[i][j] = max(ns, 1)
				}
			}
		}
	}

	const row = "%-26s %10s %10s %9s | %14s %9s | %10s %10s\n"
	fmt.Fprintf(w, row, "key", "sign/s", "µs/sign", "vs file", "handshake ms", "vs file", "seal/s", "µs/seal")
	for i, s := range subjects {
		sign, hs, seal := best[i][0], best[i][1], best[i][2]
		fmt.Fprintf(w, row, s.name,
			fmt.Sprintf("%.0f", 1e9/float64(sign)), fmt.Sprintf("%.1f", float64(sign)/1e3), fmt.Sprintf("%.1fx", float64(sign)/float64(best[0][0])),
			fmt.Sprintf("%.2f", float64(hs)/1e6), fmt.Sprintf("%.1fx", float64(hs)/float64(best[0][1])),
			fmt.Sprintf("%.0f", 1e9/float64(seal)), fmt.Sprintf("%.1f", float64(seal)/1e3))
	}
	fmt.Fprintln(w, `
softhsm2 and swtpm are software on this CPU (swtpm over a loopback socket): they
show the cost of the PKCS#11 and TPM 2.0 interfaces, not of hardware. A smart
card, secure element or discrete TPM is much slower, commonly tens to hundreds
of milliseconds per ECDSA P-256 signature, which bounds a device to a few to a
few tens of signatures (envelopes, handshakes) per second: batch readings into
one Publish, which signs once.`)
	return nil
}

// fileKey is a software key as the identity store keeps it: written to a
// PKCS#8 file and read back.
func fileKey(dir string) (crypto.Signer, error) {
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "key.pem")
	if err := identity.WriteKeyFile(path, key); err != nil {
		return nil, err
	}
	return identity.ReadKeyFile(path)
}

// deviceCert issues a device certificate for key, through a CSR it signs.
func deviceCert(ca *identity.CA, key crypto.Signer) (tls.Certificate, error) {
	der, err := identity.NewCSR(key, deviceID)
	if err != nil {
		return tls.Certificate{}, err
	}
	csr, err := identity.ParseCSR(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := ca.IssueDevice(csr, deviceID)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw, ca.Issuing().Raw}, PrivateKey: key, Leaf: cert}, nil
}

// server accepts TLS 1.3 connections on 127.0.0.1, requires and verifies
// a client certificate from the CA, and answers one byte after each
// handshake, so that a client that reads it knows the server accepted its
// certificate.
type server struct {
	ln    net.Listener
	roots *x509.CertPool
	done  chan struct{}
}

func startServer(ca *identity.CA) (*server, error) {
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return nil, err
	}
	cert, err := ca.IssueServer(key.Public(), "127.0.0.1")
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw, ca.Issuing().Raw}, PrivateKey: key}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
	})
	if err != nil {
		return nil, err
	}
	s := &server{ln: ln, roots: roots, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				_, _ = c.Write([]byte{1})
			}()
		}
	}()
	return s, nil
}

// handshake connects with cfg and waits for the server's byte.
func (s *server) handshake(cfg *tls.Config) error {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}
	c, err := d.Dial("tcp", s.ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("the server did not accept the client certificate: %w", err)
	}
	if b[0] != 1 {
		return errors.New("unexpected answer from the server")
	}
	return nil
}

func (s *server) close() {
	_ = s.ln.Close()
	<-s.done
}
