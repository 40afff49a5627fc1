// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/update"
)

// rolloutCommands are the campaign commands (docs/update-format.md,
// "Campaigns"): they change the campaign in the store; the cloud
// service's update role signs the rule into the timestamp at its next
// check.
func rolloutCommands() []*command {
	return []*command{rolloutStartCommand(), rolloutStatusCommand(), rolloutPauseCommand(), rolloutResumeCommand(), rolloutAbortCommand()}
}

// rolloutWatchEvery is how often status --watch redraws.
var rolloutWatchEvery = 2 * time.Second

func rolloutStartCommand() *command {
	return &command{
		path:    "rollout start",
		summary: "start a campaign: offer a release to the fleet phase by phase",
		usage:   "--db URL --release V --hardware-class H --phases SHARE:DELAY,...,SHARE [--group NAME]... [--abort-at PERCENT] [--min-finished N]",
		details: `
Records a running campaign in the fleet's cloud store for release V of
hardware class H, at its first phase, with a fresh random salt that orders
the devices. The cloud service's update role (d2c cloud serve with
"update" and its timestamp keys) then signs the current phase's cohort rule
into the repository's timestamp within seconds; each device evaluates it on
its own ID and installs the release only once its bucket falls in the
phase's share, or it belongs to one of the --group groups.

--phases lists the phases in order, each SHARE:DELAY: the percentage of the
fleet offered the release (0.01% steps, never decreasing), and how long the
phase runs (paused time not counted) before the next one. The last phase's
delay is optional: the campaign completes once it has passed (0: at once).
--group names a device group offered the release from the first phase on
(the devices' own setting, d2c device update --group); repeatable.

The service aborts the campaign once at least --min-finished devices have
finished with the release (confirmed, reverted or failed) and the failures
(reverted + failed) reach --abort-at of them. An abort signs a halted rule:
no device that has not installed the release starts it; confirmed devices
keep it; a device on trial confirms or reverts by its own health check.
A fixed, newer release supersedes an aborted one.

One campaign per hardware class is active (running or paused) at a time.
Start it before you publish the release (d2c update release sign): while a
campaign waits for its release, the service signs a rule that offers the
current release to no device, so the new release, once published, reaches
none before the first phase is signed.`,
		example: `d2c rollout start --db sqlite:/var/lib/d2c/fleet.db --release 8 --hardware-class gw-arm64 --phases 1%:30m,10%:2h,50%:6h,100% --group beta --abort-at 5% --min-finished 20`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			db := dbFlag(fl)
			release := fl.Uint64("release", 0, "version of the release the campaign offers (required)")
			hardware := fl.String("hardware-class", "", "hardware class of the devices and the release (required)")
			phases := fl.String("phases", "", "the phases, SHARE:DELAY,...: share of the fleet (percent) and how long each runs, e.g. 1%:30m,10%:2h,100% (required)")
			var groups stringList
			fl.Var(&groups, "group", "a device group offered the release from the first phase on; repeatable")
			abortAt := fl.String("abort-at", "5%", "abort once failures reach this share of the finished devices (percent)")
			minFinished := fl.Int("min-finished", 20, "finished devices needed before the abort threshold applies")
			return func(ctx context.Context, s streams) error {
				if *db == "" || *release == 0 || *hardware == "" || *phases == "" {
					return usageErrorf("--db, --release, --hardware-class and --phases are required")
				}
				ph, err := parsePhases(*phases, groups)
				if err != nil {
					return usageErrorf("--phases: %v", err)
				}
				at, err := parsePercent(*abortAt)
				if err != nil || at == 0 {
					return usageErrorf("--abort-at %q: want a percentage above 0, such as 5%%", *abortAt)
				}
				plan := store.CampaignPlan{HardwareClass: *hardware, Release: *release, Phases: ph, AbortAt: at, MinFinished: *minFinished}
				if err := plan.Validate(); err != nil {
					return usageErrorf("%v", strings.TrimPrefix(err.Error(), "store: "))
				}
				st, err := openStore(ctx, *db)
				if err != nil {
					return err
				}
				defer st.Close()
				c, err := st.StartCampaign(ctx, plan)
				if errors.Is(err, store.ErrCampaignActive) {
					cur, _ := st.ActiveCampaign(ctx, *hardware)
					hint := "abort it first: d2c rollout abort --db URL --hardware-class " + *hardware
					if cur != nil {
						hint = fmt.Sprintf("campaign %d (release %d) is %s: watch it with d2c rollout status, or stop it with d2c rollout abort --hardware-class %s",
							cur.ID, cur.Release, cur.State, *hardware)
					}
					return withHint(err, hint)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "campaign %d started: release %d for %s, phase 1 of %d (%s)\n", c.ID, c.Release, c.HardwareClass,
					len(c.Phases), ruleText(c.Rollout()))
				fmt.Fprintf(s.stderr, "the cloud service's update role signs the rule into the timestamp at its next check; follow it with: d2c rollout status --db %s --watch\n", *db)
				return nil
			}
		},
	}
}

func rolloutStatusCommand() *command {
	return &command{
		path:    "rollout status",
		summary: "show a campaign's phases and its devices: offered, installed, confirmed, reverted, failed",
		usage:   "--db URL [--hardware-class H] [--json] [--watch]",
		details: `
Shows the newest campaign (of --hardware-class, else of any class): its
state, the reason it was paused or aborted, its current phase, the abort
threshold, and per phase the share, the delay, and the devices:

  OFFERED    devices of the hardware class whose bucket falls in the phase's
             share (at or above the previous phase's): the devices the store
             knows for the class, from their signed update reports, whether
             the phase has started or not
  INSTALLED  on trial: the release installed, neither confirmed nor reverted
  CONFIRMED, REVERTED, FAILED
             by each device's latest signed report on the release

A device counts in the first phase whose share reaches its bucket; the
"groups" row counts the devices outside every share, which only a group
can have offered the release to. The counts are computed here, from the
store, as the service computes them.

--watch redraws every 2 seconds until the campaign is aborted or
completed, or until interrupted. With --json: one object, {"id",
"hardware_class", "release", "state", "reason", "phase" (from 1),
"phase_started" (RFC 3339), "abort_at" and "min_finished", "rule"
{"share", "groups"} (the rule the service signs; share in basis points),
"phases" [{"share", "groups", "delay", "offered", "installed",
"confirmed", "reverted", "failed", "refused"}], "groups" and "total" (the
same counts)}; shares and abort_at in basis points (100 = 1%).`,
		example: `d2c rollout status --db sqlite:/var/lib/d2c/fleet.db --watch`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			db := dbFlag(fl)
			hardware := fl.String("hardware-class", "", "hardware class of the campaign (default: the newest campaign of any class)")
			asJSON := fl.Bool("json", false, "print one JSON object (fields in the details below)")
			watch := fl.Bool("watch", false, "redraw every 2 seconds until the campaign ends or you interrupt")
			return func(ctx context.Context, s streams) error {
				if *db == "" {
					return usageErrorf("--db is required")
				}
				if *watch && *asJSON {
					return usageErrorf("give --watch or --json, not both")
				}
				st, err := openStore(ctx, *db)
				if err != nil {
					return err
				}
				defer st.Close()
				for {
					c, err := st.LatestCampaign(ctx, *hardware)
					if errors.Is(err, store.ErrNoCampaign) {
						return withHint(err, "start one with d2c rollout start")
					}
					if err != nil {
						return err
					}
					p, err := st.CampaignProgress(ctx, c)
					if err != nil {
						return err
					}
					if *asJSON {
						return json.NewEncoder(s.stdout).Encode(campaignJSON(c, p))
					}
					if *watch && (&autoBool{}).enabled(s.stdout) {
						fmt.Fprint(s.stdout, "\x1b[H\x1b[2J") // home, clear
					}
					if err := printCampaign(s.stdout, c, p, time.Now()); err != nil {
						return err
					}
					if !*watch || !c.Active() {
						return nil
					}
					select {
					case <-ctx.Done():
						return nil
					case <-time.After(rolloutWatchEvery):
					}
					fmt.Fprintln(s.stdout)
				}
			}
		},
	}
}

func rolloutPauseCommand() *command {
	return rolloutChangeCommand("pause", "pause a running campaign: its phase stays offered, nothing advances",
		`
Pauses the active campaign (of --hardware-class; without it, the only active
one): its current phase stays offered (a pause never widens the rule), no
phase advances and its delay stops counting until "rollout resume". The
devices of the current phase go on installing, and the abort threshold
still applies.`,
		func(ctx context.Context, st *store.Store, c *store.Campaign, reason string) (*store.Campaign, error) {
			return st.PauseCampaign(ctx, c, reason)
		})
}

func rolloutResumeCommand() *command {
	return rolloutChangeCommand("resume", "resume a paused campaign",
		`
Resumes the paused campaign (of --hardware-class; without it, the only active
one): its phase's delay counts on from where the pause stopped it.`,
		func(ctx context.Context, st *store.Store, c *store.Campaign, _ string) (*store.Campaign, error) {
			return st.ResumeCampaign(ctx, c)
		})
}

func rolloutAbortCommand() *command {
	return rolloutChangeCommand("abort", "abort a campaign: no device that has not started the release starts it",
		`
Aborts the active campaign (of --hardware-class; without it, the only active
one). The cloud service signs a halted rule into the timestamp at its next
check: no device that has not switched to the release starts it (a
download under way stops at the device's next check); confirmed devices
keep it; devices on trial confirm or revert by their own health check: the
cloud never forces a revert. Ship the fix as a newer release, under a new
campaign. A device that keeps seeing a timestamp signed before the abort (a
stale mirror) stops accepting it once it expires.`,
		func(ctx context.Context, st *store.Store, c *store.Campaign, reason string) (*store.Campaign, error) {
			if reason == "" {
				reason = "aborted by an operator"
			}
			return st.AbortCampaign(ctx, c, reason)
		})
}

// rolloutChangeCommand is a command that changes the active campaign.
func rolloutChangeCommand(verb, summary, details string,
	change func(ctx context.Context, st *store.Store, c *store.Campaign, reason string) (*store.Campaign, error)) *command {
	usage := "--db URL [--hardware-class H]"
	if verb != "resume" {
		usage += " [--reason TEXT]"
	}
	return &command{
		path:    "rollout " + verb,
		summary: summary,
		usage:   usage,
		details: details,
		example: fmt.Sprintf("d2c rollout %s --db sqlite:/var/lib/d2c/fleet.db --hardware-class gw-arm64", verb),
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			db := dbFlag(fl)
			hardware := fl.String("hardware-class", "", "hardware class of the campaign (default: the only active campaign)")
			var reason *string
			if verb != "resume" {
				reason = fl.String("reason", "", "the reason recorded with the campaign, shown by rollout status")
			}
			return func(ctx context.Context, s streams) error {
				if *db == "" {
					return usageErrorf("--db is required")
				}
				st, err := openStore(ctx, *db)
				if err != nil {
					return err
				}
				defer st.Close()
				why := ""
				if reason != nil {
					why = *reason
				}
				// A replica may move the campaign between the read and the
				// change: read again and decide again.
				for attempt := 0; ; attempt++ {
					c, err := activeCampaign(ctx, st, *hardware)
					if err != nil {
						return err
					}
					n, err := change(ctx, st, c, why)
					if errors.Is(err, store.ErrCampaignChanged) && attempt < 3 {
						continue
					}
					if errors.Is(err, store.ErrCampaignState) {
						return withHint(err, fmt.Sprintf("campaign %d is %s: see d2c rollout status", c.ID, c.State))
					}
					if err != nil {
						return err
					}
					fmt.Fprintf(s.stdout, "campaign %d (release %d for %s): %s, phase %d of %d\n", n.ID, n.Release, n.HardwareClass, n.State,
						n.Phase+1, len(n.Phases))
					fmt.Fprintf(s.stderr, "the cloud service signs the rule (%s) into the timestamp at its next check\n", ruleText(n.Rollout()))
					return nil
				}
			}
		},
	}
}

// dbFlag defines --db.
func dbFlag(fl *flag.FlagSet) *string {
	return fl.String("db", "", "the fleet's cloud store, sqlite:PATH or postgres://... (required)")
}

// activeCampaign returns the active campaign of hardware, or the only
// active one when hardware is "".
func activeCampaign(ctx context.Context, st *store.Store, hardware string) (*store.Campaign, error) {
	if hardware != "" {
		c, err := st.ActiveCampaign(ctx, hardware)
		if errors.Is(err, store.ErrNoCampaign) {
			return nil, withHint(err, "see d2c rollout status --hardware-class "+hardware)
		}
		return c, err
	}
	cs, err := st.ActiveCampaigns(ctx)
	if err != nil {
		return nil, err
	}
	switch len(cs) {
	case 0:
		return nil, withHint(fmt.Errorf("%w: none is running or paused", store.ErrNoCampaign), "see d2c rollout status")
	case 1:
		return cs[0], nil
	}
	classes := make([]string, len(cs))
	for i, c := range cs {
		classes[i] = c.HardwareClass
	}
	return nil, usageErrorf("%d campaigns are active (%s): give --hardware-class", len(cs), strings.Join(classes, ", "))
}

// parsePhases parses --phases, each phase offering groups too.
func parsePhases(s string, groups []string) ([]store.CampaignPhase, error) {
	parts := strings.Split(s, ",")
	out := make([]store.CampaignPhase, 0, len(parts))
	for i, part := range parts {
		share, delay, hasDelay := strings.Cut(strings.TrimSpace(part), ":")
		bp, err := parsePercent(share)
		if err != nil {
			return nil, fmt.Errorf("phase %d: %v", i+1, err)
		}
		p := store.CampaignPhase{Share: bp, Groups: groups}
		switch {
		case hasDelay:
			if p.Delay, err = time.ParseDuration(delay); err != nil || p.Delay < 0 {
				return nil, fmt.Errorf("phase %d: delay %q: want a duration such as 30m or 2h", i+1, delay)
			}
		case i < len(parts)-1:
			return nil, fmt.Errorf("phase %d (%s) needs a delay before the next phase, such as %s:2h", i+1, share, share)
		}
		out = append(out, p)
	}
	return out, nil
}

// parsePercent parses a percentage with at most two decimals ("5%",
// "0.25%") into basis points.
func parsePercent(s string) (int, error) {
	num, ok := strings.CutSuffix(strings.TrimSpace(s), "%")
	whole, frac, _ := strings.Cut(num, ".")
	if !ok || whole == "" || len(frac) > 2 {
		return 0, fmt.Errorf("share %q: want a percentage such as 1%% or 0.5%%", s)
	}
	w, err := strconv.Atoi(whole)
	if err != nil || w < 0 || w > 100 {
		return 0, fmt.Errorf("share %q: want 0%% to 100%%", s)
	}
	f := 0
	if frac != "" {
		if f, err = strconv.Atoi(frac + strings.Repeat("0", 2-len(frac))); err != nil || f < 0 {
			return 0, fmt.Errorf("share %q: want a percentage such as 1%% or 0.5%%", s)
		}
	}
	bp := w*100 + f
	if bp > update.RolloutAll {
		return 0, fmt.Errorf("share %q: want 0%% to 100%%", s)
	}
	return bp, nil
}

// ruleText describes a cohort rule.
func ruleText(r *update.Rollout) string {
	switch {
	case r.Halted():
		return "halted: no device"
	case len(r.Groups) == 0:
		return store.FormatBasisPoints(r.Share) + " of the devices"
	}
	return fmt.Sprintf("%s of the devices and groups %s", store.FormatBasisPoints(r.Share), strings.Join(r.Groups, ", "))
}

// printCampaign prints the status view of c.
func printCampaign(w io.Writer, c *store.Campaign, p *store.CampaignProgress, now time.Time) error {
	fmt.Fprintf(w, "campaign %d: release %d for %s: %s", c.ID, c.Release, c.HardwareClass, strings.ToUpper(string(c.State)))
	if c.Reason != "" {
		fmt.Fprintf(w, " (%s)", c.Reason)
	}
	fmt.Fprintln(w)
	phase := c.Phases[c.Phase]
	switch c.State {
	case store.CampaignRunning:
		next := c.PhaseStarted.Add(phase.Delay).Sub(now).Round(time.Second)
		fmt.Fprintf(w, "phase %d of %d since %s; next in %s\n", c.Phase+1, len(c.Phases), c.PhaseStarted.UTC().Format(time.RFC3339), max(0, next))
	case store.CampaignPaused:
		fmt.Fprintf(w, "phase %d of %d, paused since %s\n", c.Phase+1, len(c.Phases), c.Paused.UTC().Format(time.RFC3339))
	default:
		fmt.Fprintf(w, "ended at phase %d of %d, %s\n", c.Phase+1, len(c.Phases), c.Updated.UTC().Format(time.RFC3339))
	}
	fin, fail := p.Total.Finished(), p.Total.Failures()
	rate := "-"
	if fin > 0 {
		rate = store.FormatBasisPoints(int(int64(fail) * update.RolloutAll / int64(fin)))
	}
	fmt.Fprintf(w, "abort at %s failures once %d devices finished: %d of %d finished failed (%s)\n",
		store.FormatBasisPoints(c.AbortAt), c.MinFinished, fail, fin, rate)
	fmt.Fprintf(w, "rule signed: %s\n\n", ruleText(c.Rollout()))
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PHASE\tSHARE\tDELAY\tOFFERED\tINSTALLED\tCONFIRMED\tREVERTED\tFAILED\t")
	row := func(name, share, delay string, n store.CampaignCounts) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t\n", name, share, delay, n.Offered, n.Installed, n.Confirmed, n.Reverted, n.Failed)
	}
	for i, ph := range c.Phases {
		name := strconv.Itoa(i + 1)
		if i == c.Phase && c.Active() {
			name = "> " + name
		}
		row(name, store.FormatBasisPoints(ph.Share), ph.Delay.String(), p.Phases[i])
	}
	if p.Groups != (store.CampaignCounts{}) {
		row("groups", "-", "-", p.Groups)
	}
	row("total", "", "", p.Total)
	return tw.Flush()
}

// campaignCountsJSON is a row of rollout status --json.
type campaignCountsJSON struct {
	Offered   int `json:"offered"`
	Installed int `json:"installed"`
	Confirmed int `json:"confirmed"`
	Reverted  int `json:"reverted"`
	Failed    int `json:"failed"`
	Refused   int `json:"refused"`
}

func countsJSON(n store.CampaignCounts) campaignCountsJSON {
	return campaignCountsJSON{n.Offered, n.Installed, n.Confirmed, n.Reverted, n.Failed, n.Refused}
}

type campaignPhaseJSON struct {
	Share  int      `json:"share"`
	Groups []string `json:"groups"`
	Delay  string   `json:"delay"`
	campaignCountsJSON
}

type campaignStatusJSON struct {
	ID            int64  `json:"id"`
	HardwareClass string `json:"hardware_class"`
	Release       uint64 `json:"release"`
	State         string `json:"state"`
	Reason        string `json:"reason"`
	Phase         int    `json:"phase"`
	PhaseStarted  string `json:"phase_started"`
	AbortAt       int    `json:"abort_at"`
	MinFinished   int    `json:"min_finished"`
	Rule          struct {
		Share  int      `json:"share"`
		Groups []string `json:"groups"`
	} `json:"rule"`
	Phases []campaignPhaseJSON `json:"phases"`
	Groups campaignCountsJSON  `json:"groups"`
	Total  campaignCountsJSON  `json:"total"`
}

func campaignJSON(c *store.Campaign, p *store.CampaignProgress) campaignStatusJSON {
	j := campaignStatusJSON{ID: c.ID, HardwareClass: c.HardwareClass, Release: c.Release, State: string(c.State), Reason: c.Reason,
		Phase: c.Phase + 1, PhaseStarted: c.PhaseStarted.UTC().Format(time.RFC3339), AbortAt: c.AbortAt, MinFinished: c.MinFinished,
		Groups: countsJSON(p.Groups), Total: countsJSON(p.Total)}
	r := c.Rollout()
	j.Rule.Share, j.Rule.Groups = r.Share, append([]string{}, r.Groups...)
	for i, ph := range c.Phases {
		j.Phases = append(j.Phases, campaignPhaseJSON{Share: ph.Share, Groups: append([]string{}, ph.Groups...), Delay: ph.Delay.String(),
			campaignCountsJSON: countsJSON(p.Phases[i])})
	}
	return j
}
