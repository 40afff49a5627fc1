// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package pkcs11

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// Errors of [ParseURI]. Each wraps with the attribute at fault and what to
// write instead; neither ever quotes a PIN.
var (
	// ErrInvalidURI: the string is not a well-formed PKCS#11 URI (RFC
	// 7512 section 2.3): not "pkcs11:", a character outside the grammar,
	// bad percent-encoding, an attribute repeated or unknown, a value out
	// of bounds, or an attribute d2c needs (token, object, module-path,
	// pin-source) missing.
	ErrInvalidURI = errors.New("pkcs11: invalid PKCS#11 URI")
	// ErrUnsupportedURI: a well-formed PKCS#11 URI that asks for what d2c
	// refuses to do: take the PIN from the URI itself (pin-value) or from
	// anything but a file, search for a module by name, select anything
	// but a private key, or narrow the token by attributes it does not
	// check (serial, slot-id, vendor attributes...).
	ErrUnsupportedURI = errors.New("pkcs11: unsupported PKCS#11 URI")
)

// Bounds on a PKCS#11 URI.
const (
	// maxURI bounds a PKCS#11 URI: room for two long paths (module and
	// PIN file) and the labels, percent-encoded.
	maxURI = 4096
	// maxKeyID bounds the id attribute (CKA_ID), decoded.
	maxKeyID = 128
)

// RFC 7512 section 2.3 attribute names that d2c reads.
const (
	attrToken      = "token"
	attrObject     = "object"
	attrType       = "type"
	attrID         = "id"
	attrModulePath = "module-path"
	attrPINSource  = "pin-source"
)

// narrowing are the RFC 7512 path attributes that select a token, slot or
// library by something other than the token label. d2c selects by label
// only, so it refuses them rather than ignore a constraint the operator
// wrote.
var narrowing = map[string]bool{
	"manufacturer": true, "serial": true, "model": true,
	"library-manufacturer": true, "library-description": true, "library-version": true,
	"slot-description": true, "slot-manufacturer": true, "slot-id": true,
}

// objectTypes are the values of the type attribute (RFC 7512 section 2.3).
var objectTypes = []string{"public", "private", "cert", "secret-key", "data"}

// keyURI is a parsed PKCS#11 URI: the token, and the key's label and
// CKA_ID (nil when the URI gives none).
type keyURI struct {
	cfg   Config
	label string
	id    []byte
}

// ParseURI parses a PKCS#11 URI (RFC 7512) naming a private key in a
// token, and returns the keystore configuration and the key's label:
//
//	pkcs11:token=fleet-ca;object=issuing-2025?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/d2c/ca.pin
//
// The path (before "?", attributes separated by ";") must hold token (the
// token label) and object (the key label, CKA_LABEL); it may hold
// type=private and id (the key's CKA_ID, percent-encoded bytes), which
// [OpenURI] then also matches. The query (after "?", separated by "&") must hold module-path (the absolute
// path of the PKCS#11 library) and pin-source, a file: URI of the PIN file
// ("file:/path" or "file:///path", an absolute path); [Open] checks the
// file's mode. Values are percent-decoded (RFC 3986 section 2.1); a
// character outside the grammar, such as a space, a "/" in the path or a
// "&" in the query, must be percent-encoded.
//
// pin-value, which RFC 7512 allows, is refused ([ErrUnsupportedURI]): a
// PIN in a URI ends up in configuration files, shell history and process
// listings. So are module-name (name the library with module-path), a
// pin-source that is not a file, types other than private, and the
// attributes that narrow the token by something d2c does not check
// (serial, manufacturer, model, slot-id...) or vendor attributes (x-...):
// ignoring them could select another token or key than the one written.
// Everything else fails with [ErrInvalidURI]. ParseURI does no I/O.
func ParseURI(uri string) (Config, string, error) {
	u, err := parseURI(uri)
	if err != nil {
		return Config{}, "", err
	}
	return u.cfg, u.label, nil
}

func parseURI(uri string) (keyURI, error) {
	fail := func(err error) (keyURI, error) { return keyURI{}, err }
	if len(uri) > maxURI {
		return fail(fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidURI, len(uri), maxURI))
	}
	const scheme = "pkcs11:"
	if len(uri) < len(scheme) || !strings.EqualFold(uri[:len(scheme)], scheme) {
		return fail(fmt.Errorf("%w: it does not begin with %q", ErrInvalidURI, scheme))
	}
	pathPart, queryPart, _ := strings.Cut(uri[len(scheme):], "?")
	path, pathNames, err := parseAttributes(pathPart, ';', pathChar, "path")
	if err != nil {
		return fail(err)
	}
	query, queryNames, err := parseAttributes(queryPart, '&', queryChar, "query")
	if err != nil {
		return fail(err)
	}

	for _, name := range pathNames {
		switch {
		case name == attrToken, name == attrObject, name == attrType, name == attrID:
		case narrowing[name]:
			return fail(fmt.Errorf("%w: %s selects the token by an attribute d2c does not check; "+
				"select it by its label alone (token=) and remove %s", ErrUnsupportedURI, name, name))
		case strings.HasPrefix(name, "x-"):
			return fail(fmt.Errorf("%w: vendor attribute %s in the path: remove it", ErrUnsupportedURI, name))
		case isQueryAttribute(name):
			return fail(fmt.Errorf("%w: %s belongs in the query, after \"?\"", ErrInvalidURI, name))
		default:
			return fail(fmt.Errorf("%w: unknown path attribute %.64q", ErrInvalidURI, name))
		}
	}
	for _, name := range queryNames {
		switch {
		case name == attrModulePath, name == attrPINSource:
		case name == "pin-value":
			return fail(fmt.Errorf("%w: pin-value puts the PIN in the URI, where configuration files, "+
				"shell history and process listings keep it; write the PIN to a file only its owner can read "+
				"(mode 0600) and give pin-source=file:/path/to/pin instead", ErrUnsupportedURI))
		case name == "module-name":
			return fail(fmt.Errorf("%w: module-name makes the library a search; "+
				"give its absolute path with module-path", ErrUnsupportedURI))
		case strings.HasPrefix(name, "x-"):
			return fail(fmt.Errorf("%w: vendor attribute %s in the query: remove it", ErrUnsupportedURI, name))
		case name == attrToken || name == attrObject || name == attrType || name == attrID || narrowing[name]:
			return fail(fmt.Errorf("%w: %s belongs in the path, before \"?\"", ErrInvalidURI, name))
		default:
			return fail(fmt.Errorf("%w: unknown query attribute %.64q", ErrInvalidURI, name))
		}
	}

	token, ok := path[attrToken]
	if !ok || token == "" {
		return fail(fmt.Errorf("%w: token (the token's label) is required", ErrInvalidURI))
	}
	if len(token) > maxTokenLabel || !utf8.ValidString(token) || strings.ContainsRune(token, 0) {
		return fail(fmt.Errorf("%w: token %q: want 1 to %d bytes of UTF-8, no NUL", ErrInvalidURI, token, maxTokenLabel))
	}
	label, ok := path[attrObject]
	if !ok || label == "" {
		return fail(fmt.Errorf("%w: object (the key's label) is required", ErrInvalidURI))
	}
	if err := checkLabel(label); err != nil {
		return fail(fmt.Errorf("%w: object: %w", ErrInvalidURI, err))
	}
	if t, ok := path[attrType]; ok && !strings.EqualFold(t, "private") {
		for _, known := range objectTypes {
			if strings.EqualFold(t, known) {
				return fail(fmt.Errorf("%w: type=%s selects another object than a private key; "+
					"d2c signs with one: write type=private or leave type out", ErrUnsupportedURI, known))
			}
		}
		return fail(fmt.Errorf("%w: type %q: want one of %s", ErrInvalidURI, t, strings.Join(objectTypes, ", ")))
	}
	var id []byte
	if v, ok := path[attrID]; ok {
		if v == "" || len(v) > maxKeyID {
			return fail(fmt.Errorf("%w: id: want 1 to %d bytes (percent-encoded), or no id", ErrInvalidURI, maxKeyID))
		}
		id = []byte(v)
	}

	module, ok := query[attrModulePath]
	if !ok || module == "" {
		return fail(fmt.Errorf("%w: module-path (the absolute path of the PKCS#11 library) is required", ErrInvalidURI))
	}
	if !filepath.IsAbs(module) || strings.ContainsRune(module, 0) {
		return fail(fmt.Errorf("%w: module-path %q is not an absolute path", ErrInvalidURI, module))
	}
	source, ok := query[attrPINSource]
	if !ok || source == "" {
		return fail(fmt.Errorf("%w: pin-source (file:/path of the PIN file, mode 0600) is required", ErrInvalidURI))
	}
	pinFile, err := pinSourceFile(source)
	if err != nil {
		return fail(err)
	}
	cfg := Config{Module: module, TokenLabel: token, PINFile: pinFile}
	if err := cfg.Validate(); err != nil {
		return fail(fmt.Errorf("%w: %w", ErrInvalidURI, err))
	}
	return keyURI{cfg: cfg, label: label, id: id}, nil
}

// OpenURI opens the key that a PKCS#11 URI names ([ParseURI]): it opens
// the token as [Open] does, then the one private key whose CKA_LABEL is
// the URI's object (and CKA_ID its id, if given), refusing, as
// [Keystore.Open] does, a key that is not ECDSA P-256 or could ever have
// left the token. Unlike Keystore.Open it also finds a key pair that
// another tool generated in the token (pkcs11-tool --keypairgen
// --sensitive, an HSM vendor's tool), provided both halves carry the
// label and a CKA_ID. The caller must call the returned function when
// done; the key stops signing then. In a program built without cgo
// OpenURI fails, after parsing, as Open does.
func OpenURI(ctx context.Context, uri string) (crypto.Signer, func() error, error) {
	u, err := parseURI(uri)
	if err != nil {
		return nil, nil, err
	}
	ks, err := Open(u.cfg)
	if err != nil {
		return nil, nil, err
	}
	key, err := ks.open(ctx, u.id, u.label)
	if err != nil {
		_ = ks.Close()
		return nil, nil, err
	}
	return key, ks.Close, nil
}

// isQueryAttribute reports whether name is a query attribute of RFC 7512.
func isQueryAttribute(name string) bool {
	switch name {
	case attrModulePath, attrPINSource, "pin-value", "module-name":
		return true
	}
	return false
}

// pinSourceFile returns the absolute path a pin-source names: "file:" then
// an absolute path, with an empty authority or none (RFC 8089). Any other
// source (a command, a dialog, a remote file) is refused.
func pinSourceFile(source string) (string, error) {
	rest, ok := strings.CutPrefix(source, "file:")
	if !ok {
		return "", fmt.Errorf("%w: pin-source %q: d2c reads the PIN from a file only; write file:/path/to/pin", ErrUnsupportedURI, source)
	}
	if auth, ok := strings.CutPrefix(rest, "//"); ok {
		// file://host/path: only the empty host (this machine) is a file.
		if !strings.HasPrefix(auth, "/") {
			return "", fmt.Errorf("%w: pin-source %q names a file on another host; write file:/path/to/pin", ErrUnsupportedURI, source)
		}
		rest = auth
	}
	if !filepath.IsAbs(rest) || strings.ContainsRune(rest, 0) {
		return "", fmt.Errorf("%w: pin-source %q: want file: and an absolute path", ErrInvalidURI, source)
	}
	return rest, nil
}

// parseAttributes splits one component of a PKCS#11 URI into its
// percent-decoded attributes, and their names in order; an empty
// component has none. Names are case-sensitive and may not repeat. Its
// errors quote no value, which may be a PIN (pin-value).
func parseAttributes(component string, sep byte, allowed func(byte) bool, which string) (map[string]string, []string, error) {
	attrs := map[string]string{}
	var names []string
	if component == "" {
		return attrs, nil, nil
	}
	for part := range strings.SplitSeq(component, string(sep)) {
		name, raw, ok := strings.Cut(part, "=")
		if !ok || name == "" {
			return nil, nil, fmt.Errorf("%w: %s attribute %d is not name=value", ErrInvalidURI, which, len(names)+1)
		}
		for i := 0; i < len(name); i++ {
			if !nameChar(name[i]) {
				return nil, nil, fmt.Errorf("%w: %s attribute name %.64q: letters, digits, '-' and '_' only", ErrInvalidURI, which, name)
			}
		}
		if _, dup := attrs[name]; dup {
			return nil, nil, fmt.Errorf("%w: %s attribute %.64s given twice", ErrInvalidURI, which, name)
		}
		value, err := percentDecode(raw, allowed)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %s attribute %.64s: %v", ErrInvalidURI, which, name, err)
		}
		attrs[name] = value
		names = append(names, name)
	}
	return attrs, names, nil
}

// percentDecode decodes the %XX escapes of s (RFC 3986 section 2.1),
// refusing any other character that allowed does not accept. Its errors
// never quote s.
func percentDecode(s string, allowed func(byte) bool) (string, error) {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return "", fmt.Errorf("bad percent-encoding at byte %d (want %%XX, two hex digits)", i)
			}
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		case allowed(c):
			b.WriteByte(c)
		default:
			return "", fmt.Errorf("byte %d (0x%02x) must be percent-encoded", i, c)
		}
	}
	return b.String(), nil
}

// unreserved is RFC 3986's unreserved set, part of every value.
func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// pathChar is pk11-pchar less pct-encoded: unreserved and
// pk11-path-res-avail (RFC 7512 section 2.3).
func pathChar(c byte) bool {
	return unreserved(c) || strings.IndexByte(":[]@!$'()*+,=&", c) >= 0
}

// queryChar is pk11-qchar less pct-encoded: unreserved and
// pk11-query-res-avail (RFC 7512 section 2.3).
func queryChar(c byte) bool {
	return unreserved(c) || strings.IndexByte(":[]@!$'()*+,=/?|", c) >= 0
}

// nameChar is pk11-v-attr-nm-char, which also spells every standard name.
func nameChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
