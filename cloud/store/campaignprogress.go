// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"context"
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/update"
)

// CampaignCounts counts devices in each state of a campaign's release,
// each device by the latest of its signed update reports for that
// release (by boot, then sequence number).
type CampaignCounts struct {
	// Offered counts the devices of the campaign's hardware class whose
	// bucket falls in the phase's share (see [CampaignProgress]).
	Offered int
	// Installed counts the devices on trial: the release installed and
	// booted or about to be, neither confirmed nor reverted yet.
	Installed int
	// Confirmed counts the devices that confirmed the release.
	Confirmed int
	// Reverted counts the devices that reverted it (their health check
	// failed, or the trial ran out).
	Reverted int
	// Failed counts the devices whose install failed.
	Failed int
	// Refused counts the devices that refused it (a check failed); not a
	// failure of the release, and not finished.
	Refused int
}

// Finished is Confirmed + Reverted + Failed: the devices done with the
// release one way or the other.
func (c CampaignCounts) Finished() int { return c.Confirmed + c.Reverted + c.Failed }

// Failures is Reverted + Failed.
func (c CampaignCounts) Failures() int { return c.Reverted + c.Failed }

func (c *CampaignCounts) add(o CampaignCounts) {
	c.Offered += o.Offered
	c.Installed += o.Installed
	c.Confirmed += o.Confirmed
	c.Reverted += o.Reverted
	c.Failed += o.Failed
	c.Refused += o.Refused
}

// CampaignProgress is what the devices of a campaign's hardware class
// reported about its release.
//
// Every device is counted in one row: the first phase whose share
// reaches its bucket ([Campaign.PhaseOf]), or Groups when none does (it
// can have been offered the release only as a member of a group). A
// phase's Offered counts the devices the store knows for the hardware
// class, the ones whose latest update report naming a hardware class
// (a "running", "installed" or "confirmed" report) names this one, whose
// bucket falls in the phase: at or above the previous phase's share,
// below the phase's own; whether the phase has started yet or not.
// Members of a group are known to the devices alone, so Groups' Offered
// counts only the devices outside every share that reported on the
// release. Devices that never reported their hardware class (agents that
// predate these reports) are counted nowhere.
type CampaignProgress struct {
	// Phases has one row per phase of the campaign.
	Phases []CampaignCounts
	// Groups counts the devices outside every phase's share.
	Groups CampaignCounts
	// Total is the sum of the rows.
	Total CampaignCounts
	// Reached counts the devices the campaign has reached so far: those
	// of the phases started (every phase once completed) and the members
	// of groups that installed. A phase advances only once enough of them
	// finished ([Campaign.Decide]).
	Reached CampaignCounts
}

// CampaignProgress counts what the devices reported about c's release
// (see [CampaignProgress] for what each row counts), from every signed
// update report in the records table ([Store.UpdateReports]). Reports
// of an earlier campaign of the same release count too.
func (s *Store) CampaignProgress(ctx context.Context, c *Campaign) (*CampaignProgress, error) {
	reports, err := s.UpdateReports(ctx, time.Time{})
	if err != nil {
		return nil, fmt.Errorf("store: campaign progress: %w", err)
	}
	return c.progress(reports), nil
}

// deviceReport is what one device reported, as far as a campaign cares.
type deviceReport struct {
	class            string
	classBoot        uint64 // (boot, seq) of the report that named the class
	classSeq         uint64
	event            string // the latest event for the release
	boot, seq        uint64
	hasClass, hasEvt bool
}

// progress counts reports for c.
func (c *Campaign) progress(reports []UpdateReport) *CampaignProgress {
	devs := map[string]*deviceReport{}
	// notBefore: a report at (boot, seq) is not older than one at (b, s);
	// readings of one record share their place and come in order.
	notBefore := func(boot, seq, b, s uint64) bool { return boot > b || boot == b && seq >= s }
	for _, r := range reports {
		d := devs[r.Device]
		if d == nil {
			d = &deviceReport{}
			devs[r.Device] = d
		}
		if hc := r.Result.HardwareClass; hc != "" && (!d.hasClass || notBefore(r.Boot, r.Seq, d.classBoot, d.classSeq)) {
			d.class, d.classBoot, d.classSeq, d.hasClass = hc, r.Boot, r.Seq, true
		}
		if r.Result.Version != c.Release {
			continue
		}
		switch r.Result.Event {
		case "installed", "confirmed", "reverted", "failed", "refused":
		default:
			continue // "running" and what a later agent may add
		}
		if !d.hasEvt || notBefore(r.Boot, r.Seq, d.boot, d.seq) {
			d.event, d.boot, d.seq, d.hasEvt = r.Result.Event, r.Boot, r.Seq, true
		}
	}
	p := &CampaignProgress{Phases: make([]CampaignCounts, len(c.Phases))}
	for id, d := range devs {
		if !d.hasClass || d.class != c.HardwareClass {
			continue
		}
		i := c.PhaseOf(id)
		// A device the campaign has not reached by its bucket (its phase
		// has not started, or it is in none) was offered the release only
		// as a member of a group, which it alone knows: it counts once it
		// installed the release. A failure or refusal from it says nothing
		// of the release (it was never offered it, or claims a class it is
		// not), so one device cannot abort a campaign it is outside of.
		reached := i < len(c.Phases) && (i <= c.Phase || c.State == CampaignCompleted)
		if d.hasEvt && !reached && d.event != "installed" && d.event != "confirmed" && d.event != "reverted" {
			d.hasEvt = false
		}
		row := &p.Groups
		if i < len(c.Phases) {
			row = &p.Phases[i]
			row.Offered++
		} else if d.hasEvt {
			row.Offered++
		}
		if reached || d.hasEvt {
			p.Reached.Offered++
		}
		if d.hasEvt {
			row.count(d.event)
			p.Reached.count(d.event)
		}
	}
	for _, r := range p.Phases {
		p.Total.add(r)
	}
	p.Total.add(p.Groups)
	return p
}

// count adds one device whose latest report on the release is event.
func (r *CampaignCounts) count(event string) {
	switch event {
	case "installed":
		r.Installed++
	case "confirmed":
		r.Confirmed++
	case "reverted":
		r.Reverted++
	case "failed":
		r.Failed++
	case "refused":
		r.Refused++
	}
}

// rolloutAll is update.RolloutAll as an int64, for the threshold's
// arithmetic.
const rolloutAll = int64(update.RolloutAll)

// Decide returns what the campaign's controller should do with c at now,
// given its progress p: abort (with the reason), advance (to the next
// phase, or complete after the last), or nothing. The threshold applies
// to running and paused campaigns (devices of the current phase go on
// installing during a pause), before the delay, so a phase whose delay
// has passed never advances over failures that reached it; only a
// running campaign advances.
func (c *Campaign) Decide(p *CampaignProgress, now time.Time) (action CampaignAction, reason string) {
	if !c.Active() && c.State != CampaignCompleted {
		return CampaignHold, ""
	}
	fin, fail := int64(p.Total.Finished()), int64(p.Total.Failures())
	if fin >= int64(c.MinFinished) && fail*rolloutAll >= int64(c.AbortAt)*fin {
		return CampaignAbort, fmt.Sprintf("%d of %d finished devices failed (%d reverted, %d failed): at or above the abort threshold of %s",
			fail, fin, p.Total.Reverted, p.Total.Failed, FormatBasisPoints(c.AbortAt))
	}
	if c.State == CampaignRunning && now.Sub(c.PhaseStarted) >= c.Phases[c.Phase].Delay && p.evidence(c.MinFinished) {
		return CampaignAdvance, ""
	}
	return CampaignHold, ""
}

// evidence reports whether the devices the campaign has reached so far
// finished enough to judge the release by: minFinished of them, or every
// one if fewer were offered. Silence never advances a campaign (devices
// that do not report, a broker that drops their reports, a release not
// yet published): with no device reached, it waits.
func (p *CampaignProgress) evidence(minFinished int) bool {
	fin := p.Reached.Finished()
	return p.Reached.Offered > 0 && (fin >= minFinished || fin >= p.Reached.Offered)
}

// CampaignAction is a decision of [Campaign.Decide].
type CampaignAction int

// Campaign actions.
const (
	// CampaignHold: nothing to do yet.
	CampaignHold CampaignAction = iota
	// CampaignAdvance: advance to the next phase, or complete
	// ([Store.AdvanceCampaign]).
	CampaignAdvance
	// CampaignAbort: abort ([Store.AbortCampaign]).
	CampaignAbort
)

// FormatBasisPoints writes basis points as a percentage: 500 is "5%",
// 25 is "0.25%".
func FormatBasisPoints(bp int) string {
	s := fmt.Sprintf("%d.%02d", bp/100, bp%100)
	for s[len(s)-1] == '0' {
		s = s[:len(s)-1]
	}
	if s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	return s + "%"
}
