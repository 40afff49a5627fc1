// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

func deviceEnrollCommand() *command {
	return &command{
		path:    "device enroll",
		summary: "enroll a device with a token",
		usage: "--store DIR --url URL --device ID (--token TOKEN | --token-file FILE) " +
			"(--fingerprint HEX | --roots FILE) [--key-type p256|ed25519] [--cert-out FILE]",
		details: `
Enrolls the device over EST: fetches the fleet CA certificates from the
registrar, trusting them only if they contain the root whose SHA-256 is
--fingerprint (printed by "d2c ca init", also in CA_DIR/root.sha256) or chain
to the certificates in --roots; generates a key on the device; and sends a
certificate request authenticated by the one-time token. The key (mode 0600),
the certificate and the trust anchors are stored in DIR (mode 0700).

--token-file is safer than --token: other users can read command lines.`,
		example: `d2c device enroll --store /var/lib/d2c --url https://est.example.com:8443 \
    --device sensor-0042 --token-file sensor-0042.token \
    --fingerprint "$(cat root.sha256)" --cert-out sensor-0042.pem`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("store", "", "device store directory (required)")
			url := fl.String("url", "", "registrar URL, https://host[:port] (required)")
			device := fl.String("device", "", "device ID to enroll, the one the token was issued for (required)")
			token := fl.String("token", "", "enrollment token (visible to other users; prefer --token-file)")
			tokenFile := fl.String("token-file", "", "file holding the enrollment token")
			fp := fl.String("fingerprint", "", "SHA-256 of the fleet root certificate, hex (colons allowed)")
			anchors := fl.String("roots", "", "PEM file of fleet CA certificates to trust, instead of --fingerprint")
			keyType := fl.String("key-type", "p256", "device key algorithm: p256 or ed25519")
			certOut := fl.String("cert-out", "", "also write the issued certificate chain to this file, PEM")
			return func(ctx context.Context, s streams) error {
				if *dir == "" || *url == "" || *device == "" {
					return usageErrorf("--store, --url and --device are required")
				}
				if (*token == "") == (*tokenFile == "") {
					return usageErrorf("give exactly one of --token and --token-file")
				}
				if (*fp == "") == (*anchors == "") {
					return usageErrorf("give exactly one of --fingerprint and --roots: the device must know whom to trust")
				}
				kt, err := identity.ParseKeyType(*keyType)
				if err != nil {
					return usageErrorf("--key-type: %v", err)
				}
				client := identity.ESTClient{URL: *url}
				if *fp != "" {
					if client.BootstrapFingerprint, err = parseFingerprint(*fp); err != nil {
						return err
					}
				}
				if err := identity.ValidateDeviceID(*device); err != nil {
					return err
				}
				if *anchors != "" {
					b, err := atomicfile.ReadFile(*anchors, limits.PEMFile)
					if err != nil {
						return err
					}
					if client.Anchors, err = identity.ParseCertificatesPEM(b); err != nil {
						return fmt.Errorf("%s: %w", *anchors, err)
					}
				}
				tok := *token
				if *tokenFile != "" {
					if tok, err = readToken(*tokenFile); err != nil {
						return err
					}
				}
				store, err := identity.OpenStore(*dir, identity.StoreConfig{})
				if err != nil {
					return err
				}
				id, err := store.Enroll(ctx, client, identity.EnrollRequest{
					DeviceID: *device,
					Auth:     identity.EnrollAuth{Token: tok},
					KeyType:  kt,
				})
				if err != nil {
					return err
				}
				if err := writeChain(*certOut, id.Chain); err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "enrolled %s\n", id.DeviceID)
				printIdentitySummary(s.stdout, id)
				return nil
			}
		},
	}
}

func deviceRenewCommand() *command {
	return &command{
		path:    "device renew",
		summary: "renew a device certificate",
		usage:   "--store DIR --url URL [--allow-expired] [--key-type p256|ed25519] [--cert-out FILE]",
		details: `
Obtains a new key and certificate from the registrar (EST simplereenroll),
authenticated by the current certificate, and keeps the current identity if
anything fails. The registrar is trusted through the anchors saved at
enrollment.`,
		example: `d2c device renew --store /var/lib/d2c --url https://est.example.com:8443`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("store", "", "device store directory (required)")
			url := fl.String("url", "", "registrar URL, https://host[:port] (required)")
			allowExpired := fl.Bool("allow-expired", false, "try to renew an expired certificate (the registrar must allow it)")
			keyType := fl.String("key-type", "p256", "new key algorithm: p256 or ed25519")
			certOut := fl.String("cert-out", "", "also write the new certificate chain to this file, PEM")
			return func(ctx context.Context, s streams) error {
				if *dir == "" || *url == "" {
					return usageErrorf("--store and --url are required")
				}
				kt, err := identity.ParseKeyType(*keyType)
				if err != nil {
					return usageErrorf("--key-type: %v", err)
				}
				store, err := openExistingStore(*dir)
				if err != nil {
					return err
				}
				id, err := store.Renew(ctx, identity.ESTClient{URL: *url},
					identity.RenewOptions{KeyType: kt, AllowExpired: *allowExpired})
				if err != nil {
					return err
				}
				if err := writeChain(*certOut, id.Chain); err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "renewed %s\n", id.DeviceID)
				printIdentitySummary(s.stdout, id)
				return nil
			}
		},
	}
}

func deviceShowCommand() *command {
	return &command{
		path:    "device show",
		summary: "show a device's current identity",
		usage:   "--store DIR [--cert-out FILE] [--json]",
		details: `
Prints the device ID, the generation (how many times the key was renewed),
the certificate's serial number, issuer and validity, and the trusted-time
floor: the latest time the device has proven, below which its clock is never
believed. --cert-out writes the current certificate chain to a file, for
example to revoke it with "d2c ca revoke".

With --json, one object with these fields: "device", "generation", "serial"
(hex), "key_type", "issuer", "not_before", "not_after" (RFC 3339, UTC),
"status" ("valid", "not yet valid" or "expired") and "time_floor" (RFC 3339,
or null when the device has proven no time yet).`,
		example: `d2c device show --store /var/lib/d2c --cert-out current.pem
d2c device show --store /var/lib/d2c --json`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("store", "", "device store directory (required)")
			certOut := fl.String("cert-out", "", "write the current certificate chain to this file, PEM")
			asJSON := fl.Bool("json", false, "print one JSON object (fields in the details below)")
			return func(ctx context.Context, s streams) error {
				if *dir == "" {
					return usageErrorf("--store is required")
				}
				store, err := openExistingStore(*dir)
				if err != nil {
					return err
				}
				id, err := store.Current()
				if err != nil {
					return err
				}
				if err := writeChain(*certOut, id.Chain); err != nil {
					return err
				}
				leaf := id.Certificate()
				now := store.Clock().Now()
				status := "valid"
				switch {
				case now.Before(leaf.NotBefore):
					status = "not yet valid"
				case now.After(leaf.NotAfter):
					status = "expired"
				}
				floor := "none"
				var floorJSON *string
				if f := store.Clock().Floor(); !f.IsZero() {
					floor = f.UTC().Format(time.RFC3339)
					floorJSON = &floor
				}
				if *asJSON {
					return writeJSON(s.stdout, struct {
						Device     string  `json:"device"`
						Generation uint64  `json:"generation"`
						Serial     string  `json:"serial"`
						KeyType    string  `json:"key_type"`
						Issuer     string  `json:"issuer"`
						NotBefore  string  `json:"not_before"`
						NotAfter   string  `json:"not_after"`
						Status     string  `json:"status"`
						TimeFloor  *string `json:"time_floor"`
					}{id.DeviceID, uint64(id.Generation), fmt.Sprintf("%x", leaf.SerialNumber), keyTypeName(id), leaf.Issuer.CommonName,
						leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), status, floorJSON})
				}
				fmt.Fprintf(s.stdout, "device:      %s\n", id.DeviceID)
				fmt.Fprintf(s.stdout, "generation:  %d\n", id.Generation)
				fmt.Fprintf(s.stdout, "serial:      %x\n", leaf.SerialNumber)
				fmt.Fprintf(s.stdout, "key type:    %s\n", keyTypeName(id))
				fmt.Fprintf(s.stdout, "issuer:      %s\n", leaf.Issuer.CommonName)
				fmt.Fprintf(s.stdout, "not before:  %s\n", leaf.NotBefore.UTC().Format(time.RFC3339))
				fmt.Fprintf(s.stdout, "not after:   %s\n", leaf.NotAfter.UTC().Format(time.RFC3339))
				fmt.Fprintf(s.stdout, "status:      %s\n", status)
				fmt.Fprintf(s.stdout, "time floor:  %s\n", floor)
				return nil
			}
		},
	}
}

// openExistingStore opens the device store in dir without creating it, so
// that a mistyped --store is reported instead of becoming an empty store.
func openExistingStore(dir string) (*identity.Store, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no device store at %s", identity.ErrNoIdentity, dir)
	}
	return identity.OpenStore(dir, identity.StoreConfig{})
}

// parseFingerprint decodes a SHA-256 fingerprint in hex, with optional
// colons or spaces between bytes, as a usage error if malformed.
func parseFingerprint(s string) ([]byte, error) {
	clean := strings.NewReplacer(":", "", " ", "").Replace(strings.TrimSpace(s))
	b, err := hex.DecodeString(clean)
	if err != nil || len(b) != sha256.Size {
		return nil, usageErrorf("--fingerprint must be a SHA-256 in hex (%d hex digits, colons allowed)", 2*sha256.Size)
	}
	return b, nil
}

// readToken reads an enrollment token from a file, bounded by the token
// size limit, without ever echoing it.
func readToken(path string) (string, error) {
	b, err := atomicfile.ReadFile(path, limits.Token+2) // a trailing newline or CRLF
	if errors.Is(err, atomicfile.ErrTooLarge) {
		return "", fmt.Errorf("%w: token file %s over %d bytes", identity.ErrTooLarge, path, limits.Token)
	}
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%w: token file %s is empty", identity.ErrMalformed, path)
	}
	return tok, nil
}

// writeChain writes a certificate chain as PEM to path, atomically; an
// empty path writes nothing.
func writeChain(path string, chain []*x509.Certificate) error {
	if path == "" {
		return nil
	}
	return atomicfile.WriteFile(nil, path, identity.EncodeCertificatesPEM(chain...))
}

// printIdentitySummary prints what enroll and renew obtained.
func printIdentitySummary(w io.Writer, id *identity.Identity) {
	leaf := id.Certificate()
	fmt.Fprintf(w, "generation: %d\n", id.Generation)
	fmt.Fprintf(w, "serial:     %x\n", leaf.SerialNumber)
	fmt.Fprintf(w, "expires:    %s\n", leaf.NotAfter.UTC().Format(time.RFC3339))
}

// keyTypeName names the algorithm of an identity's key as the CLI flags do.
func keyTypeName(id *identity.Identity) string {
	switch id.Key.Public().(type) {
	case *ecdsa.PublicKey:
		return identity.ECDSAP256.String()
	case ed25519.PublicKey:
		return identity.Ed25519.String()
	}
	return fmt.Sprintf("%T", id.Key.Public())
}
