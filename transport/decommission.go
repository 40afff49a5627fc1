// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/audit"
	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// DecommissionCommand is the signed command by which the cloud tells a
// device to leave the fleet and forget everything it holds for it. A
// device runs [Decommission] when it receives it (verified like every
// command: signed by the fleet's command key, for this device, unexpired,
// never replayed).
const DecommissionCommand = "decommission"

// LifecycleStream carries the device's last words before it erases itself.
const LifecycleStream = "lifecycle"

// DecommissionOptions tune [Decommission].
type DecommissionOptions struct {
	// Notify publishes a "decommissioned" event on LifecycleStream and
	// waits up to Timeout for the broker to acknowledge everything still
	// queued, so that the cloud hears of it before the key is gone.
	Notify bool
	// Timeout bounds that wait; default 10 s.
	Timeout time.Duration
}

// Decommission erases what the device holds for the fleet: it closes the
// client, scrubs and removes the transport state directory (the outbox with
// any telemetry not yet sent, the boot counter, command and consent state),
// then destroys the identity ([identity.Store.Destroy]: keys — inside the
// hardware when a Keystore holds them — certificates, anchors, time floor).
// The application's own data is the application's to erase; the update
// agent's state (trusted root and anti-rollback floors, no personal data)
// is kept so that a re-commissioned device cannot be rolled back.
//
// The cloud half is [ForgetDevice]. Decommission goes on past errors, so
// that as much as possible is erased, and returns them joined.
//
// Run it in its own goroutine when a command asks for it, never inside
// ClientConfig.OnCommand itself: it closes the client, which waits for the
// command callback to return. With ClientConfig.Audit set, the decommission
// is recorded first; the audit log itself lives where the application put
// it and is the application's to keep or erase.
func Decommission(ctx context.Context, c *Client, store *identity.Store, opts DecommissionOptions) error {
	var errs []error
	if opts.Notify {
		if opts.Timeout <= 0 {
			opts.Timeout = 10 * time.Second
		}
		errs = append(errs, c.drainAfter(ctx, opts.Timeout, Reading{Time: store.Clock().Now(), Body: []byte(`{"event":"decommissioned"}`)}))
	}
	c.audited(ctx, func(ctx context.Context, l *audit.Log) error { return l.Decommission(ctx, "decommissioned") })
	stateDir := c.cfg.StateDir
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	errs = append(errs, c.Close(cctx))
	cancel()
	// Not ctx: it may be the client's own, which Close just cancelled,
	// and a keystore refuses to delete under a cancelled context.
	errs = append(errs, atomicfile.ScrubTree(stateDir), store.Destroy(context.WithoutCancel(ctx)))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("transport: decommission: %w", err)
	}
	return nil
}

// drainAfter publishes r on LifecycleStream and waits until the outbox is
// empty (everything acknowledged by the broker) or the timeout.
func (c *Client) drainAfter(ctx context.Context, timeout time.Duration, r Reading) error {
	if err := c.Publish(ctx, LifecycleStream, r); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for c.outbox.Stats().Len > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("the broker did not acknowledge the last %d messages within %v; erasing anyway", c.outbox.Stats().Len, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// Revoker revokes certificates; *identity.CA implements it.
type Revoker interface {
	Revoke(cert *x509.Certificate, reason int) error
}

// CertificateRegistry is a [Certificates] whose entries can be removed:
// what [ForgetDevice] clears ([MemoryCertificates]). The fleet's cloud
// store does the whole of ForgetDevice in its own transactions
// (cloud/store's Store.ForgetDevice).
type CertificateRegistry interface {
	Certificates
	Remove(device string)
}

var _ CertificateRegistry = (*MemoryCertificates)(nil)

// ForgetDevice is the cloud half of a decommission or forget request:
// every certificate registered for device is revoked (reason cessation of
// operation, RFC 5280 5.3.1), so brokers (through the CRL) and the
// registrar refuse it; the certificates leave the registry; and the
// verifier drops its replay window, session keys and cached verifications
// for it. Send the [DecommissionCommand] first, while the device can still
// receive it. Telemetry already stored by the application is the
// application's to delete, and so is the device's entry in a
// [ConsentLedger] or [SecurityMonitor] (their Forget methods). On a failed
// revocation the registry entry is kept, so that ForgetDevice can run
// again.
func ForgetDevice(ctx context.Context, device string, certs CertificateRegistry, ca Revoker, v *Verifier) error {
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
