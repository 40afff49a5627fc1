// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/transport/consent"
)

// loadConsent reads the consent events of devices into a ledger: the
// consent state Accept applies to the batch.
func (s *Store) loadConsent(ctx context.Context, tx *sql.Tx, devices []string) (*consent.Ledger, error) {
	l := &consent.Ledger{MaxDevices: math.MaxInt}
	for start := 0; start < len(devices); start += 500 {
		chunk := devices[start:min(start+500, len(devices))]
		args := make([]any, len(chunk))
		for i, d := range chunk {
			args[i] = d
		}
		rows, err := tx.QueryContext(ctx, s.q("SELECT device, stream, boot, seq, granted, purpose, change, time_ms FROM consent WHERE device IN (?"+
			strings.Repeat(", ?", len(chunk)-1)+")"), args...)
		if err != nil {
			return nil, fmt.Errorf("store: read consent: %w", err)
		}
		for rows.Next() {
			var (
				ev                        consent.Event
				boot, seq, change, timeMS int64
			)
			if err := rows.Scan(&ev.Device, &ev.Stream, &boot, &seq, &ev.Granted, &ev.Purpose, &change, &timeMS); err != nil {
				rows.Close()
				return nil, fmt.Errorf("store: read consent: %w", err)
			}
			ev.Boot, ev.Seq, ev.Change, ev.Time = uint64(boot), uint64(seq), uint64(change), time.UnixMilli(timeMS)
			if err := l.ObserveEvent(ev); err != nil {
				rows.Close()
				return nil, fmt.Errorf("store: consent event of %s: %w", ev.Device, err)
			}
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("store: read consent: %w", err)
		}
	}
	return l, nil
}

// keepConsent records a consent event; a withdrawal deletes the events of
// its stream it supersedes (the ledger needs only the latest withdrawal
// and the grants after it).
func (s *Store) keepConsent(ctx context.Context, tx *sql.Tx, ev consent.Event) error {
	if ev.Boot > math.MaxInt64 || ev.Seq > math.MaxInt64 || ev.Change > math.MaxInt64 {
		return fmt.Errorf("store: consent event of %s out of range", ev.Device)
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO consent (device, stream, boot, seq, granted, purpose, change, time_ms)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`), ev.Device, ev.Stream, int64(ev.Boot), int64(ev.Seq), ev.Granted, ev.Purpose,
		int64(ev.Change), ev.Time.UnixMilli()); err != nil {
		return fmt.Errorf("store: keep consent event: %w", err)
	}
	if !ev.Granted {
		if _, err := tx.ExecContext(ctx, s.q("DELETE FROM consent WHERE device = ? AND stream = ? AND (boot < ? OR boot = ? AND seq < ?)"),
			ev.Device, ev.Stream, int64(ev.Boot), int64(ev.Boot), int64(ev.Seq)); err != nil {
			return fmt.Errorf("store: trim consent events: %w", err)
		}
	}
	return nil
}

// LoadConsentLedger replays the consent events kept into l, for a service
// that consults a [consent.Ledger] in memory (Accept already
// applies them to what it accepts).
func (s *Store) LoadConsentLedger(ctx context.Context, l *consent.Ledger) error {
	rows, err := s.db.QueryContext(ctx, "SELECT device, stream, boot, seq, granted, purpose, change, time_ms FROM consent ORDER BY device, stream, boot, seq")
	if err != nil {
		return fmt.Errorf("store: read consent: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			ev                        consent.Event
			boot, seq, change, timeMS int64
		)
		if err := rows.Scan(&ev.Device, &ev.Stream, &boot, &seq, &ev.Granted, &ev.Purpose, &change, &timeMS); err != nil {
			return fmt.Errorf("store: read consent: %w", err)
		}
		ev.Boot, ev.Seq, ev.Change, ev.Time = uint64(boot), uint64(seq), uint64(change), time.UnixMilli(timeMS)
		if err := l.ObserveEvent(ev); err != nil {
			return fmt.Errorf("store: consent event of %s: %w", ev.Device, err)
		}
	}
	return rows.Err()
}
