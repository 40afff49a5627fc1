// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

// Security metrics, device half (ETSI EN 303 645 provision 5.10): the
// client counts security-relevant events and reports them periodically as
// signed telemetry on SecurityStream. The cloud half is SecurityMonitor
// (security_monitor.go).

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sync"
	"time"
)

// Security metrics the client counts. Each is a counter name in a
// [SecurityReport] and a key of [SecurityMonitor.Thresholds].
const (
	// MetricAuthFailures counts connection attempts the broker refused
	// because of the device certificate ([ErrCertificateRejected]).
	MetricAuthFailures = "auth_failures"
	// MetricConnectFailures counts failed connection attempts, whatever
	// the cause.
	MetricConnectFailures = "connect_failures"
	// MetricReconnects counts connections after the first.
	MetricReconnects = "reconnects"
	// MetricMessagesRefused counts messages the broker refused for good
	// (PUBACK 0x87 not authorized...).
	MetricMessagesRefused = "messages_refused"
	// MetricCommandsRefused counts commands that failed verification
	// (forged, replayed, expired, for another device).
	MetricCommandsRefused = "commands_refused"
	// MetricOutboxFull counts Publish calls refused because the outbox
	// was full.
	MetricOutboxFull = "outbox_full"
	// MetricOutboxExpired counts stored messages dropped at their expiry.
	MetricOutboxExpired = "outbox_expired"
	// MetricOutboxQuarantined counts torn or corrupt outbox data set aside.
	MetricOutboxQuarantined = "outbox_quarantined"
)

var builtinMetrics = map[string]bool{MetricAuthFailures: true, MetricConnectFailures: true, MetricReconnects: true,
	MetricMessagesRefused: true, MetricCommandsRefused: true, MetricOutboxFull: true, MetricOutboxExpired: true,
	MetricOutboxQuarantined: true}

// DefaultSecurityReportInterval is the default of
// [ClientConfig.SecurityReportInterval].
const DefaultSecurityReportInterval = 5 * time.Minute

const (
	// maxMetricName bounds a counter name, in bytes.
	maxMetricName = 32
	// maxCustomMetrics bounds the kinds RecordSecurityEvent accepts.
	maxCustomMetrics = 16
	// maxReportCounters bounds the counters of a report a decoder accepts.
	maxReportCounters = 64
	// staleReports: a report still unacknowledged after this many
	// intervals no longer holds the next one back.
	staleReports = 10
)

// validMetricName: 1 to 32 bytes of [a-z0-9_], starting with a letter.
func validMetricName(s string) bool {
	if s == "" || len(s) > maxMetricName || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// securityBody is the JSON body of a security report (docs/protocol.md).
type securityBody struct {
	V      int               `json:"v"`
	Since  int64             `json:"since"`
	Counts map[string]uint64 `json:"counts"`
	Totals map[string]uint64 `json:"totals"`
}

// SecurityReport is a device's security-metrics report, as carried on
// [SecurityStream].
type SecurityReport struct {
	Device    string
	Boot, Seq uint64
	// Since and Time bound the period the report covers, by the device's
	// clock: from the previous report (or the client's start) to this one.
	Since, Time time.Time
	// Counts holds the events of each counter within the period, Totals
	// those since the client started (Dial); counters at zero are absent.
	Counts, Totals map[string]uint64
}

// ParseSecurityReport decodes the security report of a verified record of
// [SecurityStream] (one reading, a JSON body). The decoding is strict:
// unknown fields, another version, bad counter names or more than 64
// counters are refused with an error wrapping [ErrMalformed].
func ParseSecurityReport(r Record) (SecurityReport, error) {
	if r.Stream != SecurityStream {
		return SecurityReport{}, fmt.Errorf("%w: security report: record of stream %q, want %q", ErrMalformed, clip(r.Stream), SecurityStream)
	}
	if len(r.Readings) != 1 {
		return SecurityReport{}, fmt.Errorf("%w: security report: %d readings, want 1", ErrMalformed, len(r.Readings))
	}
	var b securityBody
	if err := decodeStrictJSON(r.Readings[0].Body, &b); err != nil {
		return SecurityReport{}, fmt.Errorf("%w: security report: %v", ErrMalformed, err)
	}
	if b.V != 1 {
		return SecurityReport{}, fmt.Errorf("%w: security report: version %d, want 1", ErrMalformed, b.V)
	}
	for _, m := range []map[string]uint64{b.Counts, b.Totals} {
		if len(m) > maxReportCounters {
			return SecurityReport{}, fmt.Errorf("%w: security report: %d counters, at most %d", ErrMalformed, len(m), maxReportCounters)
		}
		for k := range m {
			if !validMetricName(k) {
				return SecurityReport{}, fmt.Errorf("%w: security report: counter name %q", ErrMalformed, clip(k))
			}
		}
	}
	return SecurityReport{Device: r.Device, Boot: r.Boot, Seq: r.Seq, Since: time.UnixMilli(b.Since), Time: r.Time,
		Counts: nonZero(b.Counts), Totals: nonZero(b.Totals)}, nil
}

func nonZero(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

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
	if !validMetricName(kind) || builtinMetrics[kind] {
		return fmt.Errorf("transport: security event kind %q: want 1 to %d bytes of [a-z0-9_], not a built-in counter", clip(kind), maxMetricName)
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
		MetricAuthFailures:      c.authFailures.Load(),
		MetricConnectFailures:   c.connectFailures.Load(),
		MetricMessagesRefused:   c.refused.Load(),
		MetricCommandsRefused:   c.cmdRefused.Load(),
		MetricOutboxFull:        c.outboxFull.Load(),
		MetricOutboxExpired:     ob.Expired,
		MetricOutboxQuarantined: ob.Quarantined,
	}
	if n := c.connects.Load(); n > 1 {
		t[MetricReconnects] = n - 1
	}
	c.sec.mu.Lock()
	maps.Copy(t, c.sec.custom)
	c.sec.mu.Unlock()
	return nonZero(t)
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
	body, err := json.Marshal(securityBody{V: 1, Since: s.since.UnixMilli(), Counts: counts, Totals: totals})
	if err != nil {
		return err
	}
	ids, err := c.store(ctx, sealRequest{PublishOptions{Stream: SecurityStream}, []Reading{{Time: now, Body: body}}})
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
