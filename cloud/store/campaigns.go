// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/d2c-iot/d2c/update"
)

// Campaign errors.
var (
	// ErrNoCampaign: no campaign matches (none was started, or none is
	// active).
	ErrNoCampaign = errors.New("store: no such campaign")
	// ErrCampaignActive: the hardware class already has a running or
	// paused campaign; abort it (or let it complete) first.
	ErrCampaignActive = errors.New("store: a campaign is already active for this hardware class")
	// ErrCampaignChanged: the campaign changed since it was read (another
	// replica or operator moved it on); read it again and decide again.
	ErrCampaignChanged = errors.New("store: the campaign changed since it was read")
	// ErrCampaignState: the change does not apply to the campaign's state
	// (resuming a running campaign, pausing an aborted one...).
	ErrCampaignState = errors.New("store: the change does not apply to the campaign's state")
)

// CampaignState is where a campaign is.
type CampaignState string

// Campaign states. Running and paused campaigns are active: at most one
// per hardware class. Aborted and completed are final.
const (
	// CampaignRunning: phases advance as their delays pass, unless the
	// failures reach the abort threshold.
	CampaignRunning CampaignState = "running"
	// CampaignPaused: the current phase stays offered; nothing advances.
	CampaignPaused CampaignState = "paused"
	// CampaignAborted: no device that has not started the release starts
	// it (the rule signed into the timestamp is halted).
	CampaignAborted CampaignState = "aborted"
	// CampaignCompleted: the last phase's rule stays signed.
	CampaignCompleted CampaignState = "completed"
)

// Campaign bounds.
const (
	// MaxCampaignPhases bounds [CampaignPlan.Phases].
	MaxCampaignPhases = 16
	// maxHardwareClass bounds a hardware class name, in bytes.
	maxHardwareClass = 64
)

// CampaignPhase is one step of a campaign: the devices it offers the
// release to, and how long it runs before the next step.
type CampaignPhase struct {
	// Share is the share of the fleet offered the release during the
	// phase, in basis points (0 to [update.RolloutAll]): every device
	// whose bucket ([update.RolloutBucket]) is below it. Shares never
	// decrease from one phase to the next.
	Share int
	// Groups are the device groups offered the release whatever their
	// bucket ([update.Rollout.Groups]); each phase keeps the groups of
	// the one before (a phase offering every device needs none). Sorted
	// and made distinct by [Store.StartCampaign].
	Groups []string
	// Delay is how long the phase runs (paused time not counted) before
	// the campaign advances to the next phase; after the last phase, before
	// it completes. Zero: at the controller's next tick.
	Delay time.Duration
}

// CampaignPlan is what an operator asks for: a release, its phases, and
// the threshold that aborts it.
type CampaignPlan struct {
	// HardwareClass is the class of devices, and of the release. Required.
	HardwareClass string
	// Release is the version of the release offered. Required.
	Release uint64
	// Phases are the steps, 1 to [MaxCampaignPhases].
	Phases []CampaignPhase
	// AbortAt is the abort threshold, in basis points: the campaign
	// aborts once failures (reverted + failed) reach this share of the
	// finished devices (confirmed + reverted + failed). 1 to 10,000.
	AbortAt int
	// MinFinished is how many devices must have finished before the
	// threshold applies. At least 1.
	MinFinished int
}

// Campaign is a campaign as the store keeps it.
type Campaign struct {
	CampaignPlan
	// ID identifies the campaign in the store.
	ID int64
	// Salt orders the devices for this campaign ([update.Rollout.Salt]):
	// random, drawn by [Store.StartCampaign].
	Salt [16]byte
	// State is where the campaign is.
	State CampaignState
	// Phase is the index of the current phase in Phases.
	Phase int
	// PhaseStarted is when the current phase started, moved on by the
	// length of any pause since.
	PhaseStarted time.Time
	// Paused is when the current pause began (zero unless paused).
	Paused time.Time
	// Reason says why the campaign was paused or aborted.
	Reason string
	// Revision counts the changes: 1 at the start, one more at each
	// change. Every change is a compare-and-set on it.
	Revision int64
	// Created and Updated are when the campaign started and last changed.
	Created, Updated time.Time
}

// Active reports whether the campaign is running or paused.
func (c *Campaign) Active() bool { return c.State == CampaignRunning || c.State == CampaignPaused }

// Rollout returns the cohort rule to sign into the timestamp of the
// campaign's release: the current phase's share and groups while it is
// running or paused (a pause never widens), the last phase's once it has
// completed, and a halted rule (no device) once it has been aborted.
func (c *Campaign) Rollout() *update.Rollout {
	p := c.Phases[min(c.Phase, len(c.Phases)-1)]
	switch c.State {
	case CampaignAborted:
		return &update.Rollout{Salt: c.Salt}
	case CampaignCompleted:
		p = c.Phases[len(c.Phases)-1]
	}
	return &update.Rollout{Salt: c.Salt, Share: p.Share, Groups: slices.Clone(p.Groups)}
}

// PhaseOf returns the index of the phase that first offers the release to
// device by its bucket, or len(c.Phases) when no phase's share reaches
// its bucket (the device is offered the release only through a group).
func (c *Campaign) PhaseOf(device string) int {
	b := update.RolloutBucket(c.Salt, device)
	for i, p := range c.Phases {
		if b < p.Share {
			return i
		}
	}
	return len(c.Phases)
}

// Validate reports the first field of p that [Store.StartCampaign]
// refuses.
func (p CampaignPlan) Validate() error {
	switch {
	case p.HardwareClass == "" || len(p.HardwareClass) > maxHardwareClass:
		return fmt.Errorf("store: campaign hardware class %q: want 1 to %d bytes", p.HardwareClass, maxHardwareClass)
	case p.Release == 0 || p.Release > math.MaxInt64:
		return fmt.Errorf("store: campaign release version %d: want 1 or more", p.Release)
	case len(p.Phases) == 0 || len(p.Phases) > MaxCampaignPhases:
		return fmt.Errorf("store: campaign of %d phases: want 1 to %d", len(p.Phases), MaxCampaignPhases)
	case p.AbortAt < 1 || p.AbortAt > update.RolloutAll:
		return fmt.Errorf("store: campaign abort threshold %d basis points: want 1 to %d", p.AbortAt, update.RolloutAll)
	case p.MinFinished < 1:
		return fmt.Errorf("store: campaign minimum finished count %d: want 1 or more", p.MinFinished)
	}
	for i, ph := range p.Phases {
		n := i + 1
		switch {
		case ph.Share < 0 || ph.Share > update.RolloutAll:
			return fmt.Errorf("store: campaign phase %d: share %d basis points: want 0 to %d", n, ph.Share, update.RolloutAll)
		case ph.Share == 0 && len(ph.Groups) == 0:
			return fmt.Errorf("store: campaign phase %d offers the release to no device: give it a share or groups", n)
		case ph.Delay < 0:
			return fmt.Errorf("store: campaign phase %d: negative delay %v", n, ph.Delay)
		case len(ph.Groups) > update.MaxRolloutGroups:
			return fmt.Errorf("store: campaign phase %d names %d groups: at most %d", n, len(ph.Groups), update.MaxRolloutGroups)
		}
		for _, g := range ph.Groups {
			if !groupName(g) {
				return fmt.Errorf("store: campaign phase %d: group %q: want 1 to 64 bytes of A-Z a-z 0-9 . _ -", n, g)
			}
		}
		if i == 0 {
			continue
		}
		prev := p.Phases[i-1]
		if ph.Share < prev.Share {
			return fmt.Errorf("store: campaign phase %d narrows the share of phase %d (%d to %d basis points): a campaign only widens", n, i, prev.Share, ph.Share)
		}
		for _, g := range prev.Groups {
			if ph.Share < update.RolloutAll && !slices.Contains(ph.Groups, g) {
				return fmt.Errorf("store: campaign phase %d drops group %q of phase %d: a campaign only widens", n, g, i)
			}
		}
	}
	return nil
}

// groupName reports whether g is a valid device group name.
func groupName(g string) bool {
	if g == "" || len(g) > 64 {
		return false
	}
	for _, c := range []byte(g) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// phaseJSON is a phase in the campaigns.phases column.
type phaseJSON struct {
	Share   int      `json:"share"`
	Groups  []string `json:"groups,omitempty"`
	DelayMS int64    `json:"delay_ms"`
}

// StartCampaign records a new running campaign from p, at its first
// phase, with a fresh random salt. A hardware class has at most one active
// campaign: while one runs or is paused, StartCampaign returns
// [ErrCampaignActive].
func (s *Store) StartCampaign(ctx context.Context, p CampaignPlan) (*Campaign, error) {
	p.Phases = slices.Clone(p.Phases)
	for i := range p.Phases {
		g := slices.Clone(p.Phases[i].Groups)
		slices.Sort(g)
		p.Phases[i].Groups = slices.Compact(g)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	c := &Campaign{CampaignPlan: p, State: CampaignRunning, Revision: 1}
	if _, err := rand.Read(c.Salt[:]); err != nil {
		return nil, fmt.Errorf("store: campaign salt: %w", err)
	}
	wire := make([]phaseJSON, len(p.Phases))
	for i, ph := range p.Phases {
		wire[i] = phaseJSON{Share: ph.Share, Groups: ph.Groups, DelayMS: ph.Delay.Milliseconds()}
	}
	phases, err := json.Marshal(wire)
	if err != nil {
		return nil, fmt.Errorf("store: campaign phases: %w", err)
	}
	now := s.now()
	c.PhaseStarted, c.Created, c.Updated = now, now, now
	err = s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, s.q("SELECT COUNT(*) FROM campaigns WHERE hardware_class = ? AND state IN ('running', 'paused')"),
			p.HardwareClass).Scan(&n); err != nil {
			return fmt.Errorf("store: read campaigns: %w", err)
		}
		if n > 0 {
			return fmt.Errorf("%w (%s)", ErrCampaignActive, p.HardwareClass)
		}
		// The unique index on active campaigns settles two starts racing
		// past the count (a unique violation, retried by tx, then counted).
		return tx.QueryRowContext(ctx, s.q(`INSERT INTO campaigns (hardware_class, release_version, salt, phases, abort_at, min_finished,
			state, phase, phase_started_ms, reason, revision, created_ms, updated_ms)
			VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, '', 1, ?, ?) RETURNING id`),
			p.HardwareClass, int64(p.Release), c.Salt[:], string(phases), p.AbortAt, p.MinFinished, string(c.State),
			now.UnixMilli(), now.UnixMilli(), now.UnixMilli()).Scan(&c.ID)
	})
	if err != nil {
		if errors.Is(err, ErrCampaignActive) {
			return nil, err
		}
		return nil, fmt.Errorf("store: start campaign: %w", err)
	}
	return c, nil
}

const campaignColumns = `id, hardware_class, release_version, salt, phases, abort_at, min_finished, state, phase,
	phase_started_ms, paused_ms, reason, revision, created_ms, updated_ms`

// scanCampaign reads one row of campaignColumns.
func scanCampaign(row interface{ Scan(...any) error }) (*Campaign, error) {
	var (
		c                         Campaign
		release                   int64
		salt                      []byte
		phases, state             string
		started, created, updated int64
		paused                    sql.NullInt64
	)
	if err := row.Scan(&c.ID, &c.HardwareClass, &release, &salt, &phases, &c.AbortAt, &c.MinFinished, &state, &c.Phase,
		&started, &paused, &c.Reason, &c.Revision, &created, &updated); err != nil {
		return nil, err
	}
	var wire []phaseJSON
	if err := json.Unmarshal([]byte(phases), &wire); err != nil || len(salt) != len(c.Salt) || len(wire) == 0 {
		return nil, fmt.Errorf("store: campaign %d: malformed row", c.ID)
	}
	for _, w := range wire {
		c.Phases = append(c.Phases, CampaignPhase{Share: w.Share, Groups: w.Groups, Delay: time.Duration(w.DelayMS) * time.Millisecond})
	}
	copy(c.Salt[:], salt)
	c.Release, c.State = uint64(release), CampaignState(state)
	c.PhaseStarted, c.Created, c.Updated = time.UnixMilli(started), time.UnixMilli(created), time.UnixMilli(updated)
	if paused.Valid {
		c.Paused = time.UnixMilli(paused.Int64)
	}
	return &c, nil
}

// campaigns reads the campaigns a WHERE clause selects, newest first.
func (s *Store) campaigns(ctx context.Context, where string, args ...any) ([]*Campaign, error) {
	rows, err := s.db.QueryContext(ctx, s.q("SELECT "+campaignColumns+" FROM campaigns "+where+" ORDER BY id DESC"), args...)
	if err != nil {
		return nil, fmt.Errorf("store: read campaigns: %w", err)
	}
	defer rows.Close()
	var out []*Campaign
	for rows.Next() {
		c, err := scanCampaign(rows)
		if err != nil {
			return nil, fmt.Errorf("store: read campaigns: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: read campaigns: %w", err)
	}
	return out, nil
}

// ActiveCampaigns returns the running and paused campaigns, one at most
// per hardware class, newest first.
func (s *Store) ActiveCampaigns(ctx context.Context) ([]*Campaign, error) {
	return s.campaigns(ctx, "WHERE state IN ('running', 'paused')")
}

// WatchedCampaigns returns the campaigns the controller evaluates: the
// running and paused ones, and each hardware class's newest campaign once
// completed (its release stays offered to the whole class, so failures
// reported after the last phase still abort it).
func (s *Store) WatchedCampaigns(ctx context.Context) ([]*Campaign, error) {
	return s.campaigns(ctx, "WHERE state IN ('running', 'paused') OR (state = 'completed' AND "+
		"id = (SELECT MAX(id) FROM campaigns AS newer WHERE newer.hardware_class = campaigns.hardware_class))")
}

// CampaignFor returns the newest campaign of release for hardwareClass,
// whatever its state, or [ErrNoCampaign].
func (s *Store) CampaignFor(ctx context.Context, hardwareClass string, release uint64) (*Campaign, error) {
	cs, err := s.campaigns(ctx, "WHERE id = (SELECT MAX(id) FROM campaigns WHERE hardware_class = ? AND release_version = ?)",
		hardwareClass, int64(release))
	if err != nil {
		return nil, err
	}
	if len(cs) == 0 {
		return nil, fmt.Errorf("%w: none for release %d of hardware class %q", ErrNoCampaign, release, hardwareClass)
	}
	return cs[0], nil
}

// ActiveCampaign returns the running or paused campaign of hardwareClass,
// or [ErrNoCampaign].
func (s *Store) ActiveCampaign(ctx context.Context, hardwareClass string) (*Campaign, error) {
	cs, err := s.campaigns(ctx, "WHERE hardware_class = ? AND state IN ('running', 'paused')", hardwareClass)
	if err != nil {
		return nil, err
	}
	if len(cs) == 0 {
		return nil, fmt.Errorf("%w: none active for hardware class %q", ErrNoCampaign, hardwareClass)
	}
	return cs[0], nil
}

// LatestCampaign returns the newest campaign of hardwareClass (of any
// class when it is ""), whatever its state, or [ErrNoCampaign].
func (s *Store) LatestCampaign(ctx context.Context, hardwareClass string) (*Campaign, error) {
	where, args := "WHERE id = (SELECT MAX(id) FROM campaigns)", []any(nil)
	if hardwareClass != "" {
		where, args = "WHERE id = (SELECT MAX(id) FROM campaigns WHERE hardware_class = ?)", []any{hardwareClass}
	}
	cs, err := s.campaigns(ctx, where, args...)
	if err != nil {
		return nil, err
	}
	if len(cs) == 0 {
		if hardwareClass == "" {
			return nil, fmt.Errorf("%w: none started", ErrNoCampaign)
		}
		return nil, fmt.Errorf("%w: none started for hardware class %q", ErrNoCampaign, hardwareClass)
	}
	return cs[0], nil
}

// PauseCampaign pauses the running campaign c: its current phase stays
// offered, nothing advances, and its delay stops counting. It returns the
// campaign as changed; [ErrCampaignChanged] if c is no longer the
// campaign's current revision, [ErrCampaignState] if c is not running.
func (s *Store) PauseCampaign(ctx context.Context, c *Campaign, reason string) (*Campaign, error) {
	return s.changeCampaign(ctx, c, func(n *Campaign, now time.Time) error {
		if n.State != CampaignRunning {
			return fmt.Errorf("%w: pause a campaign that is %s", ErrCampaignState, n.State)
		}
		n.State, n.Paused, n.Reason = CampaignPaused, now, reason
		return nil
	})
}

// ResumeCampaign resumes the paused campaign c; its phase's delay counts
// on from where the pause stopped it. Errors as [Store.PauseCampaign].
func (s *Store) ResumeCampaign(ctx context.Context, c *Campaign) (*Campaign, error) {
	return s.changeCampaign(ctx, c, func(n *Campaign, now time.Time) error {
		if n.State != CampaignPaused {
			return fmt.Errorf("%w: resume a campaign that is %s", ErrCampaignState, n.State)
		}
		n.PhaseStarted = n.PhaseStarted.Add(max(0, now.Sub(n.Paused)))
		n.State, n.Paused, n.Reason = CampaignRunning, time.Time{}, ""
		return nil
	})
}

// AbortCampaign aborts the running, paused or completed campaign c for
// reason: from the next timestamp on, no device that has not started the
// release starts it. Errors as [Store.PauseCampaign].
func (s *Store) AbortCampaign(ctx context.Context, c *Campaign, reason string) (*Campaign, error) {
	return s.changeCampaign(ctx, c, func(n *Campaign, now time.Time) error {
		if !n.Active() && n.State != CampaignCompleted {
			return fmt.Errorf("%w: abort a campaign that is %s", ErrCampaignState, n.State)
		}
		n.State, n.Paused, n.Reason = CampaignAborted, time.Time{}, reason
		return nil
	})
}

// AdvanceCampaign moves the running campaign c to its next phase, or
// completes it after its last. Errors as [Store.PauseCampaign].
func (s *Store) AdvanceCampaign(ctx context.Context, c *Campaign) (*Campaign, error) {
	return s.changeCampaign(ctx, c, func(n *Campaign, now time.Time) error {
		if n.State != CampaignRunning {
			return fmt.Errorf("%w: advance a campaign that is %s", ErrCampaignState, n.State)
		}
		if n.Phase+1 >= len(n.Phases) {
			n.State = CampaignCompleted
			return nil
		}
		n.Phase++
		n.PhaseStarted = now
		return nil
	})
}

// changeCampaign applies change to a copy of c and writes it if the
// campaign is still at c's revision: one compare-and-set, so two replicas
// deciding on the same revision never both apply their change.
func (s *Store) changeCampaign(ctx context.Context, c *Campaign, change func(n *Campaign, now time.Time) error) (*Campaign, error) {
	n := *c
	n.Phases = slices.Clone(c.Phases)
	now := s.now()
	if err := change(&n, now); err != nil {
		return nil, err
	}
	n.Revision, n.Updated = c.Revision+1, now
	var paused any
	if !n.Paused.IsZero() {
		paused = n.Paused.UnixMilli()
	}
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE campaigns SET state = ?, phase = ?, phase_started_ms = ?, paused_ms = ?, reason = ?,
		revision = ?, updated_ms = ? WHERE id = ? AND revision = ?`),
		string(n.State), n.Phase, n.PhaseStarted.UnixMilli(), paused, n.Reason, n.Revision, now.UnixMilli(), c.ID, c.Revision)
	if err != nil {
		return nil, fmt.Errorf("store: change campaign %d: %w", c.ID, err)
	}
	if k, err := res.RowsAffected(); err != nil || k != 1 {
		return nil, fmt.Errorf("%w (campaign %d, revision %d)", ErrCampaignChanged, c.ID, c.Revision)
	}
	return &n, nil
}
