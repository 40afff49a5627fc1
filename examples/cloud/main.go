// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command cloud is the cloud half of d2c as a program of your own: one
// cloud.Run on the fleet's store with the roles its flags ask for, and the
// application's handling of each verified record (here: printing it).
// "d2c cloud serve --config FILE" runs the same service from a
// configuration file; start from this program when the cloud half lives in
// your own code.
//
//	cloud --ca CA_DIR [--db sqlite:fleet.db] [--registrar 127.0.0.1:8443]
//	      [--broker HOST:PORT --cert verifier.crt --key verifier.key [--cloud-key cloud.key]]
//	      [--crl-out crl.pem] [--ops 127.0.0.1:9090]
//
// --registrar serves EST with a certificate issued from the CA for its
// host. --broker verifies the fleet's telemetry into the store's records
// table, connected with the service certificate of --cert and --key ("d2c
// ca service-cert"); the registrar's records in the store name each
// device's certificates, renewals included. --crl-out writes the CRL the
// broker reads, hourly. Each verified record is also printed, one line per
// reading; "d2c tail --db" prints them from the store.
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/cloud"
	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "cloud:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("cloud", flag.ContinueOnError)
	fl.SetOutput(stderr)
	caDir := fl.String("ca", "", "fleet CA directory, from d2c ca init (required)")
	db := fl.String("db", "sqlite:fleet.db", "the fleet's cloud store: sqlite:PATH or postgres://...")
	registrar := fl.String("registrar", "", "serve EST on this address, host:port")
	broker := fl.String("broker", "", "verify the fleet's telemetry from this broker, host:port")
	certFile := fl.String("cert", "", "the verifier's service certificate chain, PEM (with --broker)")
	keyFile := fl.String("key", "", "the verifier's private key, PEM (with --broker)")
	cloudKey := fl.String("cloud-key", "", "P-256 key devices encrypt telemetry to, PEM (default: encrypted telemetry is refused)")
	crlOut := fl.String("crl-out", "", "write the fleet's CRL for the broker to this file")
	ops := fl.String("ops", "", "serve /healthz, /readyz and /metrics on this address, host:port")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *caDir == "" || *broker != "" && (*certFile == "" || *keyFile == "") {
		return errors.New("--ca is required, and --broker needs --cert and --key")
	}
	ca, err := identity.LoadCA(*caDir, identity.CAConfig{})
	if err != nil {
		return err
	}
	st, err := store.Open(ctx, store.Config{URL: *db})
	if err != nil {
		return err
	}
	defer st.Close()

	cfg := cloud.Config{Store: st, CA: ca, Ops: *ops, Logger: slog.New(slog.NewTextHandler(stderr, nil)),
		Ready: func(a cloud.Addrs) {
			if a.Registrar != nil {
				fmt.Fprintf(stdout, "registrar https://%s\n", a.Registrar)
			}
		}}
	if *registrar != "" {
		host, _, err := net.SplitHostPort(*registrar)
		if err != nil {
			return fmt.Errorf("--registrar: %w", err)
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			host = "localhost"
		}
		key, err := identity.GenerateKey(identity.ECDSAP256)
		if err != nil {
			return err
		}
		cert, err := ca.IssueServer(key.Public(), host)
		if err != nil {
			return err
		}
		tokenKey, err := identity.ReadPublicKeyFile(filepath.Join(*caDir, identity.CATokenPublicKeyFile))
		if err != nil {
			return err
		}
		cfg.Registrar = &cloud.RegistrarRole{Listen: *registrar, TokenKeys: []crypto.PublicKey{tokenKey},
			Certificate: tls.Certificate{Certificate: [][]byte{cert.Raw, ca.Issuing().Raw}, PrivateKey: key}}
	}
	if *broker != "" {
		v := &cloud.VerifierRole{Broker: *broker, Roots: x509.NewCertPool(), OnRecord: printer(stdout)}
		v.Roots.AddCert(ca.Root())
		if v.Certificate, err = readKeyPair(*certFile, *keyFile); err != nil {
			return err
		}
		if *cloudKey != "" {
			k, err := identity.ReadKeyFile(*cloudKey)
			if err != nil {
				return err
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return fmt.Errorf("%s: the cloud key must be ECDSA P-256", *cloudKey)
			}
			v.DecryptionKey = ek
		}
		cfg.Verifier = v
	}
	if *crlOut != "" {
		cfg.CRL = &cloud.CRLRole{Out: *crlOut}
	}
	return cloud.Run(ctx, cfg)
}

// readKeyPair reads a certificate chain (PEM, leaf first) and its key.
func readKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	key, err := identity.ReadKeyFile(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	chain, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s: %w", certFile, err)
	}
	c := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c, nil
}

// printer is the application: it is given each record the verifier
// accepted, already kept in the store, and prints one line per reading.
func printer(w io.Writer) func(context.Context, transport.Record) {
	var mu sync.Mutex
	return func(_ context.Context, r transport.Record) {
		mu.Lock()
		defer mu.Unlock()
		for _, rd := range r.Readings {
			fmt.Fprintf(w, "%s %s/%s boot=%d seq=%d %q\n", rd.Time.UTC().Format(time.RFC3339), r.Device, r.Stream, r.Boot, r.Seq, rd.Body)
		}
	}
}
