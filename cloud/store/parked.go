// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/transport"
)

var _ transport.EnvelopeParking = (*Store)(nil)

// Parking bounds: envelopes parked per device (a device seals at most a
// Receive Maximum's worth under a key before the key's delivery is
// acknowledged, so a genuine device never comes near it), and how long an
// envelope waits for a key that never comes.
const (
	parkedPerDevice = 256
	parkedFor       = 24 * time.Hour
)

// ErrParkingFull: a device has parkedPerDevice envelopes waiting for
// session keys; more are refused.
var ErrParkingFull = errors.New("store: too many envelopes parked for the device")

// Park implements [transport.EnvelopeParking]: it keeps m until the
// delivery of device's session key keyID is kept. Envelopes parked for a
// day are deleted.
func (s *Store) Park(ctx context.Context, device, keyID string, m transport.Inbound) error {
	now := s.now()
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q("DELETE FROM parked WHERE received_ms < ?"), now.Add(-parkedFor).UnixMilli()); err != nil {
			return fmt.Errorf("store: park: %w", err)
		}
		var n int
		if err := tx.QueryRowContext(ctx, s.q("SELECT COUNT(*) FROM parked WHERE device = ?"), device).Scan(&n); err != nil {
			return fmt.Errorf("store: park: %w", err)
		}
		if n >= parkedPerDevice {
			return fmt.Errorf("%w: %s has %d", ErrParkingFull, device, n)
		}
		if _, err := tx.ExecContext(ctx, s.q("INSERT INTO parked (device, key_id, topic, payload, received_ms) VALUES (?, ?, ?, ?, ?)"),
			device, keyID, m.Topic, m.Payload, now.UnixMilli()); err != nil {
			return fmt.Errorf("store: park: %w", err)
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrParkingFull) {
		// Not kept, not refused: the verifier holds the message.
		err = fmt.Errorf("%w: %w", transport.ErrReplayState, err)
	}
	return err
}

// Parked implements [transport.EnvelopeParking]: up to max envelopes
// whose session key's delivery is now kept, oldest first.
func (s *Store) Parked(ctx context.Context, max int) ([]transport.ParkedEnvelope, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT p.id, p.topic, p.payload FROM parked p
		WHERE EXISTS (SELECT 1 FROM session_keys k WHERE k.device = p.device AND k.key_id = p.key_id)
		ORDER BY p.id LIMIT ?`), max)
	if err != nil {
		return nil, fmt.Errorf("store: parked: %w", err)
	}
	defer rows.Close()
	var out []transport.ParkedEnvelope
	for rows.Next() {
		var e transport.ParkedEnvelope
		if err := rows.Scan(&e.ID, &e.Topic, &e.Payload); err != nil {
			return nil, fmt.Errorf("store: parked: %w", err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// Unpark implements [transport.EnvelopeParking].
func (s *Store) Unpark(ctx context.Context, ids []int64) error {
	for start := 0; start < len(ids); start += 500 {
		chunk := ids[start:min(start+500, len(ids))]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		if _, err := s.db.ExecContext(ctx, s.q("DELETE FROM parked WHERE id IN (?"+strings.Repeat(", ?", len(chunk)-1)+")"), args...); err != nil {
			return fmt.Errorf("store: unpark: %w", err)
		}
	}
	return nil
}
