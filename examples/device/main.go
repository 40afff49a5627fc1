// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command device is the device half of a d2c deployment: the program a
// device maker adapts and ships. It enrolls over EST on its first start
// (the store has no identity yet), keeps its certificate renewed, publishes
// a sample sensor stream as signed (optionally end-to-end encrypted)
// telemetry over MQTT v5 with mutual TLS, obeys commands signed by the
// fleet's command key, and, when configured, runs the update agent: signed
// releases installed into the inactive A/B slot, started on trial, confirmed
// after a health check, results reported as signed telemetry. It opens no
// listening port, and it imports only the device halves of the SDK.
//
//	device --config /etc/d2c/device.conf
//
// docs/walkthrough.md runs it against mosquitto and the cloud service
// (d2c cloud serve) on one machine.
//
// # Configuration
//
// Every setting is a flag, an environment variable or a line of a
// configuration file; a flag overrides the environment, which overrides the
// file. The variable of flag --some-name is D2C_SOME_NAME (empty means
// unset). The file, named by --config or D2C_CONFIG, holds "name = value"
// lines with the flag names; '#' starts a comment line; an unknown name is
// an error; relative paths are relative to the working directory:
//
//	# /etc/d2c/device.conf
//	identity-dir     = /var/lib/d2c/identity
//	device-id        = sensor-0001
//	est-url          = https://est.example.com:8443
//	root-fingerprint = 5f1c…(64 hex digits, from d2c ca init)
//	token-file       = /var/lib/d2c/enroll.token
//	broker           = mqtt.example.com:8883
//	cloud-key        = /etc/d2c/cloud.pub
//	command-key      = /etc/d2c/command.pub
//	update-url       = https://updates.example.com/fleet/
//	update-root      = /etc/d2c/root.json
//	hardware-class   = gateway-v1
//	slots-dir        = /var/lib/d2c/slots
//
// Run "device --help" for every setting and its default. The enrollment
// settings (device-id, root-fingerprint, token or token-file) matter only on
// the first start; est-url is needed afterwards too, for renewals. The four
// update settings enable the update agent together.
//
// # What it publishes
//
// On the stream set by --stream (default "temperature") a reading
// {"celsius":21.37} every --interval; on "update" the update agent's
// results (updatelink.TelemetryReporter); and the result of each command it
// runs (transport.Client.ReportCommandResult: failed or not, and a line of
// text), which the cloud service's command API shows to the application.
//
// # Commands
//
//   - "set-interval", body a Go duration from 1s to 24h ("30s"): the
//     publishing interval until the program restarts.
//   - "update.check" (update.CheckCommand): check for an update now.
//
// # Updates and restarts
//
// The slots are directory slots (update/slot.DirSlots), created with an
// empty factory image in slot a when --slots-dir holds none. An application
// updated this way runs the image of the current slot; this example's image
// is data, so when an update is installed (or reverted) it restarts its own
// main loop, which is what a restart of the application would do: the
// agent's Start, then, for a release on trial, a health check (the broker
// is reached within --health-timeout) and Confirm, or Rollback. A device
// with a bootloader would reboot instead (update.AgentConfig.Reboot,
// slot.UBoot).
package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/examples/internal/flagenv"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
	"github.com/d2c-iot/d2c/updatelink"
)

// Streams the device publishes on, besides its sensor stream and
// update.ReportStream.
const ()

// Bounds of the publishing interval.
const (
	minInterval = time.Second
	maxInterval = 24 * time.Hour
)

// maxRootFile bounds the pinned update root file.
const maxRootFile = 1 << 20

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.LookupEnv, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "device:", err)
		os.Exit(1)
	}
}

// settings are the device's configuration.
type settings struct {
	identityDir, deviceID, estURL, fingerprint, token, tokenFile string
	broker, serverName, cloudKey, commandKey, stateDir           string
	updateURL, updateRoot, hardwareClass, slotsDir, updateGroups string
	updateInsecureHTTP                                           bool
	updateInterval, healthTimeout, interval                      time.Duration
	stream, logLevel                                             string
}

const usageHeader = `device: the device half of a d2c deployment (see go doc ./examples/device).

Usage:
  device [--config FILE] [flags]

Every flag can also be set by the environment variable D2C_<NAME> (--est-url:
D2C_EST_URL) or by a line "name = value" in the --config file; flags override
the environment, which overrides the file.

Flags:
`

func parseSettings(args []string, lookupEnv func(string) (string, bool), out io.Writer) (*settings, error) {
	s := &settings{}
	fl := flag.NewFlagSet("device", flag.ContinueOnError)
	fl.SetOutput(out)
	fl.Usage = func() { fmt.Fprint(out, usageHeader); fl.PrintDefaults() }
	fl.String("config", "", "configuration file of name = value lines")
	fl.StringVar(&s.identityDir, "identity-dir", "", "device identity store: key, certificate, fleet anchors (required)")
	fl.StringVar(&s.deviceID, "device-id", "", "device ID to enroll as (first start only)")
	fl.StringVar(&s.estURL, "est-url", "", "EST registrar URL, https://host:port (enrollment and renewal)")
	fl.StringVar(&s.fingerprint, "root-fingerprint", "", "SHA-256 of the fleet root certificate, hex (first start only)")
	fl.StringVar(&s.tokenFile, "token-file", "", "file holding the one-time enrollment token (first start only)")
	fl.StringVar(&s.token, "token", "", "the enrollment token itself; other users can see command lines: prefer --token-file")
	fl.StringVar(&s.broker, "broker", "", "MQTT broker, host:port, TLS 1.3 with the device certificate (required)")
	fl.StringVar(&s.serverName, "server-name", "", "name checked in the broker certificate (default: the host of --broker)")
	fl.StringVar(&s.cloudKey, "cloud-key", "", "cloud's P-256 public key, PEM: encrypts telemetry end to end (default: signed only)")
	fl.StringVar(&s.commandKey, "command-key", "", "fleet command-signing public key, PEM: enables commands (default: none obeyed)")
	fl.StringVar(&s.stateDir, "state-dir", "", "state: outbox, boot counter, command and update state (default: --identity-dir)")
	fl.StringVar(&s.updateURL, "update-url", "", "update repository URL (enables the update agent with the next three)")
	fl.StringVar(&s.updateRoot, "update-root", "", "update root pinned at manufacture, the root.json of d2c update root init")
	fl.StringVar(&s.hardwareClass, "hardware-class", "", "this device's hardware class; releases for another are refused")
	fl.StringVar(&s.slotsDir, "slots-dir", "", "A/B slot directory (created with an empty image in slot a if missing)")
	fl.StringVar(&s.updateGroups, "update-groups", "", "comma-separated device groups (beta...) a campaign may offer a release to first")
	fl.BoolVar(&s.updateInsecureHTTP, "update-insecure-http", false, "allow a plain http:// --update-url (development: d2c update serve)")
	fl.DurationVar(&s.updateInterval, "update-interval", time.Hour, "time between update checks (and on each update.check command)")
	fl.DurationVar(&s.healthTimeout, "health-timeout", 2*time.Minute, "a release on trial is confirmed if the broker is reached within this")
	fl.DurationVar(&s.interval, "interval", 10*time.Second, "time between sensor readings, 1s to 24h")
	fl.StringVar(&s.stream, "stream", "temperature", "telemetry stream of the sensor readings")
	fl.StringVar(&s.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := flagenv.Load(fl, args, "D2C_", lookupEnv, func(name string) bool { return fl.Lookup(name) != nil }); err != nil {
		return nil, err
	}
	switch {
	case s.identityDir == "":
		return nil, errors.New("--identity-dir is required")
	case s.broker == "":
		return nil, errors.New("--broker is required")
	case s.interval < minInterval || s.interval > maxInterval:
		return nil, fmt.Errorf("--interval %s: want %s to %s", s.interval, minInterval, maxInterval)
	case s.updateInterval <= 0 || s.healthTimeout <= 0:
		return nil, errors.New("--update-interval and --health-timeout must be positive")
	}
	if err := wire.ValidateStream(s.stream); err != nil {
		return nil, fmt.Errorf("--stream: %w", err)
	}
	if s.stateDir == "" {
		s.stateDir = s.identityDir
	}
	if s.updates() {
		if s.updateRoot == "" || s.hardwareClass == "" || s.slotsDir == "" {
			return nil, errors.New("the update agent needs all of --update-url, --update-root, --hardware-class and --slots-dir")
		}
		switch {
		case strings.HasPrefix(s.updateURL, "https://"):
		case strings.HasPrefix(s.updateURL, "http://") && s.updateInsecureHTTP:
		case strings.HasPrefix(s.updateURL, "http://"):
			return nil, errors.New("--update-url is plain http: give --update-insecure-http to allow it (development only)")
		default:
			return nil, fmt.Errorf("--update-url %q: want https://", s.updateURL)
		}
		if !strings.HasSuffix(s.updateURL, "/") {
			s.updateURL += "/"
		}
	} else if s.updateRoot != "" || s.hardwareClass != "" || s.slotsDir != "" {
		return nil, errors.New("--update-root, --hardware-class and --slots-dir need --update-url")
	}
	return s, nil
}

func (s *settings) updates() bool { return s.updateURL != "" }

// device is the running program.
type device struct {
	s     *settings
	log   *slog.Logger
	store *identity.Store

	cloudKey, commandKey crypto.PublicKey
	root                 []byte // pinned update root

	client   atomic.Pointer[transport.Client] // of the current boot
	agent    atomic.Pointer[update.Agent]     // of the current boot, nil without updates
	interval atomic.Int64                     // publishing interval, ns
	newIntvl chan struct{}                    // interval changed
}

func run(ctx context.Context, args []string, lookupEnv func(string) (string, bool), logw io.Writer) error {
	s, err := parseSettings(args, lookupEnv, logw)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(s.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	d := &device{s: s, log: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level})), newIntvl: make(chan struct{}, 1)}
	d.interval.Store(int64(s.interval))
	if s.cloudKey != "" {
		if d.cloudKey, err = identity.ReadPublicKeyFile(s.cloudKey); err != nil {
			return fmt.Errorf("--cloud-key: %w", err)
		}
	}
	if s.commandKey != "" {
		if d.commandKey, err = identity.ReadPublicKeyFile(s.commandKey); err != nil {
			return fmt.Errorf("--command-key: %w", err)
		}
	}
	if s.updates() {
		if d.root, err = readBounded(s.updateRoot, maxRootFile); err != nil {
			return fmt.Errorf("--update-root: %w", err)
		}
	}
	if d.store, err = identity.OpenStore(s.identityDir, identity.StoreConfig{}); err != nil {
		return err
	}
	if err := d.ensureIdentity(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	// Each pass is one start of the application; an installed or reverted
	// update ends a pass with a restart.
	for quick := 0; ; {
		restart, early, err := d.boot(ctx)
		if err != nil {
			return err
		}
		if !restart || ctx.Err() != nil {
			d.log.Info("stopped")
			return nil
		}
		if quick++; !early {
			quick = 0
		} else if quick > 3 {
			return errors.New("the update agent asks for a restart at every start: giving up")
		}
		d.log.Info("restarting into the slot that boots next")
	}
}

// ensureIdentity enrolls the device if its store holds no identity.
func (d *device) ensureIdentity(ctx context.Context) error {
	id, err := d.store.Current()
	if err == nil {
		if d.s.deviceID != "" && d.s.deviceID != id.DeviceID {
			return fmt.Errorf("the store %s holds device %q, not --device-id %q", d.s.identityDir, id.DeviceID, d.s.deviceID)
		}
		leaf := id.Certificate()
		d.log.Info("identity", "device", id.DeviceID, "generation", id.Generation, "serial", fmt.Sprintf("%x", leaf.SerialNumber), "expires", leaf.NotAfter)
		return nil
	}
	if !errors.Is(err, identity.ErrNoIdentity) {
		return err
	}
	s := d.s
	if s.deviceID == "" || s.estURL == "" || s.fingerprint == "" || (s.token == "") == (s.tokenFile == "") {
		return errors.New("not enrolled: the first start needs --device-id, --est-url, --root-fingerprint and one of --token and --token-file")
	}
	fp, err := hex.DecodeString(strings.ReplaceAll(s.fingerprint, ":", ""))
	if err != nil || len(fp) != 32 {
		return errors.New("--root-fingerprint: want the SHA-256 of the fleet root, 64 hex digits")
	}
	token := s.token
	if s.tokenFile != "" {
		b, err := readBounded(s.tokenFile, 16<<10)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	est := identity.ESTClient{URL: s.estURL, BootstrapFingerprint: fp, Time: d.store.Clock().Now}
	for wait := time.Second; ; wait = min(2*wait, time.Minute) {
		id, err = d.store.Enroll(ctx, est, identity.EnrollRequest{DeviceID: s.deviceID, Auth: identity.EnrollAuth{Token: token}})
		if err == nil {
			break
		}
		if permanentEnrollError(err) || ctx.Err() != nil {
			return fmt.Errorf("enroll: %w", err)
		}
		d.log.Warn("enrollment failed; retrying", "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	leaf := id.Certificate()
	d.log.Info("enrolled", "device", id.DeviceID, "serial", fmt.Sprintf("%x", leaf.SerialNumber), "expires", leaf.NotAfter)
	if s.tokenFile != "" {
		d.log.Info("the enrollment token is used up; its file may be deleted", "file", s.tokenFile)
	}
	return nil
}

// permanentEnrollError tells refusals that retrying cannot fix from network
// and server trouble.
func permanentEnrollError(err error) bool {
	for _, e := range []error{identity.ErrTokenInvalid, identity.ErrTokenExpired, identity.ErrTokenReused,
		identity.ErrNotAuthorized, identity.ErrUntrusted, identity.ErrNoTrustAnchor, identity.ErrInvalidDeviceID,
		identity.ErrMalformed, identity.ErrUnsupportedKey, identity.ErrTooLarge, identity.ErrRevoked} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// boot runs one start of the application until ctx ends (restart false) or
// an update needs a restart (restart true; early when the agent asked for
// it at start, before anything ran).
func (d *device) boot(ctx context.Context) (restart, early bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	cfg := transport.ClientConfig{
		Broker: d.s.broker, ServerName: d.s.serverName, Store: d.store,
		StateDir: filepath.Join(d.s.stateDir, "transport"), Logger: d.log,
		OnRefused: func(r transport.Refusal) {
			d.log.Warn("refused for good", "topic", r.Topic, "reason", r.Reason, "err", r.Err)
		},
	}
	if d.cloudKey != nil {
		cfg.Encryption = &transport.Encryption{CloudKey: d.cloudKey}
	}
	if d.commandKey != nil {
		cfg.CommandKeys = []crypto.PublicKey{d.commandKey}
		cfg.OnCommand = d.onCommand
	}
	client, err := transport.Dial(ctx, cfg)
	if err != nil {
		cancel()
		return false, false, err
	}
	d.client.Store(client)
	var agent *update.Agent
	defer func() {
		cancel()
		wg.Wait()
		d.agent.Store(nil)
		if agent != nil {
			agent.Close()
		}
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		if cerr := client.Close(cctx); cerr != nil {
			d.log.Warn("close the broker connection", "err", cerr)
		}
	}()

	if d.s.estURL != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.renew(ctx, client)
		}()
	} else {
		d.log.Warn("no --est-url: the certificate will not be renewed")
	}

	restartc := make(chan struct{}, 1)
	if d.s.updates() {
		if agent, err = d.openAgent(ctx, client); err != nil {
			return false, false, err
		}
		st, err := agent.Start(ctx)
		if err != nil {
			return false, false, fmt.Errorf("update agent start: %w", err)
		}
		d.log.Info("update agent", "phase", st.Phase, "version", st.Installed.Version, "slot", st.Installed.Slot,
			"pending", st.Pending, "starts", st.Starts)
		if st.RebootNeeded {
			return true, true, nil
		}
		if st.Phase == update.PhaseTrial {
			if err := d.healthCheck(ctx, client); err != nil {
				if ctx.Err() != nil {
					return false, false, nil
				}
				d.log.Error("health check failed: rolling back", "version", st.Pending, "err", err)
				if err := agent.Rollback(ctx); err != nil {
					return false, false, err
				}
				return true, false, nil
			}
			if err := agent.Confirm(ctx); err != nil {
				return false, false, err
			}
			d.log.Info("release confirmed after its health check", "version", agent.Status().Installed.Version)
		}
		d.agent.Store(agent)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := agent.Run(ctx, d.s.updateInterval); err == nil {
				restartc <- struct{}{} // installed: restart into it
			}
		}()
	}

	return d.publish(ctx, client, restartc), false, nil
}

// publish publishes sensor readings until ctx ends (false) or a restart is
// asked for (true).
func (d *device) publish(ctx context.Context, client *transport.Client, restartc <-chan struct{}) bool {
	sensor := newSensor()
	ticker := time.NewTicker(time.Duration(d.interval.Load()))
	defer ticker.Stop()
	for {
		body := sensor.read(time.Now())
		if err := client.Publish(ctx, d.s.stream, transport.Reading{Time: d.store.Clock().Now(), Body: body}); err != nil {
			if ctx.Err() != nil {
				return false
			}
			d.log.Warn("publish", "stream", d.s.stream, "err", err)
		} else {
			d.log.Debug("published", "stream", d.s.stream, "body", string(body))
		}
		select {
		case <-ctx.Done():
			return false
		case <-restartc:
			return true
		case <-d.newIntvl:
			ticker.Reset(time.Duration(d.interval.Load()))
		case <-ticker.C:
		}
	}
}

// renew keeps the certificate renewed, and has the client use each new
// one (the cloud's registrar records it as it issues it).
func (d *device) renew(ctx context.Context, client *transport.Client) {
	r := &identity.Renewer{Store: d.store, Client: identity.ESTClient{URL: d.s.estURL}, Logger: d.log,
		OnRenew: func(id *identity.Identity) {
			if err := client.Reload(); err != nil {
				d.log.Error("use the renewed certificate", "err", err)
			}
		}}
	if err := r.Run(ctx); err != nil && ctx.Err() == nil {
		d.log.Error("certificate renewal stopped", "err", err)
	}
}

// openAgent opens the slots (creating them on first start) and the update
// agent.
func (d *device) openAgent(ctx context.Context, client *transport.Client) (*update.Agent, error) {
	slots, err := slot.OpenDirSlots(d.s.slotsDir)
	if errors.Is(err, fs.ErrNotExist) {
		if err = slot.InitDirSlots(d.s.slotsDir, nil); err != nil {
			return nil, err
		}
		d.log.Info("created A/B slots: an empty factory image in slot a", "dir", d.s.slotsDir)
		slots, err = slot.OpenDirSlots(d.s.slotsDir)
	}
	if err != nil {
		return nil, err
	}
	cfg := update.AgentConfig{
		Dir: filepath.Join(d.s.stateDir, "update"), Root: d.root, HardwareClass: d.s.hardwareClass,
		Slots: slots, Source: &update.HTTPSource{BaseURL: d.s.updateURL},
		Clock: d.store.Clock(), Report: updatelink.TelemetryReporter(client, d.log), Logger: d.log,
	}
	// A campaign's cohort rule is evaluated on the device's own ID.
	if id, err := d.store.Current(); err == nil {
		cfg.Device = id.DeviceID
	}
	if d.s.updateGroups != "" {
		cfg.Groups = strings.Split(d.s.updateGroups, ",")
	}
	if d.s.updateInsecureHTTP {
		cfg.Client = &http.Client{} // may speak plain http; MinRate bounds a stalled download
	} else if tr, err := d.updateTransport(); err != nil {
		return nil, err
	} else {
		// HTTPS to a repository with a public certificate (a CDN) or one
		// from the fleet CA (the cloud service's update role).
		cfg.Client = &http.Client{Transport: tr} // no Timeout: MinRate bounds a stalled download
		cfg.Source = &update.HTTPSource{BaseURL: d.s.updateURL, Client: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
	}
	return update.NewAgent(ctx, cfg)
}

// updateTransport speaks HTTPS only, trusting the system's roots and the
// fleet's anchors from the identity store.
func (d *device) updateTransport() (*http.Transport, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	anchors, err := d.store.Anchors()
	if err != nil {
		return nil, fmt.Errorf("update: fleet anchors: %w", err)
	}
	for _, a := range anchors {
		pool.AddCert(a)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	return tr, nil
}

// healthCheck decides whether a release on trial works: here, whether it
// reaches the broker. A real application checks what it exists for.
func (d *device) healthCheck(ctx context.Context, client *transport.Client) error {
	ctx, cancel := context.WithTimeout(ctx, d.s.healthTimeout)
	defer cancel()
	if err := client.AwaitConnection(ctx); err != nil {
		return fmt.Errorf("broker not reached within %s: %w", d.s.healthTimeout, err)
	}
	return nil
}

// onCommand runs a verified command: update.check goes to the update agent,
// the others to appCommand.
func (d *device) onCommand(ctx context.Context, c transport.Command) {
	if a := d.agent.Load(); a != nil {
		updatelink.CommandHandler(a, d.appCommand)(ctx, c)
		if c.Name == update.CheckCommand {
			// The outcome comes later on the "update" stream.
			d.report(ctx, c, commandResult{OK: true, Detail: "update check started"})
		}
		return
	}
	d.appCommand(ctx, c)
}

// commandResult is what appCommand reports.
type commandResult struct {
	OK            bool
	Detail, Error string
}

func (d *device) appCommand(ctx context.Context, c transport.Command) {
	var res commandResult
	switch c.Name {
	case "set-interval":
		iv, err := time.ParseDuration(strings.TrimSpace(string(c.Body)))
		if err == nil && (iv < minInterval || iv > maxInterval) {
			err = fmt.Errorf("interval %s outside %s to %s", iv, minInterval, maxInterval)
		}
		if err != nil {
			res.Error = err.Error()
			break
		}
		d.interval.Store(int64(iv))
		select {
		case d.newIntvl <- struct{}{}:
		default:
		}
		res.OK, res.Detail = true, "interval "+iv.String()
	case update.CheckCommand: // reaches here only without an update agent
		res.Error = "no update agent configured"
	default:
		res.Error = "unknown command"
	}
	d.report(ctx, c, res)
}

// report logs a command's result and reports it to the cloud.
func (d *device) report(ctx context.Context, c transport.Command, res commandResult) {
	d.log.Info("command", "id", c.ID, "name", c.Name, "ok", res.OK, "detail", res.Detail, "error", res.Error)
	out := res.Detail
	if !res.OK {
		out = res.Error
	}
	if client := d.client.Load(); client != nil {
		// Reported from its own goroutine: OnCommand must not block, and
		// the report waits for the outbox's fsync.
		go func() {
			err := client.ReportCommandResult(ctx, transport.CommandResult{ID: c.ID, Failed: !res.OK, Output: []byte(out)})
			if err != nil {
				d.log.Warn("report command result", "id", c.ID, "err", err)
			}
		}()
	}
}

// sensor simulates a temperature sensor: a slow daily wave and some noise.
type sensor struct{ rng *rand.Rand }

func newSensor() *sensor { return &sensor{rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))} }

func (s *sensor) read(now time.Time) []byte {
	day := float64(now.Unix()%86400) / 86400
	c := 21 + 1.5*math.Sin(2*math.Pi*day) + 0.2*(s.rng.Float64()-0.5)
	return []byte(`{"celsius":` + strconv.FormatFloat(c, 'f', 2, 64) + `}`)
}

// readBounded reads a file of at most max bytes.
func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: over %d bytes", path, max)
	}
	return b, nil
}
