// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

// ErrNoSuchCommand is returned for a command ID the store never reserved
// for the device.
var ErrNoSuchCommand = errors.New("store: no such command")

// Command is a command to one device as the store keeps it: what was
// asked, by whom, when it was handed to the broker, and the result the
// device reported.
type Command struct {
	Device string
	ID     uint64
	Name   string
	Body   []byte
	// Client is the service that asked for it ("" when unknown).
	Client string
	// Reserved is when the ID was taken; Expires the command's signed
	// expiry (zero for an ID reserved with [Store.ReserveCommandID]).
	Reserved, Expires time.Time
	// Sent is when the broker took the command (zero: not yet, or never).
	Sent time.Time
	// Result is the device's report, nil until it arrives.
	Result *transport.CommandResult
}

// CommandState names where a command is.
type CommandState string

// Command states.
const (
	// CommandUnsent: reserved, but the broker has not taken it (the send
	// failed or is under way).
	CommandUnsent CommandState = "unsent"
	// CommandSent: the broker took it; no result yet.
	CommandSent CommandState = "sent"
	// CommandSucceeded and CommandFailed: the device reported a result.
	CommandSucceeded CommandState = "succeeded"
	CommandFailed    CommandState = "failed"
	// CommandExpired: no result, and past its expiry, after which the
	// device refuses it.
	CommandExpired CommandState = "expired"
)

// State tells where the command is at time now.
func (c Command) State(now time.Time) CommandState {
	switch {
	case c.Result != nil && c.Result.Failed:
		return CommandFailed
	case c.Result != nil:
		return CommandSucceeded
	case !c.Expires.IsZero() && !now.Before(c.Expires):
		return CommandExpired
	case c.Sent.IsZero():
		return CommandUnsent
	}
	return CommandSent
}

// ReserveCommandID returns the ID of a new command to device: above every
// ID reserved for that device before, by any process (the device refuses
// an ID not above the last one it ran), and at least the current time in
// microseconds, so IDs also rise across a store that was reset. Sign the
// command with it ([transport.CommandSigner]).
func (s *Store) ReserveCommandID(ctx context.Context, device, name string) (uint64, error) {
	c, err := s.ReserveCommand(ctx, Command{Device: device, Name: name})
	return c.ID, err
}

// ReserveCommand reserves the ID of a new command to c.Device (as
// [Store.ReserveCommandID] does) and keeps c's name, body, client and
// expiry with it. It returns c with its ID and reservation time.
func (s *Store) ReserveCommand(ctx context.Context, c Command) (Command, error) {
	var id int64
	now := s.now()
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q("INSERT INTO devices (id, created_ms) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"),
			c.Device, now.UnixMilli()); err != nil {
			return fmt.Errorf("store: command ID: %w", err)
		}
		// Lock the device's row: reservations for one device serialize.
		var dev string
		if err := tx.QueryRowContext(ctx, s.q("SELECT id FROM devices WHERE id = ?"+s.d.forShare), c.Device).Scan(&dev); err != nil {
			return fmt.Errorf("store: command ID: %w", err)
		}
		var last sql.NullInt64
		if err := tx.QueryRowContext(ctx, s.q("SELECT MAX(id) FROM commands WHERE device = ?"), c.Device).Scan(&last); err != nil {
			return fmt.Errorf("store: command ID: %w", err)
		}
		id = max(last.Int64+1, now.UnixMicro())
		var expires int64
		if !c.Expires.IsZero() {
			expires = c.Expires.UnixMilli()
		}
		if _, err := tx.ExecContext(ctx, s.q("INSERT INTO commands (device, id, name, reserved_ms, client, body, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?)"),
			c.Device, id, c.Name, now.UnixMilli(), c.Client, c.Body, expires); err != nil {
			return fmt.Errorf("store: command ID: %w", err)
		}
		return nil
	})
	c.ID, c.Reserved = uint64(id), time.UnixMilli(now.UnixMilli())
	return c, err
}

// CommandSent records that the broker took the command, and returns the
// time it recorded.
func (s *Store) CommandSent(ctx context.Context, device string, id uint64) (time.Time, error) {
	now := time.UnixMilli(s.now().UnixMilli())
	res, err := s.db.ExecContext(ctx, s.q("UPDATE commands SET sent_ms = ? WHERE device = ? AND id = ? AND sent_ms IS NULL"),
		now.UnixMilli(), device, int64(id))
	if err != nil {
		return time.Time{}, fmt.Errorf("store: command sent: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		c, err := s.Command(ctx, device, id)
		if err != nil {
			return time.Time{}, err
		}
		return c.Sent, nil
	}
	return now, nil
}

// Command returns the command id of device ([ErrNoSuchCommand] if none).
func (s *Store) Command(ctx context.Context, device string, id uint64) (Command, error) {
	var (
		c                 = Command{Device: device, ID: id}
		reserved, expires int64
		sent, resultMS    sql.NullInt64
		failed            sql.NullBool
		output            []byte
	)
	err := s.db.QueryRowContext(ctx, s.q(`SELECT name, body, client, reserved_ms, expires_ms, sent_ms, result_ms, result_failed, result_output
		FROM commands WHERE device = ? AND id = ?`), device, int64(id)).
		Scan(&c.Name, &c.Body, &c.Client, &reserved, &expires, &sent, &resultMS, &failed, &output)
	if errors.Is(err, sql.ErrNoRows) {
		return Command{}, fmt.Errorf("%w: %s/%d", ErrNoSuchCommand, device, id)
	}
	if err != nil {
		return Command{}, fmt.Errorf("store: read command: %w", err)
	}
	c.Reserved = time.UnixMilli(reserved)
	if expires != 0 {
		c.Expires = time.UnixMilli(expires)
	}
	if sent.Valid {
		c.Sent = time.UnixMilli(sent.Int64)
	}
	if resultMS.Valid {
		c.Result = &transport.CommandResult{ID: id, Failed: failed.Bool, Output: output, Time: time.UnixMilli(resultMS.Int64)}
	}
	return c, nil
}

// keepCommandResult applies the result a fresh record of the command-result
// stream carries to its command: the first result of a command counts; a
// result for a command the store never reserved stays in the records
// table only. It returns the record's verdict (a malformed result is
// refused), and an error if the database failed.
func (s *Store) keepCommandResult(ctx context.Context, tx *sql.Tx, r transport.Record) (verdict, err error) {
	res, err := transport.ParseCommandResult(r)
	if err != nil {
		return err, nil
	}
	if res.ID > 1<<63-1 {
		return fmt.Errorf("%w: command result: ID %d out of range", wire.ErrMalformed, res.ID), nil
	}
	_, err = tx.ExecContext(ctx, s.q(`UPDATE commands SET result_ms = ?, result_failed = ?, result_output = ?
		WHERE device = ? AND id = ? AND result_ms IS NULL`), res.Time.UnixMilli(), res.Failed, res.Output, r.Device, int64(res.ID))
	if err != nil {
		return nil, fmt.Errorf("store: keep command result: %w", err)
	}
	return nil, nil
}
