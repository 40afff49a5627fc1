// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package decommission

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/identity"
)

// Command is the signed command by which the cloud tells a
// device to leave the fleet and forget everything it holds for it. A
// device runs [transport.Client.Decommission] when it receives it (verified like every
// command: signed by the fleet's command key, for this device, unexpired,
// never replayed).
const Command = "decommission"

// LifecycleStream carries the device's last words before it erases itself.
const LifecycleStream = "lifecycle"

// Options tune [transport.Client.Decommission].
type Options struct {
	// Notify publishes a "decommissioned" event on [LifecycleStream] and
	// waits up to Timeout for the broker to acknowledge everything still
	// queued, so that the cloud hears of it before the key is gone.
	Notify bool
	// Timeout bounds that wait; default 10 s.
	Timeout time.Duration
}

// Revoker revokes certificates; *identity.CA implements it.
type Revoker interface {
	Revoke(cert *x509.Certificate, reason int) error
}

// CertificateRegistry is a [transport.Certificates] whose entries can be
// removed: what [Forget] clears ([transport.MemoryCertificates]). The
// fleet's cloud store does the whole of Forget in its own transactions
// (cloud/store's Store.Forget).
type CertificateRegistry interface {
	// DeviceCertificates returns the chains registered for device.
	DeviceCertificates(ctx context.Context, device string) ([][]*x509.Certificate, error)
	// Remove removes the device's chains.
	Remove(device string)
}

// Verifier is the verifier's side of a forget: its replay window, session
// keys and cached verifications for the device go ([transport.Verifier]).
type Verifier interface {
	Forget(ctx context.Context, device string) error
}

// Forget is the cloud half of a decommission or forget request:
// every certificate registered for device is revoked (reason cessation of
// operation, RFC 5280 5.3.1), so brokers (through the CRL) and the
// registrar refuse it; the certificates leave the registry; and the
// verifier drops its replay window, session keys and cached verifications
// for it. Send the [Command] first, while the device can still
// receive it. Telemetry already stored by the application is the
// application's to delete, and so is the device's entry in a
// [consent.Ledger] or [security.Monitor] (their Forget methods). On a failed
// revocation the registry entry is kept, so that Forget can run
// again.
func Forget(ctx context.Context, device string, certs CertificateRegistry, ca Revoker, v Verifier) error {
	chains, err := certs.DeviceCertificates(ctx, device)
	if err != nil {
		return err
	}
	var errs []error
	for _, chain := range chains {
		if len(chain) > 0 {
			if err := ca.Revoke(chain[0], reasonCessationOfOperation); err != nil && !errors.Is(err, identity.ErrRevoked) {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		// Keep the registry entry, so that a retry finds what to revoke.
		return fmt.Errorf("transport: forget %s: run it again: %w", device, err)
	}
	certs.Remove(device)
	if v != nil {
		if err := v.Forget(ctx, device); err != nil {
			return fmt.Errorf("transport: forget %s: %w", device, err)
		}
	}
	return nil
}

// reasonCessationOfOperation is the CRL reason code of RFC 5280 5.3.1.
const reasonCessationOfOperation = 5
