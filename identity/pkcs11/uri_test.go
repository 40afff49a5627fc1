// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package pkcs11

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

const (
	testModule = "/usr/lib/softhsm/libsofthsm2.so"
	testQuery  = "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/d2c/ca.pin"
)

// goodURIs are PKCS#11 URIs ParseURI accepts, with what they select.
var goodURIs = []struct {
	uri          string
	token, label string
	module, pin  string
}{
	{"pkcs11:token=fleet-ca;object=issuing" + testQuery, "fleet-ca", "issuing", testModule, "/etc/d2c/ca.pin"},
	// Attributes in any order; type=private in any case; the scheme in
	// any case (RFC 3986 section 3.1).
	{"PKCS11:type=Private;object=issuing;token=fleet-ca?pin-source=file:/etc/d2c/ca.pin&module-path=" + testModule,
		"fleet-ca", "issuing", testModule, "/etc/d2c/ca.pin"},
	// Percent-encoding: a space, a ';', a '/', UTF-8; the encoded '%'.
	{"pkcs11:token=my%20token;object=a%3Bb%2Fc%C3%A9%25" + testQuery, "my token", "a;b/cé%", testModule, "/etc/d2c/ca.pin"},
	// '&' and '=' are plain characters in the path, '?' and '|' in the query.
	{"pkcs11:token=a&b;object=k=v" + testQuery, "a&b", "k=v", testModule, "/etc/d2c/ca.pin"},
	{"pkcs11:token=t;object=o?module-path=/opt/hsm?/lib|x.so&pin-source=file:///run/pin",
		"t", "o", "/opt/hsm?/lib|x.so", "/run/pin"},
	// An id (CKA_ID) narrows the key, as OpenURI matches it.
	{"pkcs11:token=t;object=issuing;id=" + percentEncode(keyID("issuing")) + testQuery, "t", "issuing", testModule, "/etc/d2c/ca.pin"},
	{"pkcs11:token=t;object=o;id=%01%02" + testQuery, "t", "o", testModule, "/etc/d2c/ca.pin"},
	{"pkcs11:token=t;object=o;id=" + strings.Repeat("%ff", maxKeyID) + testQuery, "t", "o", testModule, "/etc/d2c/ca.pin"},
	// Bounds: a 32-byte token label, a 128-byte key label.
	{"pkcs11:token=" + strings.Repeat("t", 32) + ";object=" + strings.Repeat("o", 128) + testQuery,
		strings.Repeat("t", 32), strings.Repeat("o", 128), testModule, "/etc/d2c/ca.pin"},
}

// badURIs are refused, each with its sentinel.
var badURIs = []struct {
	name, uri string
	want      error
}{
	{"empty", "", ErrInvalidURI},
	{"scheme only", "pkcs11:", ErrInvalidURI},
	{"no scheme", "token=t;object=o" + testQuery, ErrInvalidURI},
	{"other scheme", "pkcs12:token=t;object=o" + testQuery, ErrInvalidURI},
	{"file path", "/etc/d2c/issuing.key", ErrInvalidURI},
	{"too long", "pkcs11:token=t;object=o" + testQuery + "&" + strings.Repeat("x", maxURI), ErrInvalidURI},
	{"no token", "pkcs11:object=o" + testQuery, ErrInvalidURI},
	{"empty token", "pkcs11:token=;object=o" + testQuery, ErrInvalidURI},
	{"no object", "pkcs11:token=t" + testQuery, ErrInvalidURI},
	{"no query", "pkcs11:token=t;object=o", ErrInvalidURI},
	{"empty query", "pkcs11:token=t;object=o?", ErrInvalidURI},
	{"no module", "pkcs11:token=t;object=o?pin-source=file:/etc/pin", ErrInvalidURI},
	{"no PIN source", "pkcs11:token=t;object=o?module-path=" + testModule, ErrInvalidURI},
	{"relative module", "pkcs11:token=t;object=o?module-path=libsofthsm2.so&pin-source=file:/etc/pin", ErrInvalidURI},
	{"long token", "pkcs11:token=" + strings.Repeat("t", 33) + ";object=o" + testQuery, ErrInvalidURI},
	{"long object", "pkcs11:token=t;object=" + strings.Repeat("o", 129) + testQuery, ErrInvalidURI},
	{"NUL in token", "pkcs11:token=t%00x;object=o" + testQuery, ErrInvalidURI},
	{"NUL in object", "pkcs11:token=t;object=o%00" + testQuery, ErrInvalidURI},
	{"NUL in module", "pkcs11:token=t;object=o?module-path=/lib%00/x.so&pin-source=file:/etc/pin", ErrInvalidURI},
	{"object not UTF-8", "pkcs11:token=t;object=%ff" + testQuery, ErrInvalidURI},
	{"token not UTF-8", "pkcs11:token=%c3;object=o" + testQuery, ErrInvalidURI},
	{"truncated escape", "pkcs11:token=t;object=o%4" + testQuery, ErrInvalidURI},
	{"escape at end", "pkcs11:token=t;object=o?module-path=" + testModule + "&pin-source=file:/etc/pin%", ErrInvalidURI},
	{"not hex", "pkcs11:token=t;object=o%zz" + testQuery, ErrInvalidURI},
	{"raw space", "pkcs11:token=my token;object=o" + testQuery, ErrInvalidURI},
	{"raw UTF-8", "pkcs11:token=t;object=é" + testQuery, ErrInvalidURI},
	{"raw slash in path", "pkcs11:token=t;object=a/b" + testQuery, ErrInvalidURI},
	{"raw quote", "pkcs11:token=t;object=\"o\"" + testQuery, ErrInvalidURI},
	{"fragment", "pkcs11:token=t;object=o" + testQuery + "#x", ErrInvalidURI},
	{"newline", "pkcs11:token=t;object=o\n" + testQuery, ErrInvalidURI},
	{"duplicate token", "pkcs11:token=a;token=b;object=o" + testQuery, ErrInvalidURI},
	{"duplicate object", "pkcs11:token=t;object=a;object=b" + testQuery, ErrInvalidURI},
	{"duplicate module", testURIWith("&module-path=/other.so"), ErrInvalidURI},
	{"duplicate PIN source", testURIWith("&pin-source=file:/other"), ErrInvalidURI},
	{"empty attribute", "pkcs11:token=t;;object=o" + testQuery, ErrInvalidURI},
	{"trailing separator", "pkcs11:token=t;object=o;" + testQuery, ErrInvalidURI},
	{"empty query attribute", testURIWith("&"), ErrInvalidURI},
	{"no equals", "pkcs11:token;object=o" + testQuery, ErrInvalidURI},
	{"no name", "pkcs11:=t;object=o" + testQuery, ErrInvalidURI},
	{"bad name", "pkcs11:to%6ben=t;object=o" + testQuery, ErrInvalidURI},
	{"unknown attribute", "pkcs11:token=t;object=o;label=o" + testQuery, ErrInvalidURI},
	{"names are case-sensitive", "pkcs11:Token=t;object=o" + testQuery, ErrInvalidURI},
	{"unknown query attribute", testURIWith("&pin-file=/etc/pin"), ErrInvalidURI},
	{"query attribute in path", "pkcs11:token=t;object=o;module-path=%2Fm.so?pin-source=file:/etc/pin", ErrInvalidURI},
	{"path attribute in query", "pkcs11:token=t" + testQuery + "&object=o", ErrInvalidURI},
	{"bad type", "pkcs11:token=t;object=o;type=secret" + testQuery, ErrInvalidURI},
	{"relative PIN file", "pkcs11:token=t;object=o?module-path=" + testModule + "&pin-source=file:pin", ErrInvalidURI},
	{"PIN file with no path", "pkcs11:token=t;object=o?module-path=" + testModule + "&pin-source=file:", ErrInvalidURI},

	{"pin-value", testURIWith("&pin-value=123456"), ErrUnsupportedURI},
	{"pin-value alone", "pkcs11:token=t;object=o?module-path=" + testModule + "&pin-value=123456", ErrUnsupportedURI},
	{"module-name", "pkcs11:token=t;object=o?module-name=softhsm2&pin-source=file:/etc/pin", ErrUnsupportedURI},
	{"PIN from a command", "pkcs11:token=t;object=o?module-path=" + testModule + "&pin-source=|/usr/bin/getpin", ErrUnsupportedURI},
	{"PIN from a dialog", "pkcs11:token=t;object=o?module-path=" + testModule + "&pin-source=builtin-dialog", ErrUnsupportedURI},
	{"PIN from another host", "pkcs11:token=t;object=o?module-path=" + testModule + "&pin-source=file://nas/pin", ErrUnsupportedURI},
	{"PIN over HTTP", "pkcs11:token=t;object=o?module-path=" + testModule + "&pin-source=https://x/pin", ErrUnsupportedURI},
	{"public key", "pkcs11:token=t;object=o;type=public" + testQuery, ErrUnsupportedURI},
	{"certificate", "pkcs11:token=t;object=o;type=cert" + testQuery, ErrUnsupportedURI},
	{"secret key", "pkcs11:token=t;object=o;type=secret-key" + testQuery, ErrUnsupportedURI},
	{"data", "pkcs11:token=t;object=o;type=DATA" + testQuery, ErrUnsupportedURI},
	{"empty id", "pkcs11:token=t;object=o;id=" + testQuery, ErrInvalidURI},
	{"long id", "pkcs11:token=t;object=o;id=" + strings.Repeat("%ff", maxKeyID+1) + testQuery, ErrInvalidURI},
	{"duplicate id", "pkcs11:token=t;object=o;id=%01;id=%01" + testQuery, ErrInvalidURI},
	{"serial", "pkcs11:token=t;object=o;serial=1234" + testQuery, ErrUnsupportedURI},
	{"manufacturer", "pkcs11:manufacturer=SoftHSM%20project;token=t;object=o" + testQuery, ErrUnsupportedURI},
	{"model", "pkcs11:model=SoftHSM%20v2;token=t;object=o" + testQuery, ErrUnsupportedURI},
	{"slot-id", "pkcs11:slot-id=0;token=t;object=o" + testQuery, ErrUnsupportedURI},
	{"library-version", "pkcs11:library-version=2.6;token=t;object=o" + testQuery, ErrUnsupportedURI},
	{"vendor path attribute", "pkcs11:token=t;object=o;x-slot=2" + testQuery, ErrUnsupportedURI},
	{"vendor query attribute", testURIWith("&x-debug=1"), ErrUnsupportedURI},
}

// testURIWith is a good URI with extra appended to its query.
func testURIWith(extra string) string { return "pkcs11:token=t;object=o" + testQuery + extra }

func TestParseURI(t *testing.T) {
	for _, tc := range goodURIs {
		cfg, label, err := ParseURI(tc.uri)
		if err != nil {
			t.Errorf("%s: %v", tc.uri, err)
			continue
		}
		want := Config{Module: tc.module, TokenLabel: tc.token, PINFile: tc.pin}
		if cfg != want || label != tc.label {
			t.Errorf("%s:\n got %v, label %q\nwant %v, label %q", tc.uri, cfg, label, want, tc.label)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: the configuration does not validate: %v", tc.uri, err)
		}
	}
}

func TestParseURIRefusals(t *testing.T) {
	for _, tc := range badURIs {
		cfg, label, err := ParseURI(tc.uri)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, %q, %v; want %v", tc.name, cfg, label, err, tc.want)
			continue
		}
		if len(err.Error()) > 600 {
			t.Errorf("%s: an error of %d bytes", tc.name, len(err.Error()))
		}
	}
}

// TestParseURIPINValue: a PIN in the URI is refused, the error says why,
// and never repeats the PIN, even when the URI is malformed around it.
func TestParseURIPINValue(t *testing.T) {
	for _, uri := range []string{
		testURIWith("&pin-value=s3cr3tpin"),
		"pkcs11:token=t;object=o?module-path=" + testModule + "&pin-value=s3cr3tpin",
		"pkcs11:token=t;object=o?pin-value=s3cr3tpin",
		"pkcs11:token=t;object=o?pin-value=s3cr3tpin&pin-value=s3cr3tpin",
		"pkcs11:token=t;object=o?pin-value=s3cr3tpin%zz",
		"pkcs11:token=t;object=o?pin-value=s3cr3tpin x",
		"pkcs11:token=t;object=o;pin-value=s3cr3tpin" + testQuery,
		"pkcs11:token=t;object=o?module-path=" + testModule + "&s3cr3tpin",
	} {
		_, _, err := ParseURI(uri)
		if err == nil {
			t.Fatalf("%s: accepted", uri)
		}
		if strings.Contains(err.Error(), "s3cr3tpin") {
			t.Errorf("%s: the error shows the PIN: %v", uri, err)
		}
	}
	_, _, err := ParseURI(testURIWith("&pin-value=1234"))
	for _, want := range []string{"pin-value", "pin-source=file:", "0600"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("pin-value refused with %v, which does not say %q", err, want)
		}
	}
}

// FuzzParseURI: ParseURI never panics, fails only with its two sentinels,
// and what it accepts is a valid configuration that survives a round trip
// through formatURI.
func FuzzParseURI(f *testing.F) {
	for _, tc := range goodURIs {
		f.Add(tc.uri)
	}
	for _, tc := range badURIs {
		f.Add(tc.uri)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		u, err := parseURI(uri)
		if err != nil {
			if !errors.Is(err, ErrInvalidURI) && !errors.Is(err, ErrUnsupportedURI) {
				t.Fatalf("%q: error wraps neither sentinel: %v", uri, err)
			}
			return
		}
		if len(uri) > maxURI {
			t.Fatalf("accepted a URI of %d bytes", len(uri))
		}
		if err := u.cfg.Validate(); err != nil {
			t.Fatalf("%q: accepted an invalid configuration: %v", uri, err)
		}
		if err := checkLabel(u.label); err != nil {
			t.Fatalf("%q: accepted label %q: %v", uri, u.label, err)
		}
		if u.cfg.PIN != "" {
			t.Fatalf("%q: a PIN came out of the URI", uri)
		}
		if u.id != nil && (len(u.id) == 0 || len(u.id) > maxKeyID) {
			t.Fatalf("%q: accepted an id of %d bytes", uri, len(u.id))
		}
		again, err := parseURI(formatURI(u))
		if err != nil || again.cfg != u.cfg || again.label != u.label || !bytes.Equal(again.id, u.id) || (again.id == nil) != (u.id == nil) {
			t.Fatalf("%q: round trip through %q: %+v, %v", uri, formatURI(u), again, err)
		}
	})
}

// percentEncode encodes every byte of b as %XX.
func percentEncode(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		fmt.Fprintf(&s, "%%%02x", c)
	}
	return s.String()
}

// formatURI writes the PKCS#11 URI of a key, percent-encoding every byte
// that is not unreserved (and keeping '/' in the query).
func formatURI(u keyURI) string {
	enc := func(s string, keep func(byte) bool) string {
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			if unreserved(s[i]) || keep(s[i]) {
				b.WriteByte(s[i])
			} else {
				b.WriteString(percentEncode([]byte{s[i]}))
			}
		}
		return b.String()
	}
	none := func(byte) bool { return false }
	slash := func(c byte) bool { return c == '/' }
	s := "pkcs11:token=" + enc(u.cfg.TokenLabel, none) + ";object=" + enc(u.label, none)
	if u.id != nil {
		s += ";id=" + percentEncode(u.id)
	}
	return s + "?module-path=" + enc(u.cfg.Module, slash) + "&pin-source=file:" + enc(u.cfg.PINFile, slash)
}
