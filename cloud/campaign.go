// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package cloud

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/update"
)

// defaultCampaignEvery is how often the campaign controller looks at the
// active campaigns, and the timestamp's cohort rule is checked.
const defaultCampaignEvery = 5 * time.Second

// campaignRule is the update role's rule for the timestamp naming release
// of hardwareClass (docs/update-format.md, "Campaigns"): the rule of the
// release's own newest campaign when it has one (halted once aborted,
// whatever campaigns came after: an aborted release is never offered
// again); a halted rule while an active campaign waits for a newer
// release to be published (so that publishing it offers it to no device
// before the campaign's first phase); none otherwise (no campaign).
func campaignRule(st *store.Store) func(ctx context.Context, hardwareClass string, release uint64) (*update.Rollout, error) {
	return func(ctx context.Context, hardwareClass string, release uint64) (*update.Rollout, error) {
		own, err := st.CampaignFor(ctx, hardwareClass, release)
		switch {
		case err == nil:
			return own.Rollout(), nil
		case !errors.Is(err, store.ErrNoCampaign):
			return nil, err
		}
		c, err := st.LatestCampaign(ctx, hardwareClass)
		switch {
		case errors.Is(err, store.ErrNoCampaign):
			return nil, nil
		case err != nil:
			return nil, err
		case c.Release > release && c.Active():
			return &update.Rollout{Salt: c.Salt}, nil
		}
		return nil, nil
	}
}

// campaignController advances and aborts the store's active campaigns
// from the devices' signed update reports, every tick.
type campaignController struct {
	store *store.Store
	every time.Duration
	log   *slog.Logger
	m     *campaignMetrics
	now   func() time.Time
}

// run ticks until ctx ends. A failure (the store unreachable) is logged
// and retried at the next tick: the rule in place stays signed.
func (c *campaignController) run(ctx context.Context) error {
	t := time.NewTicker(c.every)
	defer t.Stop()
	for {
		c.tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// tick evaluates every active campaign, and each class's newest
// campaign once completed, once: abort when the failures among finished
// devices reach the threshold (after the minimum count), else advance
// once the phase's delay has passed and enough of the devices reached so
// far finished. Each change is a
// compare-and-set: a replica that lost the race leaves it to the winner.
func (c *campaignController) tick(ctx context.Context) {
	cs, err := c.store.WatchedCampaigns(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error("campaigns not read; nothing changes until the next tick", "err", err)
		}
		return
	}
	for _, camp := range cs {
		p, err := c.store.CampaignProgress(ctx, camp)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Error("campaign progress not read", "campaign", camp.ID, "err", err)
			}
			continue
		}
		now := c.now()
		next := camp
		switch action, reason := camp.Decide(p, now); action {
		case store.CampaignAbort:
			next, err = c.store.AbortCampaign(ctx, camp, reason)
			if err == nil {
				c.log.Warn("campaign aborted", "campaign", camp.ID, "hardware_class", camp.HardwareClass,
					"release", camp.Release, "phase", camp.Phase+1, "reason", reason)
			}
		case store.CampaignAdvance:
			next, err = c.store.AdvanceCampaign(ctx, camp)
			if err == nil && next.State == store.CampaignCompleted {
				c.log.Info("campaign completed", "campaign", camp.ID, "hardware_class", camp.HardwareClass, "release", camp.Release)
			} else if err == nil {
				c.log.Info("campaign advanced", "campaign", camp.ID, "hardware_class", camp.HardwareClass, "release", camp.Release,
					"phase", next.Phase+1, "share", store.FormatBasisPoints(next.Phases[next.Phase].Share))
			}
		}
		switch {
		case errors.Is(err, store.ErrCampaignChanged), errors.Is(err, store.ErrCampaignState):
			continue // another replica or an operator moved it first: next tick
		case err != nil:
			c.log.Error("campaign not changed", "campaign", camp.ID, "err", err)
			continue
		}
		c.observe(next, p)
	}
}

// observe sets the campaign gauges of c's hardware class.
func (c *campaignController) observe(camp *store.Campaign, p *store.CampaignProgress) {
	m, class := c.m, camp.HardwareClass
	m.release.WithLabelValues(class).Set(float64(camp.Release))
	m.phase.WithLabelValues(class).Set(float64(camp.Phase + 1))
	for _, st := range []store.CampaignState{store.CampaignRunning, store.CampaignPaused, store.CampaignAborted, store.CampaignCompleted} {
		v := 0.0
		if camp.State == st {
			v = 1
		}
		m.state.WithLabelValues(class, string(st)).Set(v)
	}
	rows := append(p.Phases, p.Groups)
	for i, r := range rows {
		phase := strconv.Itoa(i + 1)
		if i == len(p.Phases) {
			phase = "groups"
		}
		for status, n := range map[string]int{"offered": r.Offered, "installed": r.Installed, "confirmed": r.Confirmed,
			"reverted": r.Reverted, "failed": r.Failed, "refused": r.Refused} {
			m.devices.WithLabelValues(class, phase, status).Set(float64(n))
		}
	}
}

// campaignMetrics are the campaign gauges.
type campaignMetrics struct {
	release, phase *prometheus.GaugeVec
	state, devices *prometheus.GaugeVec
}

func newCampaignMetrics(reg *prometheus.Registry) *campaignMetrics {
	m := &campaignMetrics{
		release: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "d2c_campaign_release",
			Help: "Release version of the hardware class's campaign this replica last evaluated."}, []string{"hardware_class"}),
		phase: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "d2c_campaign_phase",
			Help: "Current phase of the campaign, from 1."}, []string{"hardware_class"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "d2c_campaign_state",
			Help: "1 for the campaign's state (running, paused, aborted, completed), 0 for the others."}, []string{"hardware_class", "state"}),
		devices: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "d2c_campaign_devices",
			Help: "Devices of the campaign by phase (the first whose share reaches their bucket; \"groups\": none) and status: " +
				"offered, or their latest signed report on the release (installed: on trial; confirmed; reverted; failed; refused)."},
			[]string{"hardware_class", "phase", "status"}),
	}
	reg.MustRegister(m.release, m.phase, m.state, m.devices)
	return m
}
