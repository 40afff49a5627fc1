// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/internal/cborx"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/internal/pgpeer"
	"github.com/d2c-iot/d2c/transport"
)

// recordStore is a cloud store whose clock the test sets, and its URL.
type recordStore struct {
	*store.Store
	url string
	now atomic.Int64 // Unix milliseconds; 0: the real time
}

func newRecordStore(t *testing.T, url string) *recordStore {
	t.Helper()
	rs := &recordStore{url: url}
	st, err := store.Open(t.Context(), store.Config{URL: url, Now: func() time.Time {
		if ms := rs.now.Load(); ms != 0 {
			return time.UnixMilli(ms)
		}
		return time.Now()
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rs.Store = st
	return rs
}

// sqliteURL names a new SQLite store in the test's directory.
func sqliteURL(t *testing.T) string { return "sqlite:" + filepath.Join(t.TempDir(), "fleet.db") }

// TestTailDBPostgres runs tail --db on PostgreSQL too: its placeholders,
// and the late commits that several verifiers on it really produce.
func TestTailDBPostgres(t *testing.T) {
	c, stop, err := pgpeer.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	for name, fn := range map[string]func(*testing.T, string){"follows": testTailDBFollows, "late_commit": testTailDBLateCommit} {
		t.Run(name, func(t *testing.T) {
			url, err := c.CreateDatabase(name)
			if err != nil {
				t.Fatal(err)
			}
			fn(t, url)
		})
	}
}

// accept keeps records as the service's verifier does (store.Accept),
// each of which must be fresh.
func (rs *recordStore) accept(t *testing.T, recs ...transport.Record) {
	t.Helper()
	verdicts, err := rs.Accept(t.Context(), recs)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range verdicts {
		if v != nil {
			t.Fatalf("record %d refused: %v", i, v)
		}
	}
}

// testRecord is a record of one reading per body, at time at.
func testRecord(device, stream string, seq uint64, at time.Time, bodies ...string) transport.Record {
	r := transport.Record{Device: device, Stream: stream, Boot: 1, Seq: seq, Time: at}
	for i, b := range bodies {
		r.Readings = append(r.Readings, transport.Reading{Time: at.Add(time.Duration(i) * time.Millisecond), Body: []byte(b)})
	}
	return r
}

// startTailDB runs "d2c tail --db" on the store, polling fast, until it
// prints its first note.
func startTailDB(t *testing.T, url string, extra ...string) (stdout, stderr *lockedBuffer, stop func() (string, string)) {
	t.Helper()
	poll := tailPollInterval
	tailPollInterval = 20 * time.Millisecond
	t.Cleanup(func() { tailPollInterval = poll })
	stdout, stderr = &lockedBuffer{}, &lockedBuffer{}
	stop = runInBackgroundTo(t, stdout, stderr, append([]string{"tail", "--db", url}, extra...)...)
	waitFor(t, 10*time.Second, "tail --db to start", func() (string, bool) {
		return "", strings.Contains(stderr.String(), "printing the records verified into ")
	})
	return stdout, stderr, stop
}

// waitLines waits until out holds n lines and returns them, each without
// its first field (the time).
func waitLines(t *testing.T, out *lockedBuffer, n int) []string {
	t.Helper()
	text := waitFor(t, 10*time.Second, fmt.Sprintf("%d lines of tail", n), func() (string, bool) {
		s := out.String()
		return s, strings.Count(s, "\n") >= n
	})
	var lines []string
	for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		_, rest, _ := strings.Cut(l, " ")
		lines = append(lines, rest)
	}
	return lines
}

// TestTailDBFollowsInOrder: tail --db prints the records accepted after it
// started, not those before, one line per reading in the order of the
// records table, each once, in the broker mode's format.
func TestTailDBFollowsInOrder(t *testing.T) { testTailDBFollows(t, sqliteURL(t)) }

func testTailDBFollows(t *testing.T, url string) {
	rs := newRecordStore(t, url)
	t0 := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	rs.accept(t, testRecord("sensor-1", "temperature", 0, t0, "20.0"), testRecord("sensor-1", "temperature", 1, t0, "20.5"))
	stdout, _, stop := startTailDB(t, url)

	// One batch, kept in the store's order (device, boot, seq), then another.
	rs.accept(t, testRecord("sensor-2", "humidity", 0, t0, "40", "41"), testRecord("sensor-1", "temperature", 2, t0, "21.5"),
		testRecord("sensor-1", "raw", 3, t0, "\x00\x01\xfe"))
	rs.accept(t, testRecord("sensor-2", "humidity", 1, t0.Add(time.Second), "42"))
	want := []string{
		"sensor-1 temperature 1/2 21.5",
		"sensor-1 raw 1/3 hex:0001fe",
		"sensor-2 humidity 1/0#1 40",
		"sensor-2 humidity 1/0#2 41",
		"sensor-2 humidity 1/1 42",
	}
	got := waitLines(t, stdout, len(want))
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("tail --db printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !tailLine("sensor-2", "humidity", "42").MatchString(stdout.String()) ||
		!strings.Contains(stdout.String(), "2025-03-04T05:06:07.001Z sensor-2 humidity 1/0#2 41\n") {
		t.Errorf("not the reading's time in the broker mode's format:\n%s", stdout)
	}
	time.Sleep(5 * tailPollInterval) // nothing is printed twice
	out, errOut := stop()
	if n := strings.Count(out, "\n"); n != len(want) {
		t.Errorf("%d lines, want %d:\n%s", n, len(want), out)
	}
	if !strings.Contains(errOut, "stopped: 4 records printed") {
		t.Errorf("tail's summary:\n%s", errOut)
	}
}

// TestTailDBSinceAndFilters: --since starts with the records the store
// accepted since then (by the store's clock, not the devices'), and
// --device and --stream print only theirs.
func TestTailDBSinceAndFilters(t *testing.T) {
	rs := newRecordStore(t, sqliteURL(t))
	now := time.Now()
	rs.now.Store(now.Add(-3 * time.Hour).UnixMilli())
	rs.accept(t, testRecord("sensor-2", "humidity", 0, now, "old"))
	rs.now.Store(now.Add(-30 * time.Minute).UnixMilli())
	rs.accept(t, testRecord("sensor-1", "humidity", 0, now, "other device"), testRecord("sensor-2", "temperature", 1, now, "other stream"),
		testRecord("sensor-2", "humidity", 2, now, "recent"))
	rs.now.Store(0)

	stdout, _, _ := startTailDB(t, rs.url, "--since", "1h", "--device", "sensor-2", "--stream", "humidity")
	rs.accept(t, testRecord("sensor-1", "humidity", 1, now, "other device"), testRecord("sensor-2", "humidity", 3, now, "new"))
	if got, want := strings.Join(waitLines(t, stdout, 2), "\n"), "sensor-2 humidity 1/2 recent\nsensor-2 humidity 1/3 new"; got != want {
		t.Errorf("tail --db --since 1h --device sensor-2 --stream humidity printed\n%s\nwant\n%s", got, want)
	}

	since := now.Add(-4 * time.Hour).UTC().Format(time.RFC3339)
	stdout, _, _ = startTailDB(t, rs.url, "--since", since, "--stream", "humidity")
	if got := waitLines(t, stdout, 5); got[0] != "sensor-2 humidity 1/0 old" || len(got) != 5 {
		t.Errorf("tail --db --since %s --stream humidity printed\n%s", since, strings.Join(got, "\n"))
	}
}

// TestTailDBJSON: --json prints one object per reading and line, with
// the documented fields.
func TestTailDBJSON(t *testing.T) {
	rs := newRecordStore(t, sqliteURL(t))
	t0 := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	stdout, _, _ := startTailDB(t, rs.url, "--json")
	rs.accept(t, testRecord("sensor-2", "humidity", 0, t0, "40", ""), testRecord("sensor-1", "raw", 3, t0, "\x00\x01\xfe"))
	text := waitFor(t, 10*time.Second, "3 lines of tail --json", func() (string, bool) {
		s := stdout.String()
		return s, strings.Count(s, "\n") >= 3
	})
	var got []map[string]any
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("tail --json line %q: %v", line, err)
		}
		got = append(got, m)
	}
	want := []map[string]any{
		{"time": "2025-03-04T05:06:07.000Z", "device": "sensor-1", "stream": "raw", "boot": 1.0, "seq": 3.0, "index": 0.0, "body_hex": "0001fe"},
		{"time": "2025-03-04T05:06:07.000Z", "device": "sensor-2", "stream": "humidity", "boot": 1.0, "seq": 0.0, "index": 1.0, "body": "40"},
		{"time": "2025-03-04T05:06:07.001Z", "device": "sensor-2", "stream": "humidity", "boot": 1.0, "seq": 0.0, "index": 2.0, "body": ""},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tail --json:\n%s\nwant\n%v", text, want)
	}
}

// TestTailDBLateCommit: a record numbered below one already printed,
// committed later (two verifiers on PostgreSQL take their IDs in one
// order and may commit in the other), is printed when it appears, once.
func TestTailDBLateCommit(t *testing.T) { testTailDBLateCommit(t, sqliteURL(t)) }

func testTailDBLateCommit(t *testing.T, url string) {
	rs := newRecordStore(t, url)
	at := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	stdout, _, _ := startTailDB(t, url)
	rs.accept(t, testRecord("sensor-1", "temperature", 0, at, "first"))
	waitLines(t, stdout, 1)

	driver, dsn, args := "pgx", url, "$1, $2, $3, $4, $5, $6, $7, $8"
	if path, ok := strings.CutPrefix(url, "sqlite:"); ok {
		driver, dsn, args = "sqlite", "file:"+path+"?_pragma=busy_timeout(10000)", "?, ?, ?, ?, ?, ?, ?, ?"
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	modes, err := cborx.New(limits.Readings)
	if err != nil {
		t.Fatal(err)
	}
	insert := func(id int64, seq int, body string) {
		t.Helper()
		readings, err := modes.Enc.Marshal([]storedReading{{Time: at.UnixMilli(), Body: []byte(body)}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec("INSERT INTO records (id, device, stream, boot, seq, time_ms, received_ms, readings) VALUES ("+args+")",
			id, "sensor-1", "temperature", 1, seq, at.UnixMilli(), time.Now().UnixMilli(), readings); err != nil {
			t.Fatal(err)
		}
	}
	insert(3, 2, "third, committed first")
	waitLines(t, stdout, 2)
	insert(2, 1, "second, committed late")
	got := waitLines(t, stdout, 3)
	want := []string{"sensor-1 temperature 1/0 first", "sensor-1 temperature 1/2 third, committed first", "sensor-1 temperature 1/1 second, committed late"}
	time.Sleep(5 * tailPollInterval)
	if strings.Join(got, "\n") != strings.Join(want, "\n") || strings.Count(stdout.String(), "\n") != 3 {
		t.Errorf("tail --db printed\n%s\nwant\n%s", stdout, strings.Join(want, "\n"))
	}
}

// TestTailDBRefusals: a bad --db says what to give, never creates a
// store, never shows a password; the modes' flags do not mix.
func TestTailDBRefusals(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	rs := newRecordStore(t, sqliteURL(t))
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--db", "mysql://u:secret@db.example.com/fleet"},
			[]string{"bad database URL", `scheme "mysql"`, "hint: give --db the cloud service's store", "sqlite:/path/to/fleet.db"}},
		{[]string{"--db", "sqlite:" + filepath.Join(dir, "typo.db")}, []string{"no such file", "tail never creates one"}},
		{[]string{"--db", "sqlite:" + dir + "/fleet.db?mode=rw"}, []string{"want sqlite:PATH (no query)"}},
		{[]string{"--db", empty}, []string{"is not a d2c cloud store", "check the path or URL"}},
		{[]string{"--db", "postgres://u:secret@127.0.0.1:1/fleet"}, []string{"connect to postgres://u:xxxxx@127.0.0.1:1/fleet", "hint: check --db"}},
		{[]string{"--db", rs.url, "--broker", "127.0.0.1:8883", "--cert", "tail.crt"}, []string{"drop --broker, --cert (for the --broker mode)"}},
		{[]string{"--db", rs.url, "--since", "yesterday"}, []string{`--since "yesterday": want a duration`}},
		{[]string{"--since", "1h"}, []string{"--since goes with --db"}},
		{nil, []string{"give --db URL, the cloud service's store"}},
	} {
		var stdout, stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		code := run(ctx, append([]string{"tail"}, c.args...), &stdout, &stderr)
		cancel()
		if code == exitOK {
			t.Errorf("tail %q: exit 0", c.args)
		}
		for _, want := range c.want {
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("tail %q: stderr lacks %q:\n%s", c.args, want, stderr.String())
			}
		}
		if strings.Contains(stderr.String(), "secret") {
			t.Errorf("tail %q shows the password:\n%s", c.args, stderr.String())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "typo.db")); err == nil {
		t.Error("tail --db created a store")
	}
}

// TestTailDBFromService runs the whole way in: "dev broker", "cloud
// serve" with the registrar and the verifier on SQLite, a device enrolled
// through the service publishing, and "tail --db" printing what the
// service verified.
func TestTailDBFromService(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	d2cRun(t, "ca", "init", "--ca", ca, "--fleet", "tail db test")
	brokerAddr := filepath.Join(dir, "broker.addr")
	runInBackground(t, "dev", "broker", "--ca", ca, "--listen", "127.0.0.1:0", "--service", "verifier", "--addr-file", brokerAddr)
	addr := waitFile(t, brokerAddr)
	d2cRun(t, "ca", "service-cert", "--ca", ca, "--service", "verifier", "--cert", filepath.Join(dir, "verifier.crt"),
		"--key", filepath.Join(dir, "verifier.key"))
	config := filepath.Join(dir, "cloud.json")
	if err := os.WriteFile(config, fmt.Appendf(nil, `{
		"ca": "ca",
		"registrar": {"listen": "127.0.0.1:0", "hosts": ["127.0.0.1"]},
		"verifier": {"broker": %q, "cert": "verifier.crt", "key": "verifier.key"}
	}`, addr), 0o600); err != nil {
		t.Fatal(err)
	}
	readyFile := filepath.Join(dir, "ready.json")
	runInBackground(t, "cloud", "serve", "--config", config, "--ready-file", readyFile)
	var addrs struct{ Registrar string }
	if err := json.Unmarshal([]byte(waitFile(t, readyFile)), &addrs); err != nil {
		t.Fatal(err)
	}

	f := &testFleet{stores: map[string]string{"meter-9": filepath.Join(dir, "meter-9")}}
	enrollWithCLI(t, ca, "https://"+addrs.Registrar, "meter-9", f.stores["meter-9"])
	stdout, _, _ := startTailDB(t, "sqlite:"+filepath.Join(dir, "fleet.db"), "--device", "meter-9")
	dev := f.dialDevice(t, "meter-9", addr)
	publishUntil(t, dev, "power", []byte("1.2kW"), stdout, tailLine("meter-9", "power", "1.2kW"))
}
