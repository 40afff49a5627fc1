// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command quickstart runs the whole d2c loop on this machine, narrated, with
// nothing to install or configure. The cloud half is one call, cloud.Run,
// on an SQLite store in a temporary directory: the EST registrar, the
// telemetry verifier, the command API and CRL publication, with health and
// metrics endpoints, beside an embedded MQTT v5 broker with mutual TLS and
// per-device ACLs. A device generates its own key, enrolls through the
// service with a one-time token (reused: refused) and renews; it publishes
// signed and encrypted telemetry that the service verifies into the store;
// the application sends it a command through the service's API, the device
// obeys and reports a signed result the application reads back, and a
// replay of the command is refused.
//
//	go run ./examples/quickstart [--keep]
//
// Then updates: a release signed by the vendor, downloaded over HTTPS into
// the device's other slot, booted on trial and confirmed, each result
// reported to the cloud as signed telemetry; a rollback refused; and the
// device revoked in the store, listed in the CRL the service writes, and
// refused. With --keep the directory stays, and "d2c tail --db" prints the
// records the service kept.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/cloud"
	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/examples/internal/narrate"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/wire"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
	"github.com/d2c-iot/d2c/updatelink"
)

// crlEvery is how often the service writes a fresh CRL here (its default
// is hourly), so that the revocation shows in the file within the run.
const crlEvery = 200 * time.Millisecond

// waitFor bounds each wait for something the cloud or the device does.
const waitFor = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("quickstart", flag.ContinueOnError)
	fs.SetOutput(out)
	keep := fs.Bool("keep", false, "keep the temporary directory with the CA, the cloud store and the device state")
	if err := fs.Parse(args); err != nil {
		return err
	}
	start := time.Now()
	dir, err := os.MkdirTemp("", "d2c-quickstart-")
	if err != nil {
		return err
	}
	cloudDir := filepath.Join(dir, "cloud")
	db := "sqlite:" + filepath.Join(cloudDir, "fleet.db")
	if *keep {
		defer fmt.Fprintf(out, "\nState kept in %s\nThe verified records the service kept: d2c tail --db %s --since 1h\n", dir, db)
	} else {
		defer os.RemoveAll(dir)
	}
	n := narrate.New(out)
	fmt.Fprintln(out, "d2c quickstart: a device gets its own certified identity, with no shared secret.")

	// 1. The fleet CA.
	caDir := filepath.Join(cloudDir, "ca")
	ca, err := identity.InitCA(caDir, identity.CAConfig{Fleet: "Quickstart Fleet"})
	if err != nil {
		return err
	}
	fp := sha256.Sum256(ca.Root().Raw)
	n.Step("Cloud: created the fleet CA")
	n.Say("root:    %s (key to be kept offline)", ca.Root().Subject.CommonName)
	n.Say("issuing: %s (signs device certificates)", ca.Issuing().Subject.CommonName)
	n.Say("root fingerprint (SHA-256): %x", fp)
	tokenKey, err := identity.ReadKeyFile(filepath.Join(caDir, identity.CATokenKeyFile))
	if err != nil {
		return err
	}

	// 2. The broker, on the fleet's store.
	st, err := store.Open(ctx, store.Config{URL: db})
	if err != nil {
		return err
	}
	defer st.Close()
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	brokerCert, err := tlsCert(ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueServer(pub, "127.0.0.1") })
	if err != nil {
		return err
	}
	broker, err := devbroker.Start(ctx, devbroker.Config{Certificate: brokerCert, ClientRoots: roots, Revocation: st,
		Services: []broker.ServiceRights{
			{Name: "cloud", Read: []string{wire.AllUp}, Write: []string{wire.TopicPrefix + "+/down/cmd"}},
			{Name: "commander", Write: []string{wire.TopicPrefix + "+/down/cmd"}},
		}})
	if err != nil {
		return err
	}
	defer broker.Close()
	n.Step("Cloud: MQTT v5 broker on %s: TLS 1.3, client certificates required, each device confined to d2c/v1/dev/<its id>/", broker.Addr())

	// 3. The cloud service.
	svc, err := startService(ctx, cloudDir, ca, st, broker.Addr(), roots, tokenKey.Public())
	if err != nil {
		return err
	}
	defer svc.stop()
	n.Step("Cloud: the cloud service, one cloud.Run on the store %s", db)
	n.Say("EST registrar (RFC 7030) listening on %s, TLS 1.3", svc.est)
	n.Say("telemetry verifier subscribed to the broker: what it accepts goes to the store's records table")
	n.Say("CRL for the broker in %s, rewritten every %s here (default: hourly)", filepath.Base(svc.crlFile), crlEvery)
	n.Say("/healthz, /readyz, /metrics (Prometheus) on %s", svc.ops)

	// 4. A token for one device.
	const deviceID = "sensor-0001"
	token, err := identity.TokenIssuer{Key: tokenKey, TTL: 15 * time.Minute}.Issue(deviceID)
	if err != nil {
		return err
	}
	n.Step("Operator: issued a one-time enrollment token for %q", deviceID)
	n.Say("a signed JWT, valid 15 minutes, usable once (%d bytes)", len(token))

	// 5. The device enrolls through the service.
	devStore, err := identity.OpenStore(filepath.Join(dir, "device"), identity.StoreConfig{})
	if err != nil {
		return err
	}
	est := identity.ESTClient{URL: svc.est, BootstrapFingerprint: fp[:]}
	id, err := devStore.Enroll(ctx, est, identity.EnrollRequest{DeviceID: deviceID, Auth: identity.EnrollAuth{Token: token}})
	if err != nil {
		return err
	}
	leaf := id.Certificate()
	n.Step("Device: generated its own key and enrolled over EST")
	n.Say("trusted the registrar only after checking the root fingerprint")
	n.Say("certificate: CN=%s, %s", leaf.Subject.CommonName, leaf.URIs[0])
	n.Say("serial %x, valid until %s; recorded in the store with the token it consumed", leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.DateOnly))
	n.Say("private key: generated on the device, stored with mode 0600, never sent anywhere")

	// 6. An attacker replays the token.
	attacker, err := identity.OpenStore(filepath.Join(dir, "attacker"), identity.StoreConfig{})
	if err != nil {
		return err
	}
	_, err = attacker.Enroll(ctx, est, identity.EnrollRequest{DeviceID: deviceID, Auth: identity.EnrollAuth{Token: token}})
	n.Step("Attacker: replayed the same token from another machine")
	if !errors.Is(err, identity.ErrTokenReused) {
		return fmt.Errorf("token replay was not refused as reused: %v", err)
	}
	n.Say("refused: %v", errors.Unwrap(err))

	// 7. Renewal.
	renewed, err := devStore.Renew(ctx, est, identity.RenewOptions{})
	if err != nil {
		return err
	}
	n.Step("Device: renewed its certificate with a new key (EST simplereenroll)")
	n.Say("new serial %x; old key and certificate removed only after the new pair verified", renewed.Certificate().SerialNumber)
	n.Say("the store marks the old certificate superseded: it can no longer renew")

	// 8-13. Telemetry, a command, updates.
	if err := telemetry(ctx, n, ca, roots, broker.Addr(), svc, devStore); err != nil {
		return err
	}

	// 14. Revocation.
	if err := revoke(ctx, n, st, svc, ca, est, devStore); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nDone in %s.\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// service is the cloud service running in the background.
type service struct {
	est, ops string                // the registrar's and the operations endpoint's URLs
	api      string                // the command API's URL
	crlFile  string                // the CRL it writes for the broker
	cloudKey *ecdsa.PrivateKey     // devices encrypt telemetry to its public half
	cmdKey   crypto.Signer         // signs commands; devices get its public half
	records  chan transport.Record // each record the verifier accepted, live
	stop     func()                // stops it gracefully
}

// startService runs the registrar, the verifier and CRL publication as
// one service on st (cloud.Run), and returns once every role is up.
func startService(ctx context.Context, dir string, ca *identity.CA, st *store.Store, brokerAddr string, roots *x509.CertPool,
	tokenKey crypto.PublicKey) (*service, error) {
	cloudKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	estCert, err := tlsCert(ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueServer(pub, "127.0.0.1") })
	if err != nil {
		return nil, err
	}
	verifierCert, err := tlsCert(ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueService(pub, "cloud") })
	if err != nil {
		return nil, err
	}
	cmdKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return nil, err
	}
	s := &service{crlFile: filepath.Join(dir, "crl.pem"), cloudKey: cloudKey, cmdKey: cmdKey, records: make(chan transport.Record, 256)}
	ctx, cancel := context.WithCancel(ctx)
	ready, ran := make(chan cloud.Addrs, 1), make(chan error, 1)
	go func() {
		ran <- cloud.Run(ctx, cloud.Config{
			Store: st, CA: ca,
			Registrar: &cloud.RegistrarRole{Listen: "127.0.0.1:0", Certificate: estCert, TokenKeys: []crypto.PublicKey{tokenKey}},
			Verifier: &cloud.VerifierRole{Broker: brokerAddr, Certificate: verifierCert, Roots: roots,
				DecryptionKey: cloudKey, RequireEncryption: true,
				OnRecord: func(_ context.Context, r transport.Record) {
					select {
					case s.records <- r:
					default: // never stall the verifier; the record is in the store
					}
				}},
			Commands: &cloud.CommandRole{Listen: "127.0.0.1:0", Certificate: estCert, Key: cmdKey, Clients: []string{"app"}},
			CRL:      &cloud.CRLRole{Out: s.crlFile, Every: crlEvery},
			Ops:      "127.0.0.1:0",
			Ready:    func(a cloud.Addrs) { ready <- a },
		})
	}()
	select {
	case a := <-ready:
		s.est, s.ops, s.api = "https://"+a.Registrar.String(), "http://"+a.Ops.String(), "https://"+a.Commands.String()
		s.stop = func() {
			cancel()
			<-ran
		}
		return s, nil
	case err := <-ran:
		cancel()
		if err == nil {
			err = errors.New("the cloud service stopped before it was ready")
		}
		return nil, err
	}
}

// telemetry runs the transport part of the loop: the device publishing
// signed and encrypted readings that the service verifies, and a signed
// command; then the updates.
func telemetry(ctx context.Context, n *narrate.Narrator, ca *identity.CA, roots *x509.CertPool, brokerAddr string, svc *service,
	devStore *identity.Store) error {
	commands := make(chan transport.Command, 1)
	var dev *transport.Client
	devReady := make(chan struct{})
	dev, err := transport.Dial(ctx, transport.ClientConfig{Broker: brokerAddr, Store: devStore,
		Encryption:  &transport.Encryption{CloudKey: &svc.cloudKey.PublicKey},
		CommandKeys: []crypto.PublicKey{svc.cmdKey.Public()},
		OnCommand: func(ctx context.Context, c transport.Command) {
			<-devReady
			commands <- c
			// Report the result from another goroutine: OnCommand must
			// not block, and the report waits for the outbox's fsync.
			go func() {
				res := transport.CommandResult{ID: c.ID, Output: []byte("interval " + string(c.Body))}
				if err := dev.ReportCommandResult(ctx, res); err != nil {
					fmt.Fprintln(os.Stderr, "quickstart: report command result:", err)
				}
			}()
		}})
	if err != nil {
		return err
	}
	close(devReady)
	defer dev.Close(context.Background())
	wctx, cancel := context.WithTimeout(ctx, waitFor)
	defer cancel()
	if err := dev.AwaitConnection(wctx); err != nil { // connected, and subscribed to its commands
		return fmt.Errorf("device connection: %w", err)
	}
	for i, temp := range []string{"21.5", "21.7", "22.0"} {
		body := fmt.Sprintf(`{"celsius":%s}`, temp)
		if err := dev.Publish(ctx, "temperature", transport.Reading{Time: time.Now(), Body: []byte(body)}); err != nil {
			return err
		}
		if i == 0 {
			n.Step("Device: published readings: CBOR record, signed with its key (JWS), encrypted to the cloud (JWE),")
			n.Say("stored on disk before Publish returns, removed only after the broker's PUBACK")
		}
	}
	n.Step("Cloud: the service verified each reading (signature by the device's certificate from the store, topic, sequence)")
	for range 3 {
		r, err := nextRecord(svc.records, "temperature")
		if err != nil {
			return err
		}
		n.Say("%s/%s boot %d seq %d: %s", r.Device, r.Stream, r.Boot, r.Seq, r.Readings[0].Body)
	}
	verified, err := metric(ctx, svc.ops, "d2c_readings_verified_total")
	if err != nil {
		return err
	}
	refused, err := metric(ctx, svc.ops, "d2c_messages_refused_total")
	if err != nil {
		return err
	}
	n.Say("the broker only ever saw ciphertext; %s/metrics: accepted %d, refused %d", svc.ops, verified, refused)
	n.Say("each record kept once in the store's records table, in the transaction that marks its sequence seen")

	id, err := devStore.Current()
	if err != nil {
		return err
	}
	if err := signedCommand(ctx, n, ca, roots, brokerAddr, svc, dev, id.DeviceID, commands); err != nil {
		return err
	}
	return updates(ctx, n, ca, roots, devStore, dev, svc.records)
}

// signedCommand has the application send the device a command through the
// service's command API (HTTPS, the application's client certificate) and
// read the device's signed result; then a command with the same ID, as a
// replay recorded on the broker would carry, is refused by the device.
func signedCommand(ctx context.Context, n *narrate.Narrator, ca *identity.CA, roots *x509.CertPool, brokerAddr string, svc *service,
	dev *transport.Client, device string, commands <-chan transport.Command) error {
	appCert, err := tlsCert(ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueService(pub, "app") })
	if err != nil {
		return err
	}
	app := &http.Client{Timeout: 2 * waitFor, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{appCert}}}}
	var sent struct{ ID, State, Expires string }
	if err := apiCall(ctx, app, http.MethodPost, svc.api+"/v1/devices/"+device+"/commands", `{"name":"set-interval","body":"NjBz","ttl":"1m"}`, &sent); err != nil {
		return err
	}
	n.Step("Application: POST %s/v1/devices/%s/commands {\"name\":\"set-interval\",\"body\":\"NjBz\"} (base64 of 60s): %s, id %s",
		svc.api, device, sent.State, sent.ID)
	n.Say("authenticated by its client certificate (svc:app), allowed by the service's command section")
	var c transport.Command
	select {
	case c = <-commands:
		n.Step("Device: obeyed the command, signed by the fleet's command key in the service: %s %s (expires %s)", c.Name, c.Body, c.Expires.Format(time.TimeOnly))
	case <-time.After(waitFor):
		return errors.New("command did not arrive")
	}
	var got struct {
		State  string
		Result struct{ Output []byte }
	}
	if err := apiCall(ctx, app, http.MethodGet, svc.api+"/v1/devices/"+device+"/commands/"+sent.ID+"?wait=10s", "", &got); err != nil {
		return err
	}
	if got.State != "succeeded" {
		return fmt.Errorf("command state %q, want succeeded", got.State)
	}
	n.Step("Application: GET .../commands/%s?wait=10s: %s, %q (the device's signed result, verified by the service)", sent.ID, got.State, got.Result.Output)

	// The same ID again, through the broker: refused by the device.
	cert, err := tlsCert(ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueService(pub, "commander") })
	if err != nil {
		return err
	}
	commander, err := transport.DialCloud(ctx, transport.CloudConfig{Broker: brokerAddr, Certificate: cert, Roots: roots})
	if err != nil {
		return err
	}
	defer commander.Close(context.Background())
	wctx, cancel := context.WithTimeout(ctx, waitFor)
	defer cancel()
	if err := commander.AwaitConnection(wctx); err != nil {
		return fmt.Errorf("commander connection: %w", err)
	}
	env, err := (&transport.CommandSigner{Key: svc.cmdKey, TTL: time.Minute}).Sign(transport.Command{ID: c.ID, Device: device, Name: c.Name, Body: c.Body})
	if err != nil {
		return err
	}
	if err := commander.SendCommand(ctx, device, env); err != nil {
		return err
	}
	deadline := time.Now().Add(waitFor)
	for dev.Stats().CommandsRefused == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if dev.Stats().CommandsRefused == 0 {
		return errors.New("replayed command was not refused")
	}
	n.Say("the same command replayed through the broker: refused (its ID is not above the last one run)")
	return nil
}

// apiCall makes one request to the command API and decodes its JSON
// answer into out.
func apiCall(ctx context.Context, c *http.Client, method, url, body string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, b)
	}
	return json.Unmarshal(b, out)
}

// revoke revokes the device in the store, waits for the CRL the service
// writes to list it, and shows its renewal refused.
func revoke(ctx context.Context, n *narrate.Narrator, st *store.Store, svc *service, ca *identity.CA, est identity.ESTClient,
	devStore *identity.Store) error {
	id, err := devStore.Current()
	if err != nil {
		return err
	}
	count, err := st.RevokeDevice(ctx, id.DeviceID, 1) // RFC 5280 keyCompromise
	if err != nil {
		return err
	}
	n.Step("Cloud: revoked the device (say it was stolen) in the store: its %d certificates, every key it ever held", count)
	number, size, err := awaitCRL(svc.crlFile, ca.Issuing(), id.Certificate().SerialNumber)
	if err != nil {
		return err
	}
	n.Say("the service's next CRL for the broker lists it: number %d, %d bytes, in %s", number, size, filepath.Base(svc.crlFile))
	_, err = devStore.Renew(ctx, est, identity.RenewOptions{})
	if !errors.Is(err, identity.ErrRevoked) {
		return fmt.Errorf("revoked device was not refused: %v", err)
	}
	n.Say("the revoked device's renewal is refused: %v", errors.Unwrap(err))
	return nil
}

// awaitCRL waits until the CRL file, signed by issuer, lists serial, and
// returns the CRL's number and size.
func awaitCRL(file string, issuer *x509.Certificate, serial *big.Int) (*big.Int, int, error) {
	deadline := time.Now().Add(waitFor)
	for {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, 0, err
		}
		block, _ := pem.Decode(b)
		if block == nil || block.Type != "X509 CRL" {
			return nil, 0, fmt.Errorf("%s: not a PEM CRL", file)
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err == nil {
			err = crl.CheckSignatureFrom(issuer)
		}
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", file, err)
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(serial) == 0 {
				return crl.Number, len(block.Bytes), nil
			}
		}
		if time.Now().After(deadline) {
			return nil, 0, fmt.Errorf("%s does not list the revoked certificate", file)
		}
		time.Sleep(crlEvery / 4)
	}
}

// nextRecord returns the next record of stream the service verified,
// skipping the others.
func nextRecord(records <-chan transport.Record, stream string) (transport.Record, error) {
	timeout := time.After(waitFor)
	for {
		select {
		case r := <-records:
			if r.Stream == stream {
				return r, nil
			}
		case <-timeout:
			return transport.Record{}, fmt.Errorf("no %s record reached the cloud", stream)
		}
	}
}

// metric reads a counter from the service's Prometheus endpoint: the sum
// of its series (0 when it has none yet).
func metric(ctx context.Context, ops, name string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ops+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s/metrics: %s", ops, resp.Status)
	}
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name)
		if !ok || !strings.HasPrefix(rest, " ") && !strings.HasPrefix(rest, "{") {
			continue
		}
		v, err := strconv.ParseFloat(rest[strings.LastIndexByte(rest, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("%s/metrics: %s: %w", ops, name, err)
		}
		sum += v
	}
	return int(sum), sc.Err()
}

// updates runs the update part of the loop: release keys and a root pinned
// in the device, a signed release served over HTTPS, the device's agent
// installing it into its other slot, booting it on trial and confirming it,
// every result reported to the cloud as signed telemetry; then a rollback
// refused.
func updates(ctx context.Context, n *narrate.Narrator, ca *identity.CA, roots *x509.CertPool, devStore *identity.Store, dev *transport.Client,
	received <-chan transport.Record) error {
	dir := filepath.Dir(devStore.Dir())
	var rootKey, relKey, tsKey crypto.Signer
	root := &update.Root{Version: 1, Expires: time.Now().Add(365 * 24 * time.Hour)}
	for role, k := range map[update.Role]*crypto.Signer{update.RoleRoot: &rootKey, update.RoleRelease: &relKey, update.RoleTimestamp: &tsKey} {
		key, err := identity.GenerateKey(identity.ECDSAP256)
		if err != nil {
			return err
		}
		*k = key
		if err := root.SetRole(role, 1, key.Public()); err != nil {
			return err
		}
	}
	pinned, err := root.Sign(rootKey)
	if err != nil {
		return err
	}
	repo := &repository{files: map[string][]byte{"1.root.json": pinned}}
	publish := func(version uint64, image []byte) error {
		art, err := update.NewArtifact("firmware", fmt.Sprintf("firmware-%d.bin", version), bytes.NewReader(image), nil)
		if err != nil {
			return err
		}
		rel := &update.Release{Version: version, SecurityCounter: version, HardwareClass: "quickstart-sensor",
			Artifacts: []update.Artifact{art}, Expires: time.Now().Add(30 * 24 * time.Hour)}
		rb, err := rel.Sign(relKey)
		if err != nil {
			return err
		}
		repo.stamps++
		ts, err := update.NewTimestamp(repo.stamps, time.Now().Add(24*time.Hour), rb)
		if err != nil {
			return err
		}
		tb, err := ts.Sign(tsKey)
		if err != nil {
			return err
		}
		repo.put(map[string][]byte{art.URI: image, fmt.Sprintf("%d.release.json", version): rb, "timestamp.json": tb})
		return nil
	}
	firmware := func(v int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("sensor firmware v%d\n", v)), 20_000) }
	if err := publish(2, firmware(2)); err != nil {
		return err
	}
	repoCert, err := tlsCert(ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueServer(pub, "127.0.0.1") })
	if err != nil {
		return err
	}
	srv := httptest.NewUnstartedServer(repo)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{repoCert}, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	defer srv.Close()
	n.Step("Vendor: signed release 2 with the release key, a timestamp with the online key; root v1 pinned in the device")
	n.Say("repository %s (HTTPS): 1.root.json, 2.release.json, timestamp.json, firmware-2.bin", srv.URL)

	slots := filepath.Join(dir, "slots")
	if err := slot.InitDirSlots(slots, bytes.NewReader(firmware(1))); err != nil {
		return err
	}
	var agent *update.Agent
	boot := func() (update.Status, error) { // the device software (re)starts
		if agent != nil {
			agent.Close()
		}
		s, err := slot.OpenDirSlots(slots)
		if err != nil {
			return update.Status{}, err
		}
		agent, err = update.NewAgent(ctx, update.AgentConfig{Dir: filepath.Join(dir, "update"), Root: pinned,
			HardwareClass: "quickstart-sensor", Slots: s, Clock: devStore.Clock(),
			Source: &update.HTTPSource{BaseURL: srv.URL + "/", Client: httpsClient(roots)}, Client: httpsClient(roots),
			Report: updatelink.TelemetryReporter(dev, nil)})
		if err != nil {
			return update.Status{}, err
		}
		return agent.Start(ctx)
	}
	defer func() {
		if agent != nil {
			agent.Close()
		}
	}()
	if _, err := boot(); err != nil {
		return err
	}
	installed, err := agent.Update(ctx)
	if err != nil || !installed {
		return fmt.Errorf("update: installed %v, %v", installed, err)
	}
	n.Step("Device: verified root → timestamp → release 2, downloaded it into slot b while hashing, switched on trial")
	st, err := boot()
	if err != nil {
		return err
	}
	n.Say("restarted into slot b: on trial, start %d of 3", st.Starts)
	if err := agent.Confirm(ctx); err != nil {
		return err
	}
	n.Say("health check passed → Confirm: running release %d; the anti-rollback floor rose to %d", agent.Status().Installed.Version,
		agent.Status().Installed.SecurityCounter)
	if err := cloudEvents(n, received, 2); err != nil {
		return err
	}

	// An attacker with the online timestamp key re-serves release 1.
	if err := publish(1, firmware(1)); err != nil {
		return err
	}
	_, err = agent.Update(ctx)
	if !errors.Is(err, update.ErrRollback) {
		return fmt.Errorf("rollback was not refused: %v", err)
	}
	n.Step("Attacker: served the older, validly signed release 1 with a fresh timestamp")
	n.Say("refused: %v", err)
	return cloudEvents(n, received, 1)
}

// cloudEvents prints the next want update results the cloud verified, and
// the "running" reports (one at each start of the agent) among them.
func cloudEvents(n *narrate.Narrator, received <-chan transport.Record, want int) error {
	for want > 0 {
		r, err := nextRecord(received, update.ReportStream)
		if err != nil {
			return err
		}
		var res update.Result
		if err := json.Unmarshal(r.Readings[0].Body, &res); err != nil {
			return err
		}
		if res.Event == "running" {
			if res.Reason != "" {
				res.Reason = " (" + res.Reason + ")"
			}
			n.Say("cloud, verified from the device: started, running release %d%s", res.Version, res.Reason)
			continue
		}
		want--
		if res.Event == "refused" {
			n.Say("cloud, verified from the device: update refused: %s", res.Reason)
			continue
		}
		n.Say("cloud, verified from the device: update %s, release %d", res.Event, res.Version)
	}
	return nil
}

// httpsClient trusts only the fleet's roots.
func httpsClient(roots *x509.CertPool) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}}}
}

// repository serves update metadata and images.
type repository struct {
	mu     sync.Mutex
	files  map[string][]byte
	stamps uint64
}

func (r *repository) put(files map[string][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	maps.Copy(r.files, files)
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

// tlsCert issues a certificate for a fresh key and returns it as a TLS
// certificate with the issuing CA.
func tlsCert(ca *identity.CA, issue func(crypto.PublicKey) (*x509.Certificate, error)) (tls.Certificate, error) {
	k, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	c, err := issue(k.Public())
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw, ca.Issuing().Raw}, PrivateKey: k}, nil
}
