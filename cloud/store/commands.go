package store

import (
	"context"
	"database/sql"
	"fmt"
)

// ReserveCommandID returns the ID of a new command to device: above every
// ID reserved for that device before, by any process (the device refuses
// an ID not above the last one it ran), and at least the current time in
// microseconds, so IDs also rise across a store that was reset. Sign the
// command with it ([transport.CommandSigner]).
func (s *Store) ReserveCommandID(ctx context.Context, device, name string) (uint64, error) {
	var id int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q("INSERT INTO devices (id, created_ms) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"),
			device, s.now().UnixMilli()); err != nil {
			return fmt.Errorf("store: command ID: %w", err)
		}
		// Lock the device's row: reservations for one device serialize.
		var dev string
		if err := tx.QueryRowContext(ctx, s.q("SELECT id FROM devices WHERE id = ?"+s.d.forShare), device).Scan(&dev); err != nil {
			return fmt.Errorf("store: command ID: %w", err)
		}
		var last sql.NullInt64
		if err := tx.QueryRowContext(ctx, s.q("SELECT MAX(id) FROM commands WHERE device = ?"), device).Scan(&last); err != nil {
			return fmt.Errorf("store: command ID: %w", err)
		}
		id = max(last.Int64+1, s.now().UnixMicro())
		if _, err := tx.ExecContext(ctx, s.q("INSERT INTO commands (device, id, name, reserved_ms) VALUES (?, ?, ?, ?)"),
			device, id, name, s.now().UnixMilli()); err != nil {
			return fmt.Errorf("store: command ID: %w", err)
		}
		return nil
	})
	return uint64(id), err
}
