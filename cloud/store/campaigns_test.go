// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/update"
)

// testPlan is a three-phase plan: 1% for an hour with the group beta, 10%
// for two hours, then everyone.
func testPlan(class string) CampaignPlan {
	return CampaignPlan{HardwareClass: class, Release: 7, AbortAt: 500, MinFinished: 20, Phases: []CampaignPhase{
		{Share: 100, Groups: []string{"beta"}, Delay: time.Hour},
		{Share: 1000, Groups: []string{"beta", "alpha", "beta"}, Delay: 2 * time.Hour},
		{Share: update.RolloutAll, Groups: []string{"alpha", "beta"}},
	}}
}

// TestCampaignLifecycle: a campaign starts at its first phase with a
// random salt; one hardware class has one active campaign; pause, resume,
// advance and abort move it as documented, each as a compare-and-set on
// the revision, and the rule it signs follows.
func TestCampaignLifecycle(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		now := time.UnixMilli(1_800_000_000_000)
		s, err := Open(t.Context(), Config{URL: url, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx := t.Context()
		if _, err := s.ActiveCampaign(ctx, "hw"); !errors.Is(err, ErrNoCampaign) {
			t.Fatalf("ActiveCampaign of an empty store: %v, want ErrNoCampaign", err)
		}
		c, err := s.StartCampaign(ctx, testPlan("hw"))
		if err != nil {
			t.Fatal(err)
		}
		if c.State != CampaignRunning || c.Phase != 0 || c.Revision != 1 || c.Salt == [16]byte{} {
			t.Fatalf("started %+v", c)
		}
		if got := c.Phases[1].Groups; fmt.Sprint(got) != "[alpha beta]" {
			t.Fatalf("phase 2 groups %q, want sorted and distinct", got)
		}
		if _, err := s.StartCampaign(ctx, testPlan("hw")); !errors.Is(err, ErrCampaignActive) {
			t.Fatalf("a second active campaign: %v, want ErrCampaignActive", err)
		}
		other, err := s.StartCampaign(ctx, testPlan("hw2"))
		if err != nil {
			t.Fatalf("a campaign for another hardware class: %v", err)
		}
		if other.Salt == c.Salt {
			t.Fatal("two campaigns drew the same salt")
		}
		read, err := s.ActiveCampaign(ctx, "hw")
		if err != nil || read.ID != c.ID || read.Salt != c.Salt || fmt.Sprint(read.Phases) != fmt.Sprint(c.Phases) ||
			!read.PhaseStarted.Equal(now) || read.AbortAt != 500 || read.MinFinished != 20 || read.Release != 7 {
			t.Fatalf("ActiveCampaign: %+v %v, want %+v", read, err, c)
		}
		if r := c.Rollout(); r.Share != 100 || fmt.Sprint(r.Groups) != "[beta]" || r.Salt != c.Salt {
			t.Fatalf("phase 1 rule %+v", r)
		}

		// Pause: the rule stays; the pause's length does not count
		// towards the phase's delay.
		now = now.Add(30 * time.Minute)
		p, err := s.PauseCampaign(ctx, c, "looking at a report")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.PauseCampaign(ctx, c, "again"); !errors.Is(err, ErrCampaignChanged) {
			t.Fatalf("a change from a stale revision: %v, want ErrCampaignChanged", err)
		}
		if _, err := s.PauseCampaign(ctx, p, "again"); !errors.Is(err, ErrCampaignState) {
			t.Fatalf("pausing a paused campaign: %v, want ErrCampaignState", err)
		}
		if r := p.Rollout(); r.Share != 100 {
			t.Fatalf("paused rule %+v", r)
		}
		if a, _ := p.Decide(&CampaignProgress{}, now.Add(24*time.Hour)); a != CampaignHold {
			t.Fatalf("a paused campaign decided %v", a)
		}
		now = now.Add(2 * time.Hour)
		r, err := s.ResumeCampaign(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if want := c.PhaseStarted.Add(2 * time.Hour); !r.PhaseStarted.Equal(want) || r.Reason != "" {
			t.Fatalf("resumed: phase started %v, want %v", r.PhaseStarted, want)
		}
		// Enough of the devices reached finished, none failed.
		evidence := &CampaignProgress{Reached: CampaignCounts{Offered: 30, Confirmed: 20}}
		if a, _ := r.Decide(evidence, now); a != CampaignHold {
			t.Fatalf("after 30 min of running, a 1-hour phase decided %v", a)
		}
		now = now.Add(30 * time.Minute)
		if a, _ := r.Decide(evidence, now); a != CampaignAdvance {
			t.Fatalf("after 1 hour of running decided %v, want advance", a)
		}
		// Silence never advances: no device reached, or too few finished.
		for _, p := range []*CampaignProgress{{}, {Reached: CampaignCounts{Offered: 30, Confirmed: 19, Installed: 11}}} {
			if a, _ := r.Decide(p, now.Add(24*time.Hour)); a != CampaignHold {
				t.Fatalf("progress %+v: decided %v, want hold", p.Reached, a)
			}
		}
		// All the devices reached finished, fewer than the minimum.
		if a, _ := r.Decide(&CampaignProgress{Reached: CampaignCounts{Offered: 3, Confirmed: 3}}, now); a != CampaignAdvance {
			t.Fatalf("every reached device finished: decided %v, want advance", a)
		}

		// Two replicas advance the same revision: one wins.
		if won := race(t, 4, ErrCampaignChanged, func(int) error { _, err := s.AdvanceCampaign(ctx, r); return err }); won != 1 {
			t.Fatalf("%d replicas advanced the same revision, want 1", won)
		}
		a, err := s.ActiveCampaign(ctx, "hw")
		if err != nil || a.Phase != 1 || a.Revision != r.Revision+1 || !a.PhaseStarted.Equal(now) {
			t.Fatalf("after advance: %+v %v", a, err)
		}
		a, err = s.AdvanceCampaign(ctx, a)
		if err != nil || a.Phase != 2 || a.Rollout().Share != update.RolloutAll {
			t.Fatalf("to the last phase: %+v %v", a, err)
		}
		done, err := s.AdvanceCampaign(ctx, a)
		if err != nil || done.State != CampaignCompleted || done.Rollout().Share != update.RolloutAll {
			t.Fatalf("after the last phase: %+v %v", done, err)
		}
		if _, err := s.ActiveCampaign(ctx, "hw"); !errors.Is(err, ErrNoCampaign) {
			t.Fatalf("ActiveCampaign after completion: %v", err)
		}
		// Completed, it is still watched: failures reported after the last
		// phase abort it, and so may an operator.
		w, err := s.WatchedCampaigns(ctx)
		if err != nil || !slices.ContainsFunc(w, func(c *Campaign) bool { return c.ID == done.ID }) {
			t.Fatalf("watched after completion: %d campaigns, %v; want campaign %d among them", len(w), err, done.ID)
		}
		late := &CampaignProgress{Total: CampaignCounts{Confirmed: 15, Reverted: 5}}
		if a, _ := done.Decide(late, now); a != CampaignAbort {
			t.Fatalf("a completed campaign with 25%% failures decided %v, want abort", a)
		}
		aborted, err := s.AbortCampaign(ctx, done, "late failures")
		if err != nil || aborted.State != CampaignAborted || !aborted.Rollout().Halted() {
			t.Fatalf("aborting a completed campaign: %+v, %v", aborted, err)
		}
		if _, err := s.AbortCampaign(ctx, aborted, "again"); !errors.Is(err, ErrCampaignState) {
			t.Fatalf("aborting an aborted campaign: %v, want ErrCampaignState", err)
		}

		// A new campaign once the last is done; abort halts it.
		next, err := s.StartCampaign(ctx, testPlan("hw"))
		if err != nil {
			t.Fatal(err)
		}
		ab, err := s.AbortCampaign(ctx, next, "3 of 20 reverted")
		if err != nil {
			t.Fatal(err)
		}
		if !ab.Rollout().Halted() || ab.Active() {
			t.Fatalf("aborted campaign's rule %+v", ab.Rollout())
		}
		latest, err := s.LatestCampaign(ctx, "hw")
		if err != nil || latest.ID != next.ID || latest.State != CampaignAborted || latest.Reason != "3 of 20 reverted" {
			t.Fatalf("LatestCampaign: %+v %v", latest, err)
		}
		if latest, err := s.LatestCampaign(ctx, ""); err != nil || latest.ID != next.ID {
			t.Fatalf("LatestCampaign of any class: %+v %v", latest, err)
		}
		if cs, err := s.ActiveCampaigns(ctx); err != nil || len(cs) != 1 || cs[0].ID != other.ID {
			t.Fatalf("ActiveCampaigns: %v %v", cs, err)
		}
	})
}

// TestCampaignStartRace: replicas starting a campaign for one hardware
// class at once: exactly one starts.
func TestCampaignStartRace(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		handles := []*Store{openStore(t, url), openStore(t, url)}
		started := race(t, 6, ErrCampaignActive, func(i int) error {
			_, err := handles[i%2].StartCampaign(t.Context(), testPlan("hw"))
			return err
		})
		if started != 1 {
			t.Fatalf("%d campaigns started, want 1", started)
		}
	})
}

// race runs fn(0) to fn(n-1) at once and returns how many succeeded; an
// error other than lost fails the test.
func race(t *testing.T, n int, lost error, fn func(i int) error) int {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, lost):
			t.Fatalf("%v", err)
		}
	}
	return won
}

func TestCampaignPlanValidate(t *testing.T) {
	for name, change := range map[string]func(*CampaignPlan){
		"no class":          func(p *CampaignPlan) { p.HardwareClass = "" },
		"no release":        func(p *CampaignPlan) { p.Release = 0 },
		"no phase":          func(p *CampaignPlan) { p.Phases = nil },
		"threshold 0":       func(p *CampaignPlan) { p.AbortAt = 0 },
		"threshold > 100%":  func(p *CampaignPlan) { p.AbortAt = 10_001 },
		"min finished 0":    func(p *CampaignPlan) { p.MinFinished = 0 },
		"narrowing share":   func(p *CampaignPlan) { p.Phases[1].Share = 50 },
		"dropping a group":  func(p *CampaignPlan) { p.Phases[1].Groups = []string{"alpha"} },
		"empty phase":       func(p *CampaignPlan) { p.Phases[0] = CampaignPhase{Delay: time.Hour} },
		"share > 100%":      func(p *CampaignPlan) { p.Phases[2].Share = 10_001 },
		"negative delay":    func(p *CampaignPlan) { p.Phases[0].Delay = -time.Second },
		"bad group name":    func(p *CampaignPlan) { p.Phases[0].Groups = []string{"beta testers"} },
		"too many phases":   func(p *CampaignPlan) { p.Phases = make([]CampaignPhase, MaxCampaignPhases+1) },
		"class of 65 bytes": func(p *CampaignPlan) { p.HardwareClass = string(make([]byte, 65)) },
	} {
		p := testPlan("hw")
		p.Phases[1].Groups = []string{"alpha", "beta"}
		if err := p.Validate(); err != nil {
			t.Fatalf("the test plan: %v", err)
		}
		change(&p)
		if err := p.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestCampaignProgress: each device counts once, by its latest report on
// the release, in the phase its bucket falls in; devices of another
// hardware class, and reports on other releases, do not count.
func TestCampaignProgress(t *testing.T) {
	c := &Campaign{CampaignPlan: CampaignPlan{HardwareClass: "hw", Release: 7, AbortAt: 2000, MinFinished: 4,
		Phases: []CampaignPhase{{Share: 2000, Delay: time.Hour}, {Share: 5000}}}, State: CampaignRunning}
	// Devices sorted by phase: 3 in phase 1, 3 in phase 2, 2 outside.
	byPhase := map[int][]string{}
	for i := 0; len(byPhase[0]) < 3 || len(byPhase[1]) < 3 || len(byPhase[2]) < 2; i++ {
		id := fmt.Sprintf("dev-%d", i)
		if k := c.PhaseOf(id); len(byPhase[k]) < 3 {
			byPhase[k] = append(byPhase[k], id)
		}
	}
	var reports []UpdateReport
	seq := map[string]uint64{}
	report := func(dev, event string, version uint64, class string) {
		seq[dev]++
		reports = append(reports, UpdateReport{Device: dev, Boot: 1, Seq: seq[dev],
			Result: update.Result{Event: event, Version: version, HardwareClass: class}})
	}
	for _, ids := range byPhase {
		for _, id := range ids {
			report(id, "running", 6, "hw")
		}
	}
	report("other-class", "running", 6, "hw2")
	report("other-class", "reverted", 7, "")
	report("no-class", "reverted", 7, "")
	p1, p2, out := byPhase[0], byPhase[1], byPhase[2]
	report(p1[0], "installed", 7, "hw")
	report(p1[0], "confirmed", 7, "hw")
	report(p1[1], "installed", 7, "hw")
	report(p1[1], "reverted", 7, "")
	report(p1[2], "failed", 7, "")
	report(p1[2], "installed", 7, "hw") // retried after a failed download
	report(p2[0], "installed", 7, "hw")
	report(p2[0], "confirmed", 7, "hw")
	report(p2[1], "refused", 8, "")     // another release
	report(p2[2], "installed", 6, "hw") // another release
	report(out[0], "installed", 7, "hw")
	report(out[0], "confirmed", 7, "hw")

	p := c.progress(reports)
	want := []CampaignCounts{
		{Offered: 3, Installed: 1, Confirmed: 1, Reverted: 1},
		{Offered: 3, Confirmed: 1},
	}
	if fmt.Sprint(p.Phases) != fmt.Sprint(want) {
		t.Fatalf("phases %+v, want %+v", p.Phases, want)
	}
	if g := (CampaignCounts{Offered: 1, Confirmed: 1}); p.Groups != g {
		t.Fatalf("groups %+v, want %+v", p.Groups, g)
	}
	if tot := (CampaignCounts{Offered: 7, Installed: 1, Confirmed: 3, Reverted: 1}); p.Total != tot {
		t.Fatalf("total %+v, want %+v", p.Total, tot)
	}
	// 1 failure of 4 finished: 25%, above the 20% threshold.
	if a, reason := c.Decide(p, time.Time{}); a != CampaignAbort || reason == "" {
		t.Fatalf("decided %v %q, want abort", a, reason)
	}
	c.State = CampaignPaused
	if a, _ := c.Decide(p, time.Time{}); a != CampaignAbort {
		t.Fatalf("paused: decided %v, want abort (the threshold applies during a pause)", a)
	}
	c.State, c.MinFinished = CampaignRunning, 5
	if a, _ := c.Decide(p, time.Time{}); a != CampaignHold {
		t.Fatalf("below the minimum finished: decided %v, want hold", a)
	}
}

func TestFormatBasisPoints(t *testing.T) {
	for bp, want := range map[int]string{0: "0%", 1: "0.01%", 25: "0.25%", 100: "1%", 150: "1.5%", 500: "5%", 10_000: "100%"} {
		if got := FormatBasisPoints(bp); got != want {
			t.Errorf("FormatBasisPoints(%d) = %q, want %q", bp, got, want)
		}
	}
}
