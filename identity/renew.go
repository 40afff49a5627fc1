// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Renewer keeps a device certificate fresh: it renews when a fraction of the
// lifetime has passed (plus jitter, so a fleet enrolled together does not
// renew together), and on failure keeps the current certificate and retries
// with exponential backoff and full jitter.
type Renewer struct {
	// Store holds the identity. Required.
	Store *Store
	// Client reaches the registrar. Its anchors and clock come from Store.
	Client ESTClient
	// RenewAt is the fraction of the certificate lifetime after which it
	// renews. Default 2/3.
	RenewAt float64
	// Jitter is the fraction of the lifetime spread randomly over renewal
	// times. Default 1/10.
	Jitter float64
	// RetryMin and RetryMax bound the backoff after a failure. Defaults
	// 1 minute and 6 hours.
	RetryMin, RetryMax time.Duration
	// Options are passed to [Store.Renew].
	Options RenewOptions
	// OnRenew, if set, is called with each new identity.
	OnRenew func(*Identity)
	// Logger receives renewal events. Default: none.
	Logger *slog.Logger

	// after is time.After; tests replace it.
	after func(time.Duration) <-chan time.Time
}

// NextRenewal returns when the renewer would renew cert-holding identity id
// (before jitter).
func (r *Renewer) NextRenewal(id *Identity) time.Time {
	leaf := id.Certificate()
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	at := r.RenewAt
	if at <= 0 || at >= 1 {
		at = 2.0 / 3
	}
	return leaf.NotBefore.Add(time.Duration(float64(life) * at))
}

// Run renews until ctx is done. It returns ctx's error, or an error wrapping
// [ErrCertExpired] when the certificate expired without a successful
// renewal and RenewOptions.AllowExpired is off: the device must enroll
// again.
func (r *Renewer) Run(ctx context.Context) error {
	if r.Store == nil {
		return errors.New("identity: renewer needs a store")
	}
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	after := r.after
	if after == nil {
		after = time.After
	}
	retryMin, retryMax := r.RetryMin, r.RetryMax
	if retryMin <= 0 {
		retryMin = time.Minute
	}
	if retryMax < retryMin {
		retryMax = max(6*time.Hour, retryMin)
	}
	jitter := r.Jitter
	if jitter <= 0 || jitter >= 1 {
		jitter = 0.1
	}
	failures := 0
	var due time.Time
	for {
		id, err := r.Store.Current()
		if err != nil {
			return err
		}
		if due.IsZero() {
			leaf := id.Certificate()
			spread := time.Duration(rand.Float64() * jitter * float64(leaf.NotAfter.Sub(leaf.NotBefore)))
			due = r.NextRenewal(id).Add(spread)
			log.Info("renewal scheduled", "device", id.DeviceID, "at", due, "expires", leaf.NotAfter)
		}
		wait := due.Sub(r.Store.Clock().Now())
		if wait > 0 {
			// Re-evaluate at least hourly: clocks jump on devices.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-after(min(wait, time.Hour)):
			}
			continue
		}
		newID, err := r.Store.Renew(ctx, r.Client, r.Options)
		if err == nil {
			failures = 0
			due = time.Time{}
			log.Info("certificate renewed", "device", newID.DeviceID, "generation", newID.Generation,
				"expires", newID.Certificate().NotAfter)
			if r.OnRenew != nil {
				r.OnRenew(newID)
			}
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrCertExpired) && !r.Options.AllowExpired {
			log.Error("certificate expired; enrollment needed", "device", id.DeviceID, "err", err)
			return err
		}
		failures++
		backoff := retryMin << min(failures-1, 30)
		if backoff > retryMax || backoff <= 0 {
			backoff = retryMax
		}
		backoff = time.Duration(rand.Int64N(int64(backoff)) + 1) // full jitter
		log.Warn("renewal failed; keeping the current certificate", "device", id.DeviceID,
			"failures", failures, "retry_in", backoff, "err", err)
		due = r.Store.Clock().Now().Add(backoff)
	}
}
