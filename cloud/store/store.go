// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package store keeps the fleet's cloud state in one database: devices and
// every certificate issued to them, revocations and CRL numbers, used
// enrollment tokens, replay windows, session-key deliveries (as received,
// still encrypted to the cloud key), commands, the consent ledger,
// attestation nonces, and the verified records accepted for the
// application.
//
// Two backends, one schema: SQLite (pure Go, embedded, the default: one
// machine, zero setup, CGO_ENABLED=0 builds keep working) and PostgreSQL
// (github.com/jackc/pgx) for any number of processes on any number of
// machines. [Open] picks the backend from the URL and applies the
// versioned migrations embedded in the package (migrations/<dialect>/),
// each once, in order, under a lock, so that replicas starting together
// do not race; a database whose schema is newer than this code is refused
// ([ErrSchemaTooNew]).
//
// Correctness never depends on which process does the work: single use,
// exactly-once acceptance and replay refusal are decided inside database
// transactions (row locks, unique keys, conditional updates), and many
// messages share one transaction, as the device's outbox shares one fsync.
// docs/architecture.md describes the schema and its invariants.
//
// Only cloud programs import this package: no device package links a
// database driver.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"

	"github.com/d2c-iot/d2c/internal/cborx"
	"github.com/d2c-iot/d2c/internal/limits"
)

// ErrSchemaTooNew is returned by [Open] for a database migrated by a newer
// version of d2c: this code does not know its schema and will not write
// to it.
var ErrSchemaTooNew = errors.New("store: database schema is newer than this version of d2c")

// ErrBadURL is returned by [Open] for a URL that names no backend.
var ErrBadURL = errors.New("store: bad database URL")

// Config configures [Open].
type Config struct {
	// URL names the database: "postgres://..." or "postgresql://..." for
	// PostgreSQL (any libpq-style URL pgx accepts), "sqlite:PATH" or a
	// plain file path for SQLite. Required.
	URL string
	// Now is the clock for the times the store records. Default time.Now.
	Now func() time.Time
	// Logger receives migrations applied. Default: none.
	Logger *slog.Logger
}

// Store is an open cloud store. It is safe for concurrent use by many
// goroutines, and any number of processes may open the same PostgreSQL
// database (SQLite: the processes of one machine, serialized by SQLite's
// own locking).
type Store struct {
	db    *sql.DB
	d     dialect
	modes cborx.Modes
	now   func() time.Time
	log   *slog.Logger

	revCache  revCache
	certCache certCache
	reports   reportCache
}

// dialect is what differs between the backends.
type dialect struct {
	name     string // "sqlite" or "postgres"
	dollar   bool   // placeholders $1, $2... instead of ?
	forShare string // row-lock suffix for SELECT ... (PostgreSQL: FOR UPDATE)
}

var (
	sqlite   = dialect{name: "sqlite"}
	postgres = dialect{name: "postgres", dollar: true, forShare: " FOR UPDATE"}
)

//go:embed migrations
var migrations embed.FS

// Open opens the database cfg.URL names, creating an SQLite file (mode
// 0600) if it does not exist, and migrates it to this version's schema.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	d, driver, dsn, err := parseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", d.name, err)
	}
	if d == sqlite {
		// One writer at a time in SQLite; readers share the WAL. A few
		// connections keep reads concurrent, writes queue on the lock
		// (busy_timeout) rather than failing.
		db.SetMaxOpenConns(4)
	} else {
		db.SetMaxOpenConns(16)
	}
	modes, err := cborx.New(limits.Readings)
	if err != nil {
		db.Close()
		return nil, err
	}
	s := &Store{db: db, d: d, modes: modes, now: cfg.Now, log: cfg.Logger}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if err := s.connect(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: connect to %s: %w", d.name, err)
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// connect makes the first connection. SQLite's SQLITE_BUSY at connect
// (processes opening one new file together) is retried for up to the busy
// timeout, as the busy handler would have waited for any other lock.
func (s *Store) connect(ctx context.Context) error {
	deadline := time.Now().Add(sqliteBusyTimeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		err := s.db.PingContext(ctx)
		if err == nil || !sqliteBusy(err) || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// sqliteBusyTimeout is how long an SQLite writer waits for the lock.
const sqliteBusyTimeout = 10 * time.Second

// parseURL picks the backend and the driver's data source name.
func parseURL(u string) (dialect, string, string, error) {
	switch {
	case u == "":
		return dialect{}, "", "", fmt.Errorf("%w: empty (want postgres://... or sqlite:PATH)", ErrBadURL)
	case strings.HasPrefix(u, "postgres://"), strings.HasPrefix(u, "postgresql://"):
		return postgres, "pgx", u, nil
	case strings.Contains(u, "://"):
		return dialect{}, "", "", fmt.Errorf("%w: %q: the scheme is not postgres:// (or sqlite:PATH for a file)", ErrBadURL, redact(u))
	}
	if !sqliteBuilt {
		return dialect{}, "", "", fmt.Errorf("%w: SQLite is not built for %s/%s; use a postgres:// URL", ErrBadURL, runtime.GOOS, runtime.GOARCH)
	}
	path := strings.TrimPrefix(u, "sqlite:")
	if path == "" || strings.ContainsAny(path, "?#") {
		return dialect{}, "", "", fmt.Errorf("%w: %q: want sqlite:PATH (no query)", ErrBadURL, u)
	}
	if err := createPrivate(path); err != nil {
		return dialect{}, "", "", err
	}
	// WAL with synchronous=FULL: a committed transaction survives a power
	// cut. Writes take the lock at BEGIN (_txlock=immediate), so two
	// writers never deadlock upgrading a read lock.
	dsn := "file:" + path + "?_pragma=busy_timeout(" + strconv.Itoa(int(sqliteBusyTimeout.Milliseconds())) + ")&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)" +
		"&_pragma=foreign_keys(1)&_txlock=immediate"
	return sqlite, "sqlite", dsn, nil
}

// createPrivate creates the SQLite file with mode 0600 (SQLite gives its
// journal files the main file's mode), if it does not exist.
func createPrivate(path string) error {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("store: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, fs.ErrExist):
		return nil
	case err != nil:
		return fmt.Errorf("store: %w", err)
	}
	return f.Close()
}

// redact hides a password in a URL for error messages.
func redact(u string) string {
	if at := strings.LastIndex(u, "@"); at > 0 {
		if i := strings.Index(u, "://"); i >= 0 && i < at {
			return u[:i+3] + "…" + u[at:]
		}
	}
	return u
}

// Dialect returns "sqlite" or "postgres".
func (s *Store) Dialect() string { return s.d.name }

// Ping reports whether the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// q rewrites a query written with ? placeholders for the backend.
func (s *Store) q(query string) string {
	if !s.d.dollar {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// tx runs fn in a transaction, committing if it returns nil. With
// PostgreSQL, a serialization failure or deadlock (which row locks taken
// in different orders by two replicas can cause) is retried a few times.
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := s.tryTx(ctx, fn)
		if err == nil || attempt >= 4 || !retryable(err) {
			return err
		}
	}
}

func (s *Store) tryTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: begin: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}

// retryable reports PostgreSQL's serialization_failure,
// deadlock_detected and unique_violation: two replicas inserting the same
// new row at once (a device's first replay window); run again, the
// transaction finds the row the other committed. Every transaction reads
// before it inserts, so a retry decides on what is there.
func retryable(err error) bool {
	var sc interface{ SQLState() string }
	if errors.As(err, &sc) {
		switch sc.SQLState() {
		case "40001", "40P01", "23505":
			return true
		}
	}
	return false
}

// migrationLockID is the PostgreSQL advisory lock held while migrating
// ("d2cstore").
const migrationLockID = 0x6432_6373_746f_7265

type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations returns the dialect's migrations in version order.
func loadMigrations(d dialect) ([]migration, error) {
	dir := "migrations/" + d.name
	des, err := migrations.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("store: migrations: %w", err)
	}
	var out []migration
	for _, de := range des {
		name := de.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("store: migration file %s: want NNNN_name.sql", name)
		}
		b, err := migrations.ReadFile(dir + "/" + name)
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, sql: string(b)})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("store: migrations: %s where version %d was expected", m.name, i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the schema version this code writes.
func SchemaVersion() int {
	ms, _ := loadMigrations(sqlite)
	return len(ms)
}

// migrate applies the migrations the database lacks, all in one
// transaction, under a lock (PostgreSQL: an advisory lock; SQLite: the
// write lock BEGIN IMMEDIATE takes).
func (s *Store) migrate(ctx context.Context) error {
	ms, err := loadMigrations(s.d)
	if err != nil {
		return err
	}
	return s.tryTx(ctx, func(tx *sql.Tx) error {
		if s.d == postgres {
			if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", int64(migrationLockID)); err != nil {
				return fmt.Errorf("store: migration lock: %w", err)
			}
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    INTEGER PRIMARY KEY,
			name       TEXT NOT NULL,
			applied_ms BIGINT NOT NULL)`); err != nil {
			return fmt.Errorf("store: schema_migrations: %w", err)
		}
		var have sql.NullInt64
		if err := tx.QueryRowContext(ctx, "SELECT MAX(version) FROM schema_migrations").Scan(&have); err != nil {
			return fmt.Errorf("store: schema version: %w", err)
		}
		if int(have.Int64) > len(ms) {
			return fmt.Errorf("%w: database at version %d, this code knows %d", ErrSchemaTooNew, have.Int64, len(ms))
		}
		for _, m := range ms[have.Int64:] {
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("store: migration %s: %w", m.name, err)
			}
			if _, err := tx.ExecContext(ctx, s.q("INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)"),
				m.version, m.name, s.now().UnixMilli()); err != nil {
				return fmt.Errorf("store: record migration %s: %w", m.name, err)
			}
			s.log.Info("store: migration applied", "version", m.version, "name", m.name, "backend", s.d.name)
		}
		return nil
	})
}
