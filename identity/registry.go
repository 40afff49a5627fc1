// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"time"
)

// ErrSuperseded: a certificate was renewed; only its successor may renew
// now. A device renewing with an older certificate than its newest is
// either restored from an old backup or a thief keeping old keys.
var ErrSuperseded = errors.New("identity: certificate superseded by a renewal")

// Registry is the registrar's record of every certificate it issues
// (github.com/d2c-iot/d2c/cloud/store implements it over the fleet's
// database). With a Registry the registrar:
//
//   - records an enrollment's certificate in the same transaction that
//     consumes its token, so a token is never used without a record nor a
//     record made without consuming the token;
//   - lets only a device's newest valid certificate renew, and records the
//     renewal as superseding it, so that a device that kept older keys
//     cannot renew past a revocation of its newest certificates;
//   - answers revocation from the registry ([Registry.CheckRevoked]).
//
// The one exception to "only the newest renews": a device whose renewal
// answer was lost (a crash or a cut connection after the registrar issued
// it) still holds the certificate just superseded; it may renew again for
// a short while (cloud/store: one hour after the renewal) as long as its
// successor is unrevoked and has not renewed itself. The successor is
// then superseded too.
type Registry interface {
	RevocationChecker
	// CanRenew reports, before anything is issued, whether cert may renew:
	// nil, or an error wrapping [ErrRevoked] or [ErrSuperseded].
	CanRenew(ctx context.Context, cert *x509.Certificate) error
	// Enrolled records chain (the new certificate first, then its issuing
	// chain) for device, consuming the enrollment token tokenID (which
	// expires at tokenExpiry) in the same transaction: an error wrapping
	// [ErrTokenReused] if it was used. An empty tokenID (an IDevID
	// enrollment) consumes nothing.
	Enrolled(ctx context.Context, device, tokenID string, tokenExpiry time.Time, chain []*x509.Certificate) error
	// Renewed records chain as the successor of prev, superseding prev,
	// in one transaction that checks again what CanRenew checked.
	Renewed(ctx context.Context, prev *x509.Certificate, chain []*x509.Certificate) error
}
