// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command identity measures what d2c's device identity operations cost next
// to the cryptographic primitives they are built from, and prints the two
// side by side:
//
//   - certificate issuance (CSR parse and signature check, then signing the
//     certificate) against one raw ECDSA P-256 signature;
//   - a full EST enrollment round trip (token, cacerts, key generation, CSR,
//     simpleenroll, verification, fsynced writes) against one raw TLS 1.3
//     handshake with the same server;
//   - enrollment token verification against one raw ECDSA P-256
//     verification.
//
// It uses only the public identity API. It builds a throwaway fleet CA in a
// temporary directory and serves a registrar on 127.0.0.1, both removed
// before it exits. Client and server share the machine, so the round trips
// include the server's work. Run it with:
//
//	go run ./bench/identity [-benchtime 1s]
//
// Each of the six measurements runs for about -benchtime.
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/bench/internal/benchutil"
	"github.com/d2c-iot/d2c/identity"
)

const deviceID = "bench-1"

func main() {
	benchtime := flag.Duration("benchtime", time.Second, "how long to run each measurement")
	flag.Parse()
	if *benchtime <= 0 || *benchtime > 5*time.Second {
		fmt.Fprintln(os.Stderr, "bench/identity: -benchtime must be in (0, 5s]")
		os.Exit(2)
	}
	testing.Init()
	if err := flag.Set("test.benchtime", benchtime.String()); err != nil {
		fmt.Fprintln(os.Stderr, "bench/identity:", err)
		os.Exit(2)
	}
	if err := run(os.Stdout, *benchtime); err != nil {
		fmt.Fprintln(os.Stderr, "bench/identity:", err)
		os.Exit(1)
	}
}

// fleet is a CA, its token key and a registrar served over HTTPS on
// 127.0.0.1, all in a temporary directory.
type fleet struct {
	dir      string
	ca       *identity.CA
	tokenKey crypto.Signer
	server   *http.Server
	addr     string
	roots    *x509.CertPool
}

func newFleet() (_ *fleet, err error) {
	dir, err := os.MkdirTemp("", "d2c-bench-identity-")
	if err != nil {
		return nil, err
	}
	f := &fleet{dir: dir}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	f.ca, err = identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{Fleet: "bench fleet"})
	if err != nil {
		return nil, err
	}
	f.tokenKey, err = identity.ReadKeyFile(filepath.Join(dir, "ca", identity.CATokenKeyFile))
	if err != nil {
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
	srvKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return nil, err
	}
	srvCert, err := f.ca.IssueServer(srvKey.Public(), "127.0.0.1")
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f.addr = ln.Addr().String()
	f.server = &http.Server{
		Handler:           reg,
		TLSConfig:         reg.TLSConfig(tls.Certificate{Certificate: [][]byte{srvCert.Raw, f.ca.Issuing().Raw}, PrivateKey: srvKey}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() { _ = f.server.ServeTLS(ln, "", "") }()
	f.roots = x509.NewCertPool()
	f.roots.AddCert(f.ca.Root())
	return f, nil
}

func (f *fleet) close() {
	if f.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = f.server.Shutdown(ctx)
		cancel()
	}
	_ = os.RemoveAll(f.dir)
}

type pair struct {
	name, baseName string
	op, base       func(b *testing.B) error
}

func run(w io.Writer, benchtime time.Duration) error {
	f, err := newFleet()
	if err != nil {
		return err
	}
	defer f.close()

	rawKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	digest := sha256.Sum256([]byte("d2c"))
	rawSig, err := ecdsa.SignASN1(rand.Reader, rawKey, digest[:])
	if err != nil {
		return err
	}
	devKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return err
	}
	csrDER, err := identity.NewCSR(devKey, deviceID)
	if err != nil {
		return err
	}
	issuer := identity.TokenIssuer{Key: f.tokenKey}
	token, err := issuer.Issue(deviceID)
	if err != nil {
		return err
	}
	verifier := identity.TokenVerifier{Keys: []crypto.PublicKey{f.tokenKey.Public()}}
	fingerprint := sha256.Sum256(f.ca.Root().Raw)
	client := identity.ESTClient{URL: "https://" + f.addr, BootstrapFingerprint: fingerprint[:]}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.roots, ServerName: "127.0.0.1"}

	pairs := []pair{
		{
			name: "certificate issuance (CSR check + sign)", baseName: "raw ECDSA P-256 sign",
			op: func(b *testing.B) error {
				for b.Loop() {
					csr, err := identity.ParseCSR(csrDER)
					if err != nil {
						return err
					}
					if _, err := f.ca.IssueDevice(csr, deviceID); err != nil {
						return err
					}
				}
				return nil
			},
			base: func(b *testing.B) error {
				for b.Loop() {
					if _, err := ecdsa.SignASN1(rand.Reader, rawKey, digest[:]); err != nil {
						return err
					}
				}
				return nil
			},
		},
		{
			name: "EST enrollment round trip", baseName: "raw TLS 1.3 handshake",
			op: func(b *testing.B) error {
				devices := filepath.Join(f.dir, "devices")
				defer os.RemoveAll(devices)
				i := 0
				for b.Loop() {
					i++
					tok, err := issuer.Issue(deviceID)
					if err != nil {
						return err
					}
					store, err := identity.OpenStore(filepath.Join(devices, strconv.Itoa(i)), identity.StoreConfig{})
					if err != nil {
						return err
					}
					if _, err := store.Enroll(context.Background(), client, identity.EnrollRequest{
						DeviceID: deviceID, Auth: identity.EnrollAuth{Token: tok}}); err != nil {
						return err
					}
				}
				return nil
			},
			base: func(b *testing.B) error {
				for b.Loop() {
					conn, err := tls.Dial("tcp", f.addr, tlsConfig)
					if err != nil {
						return err
					}
					if err := conn.Close(); err != nil {
						return err
					}
				}
				return nil
			},
		},
		{
			name: "enrollment token verify", baseName: "raw ECDSA P-256 verify",
			op: func(b *testing.B) error {
				for b.Loop() {
					if _, err := verifier.Verify(token); err != nil {
						return err
					}
				}
				return nil
			},
			base: func(b *testing.B) error {
				for b.Loop() {
					if !ecdsa.VerifyASN1(&rawKey.PublicKey, digest[:], rawSig) {
						return errors.New("raw signature does not verify")
					}
				}
				return nil
			},
		},
	}

	fmt.Fprintf(w, "d2c identity benchmark: %s %s/%s, %s, %d CPUs, benchtime %v\n\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, benchutil.CPUModel(), runtime.NumCPU(), benchtime)
	const row = "%-40s %12s %9s | %-24s %10s %9s | %7s\n"
	fmt.Fprintf(w, row, "operation", "ns/op", "ops/s", "baseline", "ns/op", "ops/s", "ratio")
	for _, p := range pairs {
		op, err := benchutil.Measure(p.op)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		base, err := benchutil.Measure(p.base)
		if err != nil {
			return fmt.Errorf("%s: %w", p.baseName, err)
		}
		fmt.Fprintf(w, row, p.name, strconv.FormatInt(op.NsPerOp(), 10), fmt.Sprintf("%.0f", perSecond(op)),
			p.baseName, strconv.FormatInt(base.NsPerOp(), 10), fmt.Sprintf("%.0f", perSecond(base)),
			fmt.Sprintf("%.1fx", float64(op.NsPerOp())/float64(max(base.NsPerOp(), 1))))
	}
	fmt.Fprintln(w, "\nratio = operation ns/op / baseline ns/op")
	return nil
}

func perSecond(r testing.BenchmarkResult) float64 {
	if r.NsPerOp() == 0 {
		return 0
	}
	return 1e9 / float64(r.NsPerOp())
}
