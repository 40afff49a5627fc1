// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/consent"
	"github.com/d2c-iot/d2c/transport/wire"
)

// windowSize is the replay window's width in sequence numbers: the
// protocol's 256 (docs/protocol.md), the device's sending window.
const windowSize = 256

// keptBoots is how many boots of a device keep a replay window: the
// current and the previous (messages queued before a reboot still
// arrive), as the in-memory replay.Window.
const keptBoots = 2

var _ transport.ReplayState = (*Store)(nil)

// window is one (device, boot) replay window: the highest seq accepted
// and bit i of bits set when seq top-i was seen.
type window struct {
	boot, top uint64
	bits      [windowSize / 8]byte
	dirty     bool
	fresh     bool // no row yet
}

func (w *window) seen(d uint64) bool { return w.bits[d/8]&(1<<(d%8)) != 0 }
func (w *window) mark(d uint64)      { w.bits[d/8] |= 1 << (d % 8) }

// shift moves the window up by n: bit i becomes bit i+n.
func (w *window) shift(n uint64) {
	if n >= windowSize {
		w.bits = [windowSize / 8]byte{}
		return
	}
	var out [windowSize / 8]byte
	for i := uint64(0); i+n < windowSize; i++ {
		if w.seen(i) {
			j := i + n
			out[j/8] |= 1 << (j % 8)
		}
	}
	w.bits = out
}

// Accept implements [transport.ReplayState]: in one transaction it
// classifies each record's (device, boot, seq) against the device's replay
// windows, in order, and inserts every fresh record into the records
// table (the durable sink) with its window updates. A record is fresh if
// its boot is newer than the device's newest, or its seq is above the
// window's top, or within the 256 below it and not seen; a duplicate if
// seen; a replay if older than the window or from a boot before the
// previous one. The windows' rows are locked (PostgreSQL: SELECT ... FOR
// UPDATE) so that verifiers sharing the database accept each triple once.
func (s *Store) Accept(ctx context.Context, recs []transport.Record) ([]error, error) {
	verdicts := make([]error, len(recs))
	if len(recs) == 0 {
		return verdicts, nil
	}
	for _, r := range recs {
		if r.Boot > math.MaxInt64 || r.Seq > math.MaxInt64 {
			return nil, fmt.Errorf("store: accept: (boot %d, seq %d) out of range", r.Boot, r.Seq)
		}
	}
	var err error
	bodies := make([][]byte, len(recs))
	for i, r := range recs {
		rs := make([]readingRow, len(r.Readings))
		for j, x := range r.Readings {
			rs[j] = readingRow{Time: x.Time.UnixMilli(), Body: x.Body}
		}
		if bodies[i], err = s.modes.Enc.Marshal(rs); err != nil {
			return nil, fmt.Errorf("store: encode readings: %w", err)
		}
	}
	devices := make([]string, 0, len(recs))
	for _, r := range recs {
		devices = append(devices, r.Device)
	}
	slices.Sort(devices) // lock rows in one order: replicas never deadlock
	devices = slices.Compact(devices)

	err = s.tx(ctx, func(tx *sql.Tx) error {
		clear(verdicts)
		wins, err := s.loadWindows(ctx, tx, devices)
		if err != nil {
			return err
		}
		ledger, err := s.loadConsent(ctx, tx, devices)
		if err != nil {
			return err
		}
		var fresh []int
		for i, r := range recs {
			if verdicts[i] = classify(wins, r.Device, r.Boot, r.Seq); verdicts[i] != nil {
				continue
			}
			if verdicts[i], err = s.applyConsent(ctx, tx, ledger, r); err != nil {
				return err
			}
			if verdicts[i] == nil {
				fresh = append(fresh, i)
			}
		}
		// Insert in one global order, so that two replicas inserting the
		// rows of a device new to both wait for each other instead of
		// deadlocking (the loser then retries and finds them).
		slices.SortFunc(fresh, func(a, b int) int {
			x, y := recs[a], recs[b]
			return cmp.Or(cmp.Compare(x.Device, y.Device), cmp.Compare(x.Boot, y.Boot), cmp.Compare(x.Seq, y.Seq))
		})
		// Many rows per statement: one round trip to PostgreSQL for the
		// batch's records, not one per record.
		now := s.now().UnixMilli()
		err = s.insertRows(ctx, tx, "INSERT INTO records (device, stream, boot, seq, time_ms, received_ms, readings) VALUES ", "", 7, len(fresh),
			func(args []any, k int) []any {
				r := recs[fresh[k]]
				return append(args, r.Device, r.Stream, int64(r.Boot), int64(r.Seq), r.Time.UnixMilli(), now, bodies[fresh[k]])
			})
		if err != nil {
			return fmt.Errorf("store: insert records: %w", err)
		}
		return s.saveWindows(ctx, tx, devices, wins, now)
	})
	if err != nil {
		return nil, err
	}
	return verdicts, nil
}

// applyConsent keeps the consent event a fresh record of the consent
// stream carries, and refuses (with [consent.ErrNoConsent]) a fresh
// record that the consent events of its device and stream do not allow: it
// was sealed before a withdrawal, or after it with no grant since
// ([consent.Ledger]). The record stays seen in the replay window.
// It returns the record's verdict, and an error if the database failed.
func (s *Store) applyConsent(ctx context.Context, tx *sql.Tx, ledger *consent.Ledger, r transport.Record) (verdict, err error) {
	if r.Stream == wire.CommandResultStream {
		return s.keepCommandResult(ctx, tx, r)
	}
	if r.Stream == wire.ConsentStream {
		ev, err := consent.ParseEvent(r)
		if err != nil {
			return err, nil
		}
		if err := ledger.ObserveEvent(ev); err != nil {
			return err, nil
		}
		return nil, s.keepConsent(ctx, tx, ev)
	}
	if !ledger.Allowed(r) {
		return fmt.Errorf("%w: %s stream %q boot %d seq %d: consent withdrawn when it was sealed", consent.ErrNoConsent, r.Device, r.Stream, r.Boot, r.Seq), nil
	}
	return nil, nil
}

// readingRow is one reading as the records table stores it.
type readingRow struct {
	_    struct{} `cbor:",toarray"`
	Time int64
	Body []byte
}

// loadWindows reads and locks the replay windows of devices.
func (s *Store) loadWindows(ctx context.Context, tx *sql.Tx, devices []string) (map[string][]*window, error) {
	wins := make(map[string][]*window, len(devices))
	for start := 0; start < len(devices); start += 500 {
		chunk := devices[start:min(start+500, len(devices))]
		args := make([]any, len(chunk))
		for i, d := range chunk {
			args[i] = d
		}
		query := "SELECT device, boot, top, bits FROM replay WHERE device IN (?" + strings.Repeat(", ?", len(chunk)-1) +
			") ORDER BY device, boot" + s.d.forShare
		rows, err := tx.QueryContext(ctx, s.q(query), args...)
		if err != nil {
			return nil, fmt.Errorf("store: read replay windows: %w", err)
		}
		for rows.Next() {
			var (
				dev       string
				boot, top int64
				bits      []byte
			)
			if err := rows.Scan(&dev, &boot, &top, &bits); err != nil {
				rows.Close()
				return nil, fmt.Errorf("store: read replay windows: %w", err)
			}
			w := &window{boot: uint64(boot), top: uint64(top)}
			if len(bits) != len(w.bits) {
				rows.Close()
				return nil, fmt.Errorf("store: replay window of %s boot %d: %d-byte bitmap", dev, boot, len(bits))
			}
			copy(w.bits[:], bits)
			wins[dev] = append(wins[dev], w)
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("store: read replay windows: %w", err)
		}
	}
	return wins, nil
}

// classify decides one arrival against the device's windows (oldest boot
// first), updating them in memory.
func classify(wins map[string][]*window, device string, boot, seq uint64) error {
	ws := wins[device]
	newest := uint64(0)
	if len(ws) > 0 {
		newest = ws[len(ws)-1].boot
	}
	if len(ws) == 0 || boot > newest {
		w := &window{boot: boot, top: seq, dirty: true, fresh: true}
		w.mark(0)
		ws = append(ws, w)
		wins[device] = ws[max(0, len(ws)-keptBoots):] // the older boots are replays from now on
		return nil
	}
	for _, w := range ws {
		if w.boot != boot {
			continue
		}
		if seq > w.top {
			w.shift(seq - w.top)
			w.top = seq
			w.mark(0)
			w.dirty = true
			return nil
		}
		d := w.top - seq
		if d >= windowSize {
			return fmt.Errorf("%w: %s boot %d seq %d is %d behind the newest", wire.ErrReplay, device, boot, seq, d)
		}
		if w.seen(d) {
			return fmt.Errorf("%w: %s boot %d seq %d", wire.ErrDuplicate, device, boot, seq)
		}
		w.mark(d)
		w.dirty = true
		return nil
	}
	return fmt.Errorf("%w: %s boot %d is before boot %d", wire.ErrReplay, device, boot, newest)
}

// saveWindows writes the windows changed, in device order, and deletes
// those of boots older than the kept ones. New windows are inserted (two
// replicas inserting the same one: the second fails with a unique
// violation and its transaction is run again, reading the first's);
// changed ones, whose rows loadWindows locked, are rewritten by one
// INSERT ... ON CONFLICT DO UPDATE, an UPDATE of many rows in one
// statement.
func (s *Store) saveWindows(ctx context.Context, tx *sql.Tx, devices []string, wins map[string][]*window, nowMS int64) error {
	type row struct {
		dev string
		w   *window
	}
	var inserts, updates []row
	for _, dev := range devices {
		ws := wins[dev]
		if len(ws) > 0 && ws[len(ws)-1].fresh {
			if _, err := tx.ExecContext(ctx, s.q("DELETE FROM replay WHERE device = ? AND boot < ?"), dev, int64(ws[0].boot)); err != nil {
				return fmt.Errorf("store: trim replay windows: %w", err)
			}
		}
		for _, w := range ws {
			switch {
			case !w.dirty:
			case w.fresh:
				inserts = append(inserts, row{dev, w})
			default:
				updates = append(updates, row{dev, w})
			}
		}
	}
	for _, c := range []struct {
		rows     []row
		conflict string
	}{
		{inserts, ""},
		{updates, " ON CONFLICT (device, boot) DO UPDATE SET top = excluded.top, bits = excluded.bits, seen_ms = excluded.seen_ms"},
	} {
		err := s.insertRows(ctx, tx, "INSERT INTO replay (device, boot, top, bits, seen_ms) VALUES ", c.conflict, 5, len(c.rows), func(args []any, k int) []any {
			r := c.rows[k]
			return append(args, r.dev, int64(r.w.boot), int64(r.w.top), r.w.bits[:], nowMS)
		})
		if err != nil {
			return fmt.Errorf("store: save replay windows: %w", err)
		}
	}
	return nil
}

// rowsPerStatement bounds the rows of one multi-row INSERT: 256 rows of 7
// columns stay far below SQLite's 32,766 and PostgreSQL's 65,535 bound
// parameters.
const rowsPerStatement = 256

// insertRows runs insert (which ends with "VALUES ") for n rows of cols
// columns, up to rowsPerStatement rows a statement, suffix after the
// rows; add appends the k-th row's values to args.
func (s *Store) insertRows(ctx context.Context, tx *sql.Tx, insert, suffix string, cols, n int, add func(args []any, k int) []any) error {
	for start := 0; start < n; start += rowsPerStatement {
		end := min(start+rowsPerStatement, n)
		var b strings.Builder
		b.WriteString(insert)
		tuple := "(?" + strings.Repeat(", ?", cols-1) + ")"
		args := make([]any, 0, (end-start)*cols)
		for k := start; k < end; k++ {
			if k > start {
				b.WriteString(", ")
			}
			b.WriteString(tuple)
			args = add(args, k)
		}
		b.WriteString(suffix)
		if _, err := tx.ExecContext(ctx, s.q(b.String()), args...); err != nil {
			return err
		}
	}
	return nil
}

// Forget implements [transport.ReplayState]: it deletes device's replay
// windows, session-key deliveries and parked envelopes.
func (s *Store) Forget(ctx context.Context, device string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, table := range []string{"replay", "session_keys", "parked"} {
			if _, err := tx.ExecContext(ctx, s.q("DELETE FROM "+table+" WHERE device = ?"), device); err != nil {
				return fmt.Errorf("store: forget %s: %w", device, err)
			}
		}
		return nil
	})
}

// errNoRows tells sql.ErrNoRows apart.
func errNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }

var _ transport.SessionKeys = (*Store)(nil)

// keptKeyDeliveries is how many session-key deliveries the store keeps per
// device, the newest by their signed (boot, created): the key in use, the
// previous ones for envelopes still queued on the device or in flight.
const keptKeyDeliveries = 8

// PutKeyDelivery implements [transport.SessionKeys]: it keeps d as
// received (encrypted to the cloud key). A delivery already kept is left
// as it is; with 8 kept, one not newer than all of them is refused as a
// replay (it could only evict the keys in use); beyond 8, the oldest are
// deleted.
func (s *Store) PutKeyDelivery(ctx context.Context, d transport.KeyDelivery) error {
	if d.Boot > math.MaxInt64 {
		return fmt.Errorf("store: key delivery boot %d out of range", d.Boot)
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, s.q("SELECT key_id, boot, created_ms FROM session_keys WHERE device = ? ORDER BY boot DESC, created_ms DESC"+s.d.forShare), d.Device)
		if err != nil {
			return fmt.Errorf("store: read key deliveries: %w", err)
		}
		type kept struct {
			id            string
			boot, created int64
		}
		var ks []kept
		for rows.Next() {
			var k kept
			if err := rows.Scan(&k.id, &k.boot, &k.created); err != nil {
				rows.Close()
				return fmt.Errorf("store: read key deliveries: %w", err)
			}
			ks = append(ks, k)
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("store: read key deliveries: %w", err)
		}
		boot, created := int64(d.Boot), d.Created.UnixMilli()
		for _, k := range ks {
			if k.id == d.KeyID {
				return nil
			}
		}
		if len(ks) >= keptKeyDeliveries {
			oldest := ks[len(ks)-1]
			if boot < oldest.boot || boot == oldest.boot && created <= oldest.created {
				return fmt.Errorf("%w: key delivery %q of %s (boot %d) is older than the %d kept", wire.ErrReplay, d.KeyID, d.Device, d.Boot, len(ks))
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO session_keys (device, key_id, boot, created_ms, delivery, received_ms)
			VALUES (?, ?, ?, ?, ?, ?)`), d.Device, d.KeyID, boot, created, d.Envelope, s.now().UnixMilli()); err != nil {
			return fmt.Errorf("store: keep key delivery: %w", err)
		}
		// Keep the newest keptKeyDeliveries, the new one included.
		ks = append(ks, kept{d.KeyID, boot, created})
		slices.SortFunc(ks, func(a, b kept) int {
			return cmp.Or(cmp.Compare(b.boot, a.boot), cmp.Compare(b.created, a.created))
		})
		for _, k := range ks[min(len(ks), keptKeyDeliveries):] {
			if _, err := tx.ExecContext(ctx, s.q("DELETE FROM session_keys WHERE device = ? AND key_id = ?"), d.Device, k.id); err != nil {
				return fmt.Errorf("store: trim key deliveries: %w", err)
			}
		}
		return nil
	})
}

// KeyDelivery implements [transport.SessionKeys].
func (s *Store) KeyDelivery(ctx context.Context, device, keyID string) ([]byte, error) {
	var env []byte
	err := s.db.QueryRowContext(ctx, s.q("SELECT delivery FROM session_keys WHERE device = ? AND key_id = ?"), device, keyID).Scan(&env)
	switch {
	case errNoRows(err):
		return nil, fmt.Errorf("%w: %q for %s", transport.ErrUnknownSessionKey, keyID, device)
	case err != nil:
		return nil, fmt.Errorf("store: read key delivery: %w", err)
	}
	return env, nil
}

// DevicesSeen returns how many devices had a fresh record accepted since
// the given time, by any verifier on the store: the devices connected,
// as the cloud sees them.
func (s *Store) DevicesSeen(ctx context.Context, since time.Time) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, s.q("SELECT COUNT(DISTINCT device) FROM replay WHERE seen_ms >= ?"), since.UnixMilli()).Scan(&n); err != nil {
		return 0, fmt.Errorf("store: devices seen: %w", err)
	}
	return n, nil
}
