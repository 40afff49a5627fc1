// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package attest lets a device prove to its cloud which software it runs,
// with an Entity Attestation Token (EAT, RFC 9711) in its JWT form, signed
// by the device key and answering a fresh challenge.
//
// # Flow
//
// The cloud half, a [Verifier], issues a random nonce bound to one device
// ([Verifier.Challenge]). The device half signs its [Evidence] (the nonce,
// its software name and version, the SHA-256 of its running image, and
// optionally its debug and boot state) with its device key ([Sign]) and
// sends the token back. The verifier checks it against the device's
// registered certificate and the outstanding challenge, consumes the
// nonce, and applies a [Policy] ([Verifier.Verify]):
//
//	nonce, err := verifier.Challenge(ctx, "sensor-1")   // cloud
//	token, err := attest.Sign(key, "sensor-1", attest.Evidence{Nonce: nonce, ...}, clock.Now()) // device
//	res, err := verifier.Verify(ctx, token, attest.Policy{AllowDigest: attest.AllowDigests(release)}) // cloud
//
// How the nonce reaches the device and the token the cloud is the
// application's choice (a signed command and a telemetry stream, or an
// HTTPS call over the device's mutual TLS).
//
// # Token format
//
// A compact JWS (RFC 7515) with exactly three protected header
// parameters: alg (ES256 or EdDSA), kid (the RFC 7638 thumbprint of the
// device key, [identity.KeyID]) and typ ([TokenType], "eat+jwt", for the
// media type application/eat+jwt of RFC 9782). Its payload is a JSON
// claims set of the d2c EAT profile, [Profile]: eat_profile, eat_nonce,
// sub (the device ID), iat, swname, swversion, d2c_image_digest, and
// optionally dbgstat, oemboot, oemid and bootcount. docs/attestation.md
// specifies the profile as RFC 9711 section 6 asks.
//
// # What it proves
//
// A verified token proves that, after the challenge was issued, the holder
// of the private key certified for the device signed these claims. With a
// key in a TPM or a PKCS#11 token the key cannot leave that hardware, so
// the token came from the device; with a software key it proves possession
// of the key file only. The claims themselves are what the device's
// software says about itself: a compromised device can lie about its image
// digest. Binding the claims to measured boot (a TPM quote over PCRs) is
// not built.
//
// # Errors
//
// Every refusal wraps a sentinel ([ErrMalformed], [ErrSignature],
// [ErrReplay], [ErrWrongDevice], [ErrPolicy]...) or one of identity's
// certificate sentinels (identity.ErrRevoked...).
//
// # Compatibility
//
// Until d2c 1.0 the API may change between minor versions. The token format
// is named by its profile URI: any change to it gets a new profile.
package attest
