// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build cgo

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/pkcs11"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/testpeer"
	"github.com/d2c-iot/d2c/internal/testpki"
)

// The tests of keys in a PKCS#11 token run the CLI in process against
// softhsm2 (testpeer.SoftHSM): each makes its token before any keystore
// is open, and closes every keystore before it ends.

// softhsmURI returns the pkcs11: URI of the key label in tok, with the PIN
// in a file of mode 0600.
func softhsmURI(t *testing.T, tok testpeer.SoftHSMToken, label string) string {
	t.Helper()
	pinFile := filepath.Join(t.TempDir(), "token.pin")
	if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return "pkcs11:token=" + url.PathEscape(tok.Label) + ";object=" + url.PathEscape(label) +
		"?module-path=" + url.PathEscape(tok.Module) + "&pin-source=file:" + url.PathEscape(pinFile)
}

// d2cFail runs the CLI in process, fails the test unless it exits
// non-zero, and returns its stderr.
func d2cFail(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), args, &stdout, &stderr); code == exitOK {
		t.Fatalf("d2c %s: succeeded\n%s", strings.Join(args, " "), stdout.String())
	}
	return stderr.String()
}

// TestCAIssuingKeyInToken: "ca init --issuing-key pkcs11:..." makes the
// issuing key in the token and no key file but root.key and token.key; a
// device enrolls through a registrar signing with the token key (loaded
// as every signing command loads it), and "ca revoke" (without the
// token) and "ca crl --issuing-key" publish its revocation in a CRL that
// verifies. Without --issuing-key, or with another key, the signing
// commands refuse and say why.
func TestCAIssuingKeyInToken(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	uri := softhsmURI(t, tok, "issuing-1")
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")

	out := d2cRun(t, "ca", "init", "--ca", caDir, "--fleet", "token fleet", "--issuing-key", uri)
	if !strings.Contains(out, `generated in PKCS#11 token "`+tok.Label+`" as "issuing-1"`) {
		t.Errorf("ca init output:\n%s", out)
	}
	noIssuingKeyFile(t, caDir)

	// The label is taken now: a second CA never replaces the key.
	stderr := d2cFail(t, "ca", "init", "--ca", filepath.Join(dir, "ca2"), "--issuing-key", uri)
	if !strings.Contains(stderr, "objects already exist under this label") || !strings.Contains(stderr, "another object= label") {
		t.Errorf("second ca init on the same key:\n%s", stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "ca2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused ca init made its directory: %v", err)
	}

	// Signing commands need the key, and only that key.
	srvArgs := []string{"ca", "server-cert", "--ca", caDir, "--host", "broker.example",
		"--cert", filepath.Join(dir, "srv.crt"), "--key", filepath.Join(dir, "srv.key")}
	if stderr := d2cFail(t, srvArgs...); !strings.Contains(stderr, "--issuing-key") {
		t.Errorf("server-cert without --issuing-key:\n%s", stderr)
	}
	d2cRun(t, append(srvArgs, "--issuing-key", uri)...)
	other := softhsmURI(t, tok, "other")
	ks, err := pkcs11.Open(pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.CreateNew(t.Context(), "other", identity.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	if stderr := d2cFail(t, append(srvArgs, "--issuing-key", other)...); !strings.Contains(stderr, "is not the key") {
		t.Errorf("server-cert with another token key:\n%s", stderr)
	}
	if stderr := d2cFail(t, append(srvArgs, "--issuing-key", uri+"&pin-value=1234")...); !strings.Contains(stderr, "pin-value") || strings.Contains(stderr, "1234") {
		t.Errorf("server-cert with pin-value:\n%s", stderr)
	}

	// A registrar on the CA as "ca crl" and "ca server-cert" load it.
	ca, closeKey, err := openSigningCA(t.Context(), caDir, uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = closeKey() })
	tokenPub, err := identity.ReadPublicKeyFile(filepath.Join(caDir, identity.CATokenPublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	srv := testpki.Registrar(t, ca, tokenPub, filepath.Join(dir, "used.state"))

	certFile := filepath.Join(dir, "sensor-1.pem")
	enrollWithCLI(t, caDir, srv.URL, "sensor-1", filepath.Join(dir, "device"), "--cert-out", certFile)
	b, err := atomicfile.ReadFile(certFile, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := certs[0].CheckSignatureFrom(ca.Issuing()); err != nil {
		t.Fatalf("the device certificate is not signed by the token's issuing key: %v", err)
	}

	// Revoking signs nothing and needs no token; the CRL does.
	d2cRun(t, "ca", "revoke", "--ca", caDir, "--cert", certFile, "--reason", "keyCompromise")
	crlFile := filepath.Join(dir, "crl.pem")
	if stderr := d2cFail(t, "ca", "crl", "--ca", caDir, "--out", crlFile); !strings.Contains(stderr, "--issuing-key") {
		t.Errorf("ca crl without --issuing-key:\n%s", stderr)
	}
	d2cRun(t, "ca", "crl", "--ca", caDir, "--out", crlFile, "--issuing-key", uri)
	b, err = os.ReadFile(crlFile)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := identity.ParseCRL(b, ca.Issuing())
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckRevoked(certs[0]); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("the CRL does not list the revoked device: %v", err)
	}
	if err := closeKey(); err != nil {
		t.Fatal(err)
	}
}

// TestUpdateKeysInToken: the root and timestamp keys of an update
// repository live in a token; "update root init --root-key pkcs11:...",
// "update release sign --timestamp-key pkcs11:..." and "update timestamp
// --key pkcs11:..." sign with them, and "update verify" accepts the
// repository as a device does.
func TestUpdateKeysInToken(t *testing.T) {
	tok := testpeer.SoftHSM(t)
	dir := t.TempDir()
	keys, repo := filepath.Join(dir, "keys"), filepath.Join(dir, "repo")
	ks, err := pkcs11.Open(pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN})
	if err != nil {
		t.Fatal(err)
	}
	for _, label := range []string{"update-root", "update-timestamp"} {
		if _, err := ks.CreateNew(t.Context(), label, identity.ECDSAP256); err != nil {
			t.Fatal(err)
		}
	}
	tsKey, err := ks.Open(t.Context(), "update-timestamp")
	if err != nil {
		t.Fatal(err)
	}
	tsPub, err := identity.MarshalPublicKey(tsKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keys, "timestamp.pub"), tsPub, 0o644); err != nil {
		t.Fatal(err)
	}
	rootURI, tsURI := softhsmURI(t, tok, "update-root"), softhsmURI(t, tok, "update-timestamp")

	d2cRun(t, "update", "keys", "gen", "--role", "release", "--out", keys)
	d2cRun(t, "update", "root", "init", "--repo", repo, "--root-key", rootURI,
		"--release-pub", filepath.Join(keys, "release.pub"), "--timestamp-pub", filepath.Join(keys, "timestamp.pub"))
	img := filepath.Join(dir, "fw.bin")
	if err := os.WriteFile(img, []byte("firmware signed with keys in a token"), 0o644); err != nil {
		t.Fatal(err)
	}
	d2cRun(t, "update", "release", "sign", "--repo", repo, "--key", filepath.Join(keys, "release.key"),
		"--version", "1", "--security-counter", "1", "--hardware-class", "hw", "--image", img,
		"--timestamp-key", tsURI, "--progress=false")
	out := d2cRun(t, "update", "timestamp", "--repo", repo, "--key", tsURI)
	if !strings.Contains(out, "timestamp version 2") {
		t.Errorf("update timestamp:\n%s", out)
	}
	out = d2cRun(t, "update", "verify", "--repo", repo, "--root", filepath.Join(repo, "1.root.json"), "--hardware-class", "hw")
	for _, want := range []string{"timestamp:  version 2", "a device at version 0 installs release 1"} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("update verify lacks %q:\n%s", want, out)
		}
	}

	// A timestamp signed by another key in the token is refused by the
	// repository's root.
	stderr := d2cFail(t, "update", "timestamp", "--repo", repo, "--key", rootURI)
	if !strings.Contains(stderr, "key") {
		t.Errorf("update timestamp with the root key:\n%s", stderr)
	}
}

// noIssuingKeyFile fails the test unless the CA directory dir holds no
// issuing.key and no key file holding the key issuing.crt certifies, but
// holds root.key, which ca init leaves for the operator to move offline.
func noIssuingKeyFile(t *testing.T, dir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, identity.CAIssuingCertFile))
	if err != nil {
		t.Fatal(err)
	}
	issuing, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	testpki.NoIssuingKeyOnDisk(t, dir, issuing[0].PublicKey)
}

// TestCloudServeKeysInToken: "cloud serve" with the issuing CA key
// ("ca_key") and the command-signing key ("sign_key") in a PKCS#11
// token: a device enrolls through its registrar, its CRL is written and
// verifies, and a command signed in the token is sent; no key file holds
// either key.
func TestCloudServeKeysInToken(t *testing.T) {
	curl := testpeer.Require(t, "curl")
	tok := testpeer.SoftHSM(t)
	caURI, cmdURI := softhsmURI(t, tok, "issuing-1"), softhsmURI(t, tok, "command-1")
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	d2cRun(t, "ca", "init", "--ca", caDir, "--fleet", "token fleet", "--issuing-key", caURI)
	ks, err := pkcs11.Open(pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.CreateNew(t.Context(), "command-1", identity.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	brokerAddr := filepath.Join(dir, "broker.addr")
	runInBackground(t, "dev", "broker", "--ca", caDir, "--issuing-key", caURI, "--listen", "127.0.0.1:0", "--addr-file", brokerAddr,
		"--service", "cloud:read=d2c/v1/dev/+/up/#;write=d2c/v1/dev/+/down/cmd")
	addr := waitFile(t, brokerAddr)
	for _, name := range []string{"cloud", "app"} {
		d2cRun(t, "ca", "service-cert", "--ca", caDir, "--issuing-key", caURI, "--service", name,
			"--cert", filepath.Join(dir, name+".crt"), "--key", filepath.Join(dir, name+".key"))
	}
	config := filepath.Join(dir, "cloud.json")
	if err := os.WriteFile(config, fmt.Appendf(nil, `{
		"ca": "ca", "ca_key": %q,
		"registrar": {"listen": "127.0.0.1:0", "hosts": ["127.0.0.1"]},
		"verifier": {"broker": %q, "cert": "cloud.crt", "key": "cloud.key"},
		"commands": {"listen": "127.0.0.1:0", "hosts": ["127.0.0.1"], "clients": ["app"], "sign_key": %q},
		"crl": {"out": "crl.pem"}
	}`, caURI, addr, cmdURI), 0o600); err != nil {
		t.Fatal(err)
	}
	readyFile := filepath.Join(dir, "ready.json")
	runInBackground(t, "cloud", "serve", "--config", config, "--ready-file", readyFile)
	var addrs struct{ Registrar, Commands string }
	if err := json.Unmarshal([]byte(waitFile(t, readyFile)), &addrs); err != nil {
		t.Fatal(err)
	}
	enrollWithCLI(t, caDir, "https://"+addrs.Registrar, "pump-1", filepath.Join(dir, "pump-1"))
	b, err := os.ReadFile(filepath.Join(dir, "crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := openCANoSign(caDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.NewCRLCache(ca.Issuing(), nil).Update(b); err != nil {
		t.Fatalf("the CRL signed in the token: %v", err)
	}
	out, err := exec.CommandContext(t.Context(), curl, "-sS", "--fail-with-body", "--cacert", filepath.Join(caDir, "root.crt"),
		"--cert", filepath.Join(dir, "app.crt"), "--key", filepath.Join(dir, "app.key"),
		"-d", `{"name":"stop"}`, "https://"+addrs.Commands+"/v1/devices/pump-1/commands").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"state":"sent"`) {
		t.Fatalf("command signed in the token: %v\n%s", err, out)
	}
	noIssuingKeyFile(t, caDir)
}
