// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

// Renewal (EST simplereenroll) against an EST client other than d2c's.
//
// RFC 7030 section 4.2.2: "the Subject field and SubjectAltName extension
// MUST be identical to the corresponding fields in the certificate being
// renewed/rekeyed". The fleet CA issues O=<fleet>, CN=<id>, so a renewal
// request that asks for CN=<id> alone (what d2c's client sent before
// NewRenewalCSR) is refused by the registrar, as it is by other EST
// servers. Here a generic client made of openssl and curl enrolls, renews
// with a request built from its certificate (accepted), and renews with
// requests whose names differ (refused 403, no state changed).
//
// The other direction, d2c's client against another EST server, is not
// tested here: github.com/globalsign/est, whose server compares the names
// byte for byte as the registrar does, is not served by the Go module
// proxy, and Debian packages no EST server.

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// reenrollWithCurl posts the PEM PKCS#10 request in file csrPEM (in e.dir)
// to simplereenroll with curl, authenticated by the enrolled certificate
// and openssl's key as TLS client certificate. It returns the HTTP status
// and the registrar's D2C-Error code; the body is saved in out.
func (e *toolEnrollment) reenrollWithCurl(t *testing.T, csrPEM, out string) (status, code string) {
	t.Helper()
	// openssl x509 -x509toreq writes a text dump before the PEM block
	// (and before DER, with -outform DER): openssl req reads past it.
	der, b64 := csrPEM+".der", csrPEM+".b64"
	mustRunTool(t, e.dir, e.openssl, "req", "-in", csrPEM, "-outform", "DER", "-out", der)
	mustRunTool(t, e.dir, e.openssl, "base64", "-in", der, "-out", b64)
	status = mustRunTool(t, e.dir, e.curlPath, curlArgs(e.root, "--cert", e.device, "--key", "key.pem",
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+b64,
		"-D", out+".hdr", "-o", out, "-w", "%{http_code}", e.estURL+ESTSimpleReenroll)...)
	return status, readCurlHeaders(t, filepath.Join(e.dir, out+".hdr")).Get(errorCodeHeader)
}

// TestInteropOpenSSLCurlRenew renews a certificate with openssl and curl
// only: the registrar accepts a request whose subject and subjectAltName
// are the certificate's (openssl x509 -x509toreq -copy_extensions copyall)
// and refuses, with 403 and without any change of state, one that keeps
// the names but changes their encoding, drops the subjectAltName, or names
// another subject (RFC 7030 4.2.2).
func TestInteropOpenSSLCurlRenew(t *testing.T) {
	f := newInteropFleet(t)
	e := enrollWithOpenSSLCurl(t, f, "curl-renew")
	dir, openssl := e.dir, e.openssl
	// openssl asked for CN=curl-renew; the fleet CA issued its own names.
	if got, want := e.cert.Subject.String(), "CN=curl-renew,O=test fleet"; got != want {
		t.Fatalf("enrolled certificate's subject %q, want %q", got, want)
	}
	mustRunTool(t, dir, openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "key2.pem")

	san := "subjectAltName=URI:" + DeviceURI(e.id)
	for _, tc := range []struct {
		name string
		args []string
		// differs names the field the refusal must name.
		differs string
		// sameText: the request's subject reads as the certificate's.
		sameText bool
	}{
		{name: "subject CN only, as d2c's client sent before", args: []string{"req", "-new", "-key", "key2.pem",
			"-subj", "/CN=" + e.id, "-addext", san}, differs: "subject"},
		{name: "another organization", args: []string{"req", "-new", "-key", "key2.pem",
			"-subj", "/O=other fleet/CN=" + e.id, "-addext", san}, differs: "subject"},
		// The names the certificate shows, typed again: openssl encodes
		// them as UTF8String where the certificate has PrintableString,
		// and "identical" is compared byte for byte (globalsign/est's
		// server compares the same way).
		{name: "same names, another string type", args: []string{"req", "-new", "-key", "key2.pem",
			"-subj", "/O=test fleet/CN=" + e.id, "-addext", san}, differs: "subject", sameText: true},
		// The subject copied byte for byte, the subjectAltName left out
		// (openssl copies no extension unless asked).
		{name: "subject copied without the subjectAltName", args: []string{"x509", "-x509toreq", "-in", e.device,
			"-key", "key2.pem"}, differs: "subjectAltName", sameText: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			csr := strings.ReplaceAll(tc.name, " ", "-") + ".pem"
			mustRunTool(t, dir, openssl, append(tc.args, "-out", csr)...)
			if tc.sameText {
				out := mustRunTool(t, dir, openssl, "req", "-in", csr, "-noout", "-subject", "-nameopt", "RFC2253")
				if want := "subject=" + e.cert.Subject.String(); strings.TrimSpace(out) != want {
					t.Fatalf("openssl's request names %q, want the certificate's text %q", strings.TrimSpace(out), want)
				}
			}
			before := f.registrarState()
			status, code := e.reenrollWithCurl(t, csr, csr+".answer")
			body, _ := os.ReadFile(filepath.Join(dir, csr+".answer"))
			if status != "403" || code != "not-authorized" {
				t.Fatalf("simplereenroll: HTTP %s %q, want 403 not-authorized; body %q", status, code, body)
			}
			if want := "request's " + tc.differs + " differs"; !strings.Contains(string(body), want) || !strings.Contains(string(body), "RFC 7030 4.2.2") {
				t.Errorf("refusal %q: want %q and RFC 7030 4.2.2", body, want)
			}
			if f.registrarState() != before {
				t.Error("a refused renewal changed the registrar's state")
			}
		})
	}

	// The request a generic client builds from its certificate: the same
	// subject and subjectAltName, the new key.
	mustRunTool(t, dir, openssl, "x509", "-x509toreq", "-in", e.device, "-key", "key2.pem",
		"-copy_extensions", "copyall", "-out", "renew.pem")
	status, code := e.reenrollWithCurl(t, "renew.pem", "renew.b64")
	if status != "200" {
		body, _ := os.ReadFile(filepath.Join(dir, "renew.b64"))
		t.Fatalf("simplereenroll with the certificate's names: HTTP %s %q: %s", status, code, body)
	}
	issued := decodeCertsOnlyWithOpenSSL(t, dir, openssl, "renew.b64", "renewed.pem")
	if len(issued) != 1 {
		t.Fatalf("simplereenroll returned %d certificates, want 1", len(issued))
	}
	renewed := issued[0]
	if !bytes.Equal(renewed.RawSubject, e.cert.RawSubject) ||
		!bytes.Equal(extensionValue(renewed.Extensions, oidSubjectAltName), extensionValue(e.cert.Extensions, oidSubjectAltName)) {
		t.Errorf("renewed certificate names %q %v, want the renewed one's %q %v", renewed.Subject, renewed.URIs, e.cert.Subject, e.cert.URIs)
	}
	if renewed.SerialNumber.Cmp(e.cert.SerialNumber) == 0 {
		t.Error("renewal reissued the same serial")
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "key2.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key2, err := ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatalf("openssl's new key: %v", err)
	}
	if !publicKeysEqual(key2.Public(), renewed.PublicKey) {
		t.Error("renewed certificate is not for the new key")
	}
	if out := mustRunTool(t, dir, openssl, "verify", "-purpose", "sslclient", "-CAfile", e.root, "-untrusted", e.issuing, "renewed.pem"); strings.TrimSpace(out) != "renewed.pem: OK" {
		t.Fatalf("openssl verify of the renewed certificate: %q", out)
	}
	t.Logf("curl renewed %s: serial %x -> %x, subject %q", e.id, e.cert.SerialNumber, renewed.SerialNumber, renewed.Subject)
}
