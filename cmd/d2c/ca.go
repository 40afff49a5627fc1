// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/pkcs11"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

// rootFingerprintFile is written by "ca init" beside the CA: the hex
// SHA-256 of the root certificate, for provisioning scripts.
const rootFingerprintFile = "root.sha256"

// fingerprint returns the hex SHA-256 of a certificate's DER encoding, the
// form devices take with --fingerprint.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// openCA loads the fleet CA in dir (its fleet name comes from the root
// certificate), with its issuing key from DIR/issuing.key.
func openCA(dir string) (*identity.CA, error) {
	return loadCA(dir, identity.CAConfig{})
}

// loadCA loads the fleet CA in dir with cfg, hinting at what a missing
// file means.
func loadCA(dir string, cfg identity.CAConfig) (*identity.CA, error) {
	if dir == "" {
		return nil, usageErrorf("the CA directory flag is required")
	}
	ca, err := identity.LoadCA(dir, cfg)
	switch {
	case err == nil:
		return ca, nil
	case errors.Is(err, fs.ErrExist):
		return nil, withHint(err, fmt.Sprintf("the issuing key is given with --issuing-key, so %s must not exist: "+
			"find out where it came from, and move it out of the CA directory", filepath.Join(dir, identity.CAIssuingKeyFile)))
	case errors.Is(err, identity.ErrMalformed) && cfg.IssuingKey != nil:
		return nil, withHint(err, "check that --issuing-key names this CA's issuing key, the one issuing.crt "+
			"certifies (its token= and object=), and that the CA directory is the right one")
	case errors.Is(err, fs.ErrNotExist) && cfg.IssuingKey == nil && exists(filepath.Join(dir, identity.CAIssuingCertFile)):
		return nil, withHint(err, fmt.Sprintf("%s has no issuing.key: if the fleet's issuing key lives in a PKCS#11 token, "+
			"give its pkcs11: URI with --issuing-key", dir))
	case errors.Is(err, fs.ErrNotExist):
		return nil, withHint(err, fmt.Sprintf("no fleet CA in %s: check the directory, or create one with `d2c ca init --ca %s`", dir, dir))
	}
	return nil, err
}

// exists reports whether path names an existing file.
func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// issuingKeyUsage is the help of --issuing-key on every command where the
// fleet CA signs.
const issuingKeyUsage = "the issuing CA key, if not DIR/issuing.key: a pkcs11: URI (RFC 7512) of a key in a PKCS#11 token, or a key file"

// issuingKeyFlag defines --issuing-key on a command where the fleet CA
// signs (certificates, CRLs).
func issuingKeyFlag(fl *flag.FlagSet) *string {
	return fl.String("issuing-key", "", issuingKeyUsage)
}

// openSigningCA loads the fleet CA in dir for a command that signs with
// it: its issuing key is keyRef (a pkcs11: URI or a key file) if given,
// else DIR/issuing.key. The caller calls close once done signing.
func openSigningCA(ctx context.Context, dir, keyRef string) (*identity.CA, func() error, error) {
	if keyRef == "" {
		ca, err := openCA(dir)
		return ca, func() error { return nil }, err
	}
	if dir == "" {
		return nil, nil, usageErrorf("the CA directory flag is required")
	}
	key, closeKey, err := openSigner(ctx, keyRef)
	if err != nil {
		return nil, nil, fmt.Errorf("--issuing-key: %w", err)
	}
	ca, err := loadCA(dir, identity.CAConfig{IssuingKey: key})
	if err != nil {
		_ = closeKey()
		return nil, nil, err
	}
	return ca, closeKey, nil
}

// openCANoSign loads the fleet CA in dir for a command that signs
// nothing ("ca revoke" records a revocation; "tail" and the verifier take
// the anchors and revocations): if the issuing key is not in DIR (it lives
// in a token), the CA is loaded with a stand-in that refuses to sign, so
// that these need neither the token nor its PIN.
func openCANoSign(dir string) (*identity.CA, error) {
	if dir == "" || exists(filepath.Join(dir, identity.CAIssuingKeyFile)) {
		return openCA(dir)
	}
	b, err := atomicfile.ReadFile(filepath.Join(dir, identity.CAIssuingCertFile), limits.PEMFile)
	if err != nil {
		return loadCA(dir, identity.CAConfig{}) // the same error, with its hint
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil || len(certs) != 1 {
		return loadCA(dir, identity.CAConfig{})
	}
	return loadCA(dir, identity.CAConfig{IssuingKey: signsNothing{certs[0].PublicKey}})
}

// signsNothing stands for an issuing key that a command does not need.
type signsNothing struct{ pub crypto.PublicKey }

func (k signsNothing) Public() crypto.PublicKey { return k.pub }

func (k signsNothing) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("the issuing key is not open: this command does not sign")
}

func caInitCommand() *command {
	return &command{
		path:    "ca init",
		summary: "create a fleet CA (root, issuing CA, token key, command key)",
		usage:   "--ca DIR [--fleet NAME] [--issuing-key pkcs11:URI]",
		details: `
Creates, in DIR (mode 0700), an offline root (ECDSA P-256, 20 years), an
issuing intermediate (10 years) that signs device and server certificates and
CRLs, the key that signs enrollment tokens (DIR/token.key), and the key
that signs commands to devices (DIR/command.key; the cloud service's command
API signs with it, and devices are configured with DIR/command.pub). It
refuses to overwrite an existing CA.

The issuing key is DIR/issuing.key, unless --issuing-key names a key in a
PKCS#11 token by its RFC 7512 URI:

  pkcs11:token=TOKEN;object=KEY?module-path=/ABS/lib.so&pin-source=file:/ABS/pin

Then the key is generated inside the token under the label KEY (ECDSA P-256,
sensitive, never extractable), no issuing.key is written, and every command
that signs with the CA (ca server-cert, ca service-cert, ca crl) takes the
same --issuing-key. The PIN file must be mode 0600; a PIN in the URI
(pin-value) is refused. An object already under KEY is never replaced. This
needs a d2c built with cgo (CGO_ENABLED=1).

It prints the root certificate's SHA-256 fingerprint, which devices need to
bootstrap trust (device enroll --fingerprint), and also writes it, in hex, to
DIR/root.sha256.

DIR/root.key is the fleet root key: move it offline (an encrypted USB stick
in a safe) right after this command. The CA never needs it again; it is only
needed to create a new issuing CA.`,
		example: `d2c ca init --ca /srv/d2c/ca --fleet "acme sensors"
mv /srv/d2c/ca/root.key /media/offline/
d2c ca init --ca /srv/d2c/ca --fleet "acme sensors" \
    --issuing-key 'pkcs11:token=fleet-ca;object=issuing-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/d2c/ca.pin'`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("ca", "", "fleet CA directory to create (required)")
			fleet := fl.String("fleet", "d2c fleet", "fleet name, the organization in certificate subjects")
			issuingKey := fl.String("issuing-key", "", "make the issuing CA key in a PKCS#11 token, at this pkcs11: URI (RFC 7512), instead of DIR/issuing.key")
			return func(ctx context.Context, s streams) error {
				if *dir == "" {
					return usageErrorf("--ca is required")
				}
				if strings.TrimSpace(*fleet) == "" {
					return usageErrorf("--fleet must not be empty")
				}
				var ca *identity.CA
				var err error
				if *issuingKey != "" {
					ca, err = initCAInToken(ctx, s, *dir, *fleet, *issuingKey)
				} else {
					ca, err = identity.InitCA(*dir, identity.CAConfig{Fleet: *fleet})
				}
				if err != nil {
					return err
				}
				fp := fingerprint(ca.Root())
				if err := atomicfile.WriteFile(nil, filepath.Join(*dir, rootFingerprintFile), []byte(fp+"\n")); err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "fleet CA %q created in %s\n", *fleet, *dir)
				fmt.Fprintf(s.stdout, "root fingerprint (SHA-256): %s\n", fp)
				fmt.Fprintf(s.stderr, "warning: %s is the fleet root key: move it offline now; the CA never needs it again\n",
					filepath.Join(*dir, identity.CARootKeyFile))
				fmt.Fprintf(s.stderr, "devices bootstrap trust with: d2c device enroll --fingerprint %s ...\n", fp)
				fmt.Fprintf(s.stderr, "commands are signed with %s (d2c cloud serve); devices check them with %s\n",
					filepath.Join(*dir, identity.CACommandKeyFile), filepath.Join(*dir, identity.CACommandPublicKeyFile))
				return nil
			}
		},
	}
}

// initCAInToken creates the fleet CA in dir with its issuing key
// generated in the PKCS#11 token that uri names, under the URI's object
// label, which must be free: an existing object is never replaced. If the
// CA cannot be created, the new key is destroyed again. The token is
// closed on return, so the CA returned no longer signs.
func initCAInToken(ctx context.Context, s streams, dir, fleet, uri string) (*identity.CA, error) {
	if !isPKCS11URI(uri) {
		return nil, usageErrorf("--issuing-key takes a pkcs11: URI, the key to make in a token " +
			"(without it, the issuing key is DIR/issuing.key)")
	}
	cfg, label, err := pkcs11.ParseURI(uri)
	if err != nil {
		return nil, fmt.Errorf("--issuing-key: %w", pkcs11Hint(err))
	}
	// Check what InitCA would refuse before touching the token.
	if exists(filepath.Join(dir, identity.CAIssuingCertFile)) {
		return nil, fmt.Errorf("a fleet CA already exists in %s", dir)
	}
	ks, err := pkcs11.Open(cfg)
	if err != nil {
		return nil, fmt.Errorf("--issuing-key: %w", pkcs11Hint(err))
	}
	defer ks.Close()
	made, err := ks.CreateNew(ctx, label, identity.ECDSAP256)
	if errors.Is(err, pkcs11.ErrKeyExists) {
		return nil, withHint(fmt.Errorf("--issuing-key: %w", err),
			"ca init makes a new key and never replaces an object in the token: choose another object= label, "+
				"or, if the old key is no longer needed by any CA, delete it with the token's own tools")
	}
	if err != nil {
		return nil, fmt.Errorf("--issuing-key: %w", err)
	}
	// Sign with the key as the URI selects it, as every later command
	// will: a URI that does not select the new key (an id= of another)
	// fails now, not at the first enrollment.
	ca, err := func() (*identity.CA, error) {
		key, closeKey, err := pkcs11.OpenURI(ctx, uri)
		if err != nil {
			return nil, fmt.Errorf("--issuing-key: open the key just made: %w", err)
		}
		defer closeKey()
		if pub, ok := made.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
			return nil, errors.New("--issuing-key: the URI selects another key than the one just made: check its id=")
		}
		return identity.InitCA(dir, identity.CAConfig{Fleet: fleet, IssuingKey: key})
	}()
	if err != nil {
		if derr := ks.Delete(ctx, label); derr != nil {
			fmt.Fprintf(s.stderr, "warning: the new key %q stays in token %q: %v\n", label, cfg.TokenLabel, derr)
		}
		return nil, err
	}
	fmt.Fprintf(s.stdout, "issuing key: generated in PKCS#11 token %q as %q; it never leaves the token\n", cfg.TokenLabel, label)
	return ca, nil
}

func caServerCertCommand() *command {
	return &command{
		path:    "ca server-cert",
		summary: "issue a TLS server certificate for a broker or the registrar",
		usage:   "--ca DIR --host HOST [--host HOST...] --cert FILE --key FILE [--key-type p256|ed25519] [--issuing-key URI]",
		details: `
Generates a key and issues a TLS server certificate for the given DNS names or
IP addresses. It writes the certificate chain (server certificate, then the
issuing CA) to --cert and the private key (PKCS#8, mode 0600) to --key, each
atomically. Devices verify the chain against the fleet root.`,
		example: `d2c ca server-cert --ca /srv/d2c/ca --host mqtt.example.com --host 10.0.0.5 \
    --cert /etc/mosquitto/certs/broker.crt --key /etc/mosquitto/certs/broker.key`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("ca", "", "fleet CA directory (required)")
			var hosts stringList
			fl.Var(&hosts, "host", "DNS name or IP address of the server; repeat for several (required)")
			certOut := fl.String("cert", "", "file to write the certificate chain to, PEM (required)")
			keyOut := fl.String("key", "", "file to write the private key to, PKCS#8 PEM, mode 0600 (required)")
			keyType := fl.String("key-type", "p256", "key algorithm: p256 or ed25519")
			issuingKey := issuingKeyFlag(fl)
			return func(ctx context.Context, s streams) error {
				if *dir == "" || len(hosts) == 0 || *certOut == "" || *keyOut == "" {
					return usageErrorf("--ca, --host, --cert and --key are required")
				}
				kt, err := identity.ParseKeyType(*keyType)
				if err != nil {
					return usageErrorf("--key-type: %v", err)
				}
				ca, closeKey, err := openSigningCA(ctx, *dir, *issuingKey)
				if err != nil {
					return err
				}
				defer closeKey()
				key, err := identity.GenerateKey(kt)
				if err != nil {
					return err
				}
				cert, err := ca.IssueServer(key.Public(), hosts...)
				if err != nil {
					return err
				}
				if err := identity.WriteKeyFile(*keyOut, key); err != nil {
					return err
				}
				if err := atomicfile.WriteFileMode(nil, *certOut, identity.EncodeCertificatesPEM(cert, ca.Issuing()), 0o644); err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "server certificate for %s\n", strings.Join(hosts, ", "))
				fmt.Fprintf(s.stdout, "serial:  %x\nexpires: %s\ncert:    %s\nkey:     %s\n",
					cert.SerialNumber, cert.NotAfter.UTC().Format(time.RFC3339), *certOut, *keyOut)
				return nil
			}
		},
	}
}

// serviceNameFormat states the service name format for people: the
// device ID format (identity.CA.IssueService).
const serviceNameFormat = "a service name follows the device ID format: 1 to 64 ASCII letters, digits, '.', '_' and '-', " +
	"starting with a letter or digit (for example verifier or tail)"

func caServiceCertCommand() *command {
	return &command{
		path:    "ca service-cert",
		summary: "issue a client certificate for a cloud service (verifier, commander, tail)",
		usage:   "--ca DIR --service NAME --cert FILE --key FILE [--key-type p256|ed25519] [--issuing-key URI]",
		details: `
Generates a key and issues a TLS client certificate whose CN is "svc:NAME",
the identity a cloud service (a telemetry verifier, a command sender,
"d2c tail") presents to the broker. The broker grants it exactly the rights
listed for NAME (broker config --service, dev broker --service); no device
can hold them, since a colon never appears in a device ID.

It writes the certificate chain (service certificate, then the issuing CA) to
--cert and the private key (PKCS#8, mode 0600) to --key, each atomically.
Give each service instance its own name and certificate: the broker allows one
connection per certificate, and a single instance can then be revoked
("d2c ca revoke --cert FILE").

Devices get their certificates over EST only ("d2c device enroll"), never
from this command.`,
		example: `d2c ca service-cert --ca /srv/d2c/ca --service tail --cert tail.crt --key tail.key`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("ca", "", "fleet CA directory (required)")
			name := fl.String("service", "", "service name; the certificate's CN is svc:NAME (required)")
			certOut := fl.String("cert", "", "file to write the certificate chain to, PEM (required)")
			keyOut := fl.String("key", "", "file to write the private key to, PKCS#8 PEM, mode 0600 (required)")
			keyType := fl.String("key-type", "p256", "key algorithm: p256 or ed25519")
			issuingKey := issuingKeyFlag(fl)
			return func(ctx context.Context, s streams) error {
				if *dir == "" || *name == "" || *certOut == "" || *keyOut == "" {
					return usageErrorf("--ca, --service, --cert and --key are required")
				}
				kt, err := identity.ParseKeyType(*keyType)
				if err != nil {
					return usageErrorf("--key-type: %v", err)
				}
				if err := identity.ValidateDeviceID(*name); err != nil {
					return withHint(fmt.Errorf("service name %q: %w", *name, err), serviceNameFormat)
				}
				ca, closeKey, err := openSigningCA(ctx, *dir, *issuingKey)
				if err != nil {
					return err
				}
				defer closeKey()
				key, err := identity.GenerateKey(kt)
				if err != nil {
					return err
				}
				cert, err := ca.IssueService(key.Public(), *name)
				if err != nil {
					return err
				}
				if err := identity.WriteKeyFile(*keyOut, key); err != nil {
					return err
				}
				if err := atomicfile.WriteFileMode(nil, *certOut, identity.EncodeCertificatesPEM(cert, ca.Issuing()), 0o644); err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "service certificate for %s\n", cert.Subject.CommonName)
				fmt.Fprintf(s.stdout, "serial:  %x\nexpires: %s\ncert:    %s\nkey:     %s\n",
					cert.SerialNumber, cert.NotAfter.UTC().Format(time.RFC3339), *certOut, *keyOut)
				fmt.Fprintf(s.stderr, "on the broker, %s has the rights of --service %s (d2c broker config, d2c dev broker), no others; "+
					"on the service's command API, it may send commands if %q is among \"clients\" (d2c cloud serve)\n",
					cert.Subject.CommonName, *name, *name)
				return nil
			}
		},
	}
}

// revocationReasons maps the reason names "ca revoke" accepts to RFC 5280
// section 5.3.1 CRLReason codes.
var revocationReasons = map[string]int{
	"unspecified":          0,
	"keyCompromise":        1,
	"superseded":           4,
	"cessationOfOperation": 5,
}

func parseReason(s string) (int, bool) {
	for name, code := range revocationReasons {
		if strings.EqualFold(name, s) {
			return code, true
		}
	}
	return 0, false
}

func caRevokeCommand() *command {
	return &command{
		path:    "ca revoke",
		summary: "revoke a certificate issued by the fleet CA",
		usage:   "(--ca DIR --cert FILE | --db URL (--serial HEX | --device ID | --cert FILE)) [--reason unspecified|keyCompromise|superseded|cessationOfOperation]",
		details: `
Adds the certificate in FILE (the first one, if FILE holds a chain) to the
CA's revocation list. A running registrar refuses its renewal at once; brokers
learn of it from the next CRL: run "d2c ca crl" afterwards and reload them.
Revoking a certificate twice is not an error.

With --db (the fleet's cloud store, which a registrar run with --db records
every certificate in), revoke by --serial (hexadecimal, as "device show" and
the registry print it), or every unexpired certificate of a --device at
once, with no need for the certificate itself; publish with
"d2c ca crl --db URL".

Get a device's certificate with "d2c device show --cert-out FILE" on the
device, or keep the one written by "device enroll --cert-out".`,
		example: `d2c ca revoke --ca /srv/d2c/ca --cert sensor-0042.pem --reason keyCompromise
d2c ca revoke --db sqlite:/srv/d2c/fleet.db --device sensor-0042 --reason keyCompromise
d2c ca crl --ca /srv/d2c/ca --out /etc/mosquitto/crl.pem`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("ca", "", "fleet CA directory (without --db)")
			certFile := fl.String("cert", "", "PEM file holding the certificate to revoke")
			db := fl.String("db", "", "the fleet's cloud store, sqlite:PATH or postgres://...")
			serialHex := fl.String("serial", "", "serial number to revoke, hexadecimal (with --db)")
			device := fl.String("device", "", "device whose every unexpired certificate to revoke (with --db)")
			reason := fl.String("reason", "unspecified", "RFC 5280 reason: unspecified, keyCompromise, superseded or cessationOfOperation")
			return func(ctx context.Context, s streams) error {
				code, ok := parseReason(*reason)
				if !ok {
					return usageErrorf("--reason %q: want unspecified, keyCompromise, superseded or cessationOfOperation", *reason)
				}
				if *db != "" {
					return revokeInStore(ctx, s, *db, *certFile, *serialHex, *device, code, *reason)
				}
				if *serialHex != "" || *device != "" {
					return usageErrorf("--serial and --device need --db (the registry of issued certificates)")
				}
				if *dir == "" || *certFile == "" {
					return usageErrorf("--ca and --cert are required (or --db with --serial, --device or --cert)")
				}
				b, err := atomicfile.ReadFile(*certFile, limits.PEMFile)
				if err != nil {
					return err
				}
				certs, err := identity.ParseCertificatesPEM(b)
				if err != nil {
					return fmt.Errorf("%s: %w", *certFile, err)
				}
				ca, err := openCANoSign(*dir)
				if err != nil {
					return err
				}
				cert := certs[0]
				if err := ca.Revoke(cert, code); err != nil {
					if errors.Is(err, identity.ErrUntrusted) {
						return withHint(err, "the certificate was not issued by the CA in --ca: check --cert and --ca")
					}
					return err
				}
				fmt.Fprintf(s.stdout, "revoked serial %x (%s), reason %s\n", cert.SerialNumber, cert.Subject.CommonName, *reason)
				fmt.Fprintf(s.stderr, "publish it to brokers: d2c ca crl --ca %s --out FILE\n", *dir)
				return nil
			}
		},
	}
}

// revokeInStore revokes in the fleet's cloud store by certificate file,
// serial or device.
func revokeInStore(ctx context.Context, s streams, db, certFile, serialHex, device string, code int, reason string) error {
	given := 0
	for _, v := range []string{certFile, serialHex, device} {
		if v != "" {
			given++
		}
	}
	if given != 1 {
		return usageErrorf("with --db, give one of --cert, --serial or --device")
	}
	st, err := openStore(ctx, db)
	if err != nil {
		return err
	}
	defer st.Close()
	switch {
	case device != "":
		n, err := st.RevokeDevice(ctx, device, code)
		if err != nil {
			return err
		}
		if n == 0 {
			return withHint(fmt.Errorf("device %q has no unexpired, unrevoked certificate in the registry", device),
				"check the device ID; its certificates are recorded only by a registrar run with --db")
		}
		fmt.Fprintf(s.stdout, "revoked %d certificate(s) of %s, reason %s\n", n, device, reason)
	default:
		serial := new(big.Int)
		if certFile != "" {
			b, err := atomicfile.ReadFile(certFile, limits.PEMFile)
			if err != nil {
				return err
			}
			certs, err := identity.ParseCertificatesPEM(b)
			if err != nil {
				return fmt.Errorf("%s: %w", certFile, err)
			}
			serial = certs[0].SerialNumber
		} else if _, ok := serial.SetString(strings.TrimPrefix(strings.ToLower(serialHex), "0x"), 16); !ok {
			return usageErrorf("--serial %q: want a hexadecimal serial number", serialHex)
		}
		if err := st.Revoke(ctx, serial, code); err != nil {
			if errors.Is(err, store.ErrUnknownCertificate) {
				return withHint(err, "the registry holds only certificates issued by a registrar run with --db: check --serial and --db")
			}
			return err
		}
		fmt.Fprintf(s.stdout, "revoked serial %x, reason %s\n", serial, reason)
	}
	fmt.Fprintf(s.stderr, "publish it to brokers: d2c ca crl --ca CA_DIR --db %s --out FILE\n", db)
	return nil
}

func caCRLCommand() *command {
	return &command{
		path:    "ca crl",
		summary: "write a fresh certificate revocation list (PEM)",
		usage:   "--ca DIR [--db URL] --out FILE [--issuing-key URI]",
		details: `
Signs a new CRL (RFC 5280) listing every revoked certificate, with a CRL
number one higher than the last, and writes it PEM-encoded ("X509 CRL")
to FILE atomically, mode 0644 (a CRL is public; the broker's user reads it). mosquitto
reads it as its crlfile. A CRL is valid for 7 days: run this at least daily,
for example from cron, and after every revocation.

With --db, the CRL lists the revocations recorded in the fleet's cloud
store (made with "ca revoke --db"), numbered above every CRL the store
issued, also by other processes.`,
		example: `d2c ca crl --ca /srv/d2c/ca --out /etc/mosquitto/crl.pem`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("ca", "", "fleet CA directory (required)")
			out := fl.String("out", "", "file to write the CRL to, PEM (required)")
			db := fl.String("db", "", "the fleet's cloud store, sqlite:PATH or postgres://... (its revocations)")
			issuingKey := issuingKeyFlag(fl)
			return func(ctx context.Context, s streams) error {
				if *dir == "" || *out == "" {
					return usageErrorf("--ca and --out are required")
				}
				ca, closeKey, err := openSigningCA(ctx, *dir, *issuingKey)
				if err != nil {
					return err
				}
				defer closeKey()
				var der []byte
				if *db != "" {
					st, err := openStore(ctx, *db)
					if err != nil {
						return err
					}
					defer st.Close()
					der, err = st.CRL(ctx, ca)
					if err != nil {
						return err
					}
				} else if der, err = ca.CRL(); err != nil {
					return err
				}
				crl, err := x509.ParseRevocationList(der)
				if err != nil {
					return fmt.Errorf("parse the CRL just signed: %w", err)
				}
				if err := atomicfile.WriteFileMode(nil, *out, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "wrote CRL number %v to %s\nentries:     %d\nnext update: %s\n",
					crl.Number, *out, len(crl.RevokedCertificateEntries), crl.NextUpdate.UTC().Format(time.RFC3339))
				fmt.Fprintf(s.stderr, "publish a new CRL before %s: brokers may refuse every device once this one has expired\n",
					crl.NextUpdate.UTC().Format(time.RFC3339))
				return nil
			}
		},
	}
}
