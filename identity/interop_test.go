// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

// Interop tests against real peers: openssl and curl as a generic EST client
// and PKI toolkit, mosquitto as the broker that enforces the fleet's CRL.
// The peers are located with testpeer.Require, which fails (never skips)
// when one is missing.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/testpeer"
)

// peerTimeout bounds every run of an external tool and every connection.
const peerTimeout = 30 * time.Second

// newInteropFleet returns a test fleet whose fake clock is moved to the wall
// clock's present: the external peers check validity periods (certificates,
// CRL thisUpdate/nextUpdate) against the real time, not the fixture's.
func newInteropFleet(t *testing.T) *fleet {
	t.Helper()
	f := newFleet(t, nil)
	now := time.Now()
	if now.Before(f.ca.Root().NotBefore) {
		t.Fatalf("wall clock %v is before the fixture's fleet root starts (%v): external peers would refuse it as not yet valid; check the system clock",
			now.UTC(), f.ca.Root().NotBefore.UTC())
	}
	srv, err := x509.ParseCertificate(f.serverCert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if !now.Before(srv.NotAfter) {
		t.Fatalf("the fixture's registrar certificate, issued at the fixed fake time, expired at %v for peers on the wall clock: newFleet must start its clock nearer the present",
			srv.NotAfter.UTC())
	}
	f.clock.Advance(now.Sub(f.clock.Now()))
	return f
}

// runTool runs bin with args in dir, bounded by peerTimeout, and returns its
// combined output.
func runTool(t *testing.T, dir, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), peerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustRunTool is runTool that fails the test on a non-zero exit.
func mustRunTool(t *testing.T, dir, bin string, args ...string) string {
	t.Helper()
	out, err := runTool(t, dir, bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return out
}

func writeTestFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func crlPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// toolEnrollment is the outcome of enrolling with openssl and curl only.
type toolEnrollment struct {
	dir      string // working directory; the file names below are in it
	id       string
	token    string // consumed by the enrollment
	cert     *x509.Certificate
	root     string // root.pem: the fleet root, provisioned out of band
	issuing  string // issuing.pem: taken from the cacerts response
	device   string // device.pem: the issued certificate
	csrB64   string // csr.b64: the base64 PKCS#10 request
	estURL   string
	openssl  string
	curlPath string
}

// curlArgs are the options every curl call uses: verify the registrar
// against the fleet root (never -k), bounded in time, errors shown.
func curlArgs(rootPEM string, extra ...string) []string {
	return append([]string{"--silent", "--show-error", "--max-time", "20", "--proto", "=https", "--cacert", rootPEM}, extra...)
}

// decodeCertsOnlyWithOpenSSL turns a base64 certs-only body saved by curl into a PEM
// file with openssl, and parses it.
func decodeCertsOnlyWithOpenSSL(t *testing.T, dir, openssl, b64, pemOut string) []*x509.Certificate {
	t.Helper()
	body, err := os.ReadFile(filepath.Join(dir, b64))
	if err != nil {
		t.Fatal(err)
	}
	// The registrar folds base64 into 64-column CRLF lines, so openssl
	// decodes the body exactly as curl saved it.
	der := b64 + ".der"
	mustRunTool(t, dir, openssl, "base64", "-d", "-in", b64, "-out", der)
	if fi, err := os.Stat(filepath.Join(dir, der)); err != nil || fi.Size() == 0 {
		t.Fatalf("openssl base64 -d decoded nothing from %s (%d bytes): %v", b64, len(body), err)
	}
	mustRunTool(t, dir, openssl, "pkcs7", "-inform", "DER", "-in", der, "-print_certs", "-out", pemOut)
	b, err := os.ReadFile(filepath.Join(dir, pemOut))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ParseCertificatesPEM(b)
	if err != nil {
		t.Fatalf("openssl pkcs7 -print_certs output: %v\n%s", err, b)
	}
	return certs
}

// enrollWithOpenSSLCurl enrolls device id with stock tools only: openssl
// makes the key and CSR, curl talks EST (HTTP Basic with the token), openssl
// decodes the PKCS#7 answers and verifies the chain. It checks every step.
func enrollWithOpenSSLCurl(t *testing.T, f *fleet, id string) *toolEnrollment {
	t.Helper()
	e := &toolEnrollment{dir: t.TempDir(), id: id, token: f.token(id), estURL: f.server.URL,
		openssl: testpeer.Require(t, "openssl"), curlPath: testpeer.Require(t, "curl"),
		root: "root.pem", issuing: "issuing.pem", device: "device.pem", csrB64: "csr.b64"}
	dir, openssl, curl := e.dir, e.openssl, e.curlPath
	writeTestFile(t, dir, e.root, EncodeCertificatesPEM(f.ca.Root()))

	mustRunTool(t, dir, openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", "key.pem", "-subj", "/CN="+id, "-addext", "subjectAltName=URI:"+DeviceURI(id),
		"-outform", "DER", "-out", "csr.der")
	mustRunTool(t, dir, openssl, "base64", "-in", "csr.der", "-out", e.csrB64)

	// simpleenroll: HTTP 200 with a certs-only PKCS#7 holding the certificate.
	code := mustRunTool(t, dir, curl, curlArgs(e.root, "--user", id+":"+e.token,
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+e.csrB64,
		"-D", "enroll.hdr", "-o", "enroll.b64", "-w", "%{http_code}", e.estURL+ESTSimpleEnroll)...)
	if code != "200" {
		b, _ := os.ReadFile(filepath.Join(dir, "enroll.b64"))
		t.Fatalf("simpleenroll with curl: HTTP %q: %s", code, b)
	}
	issued := decodeCertsOnlyWithOpenSSL(t, dir, openssl, "enroll.b64", e.device)
	if len(issued) != 1 {
		t.Fatalf("simpleenroll returned %d certificates, want 1", len(issued))
	}
	e.cert = issued[0]

	// cacerts: the issuing intermediate and the root, as the fleet has them.
	code = mustRunTool(t, dir, curl, curlArgs(e.root, "-o", "cacerts.b64", "-w", "%{http_code}", e.estURL+ESTCACerts)...)
	if code != "200" {
		t.Fatalf("cacerts with curl: HTTP %q", code)
	}
	cas := decodeCertsOnlyWithOpenSSL(t, dir, openssl, "cacerts.b64", "cacerts.pem")
	if len(cas) != 2 || !cas[0].Equal(f.ca.Issuing()) || !cas[1].Equal(f.ca.Root()) {
		t.Fatalf("cacerts holds %d certificates, want the fleet's issuing and root", len(cas))
	}
	writeTestFile(t, dir, e.issuing, EncodeCertificatesPEM(cas[0]))

	// openssl verifies the chain, also for TLS client use.
	for _, extra := range [][]string{nil, {"-purpose", "sslclient"}} {
		args := append([]string{"verify"}, extra...)
		args = append(args, "-CAfile", e.root, "-untrusted", e.issuing, e.device)
		if out := mustRunTool(t, dir, openssl, args...); strings.TrimSpace(out) != e.device+": OK" {
			t.Fatalf("openssl %s: %q, want OK", strings.Join(args, " "), out)
		}
	}

	// The names come from the authenticated ID; the key is the one openssl
	// generated.
	if e.cert.Subject.CommonName != id || len(e.cert.URIs) != 1 || e.cert.URIs[0].String() != DeviceURI(id) {
		t.Fatalf("issued certificate names CN %q, URIs %v; want %q and %s", e.cert.Subject.CommonName, e.cert.URIs, id, DeviceURI(id))
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatalf("openssl's key: %v", err)
	}
	if !publicKeysEqual(key.Public(), e.cert.PublicKey) {
		t.Fatal("issued certificate is not for the key openssl generated")
	}
	return e
}

// TestInteropOpenSSLCurlEnroll enrolls with openssl and curl as the only
// client (RFC 7030 over HTTPS with HTTP Basic token authentication), checks
// the issued certificate with openssl verify and Go, then checks that the
// token cannot be used twice.
func TestInteropOpenSSLCurlEnroll(t *testing.T) {
	f := newInteropFleet(t)
	e := enrollWithOpenSSLCurl(t, f, "curl-dev-1")
	t.Logf("curl enrolled %s: serial %x, valid %v to %v", e.id, e.cert.SerialNumber, e.cert.NotBefore.UTC(), e.cert.NotAfter.UTC())

	// The same token again: 401 with the machine-readable reason.
	code := mustRunTool(t, e.dir, e.curlPath, curlArgs(e.root, "--user", e.id+":"+e.token,
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+e.csrB64,
		"-D", "reuse.hdr", "-o", "reuse.body", "-w", "%{http_code}", e.estURL+ESTSimpleEnroll)...)
	if code != "401" {
		t.Fatalf("second enrollment with the same token: HTTP %q, want 401", code)
	}
	hdr := readCurlHeaders(t, filepath.Join(e.dir, "reuse.hdr"))
	if got := hdr.Get(errorCodeHeader); got != "token-reused" {
		t.Fatalf("%s header %q, want token-reused; headers %v", errorCodeHeader, got, hdr)
	}
	if got := hdr.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Basic ") {
		t.Errorf("WWW-Authenticate %q, want a Basic challenge", got)
	}
}

// readCurlHeaders parses the response header block curl -D wrote (the last
// one, should there be several).
func readCurlHeaders(t *testing.T, path string) http.Header {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(strings.TrimSpace(strings.ReplaceAll(string(b), "\r\n", "\n")), "\n\n")
	last := blocks[len(blocks)-1]
	_, rest, _ := strings.Cut(last, "\n") // the status line
	h, err := textproto.NewReader(bufio.NewReader(strings.NewReader(rest + "\n\n"))).ReadMIMEHeader()
	if err != nil {
		t.Fatalf("curl headers %q: %v", b, err)
	}
	return http.Header(h)
}

// TestInteropOpenSSLVerifyCRL checks the fleet CRL with openssl: before
// revocation it is accepted and the certificate passes; after, the revoked
// certificate fails "certificate revoked" while another device passes with
// the same CRL.
func TestInteropOpenSSLVerifyCRL(t *testing.T) {
	f := newInteropFleet(t)
	e := enrollWithOpenSSLCurl(t, f, "crl-revoked")
	dir, openssl := e.dir, e.openssl
	_, good := f.enroll("crl-good")
	writeTestFile(t, dir, "good.pem", EncodeCertificatesPEM(good.Certificate()))

	verify := func(crl, cert string) (string, error) {
		return runTool(t, dir, openssl, "verify", "-crl_check", "-CRLfile", crl, "-CAfile", e.root, "-untrusted", e.issuing, cert)
	}

	// An empty CRL: openssl accepts its signature and times.
	der, err := f.ca.CRL()
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, dir, "crl0.pem", crlPEM(der))
	if out, err := verify("crl0.pem", e.device); err != nil || strings.TrimSpace(out) != e.device+": OK" {
		t.Fatalf("before revocation: %v\n%s", err, out)
	}

	if err := f.ca.Revoke(e.cert, 1); err != nil {
		t.Fatal(err)
	}
	der, err = f.ca.CRL()
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, dir, "crl.pem", crlPEM(der))

	// openssl checks the CRL's signature against the issuing CA and lists
	// the serial with its reason.
	out := mustRunTool(t, dir, openssl, "crl", "-in", "crl.pem", "-CAfile", e.issuing, "-noout", "-text")
	serial := strings.ToUpper(hex.EncodeToString(e.cert.SerialNumber.Bytes()))
	for _, want := range []string{"verify OK", "Serial Number: " + serial, "Key Compromise", "X509v3 CRL Number"} {
		if !strings.Contains(out, want) {
			t.Errorf("openssl crl output lacks %q:\n%s", want, out)
		}
	}

	out, err = verify("crl.pem", e.device)
	if err == nil || !strings.Contains(out, "certificate revoked") {
		t.Fatalf("revoked certificate: err %v, output %q; want failure with \"certificate revoked\"", err, out)
	}
	t.Logf("openssl verify of the revoked certificate: %s", strings.Join(strings.Fields(out), " "))
	if out, err := verify("crl.pem", "good.pem"); err != nil || strings.TrimSpace(out) != "good.pem: OK" {
		t.Fatalf("non-revoked device with the same CRL: %v\n%s", err, out)
	}
}

// TestInteropMosquittoCRL runs mosquitto with the fleet's PKI (TLS 1.3,
// required client certificates, identity as username, the fleet CRL) and
// connects as devices with Go's crypto/tls and their enrolled identities:
// the valid device gets a successful MQTT v5 CONNACK, the revoked one is
// refused.
func TestInteropMosquittoCRL(t *testing.T) {
	f := newInteropFleet(t)
	_, good := f.enroll("mq-good")
	_, bad := f.enroll("mq-revoked")
	if err := f.ca.Revoke(bad.Certificate(), 1); err != nil {
		t.Fatal(err)
	}
	der, err := f.ca.CRL()
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	srvKey, err := GenerateKey(ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := f.ca.IssueServer(srvKey.Public(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := MarshalPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`listener {{port}} 127.0.0.1
cafile %s
certfile %s
keyfile %s
crlfile %s
require_certificate true
use_identity_as_username true
tls_version tlsv1.3
allow_anonymous false
set_tcp_nodelay true
`,
		writeTestFile(t, dir, "ca.pem", EncodeCertificatesPEM(f.ca.Root(), f.ca.Issuing())),
		writeTestFile(t, dir, "server.pem", EncodeCertificatesPEM(srvCert, f.ca.Issuing())),
		writeTestFile(t, dir, "server.key", keyPEM),
		writeTestFile(t, dir, "crl.pem", crlPEM(der)))
	broker := testpeer.Mosquitto(t, conf)

	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Root())
	dial := func(id *Identity) (*tls.Conn, error) {
		ctx, cancel := context.WithTimeout(t.Context(), peerTimeout)
		defer cancel()
		d := tls.Dialer{Config: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots,
			Certificates: []tls.Certificate{id.TLSCertificate()}}}
		c, err := d.DialContext(ctx, "tcp", broker.Addr)
		if err != nil {
			return nil, err
		}
		tc := c.(*tls.Conn)
		t.Cleanup(func() { tc.Close() })
		_ = tc.SetDeadline(time.Now().Add(peerTimeout))
		return tc, nil
	}

	// The valid device: mutual TLS 1.3, then MQTT v5 CONNECT -> CONNACK 0.
	c, err := dial(good)
	if err != nil {
		t.Fatalf("valid device: handshake: %v", err)
	}
	state := c.ConnectionState()
	if state.Version != tls.VersionTLS13 || len(state.VerifiedChains) == 0 || !state.PeerCertificates[0].Equal(srvCert) {
		t.Errorf("TLS version %x, %d verified chains: not the broker's TLS 1.3 certificate", state.Version, len(state.VerifiedChains))
	}
	if reason, err := testpeer.MQTTConnect(c, good.DeviceID); err != nil || reason != 0 {
		t.Fatalf("valid device: CONNACK reason %d, %v", reason, err)
	}
	// use_identity_as_username: mosquitto took the certificate's CN.
	waitForOutput(t, broker, "as mq-good (p5, c1, k60, u'mq-good')")

	// The revoked device. With TLS 1.3 the client's handshake completes
	// before the server has checked the client certificate; the refusal
	// arrives as an alert on the first read. (Writing first, as an MQTT
	// client does, usually fails with "connection reset by peer" instead:
	// the broker has closed the socket and the alert is lost.)
	c, err = dial(bad)
	if err == nil {
		var reason byte
		_, err = c.Read(make([]byte, 1))
		if err == nil {
			reason, err = testpeer.MQTTConnect(c, bad.DeviceID)
			if err == nil {
				t.Fatalf("revoked device connected: CONNACK reason %d", reason)
			}
		}
	}
	t.Logf("revoked device refused: %v", err)
	if err == nil || !strings.Contains(err.Error(), "revoked certificate") {
		t.Errorf("revoked device: %v; want the TLS alert certificate_revoked", err)
	}
	waitForOutput(t, broker, "certificate verify failed")
	if strings.Contains(broker.Output(), "u'mq-revoked'") {
		t.Errorf("mosquitto logged a session for the revoked device")
	}
}

// waitForOutput waits until the broker's log contains want.
func waitForOutput(t *testing.T, b *testpeer.Broker, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(b.Output(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto log lacks %q:\n%s", want, b.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
