// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/identity/attest"
	"github.com/d2c-iot/d2c/internal/limits"
)

var _ attest.NonceStore = (*Store)(nil)

// Issue implements [attest.NonceStore] over the attestation_nonces table,
// with the bounds of attest.MemoryNonceStore: a device's fifth
// outstanding nonce evicts its oldest, and past 100,000 unexpired nonces
// in all Issue fails with [attest.ErrTooManyChallenges]. Expired nonces
// are deleted as new ones are issued.
func (s *Store) Issue(ctx context.Context, device, nonce string, issued, expiry time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q("DELETE FROM attestation_nonces WHERE expires_ms <= ?"), issued.UnixMilli()); err != nil {
			return fmt.Errorf("store: nonces: %w", err)
		}
		rows, err := tx.QueryContext(ctx, s.q("SELECT nonce FROM attestation_nonces WHERE device = ? ORDER BY issued_ms DESC"+s.d.forShare), device)
		if err != nil {
			return fmt.Errorf("store: nonces: %w", err)
		}
		var own []string
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				rows.Close()
				return fmt.Errorf("store: nonces: %w", err)
			}
			own = append(own, n)
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("store: nonces: %w", err)
		}
		for _, old := range own[min(len(own), limits.AttestationNoncesPerDevice-1):] {
			if _, err := tx.ExecContext(ctx, s.q("DELETE FROM attestation_nonces WHERE nonce = ?"), old); err != nil {
				return fmt.Errorf("store: nonces: %w", err)
			}
		}
		var one int
		switch err := tx.QueryRowContext(ctx, s.q("SELECT 1 FROM attestation_nonces WHERE nonce = ?"), nonce).Scan(&one); {
		case err == nil:
			return fmt.Errorf("store: nonce issued twice")
		case !errNoRows(err):
			return fmt.Errorf("store: nonces: %w", err)
		}
		var total int
		if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM attestation_nonces").Scan(&total); err != nil {
			return fmt.Errorf("store: nonces: %w", err)
		}
		if total >= limits.AttestationNonces {
			return fmt.Errorf("%w: %d unexpired", attest.ErrTooManyChallenges, total)
		}
		if _, err := tx.ExecContext(ctx, s.q("INSERT INTO attestation_nonces (nonce, device, issued_ms, expires_ms) VALUES (?, ?, ?, ?)"),
			nonce, device, issued.UnixMilli(), expiry.UnixMilli()); err != nil {
			return fmt.Errorf("store: nonce issued twice or not recorded: %w", err)
		}
		return nil
	})
}

// Consume implements [attest.NonceStore]: of concurrent calls for one
// nonce, in any number of processes, at most one succeeds (the row is
// locked, then deleted, in one transaction).
func (s *Store) Consume(ctx context.Context, device, nonce string, now time.Time) (time.Time, error) {
	var issued, expiry time.Time
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var owner string
		var issuedMS, expiresMS int64
		err := tx.QueryRowContext(ctx, s.q("SELECT device, issued_ms, expires_ms FROM attestation_nonces WHERE nonce = ?"+s.d.forShare), nonce).
			Scan(&owner, &issuedMS, &expiresMS)
		switch {
		case errNoRows(err):
			return attest.ErrReplay
		case err != nil:
			return fmt.Errorf("store: nonces: %w", err)
		case owner != device:
			// Left in place, so that another device cannot burn it.
			return fmt.Errorf("%w: nonce issued to %q, answered by %q", attest.ErrWrongDevice, owner, device)
		}
		if _, err := tx.ExecContext(ctx, s.q("DELETE FROM attestation_nonces WHERE nonce = ?"), nonce); err != nil {
			return fmt.Errorf("store: nonces: %w", err)
		}
		issued, expiry = time.UnixMilli(issuedMS), time.UnixMilli(expiresMS)
		return nil
	})
	if err != nil {
		return time.Time{}, err
	}
	if !now.Before(expiry) {
		return time.Time{}, fmt.Errorf("%w: %w: nonce expired at %s", attest.ErrReplay, attest.ErrExpired, expiry.UTC().Format(time.RFC3339))
	}
	return issued, nil
}
