// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package pkcs11 keeps d2c keys inside a PKCS#11 token (a smart card, a
// USB security key, an HSM, a secure element with a PKCS#11 driver, or
// softhsm2 for development), where they are generated and used but never
// leave: device keys, and on the cloud side the fleet CA's issuing key
// and the update timestamp key.
//
// A [Keystore] is an [identity.Keystore]: give it to an [identity.Store]
// and the store asks the token for the key of each generation, keeping
// only the key's label on disk next to the certificate. Everything else
// (enrollment, renewal, TLS, signed telemetry) sees a crypto.Signer.
//
//	ks, err := pkcs11.Open(pkcs11.Config{
//		Module:     "/usr/lib/softhsm/libsofthsm2.so",
//		TokenLabel: "device",
//		PINFile:    "/etc/d2c/token.pin",
//	})
//	if err != nil { ... }
//	defer ks.Close()
//	store, err := identity.OpenStore(dir, identity.StoreConfig{Keys: ks})
//
// # Key references by URI
//
// Operators name a key in a token by its PKCS#11 URI (RFC 7512), in a
// flag or a configuration file:
//
//	pkcs11:token=fleet-ca;object=issuing-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/d2c/ca.pin
//
// [ParseURI] turns one into a [Config] and the key's label; [OpenURI]
// opens the key as a crypto.Signer, with a function that closes the token
// afterwards. The path (before "?") needs token (the token label) and
// object (the key's CKA_LABEL), and may narrow the key with its id
// (CKA_ID) and type=private; the query needs module-path (the library,
// an absolute path) and pin-source, a file: URI of the PIN file. Values
// are percent-decoded, and the URI is at most 4096 bytes.
//
// A URI that asks for what d2c does not do is refused with
// [ErrUnsupportedURI] rather than half-followed: a PIN in the URI itself
// (pin-value, which RFC 7512 allows; PINs stay out of configuration
// files, shell history and process listings), a PIN from a command or a
// dialog, a module found by name (module-name), an object that is not a
// private key, and the attributes that would narrow the token by what d2c
// does not check (serial, manufacturer, model, slot-id, library-...,
// vendor x- attributes). A malformed one fails with [ErrInvalidURI];
// neither error ever quotes a PIN.
//
// OpenURI applies the checks of [Keystore.Open] (ECDSA P-256, generated
// in the token, never extractable) but selects the key by the URI's
// attributes, so it also opens a key pair made in the token by another
// tool (pkcs11-tool --keypairgen --sensitive, an HSM vendor's ceremony
// tool), provided both halves carry the label and a CKA_ID.
// [Keystore.CreateNew] makes a key under a label that nothing in the
// token uses yet, and never replaces anything: d2c ca init --issuing-key
// makes the fleet's issuing CA key with it.
//
// # Keys
//
// [Keystore.Create] generates an ECDSA P-256 key pair in the token
// (C_GenerateKeyPair, CKM_EC_KEY_PAIR_GEN); Ed25519 is refused, since few
// tokens make it and brokers expect P-256. The private key is a token
// object (CKA_TOKEN) usable only after login (CKA_PRIVATE), sensitive
// (CKA_SENSITIVE: its value is never revealed), not extractable
// (CKA_EXTRACTABLE false: it cannot be wrapped out), and may only sign
// (CKA_DERIVE, CKA_DECRYPT and CKA_UNWRAP false). Both halves carry the
// label as CKA_LABEL and, as CKA_ID, the first 16 bytes of
// SHA-256("d2c key id" || 0x00 || label). Create first destroys every
// object under that label or ID, which is what a crash during an earlier
// enrollment may have left.
//
// [Keystore.Open] refuses a key under the label that is not ECDSA P-256,
// or that is or ever was readable or exportable (CKA_ALWAYS_SENSITIVE and
// CKA_NEVER_EXTRACTABLE must be true): such a key was imported, or could
// have been copied, and is not a device key ([ErrNotHardwareKey]).
//
// Signatures use CKM_ECDSA over the digest the caller computed in Go
// (tokens such as softhsm2 lack CKM_ECDSA_SHA256), and come back as ASN.1
// DER, as crypto.Signer requires; TLS 1.3 client authentication, CSRs and
// JWS all work with them. The token draws the nonce.
//
// # PIN
//
// The user PIN comes from [Config.PIN] or from [Config.PINFile], a file
// that group and others cannot access (else [identity.ErrKeyPermissions]).
// It is never logged nor put into an error, and [Config.String] redacts
// it. Prefer the file, so that the PIN stays out of the process's
// arguments and the application's configuration.
//
// # Failures
//
// A token that disappears (unplugged, its daemon stopped, the keystore
// closed) makes signatures fail with an error wrapping
// [identity.ErrKeystore], so code holding only the crypto.Signer can tell
// it apart; the store then fails with identity.ErrKeystore too, and never
// falls back to a software key. The keys a Keystore returned stop working
// when it is closed ([ErrClosed]); after the token comes back, open a new
// Keystore and let the store load the key again ([identity.Store.Current]).
//
// # cgo
//
// Loading a PKCS#11 module takes cgo (the package uses
// github.com/ThalesGroup/crypto11 over github.com/miekg/pkcs11). In a
// program built with CGO_ENABLED=0 the package still compiles, and [Open]
// fails with an error saying so; the rest of d2c never needs cgo. A
// module is loaded once per process and shared by the Keystores on it;
// softhsm2 reads SOFTHSM2_CONF when it is first loaded.
//
// # Compatibility
//
// Until d2c 1.0 the API may change between minor versions. The objects in
// the token (attributes, labels, CKA_ID derivation) will stay readable by
// later versions.
package pkcs11
