// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/pkcs11"
)

// A key reference names a private key that a command signs with: the
// path of a PKCS#8 PEM key file (mode 0600), or the PKCS#11 URI (RFC
// 7512) of a key kept in a token, such as
//
//	pkcs11:token=fleet-ca;object=issuing?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/d2c/ca.pin
//
// A URI is never echoed back in messages: a refused one might carry a
// PIN (pin-value), which d2c refuses.

// pkcs11URIForm is the form of a key reference in a token, for hints.
const pkcs11URIForm = "pkcs11:token=TOKEN;object=KEY?module-path=/ABS/PATH/lib.so&pin-source=file:/ABS/PATH/pin"

// isPKCS11URI reports whether ref is a PKCS#11 URI rather than a file
// path (the scheme is case-insensitive, RFC 3986 section 3.1).
func isPKCS11URI(ref string) bool {
	const scheme = "pkcs11:"
	return len(ref) >= len(scheme) && strings.EqualFold(ref[:len(scheme)], scheme)
}

// openSigner opens the private key that ref names, a key file or a
// pkcs11: URI. The caller calls close once done signing: it closes the
// token (the key stops signing); for a file it does nothing.
func openSigner(ctx context.Context, ref string) (crypto.Signer, func() error, error) {
	if !isPKCS11URI(ref) {
		key, err := identity.ReadKeyFile(ref)
		if err != nil {
			return nil, nil, err
		}
		return key, func() error { return nil }, nil
	}
	key, closeKey, err := pkcs11.OpenURI(ctx, ref)
	if err != nil {
		return nil, nil, pkcs11Hint(err)
	}
	return key, closeKey, nil
}

// pkcs11Hint attaches to an error of a pkcs11: key reference what the
// operator can do about it.
func pkcs11Hint(err error) error {
	switch {
	case errors.Is(err, pkcs11.ErrInvalidURI):
		return withHint(err, "a key in a PKCS#11 token is named "+pkcs11URIForm+
			" (percent-encode spaces and other special characters)")
	case errors.Is(err, pkcs11.ErrNoKey):
		return withHint(err, "check the token= and object= labels (pkcs11-tool --list-objects); a key made by "+
			"another tool needs its label and a CKA_ID on both halves of the pair")
	case errors.Is(err, pkcs11.ErrNotHardwareKey):
		return withHint(err, "d2c signs only with a key generated in the token that never could leave it; "+
			"an imported or exportable key is refused: make a new key in the token")
	case errors.Is(err, identity.ErrKeyPermissions):
		return withHint(err, "the PIN file must be readable by its owner only: chmod 600 it; "+
			"if someone else could have read it, change the token's user PIN")
	}
	return err
}

// tokenSigner is a key in a PKCS#11 token that opens the token for each
// signature and closes it again, for the callers that hold a signer but
// no means to close it (the update role keys): they sign a few
// documents, and nothing stays loaded or logged in between.
type tokenSigner struct {
	ref string
	pub crypto.PublicKey
}

var _ crypto.Signer = (*tokenSigner)(nil)

// openTokenSigner checks that the key ref names can be opened, and returns
// it as a tokenSigner.
func openTokenSigner(ctx context.Context, ref string) (*tokenSigner, error) {
	key, closeKey, err := openSigner(ctx, ref)
	if err != nil {
		return nil, err
	}
	pub := key.Public()
	if err := closeKey(); err != nil {
		return nil, err
	}
	return &tokenSigner{ref: ref, pub: pub}, nil
}

// Public returns the key's public half, read when the signer was opened.
func (s *tokenSigner) Public() crypto.PublicKey { return s.pub }

// Sign opens the token, checks that the key under the label is still the
// one first opened, signs inside the token, and closes it.
func (s *tokenSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) (sig []byte, err error) {
	key, closeKey, err := openSigner(context.Background(), s.ref)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := closeKey(); err == nil && cerr != nil {
			sig, err = nil, cerr
		}
	}()
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(s.pub) {
		return nil, fmt.Errorf("%w: the key in the token changed since it was opened", identity.ErrKeystore)
	}
	return key.Sign(nil, digest, opts)
}
