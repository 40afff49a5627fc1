// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/pgpeer"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Power cuts in the store's own writes: a writer accepts batches of
// records in a loop, each batch one transaction (replay windows and
// records together), and is cut off at random moments. Every batch it
// saw committed must be there in full, no batch in part, and the replay
// windows must match the records.
const (
	powerCutDevices = 4
	powerCutSeqs    = 25 // records per device and batch
	powerCutKills   = 6
)

// powerCutBatch is batch b: powerCutSeqs records of each device, with
// the sequence numbers b*powerCutSeqs onwards.
func powerCutBatch(b int) []transport.Record {
	var recs []transport.Record
	at := time.UnixMilli(1_700_000_000_000)
	for d := range powerCutDevices {
		for i := range powerCutSeqs {
			seq := uint64(b*powerCutSeqs + i)
			recs = append(recs, transport.Record{Device: fmt.Sprintf("pc-%d", d), Stream: "temp", Boot: 1, Seq: seq, Time: at,
				Readings: []transport.Reading{{Time: at, Body: fmt.Appendf(nil, "%d/%d/%d", b, d, seq)}}})
		}
	}
	return recs
}

// runWriter is the writer process: it resumes after the last batch the
// store holds (printing "resume <batch>"), then accepts batch after batch,
// printing "committed <batch>" after each commit, until it is killed.
func runWriter(ctx context.Context) error {
	s, err := Open(ctx, Config{URL: os.Getenv(urlEnv)})
	if err != nil {
		return err
	}
	defer s.Close()
	var top sql.NullInt64
	if err := s.db.QueryRowContext(ctx, "SELECT MAX(seq) FROM records WHERE device = 'pc-0'").Scan(&top); err != nil {
		return err
	}
	next := 0
	if top.Valid {
		next = int(top.Int64)/powerCutSeqs + 1
	}
	// os.Stdout is unbuffered: the line is in the pipe when Printf returns.
	fmt.Printf("resume %d\n", next)
	for b := next; ctx.Err() == nil; b++ {
		verdicts, err := s.Accept(ctx, powerCutBatch(b))
		if err != nil {
			return err
		}
		for i, v := range verdicts {
			if v != nil {
				return fmt.Errorf("batch %d, record %d: %w", b, i, v)
			}
		}
		fmt.Printf("committed %d\n", b)
	}
	return nil
}

// checkBatches checks what a store holds after a power cut: its
// migrations all applied; every batch up to the highest one present in
// full, for every device; with windows, the replay windows' tops at the
// highest batch's end. It returns the highest batch (-1: none).
func checkBatches(t *testing.T, s *Store, windows bool) int {
	t.Helper()
	var n, version int
	if err := s.db.QueryRow("SELECT COUNT(*), MAX(version) FROM schema_migrations").Scan(&n, &version); err != nil {
		t.Fatalf("schema_migrations: %v", err)
	}
	if n != SchemaVersion() || version != SchemaVersion() {
		t.Fatalf("schema_migrations: %d rows up to version %d, want %d", n, version, SchemaVersion())
	}
	if s.d == sqlite {
		var ok string
		if err := s.db.QueryRow("PRAGMA integrity_check").Scan(&ok); err != nil || ok != "ok" {
			t.Fatalf("integrity_check: %q %v", ok, err)
		}
	}
	rows, err := s.db.Query("SELECT device, seq FROM records")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	per := map[int]map[string]int{} // batch -> device -> records
	last := -1
	for rows.Next() {
		var (
			dev string
			seq int
		)
		if err := rows.Scan(&dev, &seq); err != nil {
			t.Fatal(err)
		}
		b := seq / powerCutSeqs
		if per[b] == nil {
			per[b] = map[string]int{}
		}
		per[b][dev]++
		last = max(last, b)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for b := 0; b <= last; b++ {
		for d := range powerCutDevices {
			if got := per[b][fmt.Sprintf("pc-%d", d)]; got != powerCutSeqs {
				t.Fatalf("batch %d of %d: %d records of pc-%d, want %d (a batch in part, or one lost)", b, last, got, d, powerCutSeqs)
			}
		}
	}
	if !windows {
		return last
	}
	tops, err := s.db.Query("SELECT device, boot, top FROM replay")
	if err != nil {
		t.Fatal(err)
	}
	defer tops.Close()
	seen := 0
	for tops.Next() {
		var (
			dev       string
			boot, top int
		)
		if err := tops.Scan(&dev, &boot, &top); err != nil {
			t.Fatal(err)
		}
		if boot != 1 || top != last*powerCutSeqs+powerCutSeqs-1 {
			t.Fatalf("replay window of %s: boot %d top %d, with batches 0 to %d in the records", dev, boot, top, last)
		}
		seen++
	}
	if err := tops.Err(); err != nil {
		t.Fatal(err)
	}
	if want := map[bool]int{true: powerCutDevices}[last >= 0]; seen != want {
		t.Fatalf("%d replay windows with batches 0 to %d in the records, want %d", seen, last, want)
	}
	return last
}

// TestPowerCutSQLite: a writer process on an SQLite file is SIGKILLed at
// random moments (the first time anywhere from its start: opening,
// migrating, writing); after each kill the database opens, and holds
// every batch the writer reported committed, and no batch in part; the
// next writer resumes right after the last batch held.
func TestPowerCutSQLite(t *testing.T) {
	url := "sqlite:" + filepath.Join(t.TempDir(), "powercut.db")
	seed := uint64(time.Now().UnixNano())
	r := rand.New(rand.NewPCG(seed, 12))
	reported, held, unreported := -1, -1, 0
	for kill := range powerCutKills {
		c := startChild(t, fmt.Sprintf("writer-%d", kill), "writer", urlEnv+"="+url)
		if kill == 0 {
			time.Sleep(time.Duration(r.IntN(300)) * time.Millisecond)
		} else {
			if got := c.await(t, "resume ", fleetWait); got != fmt.Sprintf("resume %d", held+1) {
				t.Fatalf("writer %d: %q after batches 0 to %d", kill, got, held)
			}
			c.await(t, "committed ", fleetWait)
			time.Sleep(time.Duration(r.IntN(40)) * time.Millisecond)
		}
		c.kill()
		if l, ok := c.stdout.last("committed "); ok {
			if reported, _ = strconv.Atoi(strings.TrimPrefix(l, "committed ")); reported < held {
				t.Fatalf("writer %d reported batch %d committed, the store held %d before it", kill, reported, held)
			}
		}
		if strings.Contains(c.stderr.String(), "writer failed") {
			t.Fatalf("writer %d failed:\n%s", kill, c.stderr.String())
		}
		s, err := Open(t.Context(), Config{URL: url})
		if err != nil {
			t.Fatalf("open after kill %d: %v", kill, err)
		}
		held = checkBatches(t, s, true)
		s.Close()
		switch {
		case held < reported:
			t.Fatalf("kill %d: the writer reported batch %d committed, the store holds batches 0 to %d", kill, reported, held)
		case held > reported+1:
			t.Fatalf("kill %d: the writer reported batch %d committed, the store holds batches 0 to %d", kill, reported, held)
		case held == reported+1:
			unreported++ // committed, killed before it could say so
		}
	}
	t.Logf("seed %d: %d kills; batches 0 to %d held (%d records), every reported batch in full, none in part; %d kills landed between a commit and its report",
		seed, powerCutKills, held, (held+1)*powerCutDevices*powerCutSeqs, unreported)
}

// TestPowerCutPostgres: the PostgreSQL server is killed (pg_ctl -m
// immediate: no checkpoint, recovery from the write-ahead log at the next
// start) and restarted under a writer: after each restart the database
// opens with its migrations and holds every batch the writer saw
// committed, no batch in part; a batch whose commit the kill interrupted
// is decided when the writer sends it again (all fresh, or all
// duplicates: never some of each).
func TestPowerCutPostgres(t *testing.T) {
	// A cluster of its own: the kills must not disturb the other tests'.
	c, stop, err := pgpeer.Start()
	if err != nil {
		t.Fatalf("PostgreSQL: %v", err)
	}
	defer stop()
	url, err := c.CreateDatabase("powercut")
	if err != nil {
		t.Fatal(err)
	}
	s := openStore(t, url)
	seed := uint64(time.Now().UnixNano())
	r := rand.New(rand.NewPCG(seed, 13))
	var committed, failures, ambiguous atomic.Int64
	committed.Store(-1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	werr := make(chan error, 1)
	go func() {
		werr <- func() error {
			for b := 0; ctx.Err() == nil; {
				actx, acancel := context.WithTimeout(ctx, 5*time.Second)
				verdicts, err := s.Accept(actx, powerCutBatch(b))
				acancel()
				if err != nil {
					failures.Add(1)
					time.Sleep(20 * time.Millisecond)
					continue
				}
				fresh, dups := 0, 0
				for i, v := range verdicts {
					switch {
					case v == nil:
						fresh++
					case errors.Is(v, wire.ErrDuplicate):
						dups++
					default:
						return fmt.Errorf("batch %d, record %d: %w", b, i, v)
					}
				}
				switch {
				case fresh > 0 && dups > 0:
					return fmt.Errorf("batch %d committed in part: %d of its records were there, %d not", b, dups, fresh)
				case dups > 0:
					ambiguous.Add(1) // committed, the answer lost to the kill
				}
				committed.Store(int64(b))
				b++
			}
			return nil
		}()
	}()
	// progress waits until the writer has committed n more batches.
	progress := func(n int64) {
		t.Helper()
		from := committed.Load()
		for deadline := time.Now().Add(fleetWait); committed.Load() < from+n; time.Sleep(5 * time.Millisecond) {
			select {
			case err := <-werr:
				t.Fatalf("writer: %v", err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("the writer committed %d batches in %v, want %d", committed.Load()-from, fleetWait, n)
			}
		}
	}
	const kills = 3
	for kill := range kills {
		progress(3)
		time.Sleep(time.Duration(r.IntN(30)) * time.Millisecond)
		c.Kill()
		time.Sleep(time.Duration(r.IntN(100)) * time.Millisecond)
		if err := c.Restart(); err != nil {
			t.Fatalf("restart %d: %v", kill, err)
		}
		before := committed.Load()
		after, err := Open(t.Context(), Config{URL: url})
		if err != nil {
			t.Fatalf("open after kill %d: %v", kill, err)
		}
		// The writer runs on: the records are read in one statement (one
		// snapshot); the windows are checked once it stops.
		if held := checkBatches(t, after, false); int64(held) < before {
			t.Fatalf("kill %d: the writer saw batch %d committed, the store holds batches 0 to %d", kill, before, held)
		}
		after.Close()
	}
	progress(3)
	cancel()
	if err := <-werr; err != nil {
		t.Fatalf("writer: %v", err)
	}
	last := committed.Load()
	held := checkBatches(t, s, true)
	// The batch under way when the writer stopped may have committed.
	if int64(held) < last || int64(held) > last+1 {
		t.Fatalf("the writer saw batches 0 to %d committed, the store holds 0 to %d", last, held)
	}
	t.Logf("seed %d: %d server kills; batches 0 to %d held in full, none in part; %d writes failed while the server was down, %d batches committed whose answer the kill took",
		seed, kills, held, failures.Load(), ambiguous.Load())
}
