// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

// usedTokensFile is the registrar's single-use token record, in --state.
const usedTokensFile = "used-tokens.state"

// HTTP server bounds for the registrar. EST requests are small: a CSR of a
// few kilobytes and an Authorization header under limits.AuthorizationHeader.
const (
	registrarReadHeaderTimeout = 10 * time.Second
	registrarReadTimeout       = 30 * time.Second
	registrarWriteTimeout      = 30 * time.Second
	registrarIdleTimeout       = 60 * time.Second
	registrarMaxHeaderBytes    = 16 << 10
	registrarShutdownTimeout   = 10 * time.Second
)

func registrarServeCommand() *command {
	return &command{
		path:    "registrar serve",
		summary: "serve the EST registrar over TLS 1.3",
		usage: "--ca DIR --state DIR [--db URL] [--listen ADDR] [--cert FILE --key FILE | --host HOST...] " +
			"[--url-file FILE] [--renew-expired-within DURATION]",
		details: `
Serves the RFC 7030 EST endpoints (cacerts, simpleenroll, simplereenroll)
with the fleet CA in --ca: devices enroll with a token from "d2c token issue"
and renew with their current certificate. Tokens are checked with the public
key in CA_DIR/token.pub and recorded as used in STATE/used-tokens.state, so
that each works once, across restarts too.

With --db (the fleet's cloud store: sqlite:PATH, or a postgres:// URL
shared by several registrars), the registrar records every certificate it
issues in the transaction that consumes its token, lets only a device's
newest certificate renew (a renewal supersedes the certificate that
authenticated it), and takes revocations from the store: revoke with
"d2c ca revoke --db URL" and publish CRLs with "d2c ca crl --db URL".

Without --cert and --key, the registrar issues itself a server certificate
from the fleet CA, kept in memory only, for the --host names (default: the
--listen host, or localhost if that is a wildcard). A --cert must chain to
the fleet root, since devices trust nothing else.

Once listening it prints its URL and the root fingerprint on stdout, and
writes the URL to --url-file if given (useful with --listen 127.0.0.1:0,
which picks a free port; the file is removed on exit). Revocations made with
"d2c ca revoke", even while it runs, take effect on the next request. It
logs one line per request on stderr and stops gracefully on SIGINT or
SIGTERM.`,
		example: `d2c registrar serve --ca /srv/d2c/ca --state /var/lib/d2c-registrar \
    --listen 0.0.0.0:8443 --host est.example.com`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			caDir := fl.String("ca", "", "fleet CA directory (required)")
			issuingKey := issuingKeyFlag(fl)
			stateDir := fl.String("state", "", "directory for the registrar's state: used tokens (required)")
			db := fl.String("db", "", "the fleet's cloud store, sqlite:PATH or postgres://... (default: none; used tokens in --state)")
			listen := fl.String("listen", "127.0.0.1:8443", "TCP address to listen on, host:port")
			certFile := fl.String("cert", "", "server certificate chain, PEM (default: issue one from the CA)")
			keyFile := fl.String("key", "", "server private key, PKCS#8 PEM, mode 0600 (with --cert)")
			var hosts stringList
			fl.Var(&hosts, "host", "DNS name or IP address for the self-issued server certificate; repeatable")
			urlFile := fl.String("url-file", "", "file to write the registrar's URL to once it listens")
			renewExpired := fl.Duration("renew-expired-within", 0,
				"let a device renew with a certificate that expired less than this long ago (default: never)")
			return func(ctx context.Context, s streams) error {
				if *caDir == "" || *stateDir == "" {
					return usageErrorf("--ca and --state are required")
				}
				if (*certFile == "") != (*keyFile == "") {
					return usageErrorf("--cert and --key go together")
				}
				if *certFile != "" && len(hosts) > 0 {
					return usageErrorf("--host names a self-issued certificate; it does not go with --cert")
				}
				if *renewExpired < 0 {
					return usageErrorf("--renew-expired-within must not be negative")
				}
				listenHost, _, err := net.SplitHostPort(*listen)
				if err != nil {
					return usageErrorf("--listen %q: %v", *listen, err)
				}
				return serveRegistrar(ctx, s, registrarOptions{
					caDir: *caDir, stateDir: *stateDir, listen: *listen, listenHost: listenHost,
					certFile: *certFile, keyFile: *keyFile, hosts: hosts, urlFile: *urlFile,
					renewExpiredWithin: *renewExpired, db: *db, issuingKey: *issuingKey,
				})
			}
		},
	}
}

// registrarOptions are the parsed flags of "registrar serve".
type registrarOptions struct {
	caDir, stateDir    string
	listen, listenHost string
	certFile, keyFile  string
	hosts              []string
	urlFile            string
	renewExpiredWithin time.Duration
	db                 string
	issuingKey         string
}

// serveRegistrar runs the registrar until ctx is done, then shuts it down
// gracefully.
func serveRegistrar(ctx context.Context, s streams, o registrarOptions) error {
	log := slog.New(slog.NewTextHandler(s.stderr, nil))
	ca, closeKey, err := openSigningCA(ctx, o.caDir, o.issuingKey)
	if err != nil {
		return err
	}
	defer closeKey()
	tokenKey, err := identity.ReadPublicKeyFile(filepath.Join(o.caDir, identity.CATokenPublicKeyFile))
	if err != nil {
		return err
	}
	if err := atomicfile.MkdirPrivate(nil, o.stateDir); err != nil {
		return err
	}
	rc := identity.RegistrarConfig{
		CA:                 ca,
		TokenKeys:          []crypto.PublicKey{tokenKey},
		RenewExpiredWithin: o.renewExpiredWithin,
		Logger:             log,
	}
	if o.db != "" {
		st, err := openStore(ctx, o.db)
		if err != nil {
			return err
		}
		defer st.Close()
		rc.Registry = st
	} else if rc.UsedTokens, err = identity.OpenUsedTokens(filepath.Join(o.stateDir, usedTokensFile), nil); err != nil {
		return err
	}
	reg, err := identity.NewRegistrar(rc)
	if err != nil {
		return err
	}

	hosts := o.hosts
	urlHost := o.listenHost
	if ip := net.ParseIP(urlHost); urlHost == "" || ip != nil && ip.IsUnspecified() {
		urlHost = "localhost"
		if len(hosts) > 0 {
			urlHost = hosts[0]
		}
	}
	if len(hosts) == 0 {
		hosts = []string{urlHost}
	}
	cert, err := registrarCertificate(ca, o.certFile, o.keyFile, hosts)
	if err != nil {
		return err
	}

	srv := &http.Server{
		Handler:           reg,
		TLSConfig:         reg.TLSConfig(cert),
		ReadHeaderTimeout: registrarReadHeaderTimeout,
		ReadTimeout:       registrarReadTimeout,
		WriteTimeout:      registrarWriteTimeout,
		IdleTimeout:       registrarIdleTimeout,
		MaxHeaderBytes:    registrarMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return serveHTTP(ctx, srv, serveOptions{
		name: "registrar", log: log, listen: o.listen, tls: true, urlFile: o.urlFile,
		shutdownTimeout: registrarShutdownTimeout,
		announce: func(addr net.Addr) string {
			_, port, _ := net.SplitHostPort(addr.String())
			url := "https://" + net.JoinHostPort(urlHost, port)
			fp := fingerprint(ca.Root())
			fmt.Fprintf(s.stdout, "registrar listening on %s\nroot fingerprint (SHA-256): %s\n", url, fp)
			log.Info("registrar listening", "url", url, "addr", addr.String(), "root_sha256", fp)
			return url
		},
	})
}

// registrarCertificate loads the registrar's TLS certificate from
// certFile and keyFile, refusing one that devices would not trust, or,
// without files, issues one from the CA for hosts.
func registrarCertificate(ca *identity.CA, certFile, keyFile string, hosts []string) (tls.Certificate, error) {
	var (
		chain []*x509.Certificate
		key   crypto.Signer
	)
	if certFile != "" {
		var err error
		if chain, key, err = readKeyPair(certFile, keyFile); err != nil {
			return tls.Certificate{}, err
		}
		if err := verifyIssued(chain, ca.Root(), ca.Issuing(), x509.ExtKeyUsageServerAuth); err != nil {
			return tls.Certificate{}, withHint(fmt.Errorf("%w: %s: %v", identity.ErrUntrusted, certFile, err),
				"devices trust only the fleet root: issue the registrar's certificate with `d2c ca server-cert`, or omit --cert and --key")
		}
	} else {
		var err error
		if key, err = identity.GenerateKey(identity.ECDSAP256); err != nil {
			return tls.Certificate{}, err
		}
		leaf, err := ca.IssueServer(key.Public(), hosts...)
		if err != nil {
			return tls.Certificate{}, err
		}
		chain = []*x509.Certificate{leaf, ca.Issuing()}
	}
	return tlsCertificate(chain, key), nil
}

// readKeyPair reads a certificate chain (leaf first) and its private key,
// refusing a key that is not the certificate's.
func readKeyPair(certFile, keyFile string) ([]*x509.Certificate, crypto.Signer, error) {
	b, err := atomicfile.ReadFile(certFile, limits.PEMFile)
	if err != nil {
		return nil, nil, err
	}
	chain, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certFile, err)
	}
	key, err := identity.ReadKeyFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	if k, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(chain[0].PublicKey) {
		return nil, nil, withHint(fmt.Errorf("%w: %s does not match %s", identity.ErrMalformed, keyFile, certFile),
			"give the key that was written with this certificate")
	}
	return chain, key, nil
}

// verifyIssued checks that chain[0] chains to root, through issuing or the
// rest of chain, for usage.
func verifyIssued(chain []*x509.Certificate, root, issuing *x509.Certificate, usage x509.ExtKeyUsage) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	if issuing != nil {
		inter.AddCert(issuing)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// tlsCertificate assembles a chain and its key for crypto/tls.
func tlsCertificate(chain []*x509.Certificate, key crypto.Signer) tls.Certificate {
	tc := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc
}

// openStore opens the fleet's cloud store named by a --db URL.
func openStore(ctx context.Context, url string) (*store.Store, error) {
	st, err := store.Open(ctx, store.Config{URL: url})
	if err != nil {
		if errors.Is(err, store.ErrBadURL) {
			return nil, withHint(err, "give --db sqlite:/path/to/fleet.db, or a postgres://user@host/db URL")
		}
		return nil, err
	}
	return st, nil
}
