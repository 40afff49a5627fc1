// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	neturl "net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/fxamacker/cbor/v2"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/cborx"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Bounds of the --devices directory.
const (
	// deviceDirMaxFiles bounds the certificate files read from --devices.
	deviceDirMaxFiles = 100_000
	// deviceDirRescan is the shortest time between two reads of --devices
	// prompted by messages from unknown devices.
	deviceDirRescan = 2 * time.Second
)

// tailDisconnectTimeout bounds the MQTT DISCONNECT at exit.
const tailDisconnectTimeout = 5 * time.Second

func tailCommand() *command {
	return &command{
		path:    "tail",
		summary: "print verified telemetry live: from the cloud store, or from the broker",
		usage: "(--db URL [--since DURATION|TIME] | --broker HOST:PORT (--ca DIR | --roots FILE [--crl FILE]) --cert FILE --key FILE " +
			"--devices DIR [--decrypt-key FILE] [--server-name NAME]) [--device ID] [--stream NAME] [--json]",
		details: `
With --db (the normal way), prints the records the cloud service ("d2c
cloud serve") verified, as it keeps them in the fleet's cloud store: --db
is the service's "db", sqlite:PATH or a postgres:// URL. tail only reads
the store's records table, polling it every half second, in the order the
store numbered the records; it never verifies, writes or migrates
anything. It starts with the records accepted from now on, or with those
accepted since --since (a duration back from now, such as 1h, or an RFC
3339 time). With several verifiers on one PostgreSQL store, a record whose
transaction committed after a later-numbered one is printed when it
appears.

It prints one line per verified reading on stdout:

    TIME DEVICE STREAM BOOT/SEQ BODY

TIME is the reading's time (UTC, RFC 3339), BOOT/SEQ the device's boot
counter and the record's sequence number (with #i for the i-th reading of a
record holding several), BODY the reading as text if it is printable UTF-8,
else "hex:" and its bytes in hex. --device and --stream print only that
device or stream.

With --json, one JSON object per line instead (JSON Lines), per reading:
"time" (RFC 3339, UTC, milliseconds), "device", "stream", "boot", "seq",
"index" (1 to n for a record of n readings, 0 for a record of one), and
either "body" (the reading as text, if printable UTF-8) or "body_hex".

With --broker instead, tail is a verifier of its own: it connects to the
broker as a cloud service (transport.DialCloud), with the service
certificate in --cert and --key ("d2c ca service-cert"; the broker must
give that service read access to d2c/v1/dev/+/up/#, as --service NAME
does), and verifies every telemetry message with transport.Verifier. Use a
certificate of its own (say svc:tail): its CN is its MQTT session, and one
shared with the service would take the service's session over. It
subscribes without a shared-subscription group, so it gets its own copy of
every message and takes none from the service's verifiers. Messages
refused (a bad signature, an unknown device, a replay...) are reported on
stderr with the reason, one line each. Duplicates (QoS 1 redeliveries) are
dropped silently.

In that mode the verifier takes each device's public key from its
registered certificate, never from the message; --devices names a
directory of device certificates: PEM files (*.pem, *.crt), each holding a
device's certificate chain as "d2c device enroll --cert-out" or "d2c
device show --cert-out" writes it. The directory is read at start, and
again (at most every 2 seconds) when a message names a device it does not
know yet, so certificates copied there while tail runs are picked up. A
device's certificates are checked against the fleet root, their validity
and revocation before they are trusted.

--ca DIR takes the fleet root from the CA directory and checks revocation
against its live revocation list; --roots FILE takes the roots from a PEM
file instead, with --crl FILE for revocation ("d2c ca crl").

--decrypt-key is the cloud's P-256 private key (PEM) that devices encrypt
telemetry to; without it encrypted messages are refused. The broker keeps the
service's session for an hour: messages sent while tail was away arrive when
it reconnects. Both modes stop on SIGINT or SIGTERM.`,
		example: `d2c tail --db sqlite:/var/lib/d2c/fleet.db --since 10m --stream temperature
d2c ca service-cert --ca /srv/d2c/ca --service tail --cert tail.crt --key tail.key
d2c tail --broker mqtt.example.com:8883 --ca /srv/d2c/ca --cert tail.crt --key tail.key \
    --devices /srv/d2c/devices --stream temperature`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			db := fl.String("db", "", "the fleet's cloud store, sqlite:PATH or postgres://...: print the records the cloud service verified")
			since := fl.String("since", "", "with --db: start with the records accepted since this duration ago (1h) or RFC 3339 time (default: now)")
			broker := fl.String("broker", "", "broker address, host:port: verify from the broker instead of --db")
			serverName := fl.String("server-name", "", "name checked in the broker certificate (default: the host of --broker)")
			caDir := fl.String("ca", "", "fleet CA directory: roots and live revocation list")
			rootsFile := fl.String("roots", "", "PEM file of fleet CA certificates to trust, instead of --ca")
			crlFile := fl.String("crl", "", "fleet CRL, PEM, with --roots")
			certFile := fl.String("cert", "", "service certificate chain, PEM, from d2c ca service-cert (with --broker)")
			keyFile := fl.String("key", "", "service private key, PEM (with --broker)")
			devicesDir := fl.String("devices", "", "directory of device certificates, PEM, one chain per file (with --broker)")
			device := fl.String("device", "", "print only this device")
			stream := fl.String("stream", "", "print only this stream")
			decryptKey := fl.String("decrypt-key", "", "cloud P-256 private key, PEM, to decrypt encrypted telemetry (with --broker)")
			asJSON := fl.Bool("json", false, "print one JSON object per reading and line (fields in the details below)")
			return func(ctx context.Context, s streams) error {
				if *device != "" {
					if err := identity.ValidateDeviceID(*device); err != nil {
						return usageErrorf("--device %q: %s", *device, deviceIDFormat)
					}
				}
				if *stream != "" {
					if err := wire.ValidateStream(*stream); err != nil {
						return usageErrorf("--stream %q: %v", *stream, err)
					}
				}
				if *db != "" {
					var brokerFlags []string
					fl.Visit(func(f *flag.Flag) {
						if !slices.Contains([]string{"db", "since", "device", "stream", "json"}, f.Name) {
							brokerFlags = append(brokerFlags, "--"+f.Name)
						}
					})
					if len(brokerFlags) > 0 {
						return usageErrorf("--db reads the verified records from the store; drop %s (for the --broker mode)", strings.Join(brokerFlags, ", "))
					}
					from, err := parseSince(*since, time.Now())
					if err != nil {
						return err
					}
					return runTailDB(ctx, s, tailDBOptions{url: *db, since: from, device: *device, stream: *stream, json: *asJSON})
				}
				if *since != "" {
					return usageErrorf("--since goes with --db (from the broker, tail prints what arrives from now on)")
				}
				if *broker == "" && *certFile == "" && *keyFile == "" && *devicesDir == "" {
					return usageErrorf("give --db URL, the cloud service's store (or --broker, --cert, --key and --devices to verify from the broker)")
				}
				if *broker == "" || *certFile == "" || *keyFile == "" || *devicesDir == "" {
					return usageErrorf("--broker, --cert, --key and --devices are required")
				}
				if (*caDir == "") == (*rootsFile == "") {
					return usageErrorf("give exactly one of --ca and --roots: the fleet root the broker and the devices chain to")
				}
				if *crlFile != "" && *rootsFile == "" {
					return usageErrorf("--crl goes with --roots (with --ca, revocation comes from the CA)")
				}
				o := tailOptions{broker: *broker, serverName: *serverName, device: *device, stream: *stream, json: *asJSON}
				var err error
				if o.roots, o.rootCerts, o.revocation, err = tailTrust(s, *caDir, *rootsFile, *crlFile); err != nil {
					return err
				}
				if o.cert, o.service, err = serviceCertificate(*certFile, *keyFile, o.rootCerts); err != nil {
					return err
				}
				if *decryptKey != "" {
					k, err := identity.ReadKeyFile(*decryptKey)
					if err != nil {
						return err
					}
					ec, ok := k.(*ecdsa.PrivateKey)
					if !ok {
						return withHint(fmt.Errorf("%w: %s is not a P-256 key", identity.ErrUnsupportedKey, *decryptKey),
							"--decrypt-key is the cloud's P-256 (ECDSA) private key whose public half devices encrypt to")
					}
					o.decrypt = ec
				}
				o.devices = &dirCertificates{dir: *devicesDir, warn: s.stderr}
				n, err := o.devices.load()
				if err != nil {
					return err
				}
				o.deviceCount = n
				return runTail(ctx, s, o)
			}
		},
	}
}

// tailOptions are the parsed flags of "tail".
type tailOptions struct {
	broker, serverName string
	roots              *x509.CertPool
	rootCerts          []*x509.Certificate
	revocation         identity.RevocationChecker
	cert               tls.Certificate
	service            string
	decrypt            *ecdsa.PrivateKey
	devices            *dirCertificates
	deviceCount        int
	device, stream     string
	json               bool // JSON Lines on stdout
}

// tailTrust returns the fleet roots and the revocation checker of --ca or
// --roots and --crl.
func tailTrust(s streams, caDir, rootsFile, crlFile string) (*x509.CertPool, []*x509.Certificate, identity.RevocationChecker, error) {
	pool := x509.NewCertPool()
	if caDir != "" {
		ca, err := openCANoSign(caDir)
		if err != nil {
			return nil, nil, nil, err
		}
		pool.AddCert(ca.Root())
		return pool, []*x509.Certificate{ca.Root(), ca.Issuing()}, ca, nil
	}
	b, err := atomicfile.ReadFile(rootsFile, limits.PEMFile)
	if err != nil {
		return nil, nil, nil, err
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", rootsFile, err)
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	if crlFile == "" {
		fmt.Fprintln(s.stderr, "warning: no --crl: revoked devices' messages are accepted")
		return pool, certs, nil, nil
	}
	crl, err := atomicfile.ReadFile(crlFile, limits.PEMFile)
	if err != nil {
		return nil, nil, nil, err
	}
	var errs []error
	for _, issuer := range certs {
		// A CRL past its nextUpdate is refused: revocation would be
		// unknown, and the consumer fails closed (identity.CRLCache).
		cache := identity.NewCRLCache(issuer, nil)
		err := cache.Update(crl)
		if err == nil {
			return pool, certs, cache, nil
		}
		if errors.Is(err, identity.ErrCRLStale) {
			return nil, nil, nil, withHint(fmt.Errorf("%s: %w", crlFile, err), "write a fresh one with `d2c ca crl --ca CA_DIR --out FILE`")
		}
		errs = append(errs, err)
	}
	return nil, nil, nil, withHint(fmt.Errorf("%s: %w", crlFile, errors.Join(errs...)),
		"the CRL is signed by the issuing CA: put CA_DIR/issuing.crt in --roots too, and check that --crl comes from `d2c ca crl`")
}

// serviceCertificate loads the service's client certificate, checking
// that it is one (CN svc:NAME, client authentication) of this fleet.
func serviceCertificate(certFile, keyFile string, fleet []*x509.Certificate) (tls.Certificate, string, error) {
	chain, key, err := readKeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	cn := chain[0].Subject.CommonName
	if !strings.HasPrefix(cn, identity.ServicePrefix) {
		return tls.Certificate{}, "", withHint(fmt.Errorf("%s is for %q, not a cloud service (svc:NAME)", certFile, cn),
			"issue a service certificate with `d2c ca service-cert --ca CA_DIR --service NAME`")
	}
	var errs []error
	for _, root := range fleet {
		err := verifyIssued(chain, root, nil, x509.ExtKeyUsageClientAuth)
		if err == nil {
			return tlsCertificate(chain, key), cn, nil
		}
		errs = append(errs, err)
	}
	return tls.Certificate{}, "", withHint(fmt.Errorf("%w: %s: %w", identity.ErrUntrusted, certFile, errors.Join(errs...)),
		"the broker accepts only certificates of this fleet: issue one with `d2c ca service-cert` from the fleet CA")
}

// runTail connects and prints until ctx is done.
func runTail(ctx context.Context, s streams, o tailOptions) error {
	out := &tailPrinter{stdout: s.stdout, stderr: s.stderr, device: o.device, stream: o.stream, decrypting: o.decrypt != nil, json: o.json}
	log := slog.New(&warningHandler{note: out.note})
	v, err := transport.NewVerifier(transport.VerifierConfig{
		Certificates:  o.devices,
		Policy:        identity.DeviceCertPolicy{Roots: o.roots, Revocations: o.revocation},
		DecryptionKey: o.decrypt,
	})
	if err != nil {
		return err
	}
	cloud, err := transport.DialCloud(ctx, transport.CloudConfig{
		Broker: o.broker, ServerName: o.serverName, Certificate: o.cert, Roots: o.roots,
		Verifier: v, OnRecord: out.record, OnRefused: out.refused, Logger: log,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(s.stderr, "connecting to %s as %s; %d device(s) with certificates in %s\n", o.broker, o.service, o.deviceCount, o.devices.dir)
	if o.deviceCount == 0 {
		fmt.Fprintf(s.stderr, "warning: no device certificates in %s yet: messages are refused until theirs are copied there\n", o.devices.dir)
	}
	go func() {
		if cloud.AwaitConnection(ctx) == nil {
			out.note("connected; waiting for telemetry (Ctrl-C stops)")
		}
	}()
	<-ctx.Done()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tailDisconnectTimeout)
	defer cancel()
	_ = cloud.Close(dctx)
	st := v.Stats()
	out.note(fmt.Sprintf("stopped: %d accepted, %d refused, %d replays, %d duplicates", st.Accepted, st.Refused, st.Replays, st.Duplicates))
	return nil
}

// Polling of "tail --db".
const (
	// tailBatch bounds the records one query reads.
	tailBatch = 500
	// tailHoleWait is how long an ID the records skipped over is watched
	// for a record committed late: with several verifiers on PostgreSQL,
	// a transaction may take its IDs before another and commit after it.
	tailHoleWait = 10 * time.Second
	// tailMaxHoles bounds the IDs watched.
	tailMaxHoles = 1024
)

// tailPollInterval is how often "tail --db" looks for new records.
var tailPollInterval = 500 * time.Millisecond

// tailDBOptions are the parsed flags of "tail --db".
type tailDBOptions struct {
	url            string
	since          time.Time // zero: from now on
	device, stream string
	json           bool // JSON Lines on stdout
}

// parseSince reads --since: a duration back from now, or an RFC 3339 time.
func parseSince(v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	return time.Time{}, usageErrorf("--since %q: want a duration back from now (10m, 24h) or an RFC 3339 time (2025-01-02T15:04:05Z)", v)
}

// runTailDB prints the records verified into the store until ctx is done.
func runTailDB(ctx context.Context, s streams, o tailDBOptions) error {
	table, err := openRecordsTable(ctx, o.url)
	if err != nil {
		return err
	}
	defer table.db.Close()
	out := &tailPrinter{stdout: s.stdout, stderr: s.stderr, device: o.device, stream: o.stream, json: o.json}
	f := &recordFollower{table: table, print: out.record, warn: out.note, holes: map[int64]time.Time{}}
	from := "from now on"
	if o.since.IsZero() {
		f.after, err = table.lastID(ctx)
	} else {
		from = "accepted since " + o.since.UTC().Format(time.RFC3339)
		f.after, err = table.idBefore(ctx, o.since)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", table.name, err)
	}
	out.note(fmt.Sprintf("printing the records verified into %s, %s (Ctrl-C stops)", table.name, from))
	tick := time.NewTicker(tailPollInterval)
	defer tick.Stop()
	var failing error
	for {
		err := f.poll(ctx)
		switch {
		case ctx.Err() != nil:
		case err != nil && failing == nil:
			out.note(fmt.Sprintf("warning: reading %s: %v (retrying)", table.name, err))
		case err == nil && failing != nil:
			out.note("reading the records again")
		}
		failing = err
		select {
		case <-ctx.Done():
			out.mu.Lock()
			n := out.printed
			out.mu.Unlock()
			out.note(fmt.Sprintf("stopped: %d records printed", n))
			return nil
		case <-tick.C:
		}
	}
}

// recordsTable reads the records table of a cloud store, and nothing else:
// it never creates, migrates or writes the database (d2c cloud serve
// does).
type recordsTable struct {
	db     *sql.DB
	dollar bool   // PostgreSQL's $1 placeholders instead of ?
	name   string // the store, for messages: no password
	dec    cbor.DecMode
}

// openRecordsTable opens the store a --db URL names, checking that it
// exists and that its schema is one this d2c knows.
func openRecordsTable(ctx context.Context, url string) (*recordsTable, error) {
	const hint = "give --db the cloud service's store, its \"db\": sqlite:/path/to/fleet.db, or a postgres://user@host/db URL"
	t := &recordsTable{}
	var driver, dsn string
	switch {
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		u, err := neturl.Parse(url)
		if err != nil {
			return nil, withHint(fmt.Errorf("%w: not a URL", store.ErrBadURL), hint)
		}
		driver, dsn, t.dollar, t.name = "pgx", url, true, u.Redacted()
	case strings.Contains(url, "://"):
		scheme, _, _ := strings.Cut(url, "://")
		return nil, withHint(fmt.Errorf("%w: scheme %q: not postgres:// (or sqlite:PATH for a file)", store.ErrBadURL, scheme), hint)
	default:
		path := strings.TrimPrefix(url, "sqlite:")
		if path == "" || strings.ContainsAny(path, "?#") {
			return nil, withHint(fmt.Errorf("%w: %q: want sqlite:PATH (no query)", store.ErrBadURL, url), hint)
		}
		if _, err := os.Stat(path); err != nil {
			return nil, withHint(fmt.Errorf("store: %w", err),
				"--db names the store d2c cloud serve keeps (its \"db\"; by default sqlite:fleet.db beside its configuration); tail never creates one")
		}
		if !slices.Contains(sql.Drivers(), "sqlite") {
			return nil, withHint(fmt.Errorf("%w: SQLite is not built for %s/%s", store.ErrBadURL, runtime.GOOS, runtime.GOARCH), "use the store's postgres:// URL")
		}
		driver, dsn, t.name = "sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=query_only(1)", "sqlite:"+path
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.name, err)
	}
	db.SetMaxOpenConns(1)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, withHint(fmt.Errorf("connect to %s: %w", t.name, err), "check --db and that the database runs")
	}
	var version sql.NullInt64
	if err := db.QueryRowContext(ctx, "SELECT MAX(version) FROM schema_migrations").Scan(&version); err != nil || !version.Valid {
		db.Close()
		return nil, withHint(fmt.Errorf("%s is not a d2c cloud store: no schema (%v)", t.name, err),
			"--db names the store d2c cloud serve keeps; check the path or URL, and that the service ran once")
	}
	if v := store.SchemaVersion(); version.Int64 > int64(v) {
		db.Close()
		return nil, withHint(fmt.Errorf("%w: %s is at version %d, this d2c knows %d", store.ErrSchemaTooNew, t.name, version.Int64, v),
			"use a d2c as new as the service's")
	}
	modes, err := cborx.New(limits.Readings)
	if err != nil {
		db.Close()
		return nil, err
	}
	t.db, t.dec = db, modes.Dec
	return t, nil
}

// storedRecord is a row of the records table.
type storedRecord struct {
	id  int64
	rec transport.Record
	err error // the readings did not decode
}

// storedReading is a reading as the records table keeps it: a
// deterministic CBOR array [time_ms, body] (cloud/store).
type storedReading struct {
	_    struct{} `cbor:",toarray"`
	Time int64
	Body []byte
}

// lastID returns the highest record ID, 0 if there is none.
func (t *recordsTable) lastID(ctx context.Context) (int64, error) {
	var id sql.NullInt64
	err := t.db.QueryRowContext(ctx, "SELECT MAX(id) FROM records").Scan(&id)
	return id.Int64, err
}

// idBefore returns the ID below the first record accepted at or after
// since: reading from there prints the records accepted since.
func (t *recordsTable) idBefore(ctx context.Context, since time.Time) (int64, error) {
	var id sql.NullInt64
	if err := t.db.QueryRowContext(ctx, "SELECT MIN(id) FROM records WHERE received_ms >= "+t.arg(1), since.UnixMilli()).Scan(&id); err != nil {
		return 0, err
	}
	if !id.Valid {
		return t.lastID(ctx)
	}
	return id.Int64 - 1, nil
}

// after returns up to tailBatch records with IDs above id, in order.
func (t *recordsTable) after(ctx context.Context, id int64) ([]storedRecord, error) {
	return t.query(ctx, "WHERE id > "+t.arg(1)+" ORDER BY id LIMIT "+strconv.Itoa(tailBatch), id)
}

// byID returns the records of ids that exist, in order.
func (t *recordsTable) byID(ctx context.Context, ids []int64) ([]storedRecord, error) {
	args, params := make([]any, len(ids)), make([]string, len(ids))
	for i, id := range ids {
		args[i], params[i] = id, t.arg(i+1)
	}
	return t.query(ctx, "WHERE id IN ("+strings.Join(params, ", ")+") ORDER BY id", args...)
}

func (t *recordsTable) query(ctx context.Context, where string, args ...any) ([]storedRecord, error) {
	rows, err := t.db.QueryContext(ctx, "SELECT id, device, stream, boot, seq, time_ms, readings FROM records "+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storedRecord
	for rows.Next() {
		var (
			r                    storedRecord
			boot, seq, timeMilli int64
			blob                 []byte
			readings             []storedReading
		)
		if err := rows.Scan(&r.id, &r.rec.Device, &r.rec.Stream, &boot, &seq, &timeMilli, &blob); err != nil {
			return nil, err
		}
		r.rec.Boot, r.rec.Seq, r.rec.Time = uint64(boot), uint64(seq), time.UnixMilli(timeMilli)
		if r.err = t.dec.Unmarshal(blob, &readings); r.err == nil {
			for _, x := range readings {
				r.rec.Readings = append(r.rec.Readings, transport.Reading{Time: time.UnixMilli(x.Time), Body: x.Body})
			}
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// arg is the query placeholder of the n-th argument (from 1).
func (t *recordsTable) arg(n int) string {
	if t.dollar {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

// recordFollower prints each record of a table once, in the order of
// their IDs, and watches the IDs it skipped over for a while: a record
// committed late by another verifier is printed when it appears.
type recordFollower struct {
	table *recordsTable
	print func(context.Context, transport.Record)
	warn  func(string)
	after int64               // the highest ID read
	holes map[int64]time.Time // IDs below after not read yet, and since when
}

// poll prints the records that appeared since the last poll.
func (f *recordFollower) poll(ctx context.Context) error {
	now := time.Now()
	var ids []int64
	for id, since := range f.holes {
		if now.Sub(since) > tailHoleWait {
			delete(f.holes, id) // a sequence value never used, or a record deleted
			continue
		}
		ids = append(ids, id)
	}
	if len(ids) > 0 {
		slices.Sort(ids)
		recs, err := f.table.byID(ctx, ids)
		if err != nil {
			return err
		}
		for _, r := range recs {
			delete(f.holes, r.id)
			f.show(ctx, r)
		}
	}
	for {
		recs, err := f.table.after(ctx, f.after)
		if err != nil {
			return err
		}
		for _, r := range recs {
			for id := f.after + 1; id < r.id && len(f.holes) < tailMaxHoles; id++ {
				f.holes[id] = now
			}
			f.after = r.id
			f.show(ctx, r)
		}
		if len(recs) < tailBatch {
			return nil
		}
	}
}

func (f *recordFollower) show(ctx context.Context, r storedRecord) {
	if r.err != nil {
		f.warn(fmt.Sprintf("warning: record %d (%s %s %d/%d): readings unreadable: %v", r.id, r.rec.Device, printable(r.rec.Stream), r.rec.Boot, r.rec.Seq, r.err))
		return
	}
	f.print(ctx, r.rec)
}

// tailPrinter writes records and refusals, one line each, from the MQTT
// client's goroutines.
type tailPrinter struct {
	mu             sync.Mutex
	stdout, stderr io.Writer
	device, stream string
	decrypting     bool // --decrypt-key was given
	json           bool // --json: JSON Lines
	printed        int  // records printed
}

// tailReading is a line of "tail --json"; its field names are stable.
type tailReading struct {
	Time    string  `json:"time"`
	Device  string  `json:"device"`
	Stream  string  `json:"stream"`
	Boot    uint64  `json:"boot"`
	Seq     uint64  `json:"seq"`
	Index   int     `json:"index"`
	Body    *string `json:"body,omitempty"`     // printable UTF-8
	BodyHex string  `json:"body_hex,omitempty"` // otherwise
}

func (p *tailPrinter) record(_ context.Context, r transport.Record) {
	if p.device != "" && r.Device != p.device || p.stream != "" && r.Stream != p.stream {
		return
	}
	var b strings.Builder
	for i, rd := range r.Readings {
		pos := fmt.Sprintf("%d/%d", r.Boot, r.Seq)
		if len(r.Readings) > 1 {
			pos += fmt.Sprintf("#%d", i+1)
		}
		t := rd.Time
		if t.IsZero() {
			t = r.Time
		}
		if p.json {
			line := tailReading{Time: t.UTC().Format("2006-01-02T15:04:05.000Z07:00"), Device: r.Device, Stream: r.Stream,
				Boot: uint64(r.Boot), Seq: uint64(r.Seq)}
			if len(r.Readings) > 1 {
				line.Index = i + 1
			}
			if isText(rd.Body) {
				body := string(rd.Body)
				line.Body = &body
			} else {
				line.BodyHex = hex.EncodeToString(rd.Body)
			}
			j, _ := json.Marshal(line) // cannot fail: strings and numbers
			b.Write(append(j, '\n'))
			continue
		}
		fmt.Fprintf(&b, "%s %s %s %s %s\n", t.UTC().Format("2006-01-02T15:04:05.000Z07:00"), r.Device, r.Stream, pos, bodyText(rd.Body))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.printed++
	_, _ = io.WriteString(p.stdout, b.String())
}

func (p *tailPrinter) refused(topic string, err error) {
	if t, perr := wire.ParseTopic(topic); perr == nil &&
		(p.device != "" && t.Device != p.device || p.stream != "" && t.Kind == wire.KindTelemetry && t.Stream != p.stream) {
		return
	}
	line := fmt.Sprintf("refused %s: %v", printable(topic), err)
	if h := refusalHint(err, p.decrypting); h != "" {
		line += " (" + h + ")"
	}
	p.note(line)
}

func (p *tailPrinter) note(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.stderr, line)
}

// refusalHint says what a refused message means for the operator;
// decrypting tells whether tail has a decryption key (--decrypt-key).
func refusalHint(err error, decrypting bool) string {
	switch {
	case errors.Is(err, wire.ErrUnknownDevice):
		return "its certificate is not in --devices: copy it there (d2c device show --cert-out on the device)"
	case errors.Is(err, wire.ErrDecrypt) && !decrypting:
		return "encrypted to a cloud key: give its private key with --decrypt-key"
	case errors.Is(err, transport.ErrUnknownSessionKey):
		return "under a session key tail has not received: one the device sent before tail started (tail decrypts " +
			"from the device's next key, at its next start or within a day), or one refused above"
	case errors.Is(err, wire.ErrDecrypt):
		return "it does not decrypt with --decrypt-key: encrypted to another cloud key, or altered on the way"
	case errors.Is(err, identity.ErrRevoked):
		return "the device's certificate is revoked"
	case errors.Is(err, wire.ErrReplay):
		return "an old message sent again: a replay, or a device whose boot counter went back"
	case errors.Is(err, wire.ErrBadSignature), errors.Is(err, wire.ErrWrongDevice):
		return "not signed by the device the topic names: a forgery, or an outdated certificate in --devices"
	}
	return ""
}

// bodyText renders a reading: itself if it is printable UTF-8 on one line,
// else "hex:" and its bytes in hex.
func bodyText(b []byte) string {
	if len(b) == 0 {
		return `""`
	}
	if isText(b) {
		return string(b)
	}
	return "hex:" + hex.EncodeToString(b)
}

// isText reports whether b is printable UTF-8 on one line.
func isText(b []byte) bool {
	return utf8.Valid(b) && !strings.ContainsFunc(string(b), func(r rune) bool { return !unicode.IsPrint(r) })
}

// printable quotes s if it holds anything but printable characters.
func printable(s string) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == ' ' }) {
		return s
	}
	return fmt.Sprintf("%q", s)
}

// dirCertificates is the transport.Certificates of a directory of device
// certificate chains (PEM), read at start and again when a message names
// an unknown device, at most every deviceDirRescan.
type dirCertificates struct {
	dir  string
	warn io.Writer // told of files that are not device certificates

	mu     sync.Mutex
	chains map[string][][]*x509.Certificate // by device ID, newest first
	read   time.Time                        // of the last read
	bad    map[string]bool                  // files already warned about
}

var _ transport.Certificates = (*dirCertificates)(nil)

// load reads the directory and returns the number of devices.
func (d *dirCertificates) load() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.readLocked(); err != nil {
		return 0, err
	}
	return len(d.chains), nil
}

func (d *dirCertificates) readLocked() error {
	d.read = time.Now()
	entries, err := os.ReadDir(d.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return withHint(err, "--devices is a directory of device certificates (PEM): create it and copy them there "+
			"(d2c device enroll --cert-out, d2c device show --cert-out)")
	}
	if err != nil {
		return err
	}
	if d.bad == nil {
		d.bad = map[string]bool{}
	}
	chains := map[string][][]*x509.Certificate{}
	files := 0
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || strings.HasPrefix(name, ".") ||
			!strings.HasSuffix(name, ".pem") && !strings.HasSuffix(name, ".crt") {
			continue
		}
		if files++; files > deviceDirMaxFiles {
			return fmt.Errorf("%w: %s holds more than %d certificate files", identity.ErrTooLarge, d.dir, deviceDirMaxFiles)
		}
		path := filepath.Join(d.dir, name)
		b, err := atomicfile.ReadFile(path, limits.PEMFile)
		var chain []*x509.Certificate
		if err == nil {
			chain, err = identity.ParseCertificatesPEM(b)
		}
		if err == nil && identity.ValidateDeviceID(chain[0].Subject.CommonName) != nil {
			err = fmt.Errorf("CN %q is not a device ID", chain[0].Subject.CommonName)
		}
		if err != nil {
			if !d.bad[path] {
				d.bad[path] = true
				fmt.Fprintf(d.warn, "warning: skipping %s: %v\n", path, err)
			}
			continue
		}
		id := chain[0].Subject.CommonName
		chains[id] = append(chains[id], chain)
	}
	for _, cs := range chains {
		slices.SortFunc(cs, func(a, b []*x509.Certificate) int { return b[0].NotBefore.Compare(a[0].NotBefore) })
	}
	d.chains = chains
	return nil
}

// DeviceCertificates implements transport.Certificates.
func (d *dirCertificates) DeviceCertificates(_ context.Context, device string) ([][]*x509.Certificate, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if cs, ok := d.chains[device]; ok {
		return cs, nil
	}
	if time.Since(d.read) >= deviceDirRescan {
		if err := d.readLocked(); err != nil {
			fmt.Fprintf(d.warn, "warning: reading %s: %v\n", d.dir, err)
		}
		if cs, ok := d.chains[device]; ok {
			return cs, nil
		}
	}
	return nil, fmt.Errorf("%w: %q has no certificate in %s", wire.ErrUnknownDevice, device, d.dir)
}

// warningHandler is the slog.Handler of tail's connection: it prints the
// warnings and errors of transport.DialCloud as "warning: ..." lines, with
// what to do about the common ones.
type warningHandler struct {
	note  func(string)
	attrs []slog.Attr
}

func (h *warningHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *warningHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString("warning: " + r.Message)
	var errs []error
	add := func(a slog.Attr) bool {
		if e, ok := a.Value.Any().(error); ok {
			errs = append(errs, e)
			fmt.Fprintf(&b, ": %s", strings.TrimRight(e.Error(), ": "))
			return true
		}
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	hint := ""
	err := errors.Join(errs...)
	var connack *autopaho.ConnackError
	switch {
	case strings.Contains(r.Message, "refused the cloud subscription"):
		hint = "the broker does not let this service read telemetry: give it read access to d2c/v1/dev/+/up/# " +
			"(--service NAME of d2c broker config or d2c dev broker, NAME as in the certificate's svc:NAME)"
	case errors.As(err, &connack) && (connack.ReasonCode == 0x86 || connack.ReasonCode == 0x87):
		hint = "the broker lists no rights for this service: give it read access to d2c/v1/dev/+/up/# with " +
			"--service NAME (d2c broker config, d2c dev broker), NAME as in the certificate's svc:NAME"
	case errors.Is(err, transport.ErrCertificateRejected):
		hint = "the broker refused the service certificate: check that it is of this fleet, unexpired and not revoked"
	case errors.Is(err, syscall.ECONNREFUSED):
		hint = "nothing listens at --broker: check the address and that the broker runs"
	case errors.As(err, new(*tls.CertificateVerificationError)):
		hint = "the broker's certificate does not chain to the fleet root or does not name the --broker host " +
			"(--server-name sets the name checked)"
	}
	if hint != "" {
		b.WriteString(" (" + hint + ")")
	}
	h.note(b.String())
	return nil
}

func (h *warningHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &warningHandler{note: h.note, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h *warningHandler) WithGroup(string) slog.Handler { return h }
