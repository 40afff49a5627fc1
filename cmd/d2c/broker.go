// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Files "broker config" writes into --out.
const (
	brokerConfFile = "mosquitto.conf"
	brokerACLFile  = "acl"
	brokerCAFile   = "ca.pem"
)

// serviceFlagHelp explains the --service syntax, shared by "broker config"
// and "dev broker".
const serviceFlagHelp = `--service NAME gives the cloud service whose certificate CN is svc:NAME
(d2c ca service-cert --service NAME) read access to every device's uplink,
d2c/v1/dev/+/up/#: what a telemetry verifier or "d2c tail" needs. Other
rights are spelt out, ';' between the lists, ',' between filters:

    --service 'commander:write=d2c/v1/dev/+/down/cmd'
    --service 'ops:read=d2c/v1/dev/+/up/#;write=d2c/v1/dev/+/down/cmd'

A service has exactly the rights listed; devices always have theirs (each
publishes under d2c/v1/dev/<its ID>/up/# and reads d2c/v1/dev/<its ID>/down/#,
nothing else).`

// parseService parses one --service value: NAME, or
// NAME:read=F,F;write=F,F (either list may be left out).
func parseService(v string) (broker.ServiceRights, error) {
	name, spec, hasSpec := strings.Cut(v, ":")
	s := broker.ServiceRights{Name: name}
	if err := identity.ValidateDeviceID(name); err != nil {
		return s, usageErrorf("--service %q: %s", v, serviceNameFormat)
	}
	if !hasSpec {
		s.Read = []string{wire.AllUp}
		return s, nil
	}
	seen := map[string]bool{}
	for part := range strings.SplitSeq(spec, ";") {
		kind, list, ok := strings.Cut(part, "=")
		if !ok || (kind != "read" && kind != "write") || seen[kind] || list == "" {
			return s, usageErrorf("--service %q: want NAME or NAME:read=FILTER,...;write=FILTER,...", v)
		}
		seen[kind] = true
		filters := strings.Split(list, ",")
		if kind == "read" {
			s.Read = filters
		} else {
			s.Write = filters
		}
	}
	if err := s.Validate(); err != nil {
		return s, usageErrorf("--service %q: %v", v, err)
	}
	return s, nil
}

// parseServices parses every --service value, refusing a name given twice.
func parseServices(vs []string) ([]broker.ServiceRights, error) {
	var out []broker.ServiceRights
	seen := map[string]bool{}
	for _, v := range vs {
		s, err := parseService(v)
		if err != nil {
			return nil, err
		}
		if seen[s.Name] {
			return nil, usageErrorf("--service %s given twice: list all of a service's rights in one --service", s.Name)
		}
		seen[s.Name] = true
		out = append(out, s)
	}
	return out, nil
}

// printServices tells which rights each service has.
func printServices(w io.Writer, services []broker.ServiceRights) {
	if len(services) == 0 {
		fmt.Fprintln(w, "services:  none (no cloud service can read telemetry; add --service NAME)")
	}
	for _, s := range services {
		var rights []string
		if len(s.Read) > 0 {
			rights = append(rights, "read "+strings.Join(s.Read, " "))
		}
		if len(s.Write) > 0 {
			rights = append(rights, "write "+strings.Join(s.Write, " "))
		}
		fmt.Fprintf(w, "service:   %s%s: %s\n", identity.ServicePrefix, s.Name, strings.Join(rights, "; "))
	}
}

// readFleetCerts reads the root and issuing CA certificates of the fleet
// CA in dir. Only the certificates are needed, not the keys: a copy of
// root.crt and issuing.crt will do.
func readFleetCerts(dir string) (root, issuing *x509.Certificate, err error) {
	if dir == "" {
		return nil, nil, usageErrorf("the CA directory flag is required")
	}
	read := func(name string) (*x509.Certificate, error) {
		path := filepath.Join(dir, name)
		b, err := atomicfile.ReadFile(path, limits.PEMFile)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, withHint(err, fmt.Sprintf("no fleet CA in %s: give the directory of `d2c ca init` "+
				"(or a copy holding %s and %s)", dir, identity.CARootCertFile, identity.CAIssuingCertFile))
		}
		if err != nil {
			return nil, err
		}
		certs, err := identity.ParseCertificatesPEM(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return certs[0], nil
	}
	if root, err = read(identity.CARootCertFile); err != nil {
		return nil, nil, err
	}
	if issuing, err = read(identity.CAIssuingCertFile); err != nil {
		return nil, nil, err
	}
	return root, issuing, nil
}

// absPath makes a path absolute, as mosquitto.conf needs; "" stays "".
func absPath(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	return filepath.Abs(p)
}

func brokerConfigCommand() *command {
	return &command{
		path:    "broker config",
		summary: "write mosquitto.conf and its ACL for the fleet",
		usage: "--ca DIR --cert FILE --key FILE --out DIR [--listen ADDR] [--crl FILE] " +
			"[--service NAME[:read=FILTER,...;write=FILTER,...]...] [--persistence DIR] [--max-packet-size BYTES] " +
			"[--max-queued-messages N] [--max-queued-bytes BYTES] [--memory-limit BYTES]",
		details: `
Writes, into --out (created if missing), the configuration of a mosquitto 2.x
broker for the fleet, generated by broker.MosquittoConfig:

    mosquitto.conf  one MQTT listener, TLS 1.3 only, fleet client certificate
                    required, its CN taken as username and client ID
    acl             each device publishes and reads under its own ID only;
                    each service has exactly its --service rights
    ca.pem          the fleet root and issuing CA, which client certificates
                    must chain to (from --ca)

Then run "mosquitto -c OUT/mosquitto.conf". There is never a plaintext
listener, nor anonymous access.

--cert and --key are the broker's server certificate, from "d2c ca
server-cert" with the name or address devices dial; they are checked against
the fleet CA here. --crl is the revocation list from "d2c ca crl": without it
a revoked device keeps connecting until its certificate expires. mosquitto
refuses every client once the CRL's next update has passed: re-run "d2c ca
crl" daily and send mosquitto SIGHUP.

The broker's limits are written with a comment each, explaining the
value: no retained messages, no QoS 2, packets of at most what d2c clients
read, a queue bound per client and a bound on the broker's memory. The
queue bounds (--max-queued-messages, --max-queued-bytes) hold by default
about an hour of 8,000 devices sending one envelope a minute; past them
mosquitto drops further messages for a client that is away or slow. Size
them for the fleet's rate times the longest verifier outage to ride out,
and --memory-limit at least twice --max-queued-bytes.

Paths in the configuration are absolute. mosquitto started as root switches to
the user "mosquitto" before it reads the certificates and the key: give that
user read access (or add a "user" line).

` + serviceFlagHelp,
		example: `d2c ca server-cert --ca /srv/d2c/ca --host mqtt.example.com --cert /etc/mosquitto/d2c/broker.crt \
    --key /etc/mosquitto/d2c/broker.key
d2c ca crl --ca /srv/d2c/ca --out /etc/mosquitto/d2c/crl.pem
d2c broker config --ca /srv/d2c/ca --listen 0.0.0.0:8883 --cert /etc/mosquitto/d2c/broker.crt \
    --key /etc/mosquitto/d2c/broker.key --crl /etc/mosquitto/d2c/crl.pem --service verifier \
    --service 'commander:write=d2c/v1/dev/+/down/cmd' --out /etc/mosquitto/d2c
mosquitto -c /etc/mosquitto/d2c/mosquitto.conf`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			caDir := fl.String("ca", "", "fleet CA directory, or a copy holding root.crt and issuing.crt (required)")
			listen := fl.String("listen", "127.0.0.1:8883", "address the broker listens on, host:port (0.0.0.0:8883 for every interface)")
			certFile := fl.String("cert", "", "broker certificate chain, PEM, from d2c ca server-cert (required)")
			keyFile := fl.String("key", "", "broker private key, PEM (required)")
			crlFile := fl.String("crl", "", "fleet CRL, PEM, from d2c ca crl (recommended)")
			var services stringList
			fl.Var(&services, "service", "cloud service name and its rights, NAME or NAME:read=F,...;write=F,...; repeatable")
			persistence := fl.String("persistence", "", "directory where mosquitto keeps sessions and queued messages across restarts (created 0700 if missing; the broker's user must own it)")
			maxPacket := fl.Int("max-packet-size", 0, fmt.Sprintf("largest MQTT packet accepted, bytes, at most the default (0: %d)", broker.DefaultMaxPacketSize))
			maxQueuedMessages := fl.Int("max-queued-messages", 0, fmt.Sprintf("QoS 1 messages queued for one client that is away or slow (0: %d)", broker.DefaultMaxQueuedMessages))
			maxQueuedBytes := fl.Int("max-queued-bytes", 0, fmt.Sprintf("payload bytes queued for one client that is away or slow (0: %d)", broker.DefaultMaxQueuedBytes))
			memoryLimit := fl.Int64("memory-limit", 0, fmt.Sprintf("memory the broker may allocate, bytes, at least twice --max-queued-bytes (0: %d)", int64(broker.DefaultMemoryLimit)))
			out := fl.String("out", "", "directory to write mosquitto.conf, acl and ca.pem into (required)")
			return func(ctx context.Context, s streams) error {
				if *caDir == "" || *certFile == "" || *keyFile == "" || *out == "" {
					return usageErrorf("--ca, --cert, --key and --out are required")
				}
				if host, port, err := net.SplitHostPort(*listen); err != nil || host == "" {
					return usageErrorf("--listen %q: want host:port, such as 127.0.0.1:8883 or 0.0.0.0:8883", *listen)
				} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
					return usageErrorf("--listen %q: port must be 1 to 65535", *listen)
				}
				svcs, err := parseServices(services)
				if err != nil {
					return err
				}
				root, issuing, err := readFleetCerts(*caDir)
				if err != nil {
					return err
				}
				chain, _, err := readKeyPair(*certFile, *keyFile)
				if err != nil {
					return err
				}
				if err := verifyIssued(chain, root, issuing, x509.ExtKeyUsageServerAuth); err != nil {
					return withHint(fmt.Errorf("%w: %s: %v", identity.ErrUntrusted, *certFile, err),
						"devices trust only the fleet root: issue the broker's certificate with `d2c ca server-cert --ca CA_DIR --host NAME`")
				}
				if *crlFile != "" {
					b, err := atomicfile.ReadFile(*crlFile, limits.PEMFile)
					if err != nil {
						return err
					}
					rl, err := identity.ParseCRL(b, issuing)
					if err != nil {
						return withHint(fmt.Errorf("%s: %w", *crlFile, err), "write the fleet's CRL with `d2c ca crl --ca CA_DIR --out FILE`")
					}
					if time.Now().After(rl.NextUpdate()) {
						return withHint(fmt.Errorf("%s expired at %s: mosquitto would refuse every client", *crlFile,
							rl.NextUpdate().UTC().Format(time.RFC3339)), "write a fresh one with `d2c ca crl --ca CA_DIR --out FILE`")
					}
				}
				outDir, err := filepath.Abs(*out)
				if err != nil {
					return err
				}
				mc := broker.MosquittoConfig{
					Listen: *listen, CAFile: filepath.Join(outDir, brokerCAFile), ACLFile: filepath.Join(outDir, brokerACLFile),
					Services: svcs, MaxPacketSize: *maxPacket,
					MaxQueuedMessages: *maxQueuedMessages, MaxQueuedBytes: *maxQueuedBytes, MemoryLimit: *memoryLimit,
				}
				for _, p := range []struct {
					dst *string
					src string
				}{
					{&mc.CertFile, *certFile}, {&mc.KeyFile, *keyFile}, {&mc.CRLFile, *crlFile}, {&mc.PersistenceDir, *persistence},
				} {
					if *p.dst, err = absPath(p.src); err != nil {
						return err
					}
				}
				if err := mc.Validate(); err != nil {
					return usageErrorf("%v", err)
				}
				conf, err := mc.Conf()
				if err != nil {
					return err
				}
				acl, err := mc.ACL()
				if err != nil {
					return err
				}
				if err := os.MkdirAll(outDir, 0o755); err != nil {
					return err
				}
				if mc.PersistenceDir != "" {
					// mosquitto does not create it, and fails only when it
					// first saves (at shutdown).
					if err := os.MkdirAll(mc.PersistenceDir, 0o700); err != nil {
						return fmt.Errorf("--persistence: %w", err)
					}
				}
				for _, f := range []struct {
					path string
					data []byte
				}{
					{mc.CAFile, identity.EncodeCertificatesPEM(root, issuing)},
					{mc.ACLFile, []byte(acl)},
					{filepath.Join(outDir, brokerConfFile), []byte(conf)},
				} {
					if err := atomicfile.WriteFileMode(nil, f.path, f.data, 0o644); err != nil {
						return err
					}
				}
				confPath := filepath.Join(outDir, brokerConfFile)
				fmt.Fprintf(s.stdout, "wrote %s, %s and %s\n", confPath, mc.ACLFile, mc.CAFile)
				fmt.Fprintf(s.stdout, "listener:  %s, TLS 1.3, fleet client certificates required\n", mc.Listen)
				printServices(s.stdout, svcs)
				fmt.Fprintf(s.stdout, "run:       mosquitto -c %s\n", confPath)
				if *crlFile == "" {
					fmt.Fprintf(s.stderr, "warning: no --crl: revoked devices keep connecting until their certificates expire\n")
				}
				return nil
			}
		},
	}
}

func devBrokerCommand() *command {
	return &command{
		path:    "dev broker",
		summary: "run an embedded MQTT broker for development",
		usage: "--ca DIR [--listen ADDR] [--host HOST...] [--service NAME[:read=FILTER,...;write=FILTER,...]...] " +
			"[--addr-file FILE] [--dev-any-address]",
		details: `
Runs the embedded broker of transport/devbroker, with the same rules as the
mosquitto configuration of "d2c broker config": MQTT v5 over TLS 1.3, a fleet
client certificate required (its CN is the username and client ID), each
device confined to its own topics, each service to its --service rights,
revoked certificates refused at the handshake (the CA's revocation list in
--ca, read again as "d2c ca revoke" changes it).

Its server certificate is issued from the CA at start, kept in memory only,
for the --host names (default: the --listen host, plus localhost, 127.0.0.1
and ::1 on the loopback; localhost for a wildcard such as 0.0.0.0, so give
the names devices dial with --host then).

It is for development, examples and tests: production fleets run mosquitto
("d2c broker config") or another broker behind the same policy. It listens on
a loopback address unless --dev-any-address is given. Once listening it prints
its address on stdout, and writes it to --addr-file if given (useful with
--listen 127.0.0.1:0, which picks a free port; the file is removed on exit).
It stops on SIGINT or SIGTERM.

` + serviceFlagHelp,
		example: `d2c dev broker --ca /srv/d2c/ca --listen 127.0.0.1:8883 --service tail
d2c tail --broker 127.0.0.1:8883 --ca /srv/d2c/ca --cert tail.crt --key tail.key --devices devices/`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			caDir := fl.String("ca", "", "fleet CA directory (required)")
			issuingKey := issuingKeyFlag(fl)
			listen := fl.String("listen", "127.0.0.1:8883", "TCP address to listen on, host:port")
			var hosts, services stringList
			fl.Var(&hosts, "host", "DNS name or IP address for the broker's certificate; repeatable")
			fl.Var(&services, "service", "cloud service name and its rights, NAME or NAME:read=F,...;write=F,...; repeatable")
			addrFile := fl.String("addr-file", "", "file to write the broker's host:port to once listening")
			anyAddr := fl.Bool("dev-any-address", false, "allow a non-loopback --listen address")
			return func(ctx context.Context, s streams) error {
				if *caDir == "" {
					return usageErrorf("--ca is required")
				}
				host, _, err := net.SplitHostPort(*listen)
				if err != nil {
					return usageErrorf("--listen %q: %v", *listen, err)
				}
				if !isLoopback(host) && !*anyAddr {
					return withHint(fmt.Errorf("refusing to run the development broker on %s, which is not a loopback address", *listen),
						"use --listen 127.0.0.1:PORT, or add --dev-any-address for a development network; "+
							"production fleets run mosquitto (`d2c broker config`)")
				}
				svcs, err := parseServices(services)
				if err != nil {
					return err
				}
				ca, closeKey, err := openSigningCA(ctx, *caDir, *issuingKey)
				if err != nil {
					return err
				}
				defer closeKey()
				names := []string(hosts)
				if len(names) == 0 {
					names = []string{host}
					if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
						names = []string{"localhost"}
					}
					if isLoopback(host) {
						for _, n := range []string{"localhost", "127.0.0.1", "::1"} {
							if n != host {
								names = append(names, n)
							}
						}
					}
				}
				return runDevBroker(ctx, s, ca, *listen, names, svcs, *addrFile)
			}
		},
	}
}

// runDevBroker runs the embedded broker until ctx is done.
func runDevBroker(ctx context.Context, s streams, ca *identity.CA, listen string, hosts []string,
	services []broker.ServiceRights, addrFile string) error {
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return err
	}
	leaf, err := ca.IssueServer(key.Public(), hosts...)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	log := slog.New(slog.NewTextHandler(s.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b, err := devbroker.Start(ctx, devbroker.Config{
		Addr:        listen,
		Certificate: tlsCertificate([]*x509.Certificate{leaf, ca.Issuing()}, key),
		ClientRoots: roots,
		Services:    services,
		Revocation:  ca,
		Logger:      log,
	})
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Fprintf(s.stdout, "broker listening on %s (MQTT v5, TLS 1.3, fleet client certificates)\n", b.Addr())
	fmt.Fprintf(s.stdout, "certificate for %s\n", strings.Join(hosts, ", "))
	printServices(s.stdout, services)
	fmt.Fprintf(s.stderr, "warning: development broker: production fleets run mosquitto (d2c broker config)\n")
	if addrFile != "" {
		if err := atomicfile.WriteFile(nil, addrFile, []byte(b.Addr()+"\n")); err != nil {
			return err
		}
		defer os.Remove(addrFile)
	}
	<-ctx.Done()
	if err := b.Close(); err != nil {
		return err
	}
	fmt.Fprintln(s.stderr, "broker stopped")
	return nil
}
