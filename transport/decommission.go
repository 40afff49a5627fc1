// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/audit"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/transport/decommission"
)

// Decommission erases what the device holds for the fleet: it closes the
// client, scrubs and removes the transport state directory (the outbox with
// any telemetry not yet sent, the boot counter, command and consent state),
// then destroys the identity ([identity.Store.Destroy]: keys — inside the
// hardware when a Keystore holds them — certificates, anchors, time floor).
// The application's own data is the application's to erase; the update
// agent's state (trusted root and anti-rollback floors, no personal data)
// is kept so that a re-commissioned device cannot be rolled back.
//
// The cloud half is [decommission.Forget]. It goes on past errors, so
// that as much as possible is erased, and returns them joined.
//
// Run it in its own goroutine when a command asks for it, never inside
// [ClientConfig.OnCommand] itself: it closes the client, which waits for the
// command callback to return. With [ClientConfig.Audit] set, the decommission
// is recorded first; the audit log itself lives where the application put
// it and is the application's to keep or erase.
func (c *Client) Decommission(ctx context.Context, store *identity.Store, opts decommission.Options) error {
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

// drainAfter publishes r on decommission.LifecycleStream and waits, at
// most timeout, until the broker acknowledged everything queued
// ([Client.Flush]).
func (c *Client) drainAfter(ctx context.Context, timeout time.Duration, r Reading) error {
	if err := c.Publish(ctx, decommission.LifecycleStream, r); err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.Flush(fctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("the broker did not acknowledge everything queued within %v; erasing anyway: %w", timeout, err)
	}
	return nil
}

var _ decommission.CertificateRegistry = (*MemoryCertificates)(nil)

var _ decommission.Verifier = (*Verifier)(nil)
