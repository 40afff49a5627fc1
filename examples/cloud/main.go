// Command cloud is the cloud half of a d2c deployment: a service that
// receives the fleet's telemetry from the broker, verifies every record
// against the registered certificate of the device that signed it, decrypts
// what was encrypted to the cloud key, and prints the verified records; and
// the tool that sends a device a command signed with the fleet's command
// key.
//
//	cloud init      --ca CA_DIR --dir CLOUD_DIR
//	cloud mosquitto --dir CLOUD_DIR --listen 127.0.0.1:8883 --broker-cert FILE --broker-key FILE [--crl FILE] --out DIR
//	cloud register  --dir CLOUD_DIR --cert DEVICE_CHAIN.pem [--crl FILE]
//	cloud run       --dir CLOUD_DIR --broker HOST:PORT [--crl FILE] [--require-encryption]
//	cloud send      --dir CLOUD_DIR --broker HOST:PORT --device ID --name NAME [--body TEXT] [--ttl 5m]
//
// docs/walkthrough.md runs it against mosquitto, the registrar and the
// device program (examples/device) on one machine.
//
// # The cloud directory
//
// "cloud init", run where the fleet CA is, writes everything the cloud
// half needs, so that the running service never holds a CA key:
//
//	fleet.pem                  fleet root and issuing CA: trust anchors, CRL issuer
//	verifier.crt, verifier.key service certificate CN "svc:verifier": reads d2c/v1/dev/+/up/#
//	commander.crt, .key        service certificate CN "svc:commander": writes d2c/v1/dev/+/down/cmd
//	command.key, command.pub   command-signing key; give command.pub to devices
//	cloud.key, cloud.pub       P-256 telemetry decryption key; give cloud.pub to devices
//	devices/                   the device registry
//
// Two services, two certificates: a broker gives each certificate one
// session (its CN is the MQTT client ID), so "cloud send" can run while
// "cloud run" is connected, and each has only the rights it needs.
// "cloud mosquitto" writes the matching broker configuration and ACL
// (transport.MosquittoConfig).
//
// # The device registry
//
// The verifier takes a device's key only from a registered certificate
// (transport.Certificates), never from the message. Here the registry is
// the directory devices/ (--devices): one PEM file per certificate chain,
// leaf first, the device ID being the leaf's CN. "cloud register" checks a
// chain (fleet root, device ID, revocation) and adds it; files copied into
// the directory count too (the directory is rescanned when it changes).
// The two newest certificates of each device are used.
//
// A device registers its first certificate through the operator (the chain
// from "d2c device show --cert-out", or from the registrar's records); the
// registrar of d2c does not record what it issues. Renewals register
// themselves: after each renewal the device program publishes its new
// chain on the "identity" stream, signed with the key the cloud already
// knows, and "cloud run" adds it once it verifies (fleet root, same device,
// not revoked).
//
// # Revocation
//
// With --crl, the CRL file written by "d2c ca crl" (the broker's crlfile)
// is reread when it changes, and records from revoked certificates are
// refused. Without it only the broker refuses revoked devices.
//
// # Configuration
//
// Every setting is a flag, an environment variable or a line of a
// configuration file; a flag overrides the environment, which overrides the
// file. The variable of flag --some-name is D2C_CLOUD_SOME_NAME (empty means
// unset). The file, named by --config or D2C_CLOUD_CONFIG, holds
// "name = value" lines with the flag names of any subcommand ('#' starts a
// comment line; an unknown name is an error), so one file serves them all:
//
//	# /etc/d2c/cloud.conf
//	dir    = /srv/d2c/cloud
//	broker = mqtt.example.com:8883
//	crl    = /etc/mosquitto/crl.pem
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/d2c-iot/d2c/examples/internal/flagenv"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
)

// Files of the cloud directory.
const (
	fleetFile      = "fleet.pem"
	commandKeyFile = "command.key"
	commandPubFile = "command.pub"
	cloudKeyFile   = "cloud.key"
	cloudPubFile   = "cloud.pub"
	devicesDir     = "devices"
)

// The two services and their broker rights.
const (
	verifierName  = "verifier"
	commanderName = "commander"
)

// identityStream is where devices announce a renewed certificate chain.
const identityStream = "identity"

// maxPEMFile bounds the PEM files read.
const maxPEMFile = 64 << 10

func services() []transport.ServiceRights {
	return []transport.ServiceRights{
		{Name: verifierName, Read: []string{transport.AllUp}},
		{Name: commanderName, Write: []string{transport.TopicPrefix + "+/down/cmd"}},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "cloud:", err)
		os.Exit(1)
	}
}

const usage = `cloud: the cloud half of a d2c deployment (see go doc ./examples/cloud).

Usage:
  cloud init      --ca CA_DIR --dir CLOUD_DIR
  cloud mosquitto --dir CLOUD_DIR --listen HOST:PORT --broker-cert FILE --broker-key FILE [--crl FILE] [--persistence DIR] --out DIR
  cloud register  --dir CLOUD_DIR --cert FILE [--crl FILE]
  cloud run       --dir CLOUD_DIR --broker HOST:PORT [--crl FILE] [--cloud-key FILE] [--require-encryption] [--group NAME]
  cloud send      --dir CLOUD_DIR --broker HOST:PORT --device ID --name NAME [--body TEXT] [--ttl DURATION]

Every flag can also be set by the environment variable D2C_CLOUD_<NAME>
(--broker: D2C_CLOUD_BROKER) or by a line "name = value" in the --config
file; flags override the environment, which overrides the file.
Run 'cloud <command> --help' for a command's flags.
`

// subcommand is one "cloud <name>" command.
type subcommand struct {
	flags func(fl *flag.FlagSet, c *common)
	run   func(ctx context.Context, c *common) error
}

// common holds the settings every subcommand has, and its output.
type common struct {
	dir, logLevel  string
	stdout, stderr io.Writer
	log            *slog.Logger
	// settings of the subcommands
	caDir, broker, serverName, crl, cloudKey, group, devices  string
	listen, brokerCert, brokerKey, persistence, out, certFile string
	device, name, body                                        string
	ttl                                                       time.Duration
	requireEncryption                                         bool
}

var subcommands = map[string]subcommand{
	"init": {
		flags: func(fl *flag.FlagSet, c *common) {
			fl.StringVar(&c.caDir, "ca", "", "fleet CA directory (d2c ca init): issues the service certificates (required)")
		},
		run: cmdInit,
	},
	"mosquitto": {
		flags: func(fl *flag.FlagSet, c *common) {
			fl.StringVar(&c.listen, "listen", "", "the broker's listener, host:port, e.g. 127.0.0.1:8883 (required)")
			fl.StringVar(&c.brokerCert, "broker-cert", "", "broker certificate chain, PEM, from d2c ca server-cert (required)")
			fl.StringVar(&c.brokerKey, "broker-key", "", "broker private key, PEM (required)")
			fl.StringVar(&c.crl, "crl", "", "CRL file from d2c ca crl (recommended)")
			fl.StringVar(&c.persistence, "persistence", "", "directory where mosquitto persists sessions and queued messages")
			fl.StringVar(&c.out, "out", "", "directory to write mosquitto.conf and acl to (required)")
		},
		run: cmdMosquitto,
	},
	"register": {
		flags: func(fl *flag.FlagSet, c *common) {
			fl.StringVar(&c.certFile, "cert", "", "device certificate chain, PEM, leaf first, e.g. from d2c device show --cert-out (required)")
			fl.StringVar(&c.crl, "crl", "", "CRL file from d2c ca crl: refuse a revoked certificate")
			fl.StringVar(&c.devices, "devices", "", "device registry directory (default: DIR/devices)")
		},
		run: cmdRegister,
	},
	"run": {
		flags: func(fl *flag.FlagSet, c *common) {
			fl.StringVar(&c.broker, "broker", "", "MQTT broker, host:port (required)")
			fl.StringVar(&c.serverName, "server-name", "", "name checked in the broker certificate (default: the host of --broker)")
			fl.StringVar(&c.crl, "crl", "", "CRL file from d2c ca crl, reread when it changes (default: no revocation check here)")
			fl.StringVar(&c.cloudKey, "cloud-key", "", "telemetry decryption key (default: DIR/cloud.key if it exists)")
			fl.BoolVar(&c.requireEncryption, "require-encryption", false, "refuse telemetry that is signed but not encrypted")
			fl.StringVar(&c.group, "group", "", "MQTT shared-subscription group, to split the fleet between several verifiers")
			fl.StringVar(&c.devices, "devices", "", "device registry directory (default: DIR/devices)")
		},
		run: cmdRun,
	},
	"send": {
		flags: func(fl *flag.FlagSet, c *common) {
			fl.StringVar(&c.broker, "broker", "", "MQTT broker, host:port (required)")
			fl.StringVar(&c.serverName, "server-name", "", "name checked in the broker certificate (default: the host of --broker)")
			fl.StringVar(&c.device, "device", "", "device ID (required)")
			fl.StringVar(&c.name, "name", "", "command name, e.g. set-interval or update.check (required)")
			fl.StringVar(&c.body, "body", "", "command body, e.g. 30s")
			fl.DurationVar(&c.ttl, "ttl", 5*time.Minute, "command lifetime: the device refuses it after this")
		},
		run: cmdSend,
	},
}

func run(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	sc, ok := subcommands[args[0]]
	if !ok {
		return fmt.Errorf("unknown command %q; run 'cloud help'", args[0])
	}
	c := &common{stdout: stdout, stderr: stderr}
	fl := newFlagSet(args[0], c, stderr)
	sc.flags(fl, c)
	if err := flagenv.Load(fl, args[1:], "D2C_CLOUD_", lookupEnv, knownSetting); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	c.log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if c.dir == "" {
		return errors.New("--dir is required")
	}
	if c.devices == "" {
		c.devices = filepath.Join(c.dir, devicesDir)
	}
	return sc.run(ctx, c)
}

func newFlagSet(name string, c *common, out io.Writer) *flag.FlagSet {
	fl := flag.NewFlagSet("cloud "+name, flag.ContinueOnError)
	fl.SetOutput(out)
	fl.Usage = func() {
		fmt.Fprintf(out, "Usage of cloud %s (flags also from D2C_CLOUD_<NAME> or the --config file):\n", name)
		fl.PrintDefaults()
	}
	fl.String("config", "", "configuration file of name = value lines")
	fl.StringVar(&c.dir, "dir", "", "cloud directory: service certificates, keys, device registry (required)")
	fl.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	return fl
}

// knownSetting reports whether name is a flag of any subcommand, so that
// one configuration file serves them all.
func knownSetting(name string) bool {
	var c common
	for n, sc := range subcommands {
		fl := newFlagSet(n, &c, io.Discard)
		sc.flags(fl, &c)
		if fl.Lookup(name) != nil {
			return true
		}
	}
	return false
}

// cmdInit issues the service certificates and generates the cloud's keys.
func cmdInit(_ context.Context, c *common) error {
	if c.caDir == "" {
		return errors.New("--ca is required")
	}
	ca, err := identity.LoadCA(c.caDir, identity.CAConfig{})
	if err != nil {
		return err
	}
	files := []string{fleetFile, verifierName + ".crt", verifierName + ".key", commanderName + ".crt", commanderName + ".key",
		commandKeyFile, commandPubFile, cloudKeyFile, cloudPubFile}
	for _, f := range files {
		if _, err := os.Lstat(filepath.Join(c.dir, f)); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s exists: refusing to overwrite a cloud directory", filepath.Join(c.dir, f))
		}
	}
	for _, d := range []string{c.dir, c.devices} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	path := func(f string) string { return filepath.Join(c.dir, f) }
	if err := writeFileAtomic(path(fleetFile), identity.EncodeCertificatesPEM(ca.Root(), ca.Issuing()), 0o644); err != nil {
		return err
	}
	for _, name := range []string{verifierName, commanderName} {
		key, err := identity.GenerateKey(identity.ECDSAP256)
		if err != nil {
			return err
		}
		cert, err := ca.IssueService(key.Public(), name)
		if err != nil {
			return err
		}
		if err := identity.WriteKeyFile(nil, path(name+".key"), key); err != nil {
			return err
		}
		if err := writeFileAtomic(path(name+".crt"), identity.EncodeCertificatesPEM(cert, ca.Issuing()), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "service certificate %s (CN %s, until %s)\n", path(name+".crt"), cert.Subject.CommonName, cert.NotAfter.Format(time.DateOnly))
	}
	for _, k := range []struct{ key, pub, what string }{
		{commandKeyFile, commandPubFile, "command-signing key"},
		{cloudKeyFile, cloudPubFile, "telemetry decryption key"},
	} {
		key, err := identity.GenerateKey(identity.ECDSAP256)
		if err != nil {
			return err
		}
		pub, err := identity.MarshalPublicKey(key.Public())
		if err != nil {
			return err
		}
		if err := identity.WriteKeyFile(nil, path(k.key), key); err != nil {
			return err
		}
		if err := writeFileAtomic(path(k.pub), pub, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%s %s; give %s to the devices\n", k.what, path(k.key), path(k.pub))
	}
	fmt.Fprintf(c.stdout, "fleet anchors %s; device registry %s\n", path(fleetFile), c.devices)
	return nil
}

// cmdMosquitto writes the broker configuration for the two services.
func cmdMosquitto(_ context.Context, c *common) error {
	if c.listen == "" || c.brokerCert == "" || c.brokerKey == "" || c.out == "" {
		return errors.New("--listen, --broker-cert, --broker-key and --out are required")
	}
	abs := func(p string) (string, error) {
		if p == "" {
			return "", nil
		}
		return filepath.Abs(p)
	}
	mc := transport.MosquittoConfig{Listen: c.listen, Services: services()}
	for _, f := range []struct {
		dst *string
		src string
	}{
		{&mc.CAFile, filepath.Join(c.dir, fleetFile)}, {&mc.CertFile, c.brokerCert}, {&mc.KeyFile, c.brokerKey},
		{&mc.CRLFile, c.crl}, {&mc.PersistenceDir, c.persistence}, {&mc.ACLFile, filepath.Join(c.out, "acl")},
	} {
		p, err := abs(f.src)
		if err != nil {
			return err
		}
		*f.dst = p
	}
	conf, err := mc.Conf()
	if err != nil {
		return err
	}
	acl, err := mc.ACL()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	confPath, err := filepath.Abs(filepath.Join(c.out, "mosquitto.conf"))
	if err != nil {
		return err
	}
	if err := writeFileAtomic(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	if err := writeFileAtomic(mc.ACLFile, []byte(acl), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "wrote %s and %s; start the broker with: mosquitto -c %s\n", confPath, mc.ACLFile, confPath)
	if mc.CRLFile == "" {
		fmt.Fprintln(c.stdout, "no --crl: the broker will accept revoked devices until their certificates expire")
	}
	return nil
}

// cmdRegister adds a device certificate chain to the registry.
func cmdRegister(_ context.Context, c *common) error {
	if c.certFile == "" {
		return errors.New("--cert is required")
	}
	fl, err := loadFleet(c.dir)
	if err != nil {
		return err
	}
	b, err := readBounded(c.certFile, maxPEMFile)
	if err != nil {
		return err
	}
	chain, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		return fmt.Errorf("%s: %w", c.certFile, err)
	}
	if len(chain) == 1 {
		chain = append(chain, fl.issuing)
	}
	policy, err := fl.policy(c)
	if err != nil {
		return err
	}
	id, err := policy.Verify(chain, time.Now())
	if err != nil {
		return fmt.Errorf("%s: %w", c.certFile, err)
	}
	reg, err := openRegistry(c.devices, c.log)
	if err != nil {
		return err
	}
	path, err := reg.Add(chain)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "registered %s: serial %x, valid until %s, in %s\n", id, chain[0].SerialNumber,
		chain[0].NotAfter.UTC().Format(time.DateOnly), path)
	return nil
}

// cmdRun receives, verifies and prints the fleet's telemetry until ctx ends.
func cmdRun(ctx context.Context, c *common) error {
	if c.broker == "" {
		return errors.New("--broker is required")
	}
	fl, err := loadFleet(c.dir)
	if err != nil {
		return err
	}
	policy, err := fl.policy(c)
	if err != nil {
		return err
	}
	if policy.Revocations == nil {
		c.log.Warn("no --crl: records of revoked devices are accepted here; only the broker refuses them")
	}
	reg, err := openRegistry(c.devices, c.log)
	if err != nil {
		return err
	}
	key, err := decryptionKey(c)
	if err != nil {
		return err
	}
	if key == nil && c.requireEncryption {
		return errors.New("--require-encryption needs a decryption key (--cloud-key)")
	}
	// The replay windows survive a restart: saved every 10 s and at the
	// end, so a restarted service still refuses what it refused before.
	replayPath := filepath.Join(c.dir, "replay.state")
	replay, err := transport.LoadReplayWindow(replayPath, 0)
	if err != nil {
		return fmt.Errorf("%w (move %s aside only if you accept replays of everything it remembered)", err, replayPath)
	}
	v, err := transport.NewVerifier(transport.VerifierConfig{Certificates: reg, Policy: policy, Replay: replay,
		DecryptionKey: key, RequireEncryption: c.requireEncryption, Logger: c.log})
	if err != nil {
		return err
	}
	defer func() {
		if err := replay.Save(replayPath); err != nil {
			c.log.Error("save the replay windows", "err", err)
		}
	}()
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := replay.Save(replayPath); err != nil {
					c.log.Error("save the replay windows", "err", err)
				}
			}
		}
	}()
	cert, err := loadServiceCert(c.dir, verifierName)
	if err != nil {
		return err
	}
	p := &printer{w: c.stdout}
	cloud, err := transport.DialCloud(ctx, transport.CloudConfig{
		Broker: c.broker, ServerName: c.serverName, Certificate: cert, Roots: fl.roots,
		Verifier: v, Group: c.group, Logger: c.log,
		OnRecord: func(_ context.Context, r transport.Record) {
			if r.Stream == identityStream {
				registerRenewal(c.log, reg, policy, r)
			}
			p.print(r)
		},
		OnRefused: func(topic string, err error) { c.log.Warn("refused", "topic", topic, "err", err) },
	})
	if err != nil {
		return err
	}
	c.log.Info("verifying telemetry", "broker", c.broker, "devices", c.devices, "decrypt", key != nil)
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st := v.Stats()
	c.log.Info("stopped", "accepted", st.Accepted, "duplicates", st.Duplicates, "replays", st.Replays, "refused", st.Refused)
	return cloud.Close(cctx)
}

// registerRenewal registers the renewed chain a device announced, signed
// with its registered key, once the chain itself verifies for that device.
func registerRenewal(log *slog.Logger, reg *registry, policy identity.DeviceCertPolicy, r transport.Record) {
	for _, rd := range r.Readings {
		chain, err := identity.ParseCertificatesPEM(rd.Body)
		if err == nil {
			var id string
			if id, err = policy.Verify(chain, time.Now()); err == nil && id != r.Device {
				err = fmt.Errorf("chain names %q", id)
			}
		}
		if err == nil {
			_, err = reg.Add(chain)
		}
		if err != nil {
			log.Warn("renewed certificate not registered", "device", r.Device, "err", err)
			continue
		}
		log.Info("registered the renewed certificate", "device", r.Device, "serial", fmt.Sprintf("%x", chain[0].SerialNumber))
	}
}

// cmdSend signs a command and publishes it to one device.
func cmdSend(ctx context.Context, c *common) error {
	if c.broker == "" || c.device == "" || c.name == "" {
		return errors.New("--broker, --device and --name are required")
	}
	if err := identity.ValidateDeviceID(c.device); err != nil {
		return err
	}
	fl, err := loadFleet(c.dir)
	if err != nil {
		return err
	}
	key, err := identity.ReadKeyFile(filepath.Join(c.dir, commandKeyFile))
	if err != nil {
		return err
	}
	cert, err := loadServiceCert(c.dir, commanderName)
	if err != nil {
		return err
	}
	signer := &transport.CommandSigner{Key: key, TTL: c.ttl}
	env, err := signer.Sign(transport.Command{Device: c.device, Name: c.name, Body: []byte(c.body)})
	if err != nil {
		return err
	}
	cloud, err := transport.DialCloud(ctx, transport.CloudConfig{Broker: c.broker, ServerName: c.serverName,
		Certificate: cert, Roots: fl.roots, Logger: c.log})
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = cloud.Close(cctx)
	}()
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := cloud.AwaitConnection(sctx); err != nil {
		return fmt.Errorf("connect to %s: %w", c.broker, err)
	}
	if err := cloud.SendCommand(sctx, c.device, env); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "sent %s to %s (expires in %s)\n", c.name, c.device, c.ttl)
	return nil
}

// fleet holds the fleet's trust anchors.
type fleet struct {
	roots   *x509.CertPool
	issuing *x509.Certificate
}

func loadFleet(dir string) (*fleet, error) {
	b, err := readBounded(filepath.Join(dir, fleetFile), maxPEMFile)
	if err != nil {
		return nil, fmt.Errorf("%w (run cloud init first)", err)
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		return nil, err
	}
	f := &fleet{roots: x509.NewCertPool()}
	for _, c := range certs {
		switch {
		case !c.IsCA:
		case c.CheckSignatureFrom(c) == nil:
			f.roots.AddCert(c)
		default:
			f.issuing = c
		}
	}
	if f.issuing == nil {
		return nil, fmt.Errorf("%s: no issuing CA certificate", filepath.Join(dir, fleetFile))
	}
	return f, nil
}

// policy returns the device certificate policy, with the CRL of --crl.
func (f *fleet) policy(c *common) (identity.DeviceCertPolicy, error) {
	p := identity.DeviceCertPolicy{Roots: f.roots}
	if c.crl != "" {
		crl, err := openCRL(c.crl, f.issuing, c.log)
		if err != nil {
			return p, err
		}
		p.Revocations = crl
	}
	return p, nil
}

func loadServiceCert(dir, name string) (tls.Certificate, error) {
	key, err := identity.ReadKeyFile(filepath.Join(dir, name+".key"))
	if err != nil {
		return tls.Certificate{}, err
	}
	b, err := readBounded(filepath.Join(dir, name+".crt"), maxPEMFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		return tls.Certificate{}, err
	}
	tc := tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, c := range certs {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, nil
}

// decryptionKey reads --cloud-key, or DIR/cloud.key when it exists.
func decryptionKey(c *common) (*ecdsa.PrivateKey, error) {
	path := c.cloudKey
	if path == "" {
		path = filepath.Join(c.dir, cloudKeyFile)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
	}
	k, err := identity.ReadKeyFile(path)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: the decryption key must be ECDSA P-256", path)
	}
	return ek, nil
}

// printer prints verified records, one line per reading.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) print(r transport.Record) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, rd := range r.Readings {
		body := printable(rd.Body)
		if r.Stream == identityStream {
			body = "(renewed certificate chain)"
		}
		fmt.Fprintf(p.w, "%s %s/%s boot=%d seq=%d %s\n", rd.Time.UTC().Format(time.RFC3339), r.Device, r.Stream, r.Boot, r.Seq, body)
	}
}

// printable returns b as text when it is printable UTF-8, else quoted.
func printable(b []byte) string {
	if utf8.Valid(b) && !strings.ContainsFunc(string(b), func(r rune) bool { return !unicode.IsPrint(r) && r != ' ' }) {
		return string(b)
	}
	return fmt.Sprintf("%q", b)
}

// registry is the device registry: a directory of PEM certificate chains,
// rescanned when it changes. It implements transport.Certificates.
type registry struct {
	dir string
	log *slog.Logger

	mu     sync.Mutex
	mod    time.Time
	chains map[string][][]*x509.Certificate // device -> its two newest chains, newest first
}

var _ transport.Certificates = (*registry)(nil)

func openRegistry(dir string, log *slog.Logger) (*registry, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	r := &registry{dir: dir, log: log}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r, r.refreshLocked()
}

// DeviceCertificates implements transport.Certificates.
func (r *registry) DeviceCertificates(_ context.Context, device string) ([][]*x509.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.refreshLocked(); err != nil {
		r.log.Warn("device registry", "err", err)
	}
	c := r.chains[device]
	if len(c) == 0 {
		return nil, fmt.Errorf("%w: %q is not registered in %s", transport.ErrUnknownDevice, device, r.dir)
	}
	return c, nil
}

// Add writes chain into the registry (if it is not there yet) and returns
// its file.
func (r *registry) Add(chain []*x509.Certificate) (string, error) {
	id := chain[0].Subject.CommonName
	if err := identity.ValidateDeviceID(id); err != nil {
		return "", err
	}
	path := filepath.Join(r.dir, fmt.Sprintf("%s-%x.pem", id, chain[0].SerialNumber))
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := writeFileAtomic(path, identity.EncodeCertificatesPEM(chain...), 0o644); err != nil {
		return "", err
	}
	r.chains = nil // rescan even if the directory's time did not tick
	return path, r.refreshLocked()
}

// refreshLocked rescans the directory if it changed since the last scan.
func (r *registry) refreshLocked() error {
	fi, err := os.Stat(r.dir)
	if err != nil {
		return err
	}
	if r.chains != nil && fi.ModTime().Equal(r.mod) {
		return nil
	}
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return err
	}
	chains := map[string][][]*x509.Certificate{}
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") || !strings.HasSuffix(e.Name(), ".pem") {
			continue
		}
		b, err := readBounded(filepath.Join(r.dir, e.Name()), maxPEMFile)
		var chain []*x509.Certificate
		if err == nil {
			chain, err = identity.ParseCertificatesPEM(b)
		}
		if err == nil {
			err = identity.ValidateDeviceID(chain[0].Subject.CommonName)
		}
		if err != nil {
			r.log.Warn("device registry: file skipped", "file", e.Name(), "err", err)
			continue
		}
		id := chain[0].Subject.CommonName
		chains[id] = append(chains[id], chain)
	}
	for id, cs := range chains {
		slices.SortFunc(cs, func(a, b []*x509.Certificate) int { return b[0].NotBefore.Compare(a[0].NotBefore) })
		chains[id] = cs[:min(len(cs), 2)]
	}
	r.chains, r.mod = chains, fi.ModTime()
	return nil
}

// crlFile is a CRL file, reread when it changes: a
// identity.RevocationChecker through an identity.CRLCache, which refuses
// an older CRL than the one in force and fails closed once the CRL is
// past its nextUpdate.
type crlFile struct {
	path  string
	cache *identity.CRLCache
	log   *slog.Logger

	mu        sync.Mutex
	mod       time.Time
	size      int64
	nextCheck time.Time
}

func openCRL(path string, issuer *x509.Certificate, log *slog.Logger) (*crlFile, error) {
	c := &crlFile{path: path, cache: identity.NewCRLCache(issuer, nil), log: log}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c, c.reloadLocked()
}

func (c *crlFile) reloadLocked() error {
	fi, err := os.Stat(c.path)
	if err != nil {
		return err
	}
	b, err := readBounded(c.path, 16<<20)
	if err != nil {
		return err
	}
	c.mod, c.size = fi.ModTime(), fi.Size()
	if err := c.cache.Update(b); err != nil {
		return fmt.Errorf("%s: %w (run d2c ca crl)", c.path, err)
	}
	return nil
}

// CheckRevoked implements identity.RevocationChecker. The file is checked
// for changes at most once a second; a CRL that no longer reads, or an
// older one, keeps the last good one in force, until it goes stale.
func (c *crlFile) CheckRevoked(cert *x509.Certificate) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); now.After(c.nextCheck) {
		c.nextCheck = now.Add(time.Second)
		if fi, err := os.Stat(c.path); err != nil || !fi.ModTime().Equal(c.mod) || fi.Size() != c.size {
			if err := c.reloadLocked(); err != nil {
				c.log.Error("CRL reload failed; the previous one stays in force", "err", err)
			}
		}
	}
	return c.cache.CheckRevoked(cert)
}

// writeFileAtomic writes data to path through a temporary file, fsynced
// and renamed, then fsyncs the directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
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
