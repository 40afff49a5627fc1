// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package security

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Security metrics the client counts. Each is a counter name in a
// [Report] and a key of [Monitor.Thresholds].
const (
	// MetricAuthFailures counts connection attempts the broker refused
	// because of the device certificate (transport.ErrCertificateRejected).
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

// IsBuiltin reports whether name is one of the counters the client keeps
// itself (the Metric constants), which an application cannot record.
func IsBuiltin(name string) bool {
	switch name {
	case MetricAuthFailures, MetricConnectFailures, MetricReconnects, MetricMessagesRefused,
		MetricCommandsRefused, MetricOutboxFull, MetricOutboxExpired, MetricOutboxQuarantined:
		return true
	}
	return false
}

const (
	// MaxMetricName bounds a counter name, in bytes.
	MaxMetricName = 32
	// maxReportCounters bounds the counters of a report a decoder accepts.
	maxReportCounters = 64
)

// ValidMetricName reports whether s is a counter name: 1 to
// [MaxMetricName] bytes of [a-z0-9_], starting with a letter.
func ValidMetricName(s string) bool {
	if s == "" || len(s) > MaxMetricName || s[0] < 'a' || s[0] > 'z' {
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

// reportBody is the JSON body of a security report (docs/protocol.md).
type reportBody struct {
	V      int               `json:"v"`
	Since  int64             `json:"since"`
	Counts map[string]uint64 `json:"counts"`
	Totals map[string]uint64 `json:"totals"`
}

// Report is a device's security-metrics report, as carried on
// [wire.SecurityStream].
type Report struct {
	Device    string
	Boot, Seq uint64
	// Since and Time bound the period the report covers, by the device's
	// clock: from the previous report (or the client's start) to this one.
	Since, Time time.Time
	// Counts holds the events of each counter within the period, Totals
	// those since the client started (Dial); counters at zero are absent.
	Counts, Totals map[string]uint64
}

// ParseReport decodes the security report of a verified record of
// [wire.SecurityStream] (one reading, a JSON body). The decoding is strict:
// unknown fields, another version, bad counter names or more than 64
// counters are refused with an error wrapping [wire.ErrMalformed].
func ParseReport(r wire.Record) (Report, error) {
	if r.Stream != wire.SecurityStream {
		return Report{}, fmt.Errorf("%w: security report: record of stream %q, want %q", wire.ErrMalformed, textutil.Clip(r.Stream), wire.SecurityStream)
	}
	if len(r.Readings) != 1 {
		return Report{}, fmt.Errorf("%w: security report: %d readings, want 1", wire.ErrMalformed, len(r.Readings))
	}
	var b reportBody
	if err := textutil.DecodeStrictJSON(r.Readings[0].Body, &b); err != nil {
		return Report{}, fmt.Errorf("%w: security report: %v", wire.ErrMalformed, err)
	}
	if b.V != 1 {
		return Report{}, fmt.Errorf("%w: security report: version %d, want 1", wire.ErrMalformed, b.V)
	}
	for _, m := range []map[string]uint64{b.Counts, b.Totals} {
		if len(m) > maxReportCounters {
			return Report{}, fmt.Errorf("%w: security report: %d counters, at most %d", wire.ErrMalformed, len(m), maxReportCounters)
		}
		for k := range m {
			if !ValidMetricName(k) {
				return Report{}, fmt.Errorf("%w: security report: counter name %q", wire.ErrMalformed, textutil.Clip(k))
			}
		}
	}
	return Report{Device: r.Device, Boot: r.Boot, Seq: r.Seq, Since: time.UnixMilli(b.Since), Time: r.Time,
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

// Body returns the JSON body of r's reading on [wire.SecurityStream]
// (docs/protocol.md): version 1, Since, Counts and Totals; the record
// carries Device, Boot, Seq and Time.
func (r Report) Body() ([]byte, error) {
	return json.Marshal(reportBody{V: 1, Since: r.Since.UnixMilli(), Counts: r.Counts, Totals: r.Totals})
}
