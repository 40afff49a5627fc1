// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package cloud

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/update"
	"github.com/prometheus/client_golang/prometheus"
)

// Regression tests from the adversarial review of the campaigns: each
// failed before its fix.

func reviewStore(t *testing.T, now *time.Time) (*store.Store, *campaignController) {
	t.Helper()
	s, err := store.Open(t.Context(), store.Config{URL: "sqlite:" + filepath.Join(t.TempDir(), "d2c.db"), Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := &campaignController{store: s, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		m: newCampaignMetrics(prometheus.NewRegistry()), now: func() time.Time { return *now }}
	return s, c
}

func reviewReport(dev string, seq uint64, at time.Time, results ...update.Result) transport.Record {
	r := transport.Record{Device: dev, Stream: update.ReportStream, Boot: 1, Seq: seq, Time: at}
	for _, res := range results {
		b, err := json.Marshal(res)
		if err != nil {
			panic(err)
		}
		r.Readings = append(r.Readings, transport.Reading{Time: at, Body: b})
	}
	return r
}

// TestAbortedReleaseStaysHalted: an aborted release is never offered
// again, whatever becomes of the campaigns after it (the rule used to
// follow the class's newest campaign only: once that one was no longer
// active, the aborted release was signed with no rule, for every device).
func TestAbortedReleaseStaysHalted(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	s, ctl := reviewStore(t, &now)
	ctx := t.Context()
	rule := campaignRule(s)
	a, err := s.StartCampaign(ctx, store.CampaignPlan{HardwareClass: "gw", Release: 5, AbortAt: 500, MinFinished: 20,
		Phases: []store.CampaignPhase{{Share: 100, Delay: time.Hour}, {Share: update.RolloutAll}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AbortCampaign(ctx, a, "bad release"); err != nil {
		t.Fatal(err)
	}
	// The fix, release 6, gets its campaign before it is published; the
	// clock runs, nobody reports (6 is not published).
	b, err := s.StartCampaign(ctx, store.CampaignPlan{HardwareClass: "gw", Release: 6, AbortAt: 500, MinFinished: 20,
		Phases: []store.CampaignPhase{{Share: 100, Delay: 30 * time.Minute}, {Share: update.RolloutAll}}})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		now = now.Add(2 * time.Hour)
		ctl.tick(ctx)
	}
	if c, err := s.LatestCampaign(ctx, "gw"); err != nil || c.ID != b.ID || c.State != store.CampaignRunning || c.Phase != 0 {
		t.Fatalf("the campaign of the unpublished release 6, after 10 h with no report: %+v, %v; want running in phase 1", c, err)
	}
	// Its campaign is then abandoned: release 5 must stay halted.
	c, _ := s.LatestCampaign(ctx, "gw")
	if _, err := s.AbortCampaign(ctx, c, "replaced"); err != nil {
		t.Fatal(err)
	}
	r, err := rule(ctx, "gw", 5)
	if err != nil || r == nil || !r.Halted() {
		t.Fatalf("the aborted release 5 signed with rule %+v (%v), want halted", r, err)
	}
}

// TestForeignFailureIgnored: a device the campaign has not reached (its
// bucket beyond the started phases) that reports a failure of the release
// is not counted: one device outside the campaign cannot abort it.
func TestForeignFailureIgnored(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	s, _ := reviewStore(t, &now)
	ctx := t.Context()
	camp, err := s.StartCampaign(ctx, store.CampaignPlan{HardwareClass: "gw", Release: 7, AbortAt: 500, MinFinished: 20,
		Phases: []store.CampaignPhase{{Share: 2000, Delay: time.Hour}, {Share: update.RolloutAll}}})
	if err != nil {
		t.Fatal(err)
	}
	var recs []transport.Record
	inside, outside := 0, ""
	for i := 0; inside < 20 || outside == ""; i++ {
		dev := fmt.Sprintf("gw-%03d", i)
		if camp.PhaseOf(dev) == 0 && inside < 20 {
			inside++
			recs = append(recs, reviewReport(dev, 1, now, update.Result{Event: "confirmed", Version: 7, From: 6, Time: now.UnixMilli(), HardwareClass: "gw"}))
		} else if camp.PhaseOf(dev) > 0 && outside == "" {
			outside = dev
		}
	}
	recs = append(recs, reviewReport(outside, 1, now,
		update.Result{Event: "running", Version: 3, From: 3, Time: now.UnixMilli(), HardwareClass: "gw"},
		update.Result{Event: "failed", Version: 7, From: 3, Time: now.UnixMilli(), Reason: "x"}))
	if _, err := s.Accept(ctx, recs); err != nil {
		t.Fatal(err)
	}
	p, err := s.CampaignProgress(ctx, camp)
	if err != nil {
		t.Fatal(err)
	}
	if act, reason := camp.Decide(p, now); act == store.CampaignAbort {
		t.Fatalf("aborted by a device outside the started phase: %s", reason)
	}
	if p.Reached.Offered != 20 || p.Reached.Confirmed != 20 || p.Total.Failed != 0 {
		t.Fatalf("reached %+v, total %+v", p.Reached, p.Total)
	}
}

// TestCompletedCampaignStillAborts: after its last phase a campaign is
// still watched: failures reported then abort it (the rule halts), and an
// operator may abort it too.
func TestCompletedCampaignStillAborts(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	s, ctl := reviewStore(t, &now)
	ctx := t.Context()
	c, err := s.StartCampaign(ctx, store.CampaignPlan{HardwareClass: "gw", Release: 7, AbortAt: 500, MinFinished: 5,
		Phases: []store.CampaignPhase{{Share: 1000, Delay: time.Hour}, {Share: update.RolloutAll}}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if c, err = s.AdvanceCampaign(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if c.State != store.CampaignCompleted {
		t.Fatalf("state %s, want completed", c.State)
	}
	var recs []transport.Record
	for i := range 50 {
		recs = append(recs, reviewReport(fmt.Sprintf("gw-%02d", i), 1, now,
			update.Result{Event: "installed", Version: 7, From: 6, Time: now.UnixMilli(), HardwareClass: "gw"},
			update.Result{Event: "reverted", Version: 7, From: 6, Time: now.UnixMilli(), Reason: "health"}))
	}
	if _, err := s.Accept(ctx, recs); err != nil {
		t.Fatal(err)
	}
	ctl.tick(ctx)
	c, err = s.LatestCampaign(ctx, "gw")
	if err != nil || c.State != store.CampaignAborted || !c.Rollout().Halted() {
		t.Fatalf("a completed campaign whose devices all reverted: %+v, %v; want aborted, halted", c, err)
	}
}
