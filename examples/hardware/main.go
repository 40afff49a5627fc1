// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command hardware runs the device half of d2c with its key in hardware,
// narrated: the device generates its key inside the keystore, enrolls over
// EST, connects to the broker with mutual TLS 1.3 (the handshake signed
// inside the keystore), publishes signed telemetry that the cloud
// verifies, renews (a new key in the keystore, the old one destroyed) and
// publishes again. The cloud half (a fleet CA, an EST registrar, an
// embedded MQTT broker and a verifier) runs in the same process, on
// 127.0.0.1.
//
//	go run ./examples/hardware --keys file|pkcs11|tpm [flags]
//
// --keys file keeps the key in a PKCS#8 file (mode 0600) in the store, the
// default of identity.Store, for comparison.
//
// --keys pkcs11 keeps it in a PKCS#11 token (identity/pkcs11):
//
//	--pkcs11-module PATH   the token's PKCS#11 library (absolute path)
//	--pkcs11-token LABEL   the token's label
//	--pkcs11-pin-file F    a file (mode 0600) holding the user PIN
//
// Without --pkcs11-module, the program initializes a throwaway softhsm2
// token in a temporary directory (softhsm2-util, Debian package
// softhsm2), and removes it at exit.
//
// --keys tpm keeps it in a TPM 2.0 (identity/tpm), the one at --tpm
// (default /dev/tpmrm0, the kernel's resource manager; the user needs
// access to it, usually through the tss group).
//
// --dir DIR keeps the state (CA, device store, TPM key blobs) in DIR
// instead of a temporary directory removed at exit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/examples/internal/narrate"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
)

const deviceID = "gateway-0001"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "hardware:", err)
		}
		os.Exit(1)
	}
}

// testHookBetweenReadings, if set, runs after the cloud verified the first
// reading and before the device publishes the second: the test kills the
// TPM there.
var testHookBetweenReadings func()

type options struct {
	keys                   string
	module, token, pinFile string
	tpmDevice, tpmSim      string
	dir                    string
}

// hiddenFlags are for development and tests, left out of the usage.
var hiddenFlags = map[string]bool{"tpm-sim": true}

func parseFlags(args []string, out io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("hardware", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.keys, "keys", "", "where the device keys live: file, pkcs11 or tpm (required)")
	fs.StringVar(&o.module, "pkcs11-module", "", "PKCS#11 library of the token (absolute path); default: a throwaway softhsm2 token")
	fs.StringVar(&o.token, "pkcs11-token", "", "label of the PKCS#11 token")
	fs.StringVar(&o.pinFile, "pkcs11-pin-file", "", "file (mode 0600) holding the token's user PIN")
	fs.StringVar(&o.tpmDevice, "tpm", "/dev/tpmrm0", "TPM 2.0 device")
	fs.StringVar(&o.tpmSim, "tpm-sim", "", "host:port of a swtpm simulator's command socket, instead of --tpm (development only: plain TCP)")
	fs.StringVar(&o.dir, "dir", "", "state directory, kept; default: a temporary directory removed at exit")
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: hardware --keys file|pkcs11|tpm [--pkcs11-module PATH --pkcs11-token LABEL --pkcs11-pin-file F] [--tpm /dev/tpmrm0] [--dir DIR]")
		fs.VisitAll(func(f *flag.Flag) {
			if hiddenFlags[f.Name] {
				return
			}
			def := ""
			if f.DefValue != "" {
				def = " (default " + f.DefValue + ")"
			}
			fmt.Fprintf(out, "  --%s\n\t%s%s\n", f.Name, f.Usage, def)
		})
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch o.keys {
	case "file", "pkcs11", "tpm":
	case "":
		fs.Usage()
		return o, errors.New("--keys is required")
	default:
		return o, fmt.Errorf("--keys %q: want file, pkcs11 or tpm", o.keys)
	}
	return o, nil
}

func run(ctx context.Context, args []string, out io.Writer) error {
	o, err := parseFlags(args, out)
	if err != nil {
		return err
	}
	start := time.Now()
	dir := o.dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "d2c-hardware-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	n := narrate.New(out)
	k, err := openKeys(o, dir)
	if err != nil {
		return fmt.Errorf("open the %s keystore: %w", o.keys, err)
	}
	defer k.close()
	name := map[string]string{"file": "a file", "pkcs11": "the PKCS#11 token", "tpm": "the TPM"}[k.Kind]
	gen := map[string]string{"file": "in software and saved it to a file", "pkcs11": "inside the PKCS#11 token", "tpm": "inside the TPM"}[k.Kind]
	if k.Kind == "file" {
		fmt.Fprintln(out, "d2c hardware keys, for comparison with a software key: the device key is a file.")
	} else {
		fmt.Fprintf(out, "d2c hardware keys: the device key is generated in %s, used there, and never leaves it.\n", name)
	}
	n.Step("Device: keystore open")
	n.Say("keys live in %s", k.Where)

	f, err := startFleet(ctx, dir)
	if err != nil {
		return fmt.Errorf("cloud: %w", err)
	}
	defer f.close()
	n.Step("Cloud: fleet CA, EST registrar on %s, MQTT v5 broker on %s (TLS 1.3, client certificates required), verifier connected", f.est.URL, f.broker.Addr())

	// Enrollment: the key is generated in the keystore, and the CSR
	// signed there.
	var ks identity.Keystore // nil (file keys) unless hardware
	if k.Keys != nil {
		ks = k.Keys
	}
	store, err := identity.OpenStore(filepath.Join(dir, "device"), identity.StoreConfig{Keys: ks, KeyLabelPrefix: "d2c-device"}) // a fixed prefix: this store has the token to itself
	if err != nil {
		return err
	}
	token, err := f.issuer.Issue(deviceID)
	if err != nil {
		return err
	}
	id, err := store.Enroll(ctx, f.est, identity.EnrollRequest{DeviceID: deviceID, Auth: identity.EnrollAuth{Token: token}})
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	f.registry.set(id.Chain)
	n.Step("Device: generated its key %s and enrolled over EST (RFC 7030)", gen)
	if err := k.narrateKey(n, store, id.Generation); err != nil {
		return err
	}
	n.Say("certificate: CN=%s, serial %x, valid until %s", id.Certificate().Subject.CommonName, id.Certificate().SerialNumber, id.Certificate().NotAfter.UTC().Format(time.DateOnly))

	// Mutual TLS and telemetry with the first key.
	if err := k.session(ctx, n, f, store, id, 1); err != nil {
		return err
	}

	// Renewal: a new key in the keystore, the old one destroyed.
	oldLabel, oldFile := k.keyRef(store, id.Generation)
	renewed, err := store.Renew(ctx, f.est, identity.RenewOptions{})
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	f.registry.set(renewed.Chain) // the cloud now accepts the new certificate only
	n.Step("Device: renewed: generated a new key %s, got a new certificate (serial %x)", gen, renewed.Certificate().SerialNumber)
	if err := k.narrateKey(n, store, renewed.Generation); err != nil {
		return err
	}
	if k.check != nil {
		err := k.check(oldLabel)
		if err == nil {
			return fmt.Errorf("the old key %q still exists after renewal", oldLabel)
		}
		n.Say("old key %q destroyed in %s: opening it fails (%v)", oldLabel, name, err)
	} else {
		if _, err := os.Stat(oldFile); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("the old key file %s still exists after renewal: %v", oldFile, err)
		}
		n.Say("old key file %s removed", filepath.Base(oldFile))
	}

	// Reconnect with the new key, and publish again.
	if err := k.session(ctx, n, f, store, renewed, 2); err != nil {
		return err
	}

	n.Step("Summary")
	if k.Kind == "file" {
		_, file := k.keyRef(store, renewed.Generation)
		n.Say("the device key is %s: software. Whoever reads that file (a backup, a stolen SD card, a bug) holds the device's identity.", file)
		n.Say("run with --keys pkcs11 or --keys tpm to keep it in hardware.")
	} else {
		label, _ := k.keyRef(store, renewed.Generation)
		if err := k.check(label); err != nil {
			return fmt.Errorf("the current key %q: %w", label, err)
		}
		n.Say("%d signatures made inside %s (CSRs, TLS handshakes, envelopes); the private keys never left it", k.Keys.signatures.Load(), name)
		switch k.Kind {
		case "pkcs11":
			n.Say("opened again, the token reports key %q always sensitive and never extractable", label)
		case "tpm":
			n.Say("opened again, key %q is fixedTPM and fixedParent: the TPM refuses to duplicate it", label)
		}
		if err := noPrivateKeys(store.Dir()); err != nil {
			return err
		}
		n.Say("no private key anywhere in the device's store directory")
	}
	fmt.Fprintf(out, "\nDone in %s.\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// session connects the device with identity id (mutual TLS, the
// handshake signed by its key), publishes readings one by one and waits
// for the cloud to verify each, then disconnects.
func (k *keys) session(ctx context.Context, n *narrate.Narrator, f *fleet, store *identity.Store, id *identity.Identity, round int) error {
	dev, err := transport.Dial(ctx, transport.ClientConfig{Broker: f.broker.Addr(), Store: store, RetryMin: 200 * time.Millisecond})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer dev.Close(context.Background())
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := dev.AwaitConnection(wctx); err != nil {
		return fmt.Errorf("connect: %w (last attempt: %v)", err, dev.LastConnectError())
	}
	in := map[string]string{"file": "with the key file", "pkcs11": "inside the token", "tpm": "inside the TPM"}[k.Kind]
	if round == 1 {
		n.Step("Device: connected to the broker with mutual TLS 1.3; its CertificateVerify was signed %s", in)
	} else {
		n.Step("Device: reconnected with the new certificate; the handshake was signed by the new key, %s", in)
	}
	temps := [][]string{{"21.5", "21.7", "22.0"}, {"22.4", "22.6", "22.5"}}[round-1]
	for i, temp := range temps {
		if round == 1 && i == 1 && testHookBetweenReadings != nil {
			testHookBetweenReadings()
		}
		body := fmt.Sprintf(`{"celsius":%s}`, temp)
		if err := dev.Publish(ctx, "temperature", transport.Reading{Time: time.Now(), Body: []byte(body)}); err != nil {
			return fmt.Errorf("publish reading %d: %w", i+1, err)
		}
		r, err := f.receive(ctx)
		if err != nil {
			return fmt.Errorf("reading %d: %w", i+1, err)
		}
		if i == 0 {
			n.Say("published readings, each signed (JWS ES256) %s, stored on disk, sent at QoS 1", in)
			if round == 1 {
				n.Say("cloud verified each against the device's registered certificate:")
			} else {
				n.Say("cloud verified each against the renewed certificate only (serial %x):", id.Certificate().SerialNumber)
			}
		}
		n.Say("  %s/%s boot %d seq %d: %s", r.Device, r.Stream, r.Boot, r.Seq, r.Readings[0].Body)
	}
	return nil
}

// keyRef returns the label of generation g's key in the keystore (read
// from the store's reference file), or the path of its key file.
func (k *keys) keyRef(store *identity.Store, g int) (label, file string) {
	if k.Keys == nil {
		return "", filepath.Join(store.Dir(), fmt.Sprintf("key-%08d.pem", g))
	}
	b, _ := os.ReadFile(filepath.Join(store.Dir(), fmt.Sprintf("key-%08d.ref", g)))
	return strings.TrimSpace(string(b)), ""
}

// narrateKey says where generation g's key is and what the store holds.
func (k *keys) narrateKey(n *narrate.Narrator, store *identity.Store, g int) error {
	label, file := k.keyRef(store, g)
	files, err := listDir(store.Dir())
	if err != nil {
		return err
	}
	switch k.Kind {
	case "file":
		n.Say("private key: %s (PKCS#8, mode 0600), generated in this process's memory", filepath.Base(file))
	case "pkcs11":
		n.Say("private key: token object %q, generated by the token (C_GenerateKeyPair), sensitive, not extractable", label)
	case "tpm":
		n.Say("private key: %q, generated by the TPM (TPM2_Create under the storage root key), fixedTPM", label)
		if blobs, err := listDir(filepath.Join(filepath.Dir(store.Dir()), "tpm-keys")); err == nil {
			n.Say("TPM key blobs (useless off this TPM): %s", strings.Join(blobs, " "))
		}
	}
	n.Say("device store: %s", strings.Join(files, " "))
	return nil
}

// noPrivateKeys checks that no file under dir holds a private key in the
// clear (no software key ever appeared as a fallback).
func noPrivateKeys(dir string) error {
	return filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasSuffix(path, ".pem") && strings.HasPrefix(d.Name(), "key-") {
			return fmt.Errorf("a software key file appeared: %s", path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.Contains(string(b), "PRIVATE KEY-----") {
			return fmt.Errorf("a private key appeared in %s", path)
		}
		return nil
	})
}
