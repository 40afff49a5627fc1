package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/eclipse/paho.golang/autopaho"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/transport"
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
		summary: "print verified telemetry live, as a cloud service",
		usage: "--broker HOST:PORT (--ca DIR | --roots FILE [--crl FILE]) --cert FILE --key FILE --devices DIR " +
			"[--device ID] [--stream NAME] [--decrypt-key FILE] [--server-name NAME]",
		details: `
Connects to the broker as a cloud service (transport.DialCloud), with the
service certificate in --cert and --key ("d2c ca service-cert"; the broker
must give that service read access to d2c/v1/dev/+/up/#, as --service NAME
does), verifies every telemetry message with transport.Verifier, and prints
one line per verified reading on stdout:

    TIME DEVICE STREAM BOOT/SEQ BODY

TIME is the reading's time (UTC, RFC 3339), BOOT/SEQ the device's boot
counter and the record's sequence number (with #i for the i-th reading of a
record holding several), BODY the reading as text if it is printable UTF-8,
else "hex:" and its bytes in hex. Messages refused (a bad signature, an
unknown device, a replay...) are reported on stderr with the reason, one
line each. Duplicates (QoS 1 redeliveries) are dropped silently. --device and
--stream print only that device or stream.

The verifier takes each device's public key from its registered certificate,
never from the message. The fleet CA keeps no record of the certificates it
issues, so --devices names a directory of device certificates: PEM files
(*.pem, *.crt), each holding a device's certificate chain as "d2c device
enroll --cert-out" or "d2c device show --cert-out" writes it. The directory is
read at start, and again (at most every 2 seconds) when a message names a
device it does not know yet, so certificates copied there while tail runs are
picked up. A device's certificates are checked against the fleet root, their
validity and revocation before they are trusted.

--ca DIR takes the fleet root from the CA directory and checks revocation
against its live revocation list; --roots FILE takes the roots from a PEM
file instead, with --crl FILE for revocation ("d2c ca crl").

--decrypt-key is the cloud's P-256 private key (PEM) that devices encrypt
telemetry to; without it encrypted messages are refused. The broker keeps the
service's session for an hour: messages sent while tail was away arrive when
it reconnects. It stops on SIGINT or SIGTERM.`,
		example: `d2c ca service-cert --dir /srv/d2c/ca --name tail --cert tail.crt --key tail.key
d2c tail --broker mqtt.example.com:8883 --ca /srv/d2c/ca --cert tail.crt --key tail.key \
    --devices /srv/d2c/devices --stream temperature`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			broker := fl.String("broker", "", "broker address, host:port (required)")
			serverName := fl.String("server-name", "", "name checked in the broker certificate (default: the host of --broker)")
			caDir := fl.String("ca", "", "fleet CA directory: roots and live revocation list")
			rootsFile := fl.String("roots", "", "PEM file of fleet roots, instead of --ca")
			crlFile := fl.String("crl", "", "fleet CRL, PEM, with --roots")
			certFile := fl.String("cert", "", "service certificate chain, PEM, from d2c ca service-cert (required)")
			keyFile := fl.String("key", "", "service private key, PEM (required)")
			devicesDir := fl.String("devices", "", "directory of device certificates, PEM, one chain per file (required)")
			device := fl.String("device", "", "print only this device")
			stream := fl.String("stream", "", "print only this stream")
			decryptKey := fl.String("decrypt-key", "", "cloud P-256 private key, PEM, to decrypt encrypted telemetry")
			return func(ctx context.Context, s streams) error {
				if *broker == "" || *certFile == "" || *keyFile == "" || *devicesDir == "" {
					return usageErrorf("--broker, --cert, --key and --devices are required")
				}
				if (*caDir == "") == (*rootsFile == "") {
					return usageErrorf("give exactly one of --ca and --roots: the fleet root the broker and the devices chain to")
				}
				if *crlFile != "" && *rootsFile == "" {
					return usageErrorf("--crl goes with --roots (with --ca, revocation comes from the CA)")
				}
				if *device != "" {
					if err := identity.ValidateDeviceID(*device); err != nil {
						return usageErrorf("--device %q: %s", *device, deviceIDFormat)
					}
				}
				if *stream != "" {
					if err := transport.ValidateStream(*stream); err != nil {
						return usageErrorf("--stream %q: %v", *stream, err)
					}
				}
				o := tailOptions{broker: *broker, serverName: *serverName, device: *device, stream: *stream}
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
}

// tailTrust returns the fleet roots and the revocation checker of --ca or
// --roots and --crl.
func tailTrust(s streams, caDir, rootsFile, crlFile string) (*x509.CertPool, []*x509.Certificate, identity.RevocationChecker, error) {
	pool := x509.NewCertPool()
	if caDir != "" {
		ca, err := openCA(caDir)
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
			return nil, nil, nil, withHint(fmt.Errorf("%s: %w", crlFile, err), "write a fresh one with `d2c ca crl --dir CA_DIR --out FILE`")
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
			"issue a service certificate with `d2c ca service-cert --dir CA_DIR --name NAME`")
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
	out := &tailPrinter{stdout: s.stdout, stderr: s.stderr, device: o.device, stream: o.stream}
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

// tailPrinter writes records and refusals, one line each, from the MQTT
// client's goroutines.
type tailPrinter struct {
	mu             sync.Mutex
	stdout, stderr io.Writer
	device, stream string
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
		fmt.Fprintf(&b, "%s %s %s %s %s\n", t.UTC().Format("2006-01-02T15:04:05.000Z07:00"), r.Device, r.Stream, pos, bodyText(rd.Body))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = io.WriteString(p.stdout, b.String())
}

func (p *tailPrinter) refused(topic string, err error) {
	if t, perr := transport.ParseTopic(topic); perr == nil &&
		(p.device != "" && t.Device != p.device || p.stream != "" && t.Kind == transport.KindTelemetry && t.Stream != p.stream) {
		return
	}
	line := fmt.Sprintf("refused %s: %v", printable(topic), err)
	if h := refusalHint(err); h != "" {
		line += " (" + h + ")"
	}
	p.note(line)
}

func (p *tailPrinter) note(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.stderr, line)
}

// refusalHint says what a refused message means for the operator.
func refusalHint(err error) string {
	switch {
	case errors.Is(err, transport.ErrUnknownDevice):
		return "its certificate is not in --devices: copy it there (d2c device show --cert-out on the device)"
	case errors.Is(err, transport.ErrDecrypt):
		return "encrypted to a cloud key: give its private key with --decrypt-key"
	case errors.Is(err, identity.ErrRevoked):
		return "the device's certificate is revoked"
	case errors.Is(err, transport.ErrReplay):
		return "an old message sent again: a replay, or a device whose boot counter went back"
	case errors.Is(err, transport.ErrBadSignature), errors.Is(err, transport.ErrWrongDevice):
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
	if utf8.Valid(b) && !strings.ContainsFunc(string(b), func(r rune) bool { return !unicode.IsPrint(r) }) {
		return string(b)
	}
	return "hex:" + hex.EncodeToString(b)
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
	return nil, fmt.Errorf("%w: %q has no certificate in %s", transport.ErrUnknownDevice, device, d.dir)
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
