// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package identity gives every device its own certified key, with no shared
// secret anywhere in the fleet.
//
// It holds both halves of the job. The device half generates a key on the
// device (ECDSA P-256 by default, Ed25519 as an option; the rest of d2c only
// ever sees a [crypto.Signer]), keeps it in a [Store], enrolls over EST
// (RFC 7030) and renews before expiry. The cloud half is a fleet [CA], an
// enrollment [TokenIssuer], and a [Registrar] serving the EST endpoints.
//
// # Device identifiers
//
// A device ID is 1 to 64 ASCII letters, digits, '.', '_' and '-', starting
// with a letter or digit ([ValidateDeviceID]). It is the subject CN of the
// device certificate (so brokers can use it as the MQTT user name), appears
// as the URI SAN urn:d2c:device:<id>, and is an MQTT topic level.
//
// # Enrollment
//
// The operator creates a fleet CA ([InitCA]: an offline root, an online
// issuing intermediate, a token signing key) and issues a one-time token per
// device ([TokenIssuer.Issue]): a JWT (RFC 7519) bound to one device ID,
// short-lived, with a jti the [Registrar] accepts once, also across
// restarts ([UsedTokens]). The device receives the token and the SHA-256
// fingerprint of the fleet root, then calls [Store.Enroll]:
//
//  1. GET /.well-known/est/cacerts, accepted only if it contains the root
//     with the pinned fingerprint and the server's TLS certificate chains to
//     it (RFC 7030 section 4.1.1);
//  2. generate the key, write it (PKCS#8, mode 0600) before it is used;
//  3. POST /.well-known/est/simpleenroll with a PKCS#10 request
//     (CN = device ID), the token as HTTP Basic password (section 3.2.3);
//  4. verify the issued certificate (key, names, chain at trusted time) and
//     only then commit it.
//
// A manufacturer-installed certificate (IDevID, IEEE 802.1AR) may replace the
// token: see [RegistrarConfig.IDevIDRoots].
//
// The registrar takes the certificate's names from the authenticated
// identity, never from the request, and refuses a request that asks for
// more. Every refusal is a 4xx answer that changes no state: a token is
// consumed only when a certificate is issued.
//
// # Renewal, revocation and time
//
// [Store.Renew] (or a [Renewer] running in the background) obtains a new key
// and certificate with simplereenroll, authenticated by the current
// certificate. A renewal writes a new generation of key and certificate,
// atomically, before removing the old one, so a power cut at any instant
// leaves the old identity or the new one. Renewal after expiry is refused
// unless both sides opt in ([RenewOptions.AllowExpired],
// [RegistrarConfig.RenewExpiredWithin]).
//
// [CA.Revoke] revokes a certificate; [CA.CRL] signs a CRL that mosquitto
// accepts as crlfile; [DeviceCertPolicy] and [RevocationList] give the other
// cloud halves an in-process check.
//
// Device clocks lie: many boot at 1970. Every time check on the device uses
// the store's [TrustedClock], whose persisted floor only rises, from the
// validity start of certificates the device has verified.
//
// # Key management
//
// Keys never leave the device that generated them: the store writes them
// with mode 0600 into a 0700 directory and refuses a key file others can
// read. The fleet root key is written once by [InitCA]; move it offline. The
// issuing key and the token key live on the registrar host. Hardware key
// stores (PKCS#11, TPM) plug in behind crypto.Signer.
//
// # Errors
//
// Conditions callers branch on are sentinel errors ([ErrTokenReused],
// [ErrRevoked], [ErrUntrusted]...), wrapped with context; an EST refusal is a
// [*ServerError] that unwraps to the matching sentinel.
//
// # Compatibility
//
// Until d2c 1.0 the API may change between minor versions; the wire formats
// (EST, X.509, JWT) are standards and will not.
package identity
