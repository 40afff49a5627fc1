// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

// Security metrics, device half (ETSI EN 303 645 provision 5.10): the
// client counts security-relevant events and reports them periodically as
// signed telemetry on wire.SecurityStream. The report format and the cloud half
// (security.Monitor) are in package security.

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/security"
	"github.com/d2c-iot/d2c/transport/wire"
)

// DefaultSecurityReportInterval is the default of
// [ClientConfig.SecurityReportInterval].
const DefaultSecurityReportInterval = 5 * time.Minute

const (
	// maxCustomMetrics bounds the kinds RecordSecurityEvent accepts.
	maxCustomMetrics = 16
	// staleReports: a report still unacknowledged after this many
	// intervals no longer holds the next one back.
	staleReports = 10
)

// securityMetrics is the client's reporting state.
type securityMetrics struct {
	mu     sync.Mutex
	custom map[string]uint64 // RecordSecurityEvent counters
	last   map[string]uint64 // totals as of the last report queued
	since  time.Time         // when that report was made (or Dial)
	// pending is the outbox ID of the last report queued, until its PUBACK
	// (or refusal); pendingAt when it was queued.
	pending   uint64
	pendingAt time.Time
}

// RecordSecurityEvent counts one event of an application-defined kind in
// the client's security metrics, reported with the built-in counters (an
// update agent's failed verification or installation, say, as
// "update_failures"). kind is 1 to 32 bytes of [a-z0-9_] starting with a
// letter, not a built-in counter name; at most 16 kinds per client.
func (c *Client) RecordSecurityEvent(kind string) error {
	if !security.ValidMetricName(kind) || security.IsBuiltin(kind) {
		return fmt.Errorf("transport: security event kind %q: want 1 to %d bytes of [a-z0-9_], not a built-in counter", textutil.Clip(kind), security.MaxMetricName)
	}
	s := &c.sec
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.custom[kind]; !ok && len(s.custom) >= maxCustomMetrics {
		return fmt.Errorf("transport: security event kind %q: at most %d kinds", kind, maxCustomMetrics)
	}
	s.custom[kind]++
	return nil
}

// securityTotals returns every counter since Dial, zeros omitted.
func (c *Client) securityTotals() map[string]uint64 {
	ob := c.outbox.Stats()
	t := map[string]uint64{
		security.MetricAuthFailures:      c.authFailures.Load(),
		security.MetricConnectFailures:   c.connectFailures.Load(),
		security.MetricMessagesRefused:   c.refused.Load(),
		security.MetricCommandsRefused:   c.cmdRefused.Load(),
		security.MetricOutboxFull:        c.outboxFull.Load(),
		security.MetricOutboxExpired:     ob.Expired,
		security.MetricOutboxQuarantined: ob.Quarantined,
	}
	if n := c.connects.Load(); n > 1 {
		t[security.MetricReconnects] = n - 1
	}
	c.sec.mu.Lock()
	maps.Copy(t, c.sec.custom)
	c.sec.mu.Unlock()
	maps.DeleteFunc(t, func(_ string, v uint64) bool { return v == 0 })
	return t
}

// reportSecurity publishes a security report every interval while
// something changed since the last one, holding a report back while the
// previous one is still unacknowledged (so that a device offline for days
// queues one report, not thousands; its counts then cover the whole
// period). It also retries consent events a failure left unqueued.
func (c *Client) reportSecurity(ctx context.Context, interval time.Duration) {
	defer c.bg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.consent.retry(ctx)
		if err := c.queueSecurityReport(ctx, interval); err != nil {
			c.log.Warn("security report not queued", "err", err)
		}
	}
}

// queueSecurityReport stores one security report if there is news and the
// previous one is acknowledged (or stale).
func (c *Client) queueSecurityReport(ctx context.Context, interval time.Duration) error {
	now := c.cfg.Store.Clock().Now()
	totals := c.securityTotals()
	s := &c.sec
	// Held until the report is stored and noted as pending, so that its
	// PUBACK (securityDelivered) cannot be handled before.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending != 0 && now.Sub(s.pendingAt) < staleReports*interval {
		return nil
	}
	counts := map[string]uint64{}
	for k, v := range totals {
		if v > s.last[k] {
			counts[k] = v - s.last[k]
		}
	}
	if len(counts) == 0 {
		return nil
	}
	body, err := security.Report{Since: s.since, Counts: counts, Totals: totals}.Body()
	if err != nil {
		return err
	}
	ids, err := c.store(ctx, sealRequest{PublishOptions{Stream: wire.SecurityStream}, []Reading{{Time: now, Body: body}}})
	if err != nil {
		return err
	}
	s.last, s.since = totals, now
	s.pending, s.pendingAt = ids[len(ids)-1], now
	return nil
}

// securityDelivered notes the PUBACK (or final refusal) of a report.
func (c *Client) securityDelivered(id uint64) {
	c.sec.mu.Lock()
	defer c.sec.mu.Unlock()
	if c.sec.pending == id {
		c.sec.pending = 0
	}
}
