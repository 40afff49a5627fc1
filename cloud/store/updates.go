// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/internal/strictjson"
	"github.com/d2c-iot/d2c/update"
)

// UpdateReport is one update result a device reported: a reading of the
// [update.ReportStream] stream in the records table, signed by the device
// and verified before it was stored (updatelink.TelemetryReporter
// publishes them).
type UpdateReport struct {
	// Device is the reporting device's ID.
	Device string
	// Boot and Seq are the record's place in the device's sequence: a
	// later report of a device has a greater (Boot, Seq). The readings of
	// one record share them, in the order listed.
	Boot, Seq uint64
	// Time is the reading's time, as the device stamped it (its trusted
	// time).
	Time time.Time
	// Result is the reading's body.
	Result update.Result
}

// UpdateReports returns every update report whose reading time is at or
// after since (the zero time: all), ordered by device, then by (Boot,
// Seq), then as listed in the record. A body that does not decode as an
// [update.Result] (strict JSON: one object, no unknown member, nothing
// after it) is skipped, counted and logged: one device sending garbage on
// the stream must not hide what the others report.
func (s *Store) UpdateReports(ctx context.Context, since time.Time) ([]UpdateReport, error) {
	rows, err := s.db.QueryContext(ctx, s.q("SELECT id, device, boot, seq, readings FROM records WHERE stream = ? ORDER BY device, boot, seq"),
		update.ReportStream)
	if err != nil {
		return nil, fmt.Errorf("store: update reports: %w", err)
	}
	defer rows.Close()
	var (
		out     []UpdateReport
		skipped int
		first   error
	)
	s.reports.mu.Lock()
	defer s.reports.mu.Unlock()
	for rows.Next() {
		var (
			id        int64
			dev       string
			boot, seq int64
			b         sql.RawBytes // not copied: decoded only when not cached
		)
		if err := rows.Scan(&id, &dev, &boot, &seq, &b); err != nil {
			return nil, fmt.Errorf("store: update reports: %w", err)
		}
		decoded, ok := s.reports.m[id]
		if !ok {
			if decoded, err = s.decodeReports(b); err != nil {
				return nil, fmt.Errorf("store: update reports: readings of %s (boot %d, seq %d): %w", dev, boot, seq, err)
			}
			s.reports.put(id, decoded)
		}
		for _, r := range decoded {
			if !since.IsZero() && r.at.Before(since) {
				continue
			}
			if r.err != nil {
				skipped++
				if first == nil {
					first = fmt.Errorf("%s (boot %d, seq %d): %w", dev, boot, seq, r.err)
				}
				continue
			}
			out = append(out, UpdateReport{Device: dev, Boot: uint64(boot), Seq: uint64(seq), Time: r.at, Result: r.res})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: update reports: %w", err)
	}
	if skipped > 0 {
		s.log.Warn("store: update reports that do not decode, skipped", "skipped", skipped, "first", first)
	}
	return out, nil
}

// decodedReport is one reading of an update-report record, decoded.
type decodedReport struct {
	at  time.Time
	res update.Result
	err error // the body does not decode: skipped
}

// decodeReports decodes the readings of one record of the update stream.
func (s *Store) decodeReports(b []byte) ([]decodedReport, error) {
	var rs []readingRow
	if err := s.modes.Dec.Unmarshal(b, &rs); err != nil {
		return nil, err
	}
	out := make([]decodedReport, len(rs))
	for i, r := range rs {
		out[i].at = time.UnixMilli(r.Time)
		out[i].res, out[i].err = decodeResult(r.Body)
	}
	return out, nil
}

// reportCache keeps the decoded readings of update-report records by
// record ID, so that the campaign controller's reading of every report on
// each tick decodes each record once (strict JSON is most of the cost).
// A record never changes and its ID is never reused, so an entry never
// goes stale; records no longer in the table are simply not asked for.
type reportCache struct {
	mu sync.Mutex
	m  map[int64][]decodedReport
}

// maxCachedReports bounds the records reportCache keeps: past it, it
// starts over (a fleet of 100,000 devices with a few reports each).
const maxCachedReports = 1 << 20

func (c *reportCache) put(id int64, d []decodedReport) {
	if c.m == nil || len(c.m) >= maxCachedReports {
		c.m = map[int64][]decodedReport{}
	}
	c.m[id] = d
}

// decodeResult decodes an update report body strictly (internal/strictjson:
// no duplicate, case-variant or unknown member).
func decodeResult(body []byte) (update.Result, error) {
	var r update.Result
	if err := strictjson.Unmarshal(body, &r, limits.BodyJSONDepth); err != nil {
		return update.Result{}, err
	}
	if r.Event == "" {
		return update.Result{}, errors.New("a report without an event")
	}
	return r, nil
}
