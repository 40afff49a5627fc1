// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/d2c-iot/d2c/internal/pgpeer"
)

// cluster is the PostgreSQL cluster of this package's tests, started by
// TestMain (a missing PostgreSQL fails the run, never skips it).
var cluster *pgpeer.Cluster

func TestMain(m *testing.M) {
	// A test that starts this binary again as a verifier, registrar or
	// writer process (fleet_test.go) says so in the environment: play that
	// role, and nothing else.
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role))
	}
	c, stop, err := pgpeer.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "store tests need PostgreSQL: %v\n", err)
		os.Exit(1)
	}
	cluster = c
	code := m.Run()
	stop()
	os.Exit(code)
}

var dbCount atomic.Int64

// backends runs fn once per backend, each on a fresh database.
func backends(t *testing.T, fn func(t *testing.T, url string)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, "sqlite:"+filepath.Join(t.TempDir(), "d2c.db")) })
	t.Run("postgres", func(t *testing.T) { fn(t, newPostgresDB(t)) })
}

func newPostgresDB(t testing.TB) string {
	t.Helper()
	url, err := cluster.CreateDatabase(fmt.Sprintf("t%d_%d", os.Getpid(), dbCount.Add(1)))
	if err != nil {
		t.Fatal(err)
	}
	return url
}

func openStore(t testing.TB, url string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{URL: url})
	if err != nil {
		t.Fatalf("Open(%s): %v", url, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestOpenMigrates: Open applies every migration once, replicas opening
// together do not race, reopening applies nothing, and a database from a
// newer version is refused.
func TestOpenMigrates(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := Open(t.Context(), Config{URL: url})
				if err == nil {
					s.Close()
				}
				errs[i] = err
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("concurrent Open: %v", err)
			}
		}
		s := openStore(t, url)
		var n, max int
		if err := s.db.QueryRow("SELECT COUNT(*), MAX(version) FROM schema_migrations").Scan(&n, &max); err != nil {
			t.Fatal(err)
		}
		if n != SchemaVersion() || max != SchemaVersion() {
			t.Fatalf("schema_migrations holds %d rows up to %d, want %d", n, max, SchemaVersion())
		}
		if _, err := s.db.Exec(s.q("INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, 'from the future', 0)"), SchemaVersion()+1); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(t.Context(), Config{URL: url}); !errors.Is(err, ErrSchemaTooNew) {
			t.Fatalf("Open of a newer schema: %v, want ErrSchemaTooNew", err)
		}
	})
}

func TestOpenSQLiteFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "d2c.db")
	openStore(t, path)
	for _, p := range []string{path, filepath.Dir(path)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s has mode %v, want no access for group and others", p, fi.Mode().Perm())
		}
	}
}

func TestOpenBadURL(t *testing.T) {
	for _, u := range []string{"", "mysql://x", "sqlite:", "sqlite:/tmp/x?mode=ro", "https://user:secret@host/db"} {
		_, err := Open(t.Context(), Config{URL: u})
		if !errors.Is(err, ErrBadURL) {
			t.Errorf("Open(%q): %v, want ErrBadURL", u, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q): the error shows the password: %v", u, err)
		}
	}
}
