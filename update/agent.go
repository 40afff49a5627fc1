// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/identity/audit"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/update/internal/fetch"
	"github.com/d2c-iot/d2c/update/slot"
)

// Errors of the agent (the trust checks have their own, see errors.go).
var (
	// ErrBusy: an update is already under way (downloading, installed or
	// on trial); Confirm, Rollback or Abort it first.
	ErrBusy = errors.New("update: an update is already under way")
	// ErrNoTrial: Confirm or Rollback without an update on trial.
	ErrNoTrial = errors.New("update: no update on trial")
	// ErrNotBooted: Confirm before the device runs the new slot: confirming
	// would vouch for software that never ran.
	ErrNotBooted = errors.New("update: the new slot has not booted yet")
	// ErrSlowRetrieval: a download slower than the minimum rate was
	// abandoned (slow-retrieval attack, or a bad link); what arrived is
	// kept and the next Install resumes.
	ErrSlowRetrieval = errors.New("update: slow retrieval: download below the minimum rate")
	// ErrInsecure: an artifact address over plain http without an
	// explicit AgentConfig.Client.
	ErrInsecure = errors.New("update: plain http artifact address without an explicit client")
	// ErrLocked: another agent holds the state directory.
	ErrLocked = errors.New("update: another agent uses this state directory")
)

// Clock is trusted time; *identity.TrustedClock implements it (the system
// clock, but never earlier than a floor learnt from verified certificates,
// so a device without a real-time clock still notices stale metadata).
type Clock interface{ Now() time.Time }

// AgentConfig configures an [Agent]. Dir, Root, HardwareClass, Slots and
// Source are required.
type AgentConfig struct {
	// Dir holds the agent's state (created 0700).
	Dir string
	// Root is the root metadata pinned at manufacture: the trust anchor
	// for the first update. Later roots are learnt by rotation.
	Root []byte
	// HardwareClass is this device's class; releases for another are
	// refused.
	HardwareClass string
	// Device is this device's ID (its certificate's), on which it
	// evaluates a campaign's cohort rule ([Timestamp.Rollout]). Without
	// it the device is in a cohort only through Groups.
	Device string
	// Groups names the device groups this device belongs to (set at
	// provisioning, for instance "beta"): a campaign may offer a release
	// to named groups first ([Rollout.Groups]). Each is 1 to 64 bytes of
	// A-Z a-z 0-9 . _ -.
	Groups []string
	// Artifact names the artifact to install from a release; empty means
	// the release's only artifact.
	Artifact string
	// Slots are the device's A/B slots.
	Slots slot.Slots
	// Source serves the metadata.
	Source Source
	// Resolve turns an artifact URI into an address; nil uses Source's
	// Resolve method when it has one (HTTPSource), else the URI as is.
	Resolve func(uri string) (string, error)
	// Client downloads artifacts; nil means a client that speaks only
	// HTTPS. A client given here may speak plain http (development); its
	// Timeout should be 0, MinRate bounds a slow download instead.
	Client *http.Client
	// Clock is trusted time; nil means the system clock.
	Clock Clock
	// MaxTrialStarts is how many starts the new slot gets to Confirm;
	// default 3.
	MaxTrialStarts int
	// TrialTimeout is how long it gets; default 30 minutes.
	TrialTimeout time.Duration
	// MinRate and RateWindow: a download slower than MinRate bytes/s over
	// RateWindow is abandoned (slow retrieval). Defaults 1 KiB/s over 60 s.
	MinRate    int64
	RateWindow time.Duration
	// Progress is called as an artifact downloads.
	Progress func(done, total int64)
	// Reboot is called once the new slot is installed and switched on
	// trial; nil leaves the restart to the application.
	Reboot func(ctx context.Context) error
	// Report receives each outcome (installed, confirmed, reverted,
	// refused, failed) and, at the first Start, the release the device
	// runs ("running"); updatelink.TelemetryReporter publishes
	// them as signed telemetry.
	Report func(ctx context.Context, r Result)
	// Logger receives the agent's events; nil discards them.
	Logger *slog.Logger
	// Audit, if set, records every outcome (installed, confirmed,
	// reverted, refused, failed) in the device's tamper-evident audit log.
	Audit *audit.Log

	// BootID returns an identifier of the current boot of the system. With
	// a bootloader (slot.UBoot) the agent records it at the switch and
	// treats the new slot as booted only once it changed; default for
	// *slot.UBoot: the Linux kernel's boot_id. Directory slots "boot" when
	// the application starts and need none.
	BootID func() (string, error)

	fs   atomicfile.FS      // tests: crash injection
	hook func(point string) // tests: named points of an update
}

// Result is the outcome of an update step, as reported. Event is one of
// "installed", "confirmed", "reverted", "refused", "failed", or "running":
// the release the device runs, reported by the first [Agent.Start] of each
// Agent (each start of the application), so that the cloud learns what
// every device runs even when nothing changes.
type Result struct {
	Event   string `cbor:"1,keyasint" json:"event"` // installed, confirmed, reverted, refused, failed, running
	Version uint64 `cbor:"2,keyasint" json:"version"`
	From    uint64 `cbor:"3,keyasint" json:"from"`
	Reason  string `cbor:"4,keyasint,omitempty" json:"reason,omitempty"`
	Time    int64  `cbor:"5,keyasint" json:"time"` // Unix ms, trusted time
	// Delta, on an "installed" result, tells how the artifact arrived:
	// "applied" (built from a delta of the release), "fallback" (a delta
	// failed, Reason says why, and the full artifact was downloaded), or
	// empty (no delta for the installed release).
	Delta string `cbor:"6,keyasint,omitempty" json:"delta,omitempty"`
	// SBOM, SupportUntil and HardwareClass, on "installed", "confirmed"
	// and "running" results, are the release's facts: the hex SHA-256 of
	// its signed SBOM ([Release.SBOM]; empty when it has none), the end
	// of its security support ([Release.SupportUntil], Unix ms; 0 when
	// none is stated), and the agent's hardware class.
	SBOM          string `cbor:"7,keyasint,omitempty" json:"sbom,omitempty"`
	SupportUntil  int64  `cbor:"8,keyasint,omitempty" json:"support_until,omitempty"`
	HardwareClass string `cbor:"9,keyasint,omitempty" json:"hardware_class,omitempty"`
}

// Offer is a verified release that is newer than the installed one.
type Offer struct {
	Release  *Release
	Artifact Artifact
}

// Status is what the agent reports of itself.
type Status struct {
	Phase     Phase
	Installed Installed
	// Pending is the version being installed or tried; 0 when idle.
	Pending uint64
	// Starts counts the starts of the new slot on trial.
	Starts int
	// RebootNeeded: the slot that boots next is not the one running; the
	// application should restart (or the device reboot) to complete the
	// install or the revert.
	RebootNeeded bool
	// Last is the last outcome.
	Last *Result
	// Reverted is the version of the last release that booted here and
	// was reverted; Check does not offer that same release again.
	Reverted uint64
	// Withheld is the version of a newer release the last check verified
	// but did not offer: its campaign's cohort rule leaves this device
	// out for now ([Timestamp.Rollout]); 0 when none.
	Withheld uint64
}

// Agent installs updates: it checks for verified releases, downloads one
// into the inactive slot, switches to it on trial, and confirms or reverts.
// Every step is persisted first, so that a power cut at any instant leaves
// a device that boots a verified image and an agent that knows where it
// stands. An Agent is safe for concurrent use.
type Agent struct {
	cfg    AgentConfig
	log    *slog.Logger
	store  *stateStore
	unlock func()

	notify chan struct{}

	mu      sync.Mutex
	st      *state
	reboot  bool
	closed  bool
	counted bool   // this process counted its start of a trial
	running bool   // this Agent reported the release it runs
	offer   *Offer // the release Check verified last
	// withheld is the release version the last check found but the
	// campaign's cohort rule does not offer this device (0: none).
	withheld uint64

	deltaErr error // the last failure of a delta path (tests)
}

// NewAgent opens (or creates) the agent state in cfg.Dir. A fresh state
// trusts cfg.Root and records the booted slot as installed with version 0.
func NewAgent(ctx context.Context, cfg AgentConfig) (*Agent, error) {
	switch {
	case cfg.Dir == "":
		return nil, errors.New("update: AgentConfig.Dir is required")
	case len(cfg.Root) == 0:
		return nil, errors.New("update: AgentConfig.Root (the pinned root metadata) is required")
	case cfg.HardwareClass == "":
		return nil, errors.New("update: AgentConfig.HardwareClass is required")
	case cfg.Slots == nil || cfg.Source == nil:
		return nil, errors.New("update: AgentConfig.Slots and Source are required")
	}
	for _, g := range cfg.Groups {
		if err := validateName("group", g); err != nil || len(g) > maxGroupName {
			return nil, fmt.Errorf("update: AgentConfig.Groups: %q: 1 to %d bytes of A-Z a-z 0-9 . _ -", g, maxGroupName)
		}
	}
	cfg.Groups = slices.Clone(cfg.Groups)
	if cfg.fs == nil {
		cfg.fs = atomicfile.OS{}
	}
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	if cfg.MaxTrialStarts <= 0 {
		cfg.MaxTrialStarts = 3
	}
	if cfg.TrialTimeout <= 0 {
		cfg.TrialTimeout = 30 * time.Minute
	}
	if cfg.MinRate <= 0 {
		cfg.MinRate = 1024
	}
	if cfg.RateWindow <= 0 {
		cfg.RateWindow = time.Minute
	}
	if _, ok := cfg.Slots.(*slot.UBoot); ok && cfg.BootID == nil {
		cfg.BootID = linuxBootID
	}
	if cfg.Resolve == nil {
		if r, ok := cfg.Source.(interface{ Resolve(string) (string, error) }); ok {
			cfg.Resolve = r.Resolve
		} else {
			cfg.Resolve = func(uri string) (string, error) { return uri, nil }
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := atomicfile.MkdirPrivate(cfg.fs, cfg.Dir); err != nil {
		return nil, fmt.Errorf("update: state directory: %w", err)
	}
	// Another agent on this directory: refuse after a short wait, never
	// block for good.
	lctx, cancel := context.WithTimeout(ctx, agentLockWait)
	unlock, err := atomicfile.LockContext(lctx, filepath.Join(cfg.Dir, "lock"))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrLocked, cfg.Dir, err)
	}
	store, err := newStateStore(cfg.fs, cfg.Dir)
	if err != nil {
		unlock()
		return nil, err
	}
	a := &Agent{cfg: cfg, log: log, store: store, unlock: unlock, notify: make(chan struct{}, 1)}
	st, found, err := store.load()
	if err != nil {
		unlock()
		return nil, err
	}
	if !found {
		// Check the pinned root before trusting it for anything.
		if _, err := NewTrusted(cfg.Root, Floors{}, cfg.Clock.Now(), cfg.HardwareClass); err != nil {
			unlock()
			return nil, fmt.Errorf("update: pinned root: %w", err)
		}
		booted, err := cfg.Slots.Booted(ctx)
		if err != nil {
			unlock()
			return nil, fmt.Errorf("update: booted slot: %w", err)
		}
		st = &state{Root: bytes.Clone(cfg.Root), Installed: Installed{Slot: booted}}
		if err := store.save(st); err != nil {
			unlock()
			return nil, err
		}
	}
	a.st = st
	return a, nil
}

// Close releases the state directory.
func (a *Agent) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	if a.unlock != nil {
		a.unlock()
		a.unlock = nil
	}
	return nil
}

// agentLockWait is how long NewAgent waits for another agent to release
// the state directory.
var agentLockWait = 3 * time.Second

// ErrClosed is returned by an Agent's methods after Close.
var ErrClosed = errors.New("update: agent closed")

// usable refuses calls after Close (under mu): the directory lock is gone,
// and another agent may own the state.
func (a *Agent) usable() error {
	if a.closed {
		return ErrClosed
	}
	return nil
}

// bootedSinceSwitch reports whether the system restarted since the switch
// to the pending slot: always, with slots whose "boot" is the application
// starting (directory slots); with a bootloader (AgentConfig.BootID), only
// once the kernel's boot ID changed, so that an application restarted
// without a reboot cannot take the old slot's run for the new one's.
func (a *Agent) bootedSinceSwitch() bool {
	p := a.st.Pending
	if a.cfg.BootID == nil || p == nil || p.BootID == "" {
		return true
	}
	id, err := a.cfg.BootID()
	return err == nil && id != p.BootID
}

// linuxBootID reads the kernel's random ID of the current boot.
func linuxBootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("update: boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Status reports the agent's state.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.statusLocked()
}

func (a *Agent) statusLocked() Status {
	s := Status{Phase: a.st.Phase, Installed: a.st.Installed, RebootNeeded: a.reboot}
	// Copies: a caller must not reach into the agent's state.
	s.Installed.SHA256, s.Installed.SBOM = bytes.Clone(s.Installed.SHA256), bytes.Clone(s.Installed.SBOM)
	if p := a.st.Pending; p != nil {
		s.Pending, s.Starts = p.Version, p.Starts
	}
	if a.st.Last != nil {
		l := *a.st.Last
		s.Last = &l
	}
	if a.st.Reverted != nil {
		s.Reverted = a.st.Reverted.Version
	}
	s.Withheld = a.withheld
	return s
}

func (a *Agent) at(point string) {
	if a.cfg.hook != nil {
		a.cfg.hook(point)
	}
}

func (a *Agent) now() time.Time { return a.cfg.Clock.Now() }

// result records and reports an outcome. The state is saved by the caller.
func (a *Agent) result(ctx context.Context, event string, version uint64, reason string) Result {
	r := Result{Event: event, Version: version, From: a.st.Installed.Version, Reason: reason, Time: a.now().UnixMilli()}
	a.st.Last = &r
	lvl := slog.LevelInfo
	if event == "refused" || event == "failed" || event == "reverted" {
		lvl = slog.LevelWarn
	}
	a.log.Log(ctx, lvl, "update "+event, "version", version, "installed", r.From, "reason", reason)
	return r
}

func (a *Agent) report(ctx context.Context, r Result) {
	if a.cfg.Audit != nil && r.Event != "running" { // a start, not an update step
		if err := a.cfg.Audit.UpdateResult(ctx, r.Event, r.Version, r.From, r.Reason); err != nil {
			a.log.Error("audit log", "err", err)
		}
	}
	if a.cfg.Report != nil {
		a.cfg.Report(ctx, r)
	}
}

// Start is called once at every start of the application (and after a
// reboot), before Confirm. It completes whatever a power cut interrupted,
// counts the starts of a slot on trial, and reverts a trial that used up
// its starts or its time. When Status.RebootNeeded is set the application
// should restart (call Reboot) before doing anything else.
func (a *Agent) Start(ctx context.Context) (Status, error) {
	a.mu.Lock()
	if err := a.usable(); err != nil {
		a.mu.Unlock()
		return Status{}, err
	}
	var rep *Result
	err := a.startLocked(ctx, &rep)
	st := a.statusLocked()
	var run *Result
	if err == nil && !a.running {
		run = a.runningLocked(ctx)
	}
	a.mu.Unlock()
	if rep != nil {
		a.report(ctx, *rep) // outside the lock: a callback may call the agent
	}
	if run != nil {
		a.report(ctx, *run)
	}
	return st, err
}

func (a *Agent) startLocked(ctx context.Context, rep **Result) error {
	a.reboot = false
	s := a.cfg.Slots
	booted, err := s.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: booted slot: %w", err)
	}
	next, trial, err := s.Next(ctx)
	if err != nil {
		return fmt.Errorf("update: next slot: %w", err)
	}
	p := a.st.Pending
	if p != nil && p.Aborting {
		// An Abort was cut short: finish it.
		r, err := a.abortLocked(ctx)
		if r != nil {
			*rep = r
		}
		return err
	}
	switch a.st.Phase {
	case PhaseIdle:
		if inst := a.st.Installed.Slot; next != inst || trial {
			// Nothing pending, yet the slots would boot something else
			// (a bootloader that flipped back to a reverted slot, a
			// switch done by hand): the confirmed release boots next.
			a.log.Warn("update: the slots would not boot the confirmed release; switching back", "booted", booted, "next", next, "confirmed", inst)
			if err := s.Switch(ctx, inst, false); err != nil {
				return fmt.Errorf("update: switch back to slot %s: %w", inst, err)
			}
			a.reboot = booted != inst
		}
		return nil
	case PhaseDownloading:
		// Resumed by the next Install of the same release.
		return nil
	case PhaseInstalled:
		// A power cut between the verified write and the switch, or
		// right after the switch: verify again, then switch (again).
		if next != p.Slot || !trial {
			if err := a.verifySlot(ctx, p); err != nil {
				r := a.result(ctx, "failed", p.Version, err.Error())
				*rep = &r
				a.st.Phase, a.st.Pending = PhaseIdle, nil
				return errors.Join(err, a.store.save(a.st))
			}
			if err := s.Switch(ctx, p.Slot, true); err != nil {
				return fmt.Errorf("update: switch to slot %s: %w", p.Slot, err)
			}
		}
		if err := a.enterTrial(ctx); err != nil {
			return err
		}
		if booted != p.Slot {
			return nil // switched: the restart is next
		}
		// The power failed after the switch and the device already
		// restarted into the new slot: this start counts.
	case PhaseTrial:
	default:
		return fmt.Errorf("%w: unknown phase %d", ErrState, a.st.Phase)
	}

	// On trial.
	switch {
	case booted == p.Slot && next == p.Slot && !trial:
		// Confirmed in the slots, but the power failed before the state
		// recorded it: finish the commit.
		return a.commitLocked(ctx, rep)
	case next == p.Prev:
		// Reverted: by the bootloader (it counted the boots), or by the
		// agent before a power cut.
		r := a.result(ctx, "reverted", p.Version, "the new slot did not confirm; the previous slot boots")
		*rep = &r
		a.st.Reverted = &reverted{Version: p.Version, SHA256: p.SHA256}
		a.st.Phase, a.st.Pending = PhaseIdle, nil
		a.reboot = booted != p.Prev
		if trial {
			// The bootloader fell back but left the trial flag set: clear
			// it, or it would count boots of the good slot and flip back.
			if err := s.Switch(ctx, p.Prev, false); err != nil {
				return errors.Join(fmt.Errorf("update: clear the trial of slot %s: %w", p.Prev, err), a.store.save(a.st))
			}
		}
		return a.store.save(a.st)
	case booted != p.Slot || !a.bootedSinceSwitch():
		// Switched, not restarted yet (or, with a bootloader, the
		// application restarted without a reboot: the old slot runs).
		a.reboot = true
		return nil
	}
	a.reboot = false
	if a.counted {
		return nil // one start per process, however often Start is called
	}
	a.counted = true
	p.Starts++
	now := a.now()
	if p.Since == 0 {
		p.Since = now.UnixMilli() // the trial time runs from the first start
	}
	elapsed := max(now.Sub(time.UnixMilli(p.Since)), 0) // a clock set back counts as no time
	if p.Starts > a.cfg.MaxTrialStarts || elapsed > a.cfg.TrialTimeout {
		reason := fmt.Sprintf("not confirmed within %d starts (start %d) or %v (%v elapsed)", a.cfg.MaxTrialStarts, p.Starts, a.cfg.TrialTimeout, elapsed.Round(time.Second))
		return a.revertLocked(ctx, reason, rep)
	}
	return a.store.save(a.st)
}

// enterTrial records that the new slot boots next on trial.
func (a *Agent) enterTrial(ctx context.Context) error {
	a.at("trial")
	p := a.st.Pending
	a.st.Phase = PhaseTrial
	p.Starts, p.Since = 0, 0
	a.reboot = true
	return a.store.save(a.st)
}

// revertLocked switches back to the previous slot and records it.
func (a *Agent) revertLocked(ctx context.Context, reason string, rep **Result) error {
	p := a.st.Pending
	a.at("revert")
	if err := a.cfg.Slots.Switch(ctx, p.Prev, false); err != nil {
		return fmt.Errorf("update: revert to slot %s: %w", p.Prev, err)
	}
	r := a.result(ctx, "reverted", p.Version, reason)
	*rep = &r
	a.st.Reverted = &reverted{Version: p.Version, SHA256: p.SHA256}
	a.st.Phase, a.st.Pending = PhaseIdle, nil
	a.reboot = true
	return a.store.save(a.st)
}

// Check fetches the metadata, verifies it against the trusted root (walking
// root rotations one version at a time), and returns the release if it is
// newer than the installed one; nil when the device is up to date. A
// refusal names the attack it stopped (errors.Is with ErrRollback,
// ErrExpired, ...), is reported, and leaves the trusted state unchanged.
func (a *Agent) Check(ctx context.Context) (*Offer, error) {
	a.mu.Lock()
	if err := a.usable(); err != nil {
		a.mu.Unlock()
		return nil, err
	}
	o, err := a.checkLocked(ctx)
	from := a.st.Installed.Version
	a.mu.Unlock()
	if err != nil && isAttack(err) {
		// Reported, not persisted: a refusal leaves the state as it was.
		a.log.Warn("update refused", "err", err)
		a.report(ctx, Result{Event: "refused", From: from, Reason: err.Error(), Time: a.now().UnixMilli()})
	}
	return o, err
}

func isAttack(err error) bool {
	for _, e := range []error{ErrBadSignature, ErrThreshold, ErrUnknownKey, ErrAlgorithm, ErrRollback, ErrSecurityCounter,
		ErrExpired, ErrMixAndMatch, ErrWrongHardware, ErrTooLarge, ErrRootVersionSkip, ErrMalformed, ErrWrongType,
		ErrLength, ErrEndlessData, ErrDigest} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (a *Agent) checkLocked(ctx context.Context) (*Offer, error) {
	// Only the last check's offer installs: one from an earlier check
	// must not survive a check that withheld the release (a campaign
	// halted), found it installed, or failed.
	a.withheld, a.offer = 0, nil
	t, err := NewTrusted(a.st.Root, a.st.Floors, a.now(), a.cfg.HardwareClass)
	if err != nil {
		return nil, fmt.Errorf("update: trusted root: %w", err)
	}
	for range maxRootWalk {
		b, err := a.cfg.Source.Root(ctx, t.Root().Version+1)
		if errors.Is(err, ErrNotFound) {
			break
		}
		if err != nil {
			return nil, err
		}
		if _, err := t.UpdateRoot(b); err != nil {
			return nil, err
		}
	}
	b, err := a.cfg.Source.Timestamp(ctx)
	if err != nil {
		return nil, err
	}
	ts, err := t.UpdateTimestamp(b)
	if err != nil {
		return nil, err
	}
	if b, err = a.cfg.Source.Release(ctx, ts.Release.Version); err != nil {
		return nil, err
	}
	rel, err := t.UpdateRelease(b)
	if err != nil {
		return nil, err
	}
	art, err := a.pick(rel)
	if err != nil {
		return nil, err
	}
	inst := a.st.Installed
	switch {
	case rel.Version < inst.Version:
		return nil, fmt.Errorf("%w: release version %d is older than the installed %d", ErrRollback, rel.Version, inst.Version)
	case rel.Version > inst.Version && rel.SecurityCounter < inst.SecurityCounter:
		return nil, fmt.Errorf("%w: release %d has security counter %d, the installed release %d", ErrSecurityCounter, rel.Version, rel.SecurityCounter, inst.SecurityCounter)
	}
	// Everything verified: keep the newer root and floors (never a lower
	// security counter).
	f := t.Floors()
	f.SecurityCounter = max(f.SecurityCounter, a.st.Floors.SecurityCounter)
	if root := t.RootBytes(); !bytes.Equal(root, a.st.Root) || f != a.st.Floors {
		a.st.Root, a.st.Floors = bytes.Clone(root), f
		if err := a.store.save(a.st); err != nil {
			return nil, err
		}
	}
	if rel.Version == inst.Version {
		return nil, nil // up to date
	}
	if p := a.st.Pending; p != nil && a.st.Phase >= PhaseInstalled && p.Version == rel.Version {
		return nil, nil // installed, waiting for the restart or Confirm
	}
	if rv := a.st.Reverted; rv != nil && rv.Version == rel.Version && bytes.Equal(rv.SHA256, art.SHA256[:]) {
		// It booted and failed its health check here: installing it again
		// would loop. A newer release is offered.
		a.log.Info("update: release was reverted on this device; waiting for a newer one", "version", rel.Version)
		return nil, nil
	}
	if !ts.Rollout.Eligible(a.cfg.Device, a.cfg.Groups) {
		// A campaign holds it back from this device for now (or halted
		// it): the release is verified and the floors kept, but nothing
		// starts. A download under way stays where it is.
		a.withheld = rel.Version
		a.log.Info("update: release withheld by its campaign's cohort rule", "version", rel.Version,
			"share", ts.Rollout.Share, "groups", ts.Rollout.Groups)
		return nil, nil
	}
	a.offer = &Offer{Release: rel, Artifact: art}
	return &Offer{Release: rel.clone(), Artifact: art}, nil
}

// maxRootWalk bounds the root versions walked in one check.
const maxRootWalk = 1024

func (a *Agent) pick(rel *Release) (Artifact, error) {
	if a.cfg.Artifact == "" {
		if len(rel.Artifacts) != 1 {
			// A configuration matter, not an attack: not reported as one.
			return Artifact{}, fmt.Errorf("update: release %d has %d artifacts; set AgentConfig.Artifact", rel.Version, len(rel.Artifacts))
		}
		return rel.Artifacts[0], nil
	}
	for _, art := range rel.Artifacts {
		if art.Name == a.cfg.Artifact {
			return art, nil
		}
	}
	return Artifact{}, fmt.Errorf("update: release %d has no artifact %q (AgentConfig.Artifact)", rel.Version, a.cfg.Artifact)
}

// Update checks for a newer release and installs it: the common case in one
// call. It reports whether an update was installed (the application should
// then restart, see Status.RebootNeeded).
func (a *Agent) Update(ctx context.Context) (bool, error) {
	o, err := a.Check(ctx)
	if err != nil || o == nil {
		return false, err
	}
	if err := a.Install(ctx, o); err != nil {
		return false, err
	}
	return true, nil
}

// Install downloads the offer's artifact into the inactive slot (resuming
// an interrupted download of the same artifact), verifies it, and switches
// to it on trial. The application then restarts; at the next Start the new
// slot is on trial until Confirm.
func (a *Agent) Install(ctx context.Context, o *Offer) error {
	if o == nil || o.Release == nil {
		return errors.New("update: Install needs an offer from Check")
	}
	a.mu.Lock()
	if err := a.usable(); err != nil {
		a.mu.Unlock()
		return err
	}
	var rep *Result
	err := a.installLocked(ctx, o, &rep)
	installed := err == nil && a.st.Phase == PhaseTrial
	a.mu.Unlock()
	if rep != nil {
		a.report(ctx, *rep)
	}
	if installed && a.cfg.Reboot != nil {
		if rerr := a.cfg.Reboot(ctx); rerr != nil {
			// Installed all the same: the restart is still needed.
			a.log.Error("update installed; the reboot hook failed: restart to boot it", "err", rerr)
		}
	}
	return err
}

func (a *Agent) installLocked(ctx context.Context, o *Offer, rep **Result) error {
	s := a.cfg.Slots
	// Only what Check verified installs: an Offer is plain data that a
	// caller could alter (a higher version or counter would raise the
	// floors; another digest would install an unsigned image).
	if v := a.offer; v == nil || v.Artifact != o.Artifact || v.Release.Version != o.Release.Version ||
		v.Release.SecurityCounter != o.Release.SecurityCounter || v.Release.HardwareClass != o.Release.HardwareClass {
		return errors.New("update: Install takes the offer of the last Check, unchanged")
	}
	if rv := a.st.Reverted; rv != nil && rv.Version == o.Release.Version && bytes.Equal(rv.SHA256, o.Artifact.SHA256[:]) {
		return fmt.Errorf("%w: release %d was reverted on this device", ErrRollback, o.Release.Version)
	}
	digest := o.Artifact.SHA256[:]
	resume := false
	switch a.st.Phase {
	case PhaseIdle:
	case PhaseDownloading:
		p := a.st.Pending
		resume = p.Version == o.Release.Version && bytes.Equal(p.SHA256, digest)
	default:
		return fmt.Errorf("%w (%s, version %d)", ErrBusy, a.st.Phase, a.st.Pending.Version)
	}
	if o.Release.Version <= a.st.Installed.Version {
		return fmt.Errorf("%w: release version %d is not newer than the installed %d", ErrRollback, o.Release.Version, a.st.Installed.Version)
	}
	booted, err := s.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: booted slot: %w", err)
	}
	next, trial, err := s.Next(ctx)
	if err != nil {
		return fmt.Errorf("update: next slot: %w", err)
	}
	if booted != a.st.Installed.Slot || next != booted || trial {
		// After a revert the previous slot must boot first: installing
		// now would write over the wrong slot.
		return fmt.Errorf("%w: restart first (slot %s runs, %s boots next, the confirmed release is in %s)", ErrBusy, booted, next, a.st.Installed.Slot)
	}
	target := slot.Other(booted)
	url, err := a.cfg.Resolve(o.Artifact.URI)
	if err != nil {
		return err
	}
	a.st.Phase = PhaseDownloading
	if !resume {
		a.st.Pending = &pending{Version: o.Release.Version, SecurityCounter: o.Release.SecurityCounter, Artifact: o.Artifact.Name,
			Length: o.Artifact.Length, SHA256: digest, URI: o.Artifact.URI, Slot: target, Prev: booted,
			// The offer Check kept, not the caller's copy.
			Delta: a.pickDelta(a.offer.Release, o.Artifact)}
		a.st.Pending.SBOM, a.st.Pending.SupportUntil = releaseFacts(a.offer.Release)
	}
	if err := a.store.save(a.st); err != nil {
		return err
	}
	a.at("open")
	img, err := s.Open(ctx, target)
	if err != nil {
		return fmt.Errorf("update: open slot %s: %w", target, err)
	}
	if !resume && img.Offset() > 0 {
		if err := img.Reset(); err != nil {
			img.Close()
			return fmt.Errorf("update: clear slot %s: %w", target, err)
		}
	}
	fromDelta := false
	if a.st.Pending.Delta != nil {
		if fromDelta, err = a.tryDelta(ctx, o.Artifact, img); err != nil {
			img.Close()
			return err // interrupted: the next Install resumes the delta path
		}
	}
	if !fromDelta {
		req := fetch.Request{URL: url, Length: o.Artifact.Length, SHA256: o.Artifact.SHA256, Client: a.cfg.Client,
			MinRate: a.cfg.MinRate, RateWindow: a.cfg.RateWindow, Progress: a.cfg.Progress}
		err = downloadError(fetch.Download(ctx, req, img))
	}
	if cerr := img.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("update: close slot %s: %w", target, cerr)
	}
	if err != nil {
		if isAttack(err) || !transient(ctx, err) {
			// Refused or impossible (disk full): the slot was cleared;
			// nothing is pending.
			event := "failed"
			if isAttack(err) {
				event = "refused"
			}
			r := a.result(ctx, event, o.Release.Version, err.Error())
			*rep = &r
			a.st.Phase, a.st.Pending = PhaseIdle, nil
			return errors.Join(err, a.store.save(a.st))
		}
		if errors.Is(err, ErrSlowRetrieval) {
			r := a.result(ctx, "failed", o.Release.Version, err.Error())
			*rep = &r
		}
		return err // interrupted: what arrived is kept, the next Install resumes
	}
	a.at("write")
	if err := a.verifySlot(ctx, a.st.Pending); err != nil {
		r := a.result(ctx, "failed", o.Release.Version, err.Error())
		*rep = &r
		a.st.Phase, a.st.Pending = PhaseIdle, nil
		return errors.Join(err, a.store.save(a.st))
	}
	if fromDelta {
		if err := a.removeDeltaFile(); err != nil {
			return err
		}
	}
	a.st.Phase = PhaseInstalled
	if a.cfg.BootID != nil {
		if a.st.Pending.BootID, err = a.cfg.BootID(); err != nil {
			return err
		}
	}
	if err := a.store.save(a.st); err != nil {
		return err
	}
	a.at("switch")
	if err := s.Switch(ctx, target, true); err != nil {
		return fmt.Errorf("update: switch to slot %s: %w", target, err)
	}
	r := a.result(ctx, "installed", o.Release.Version, a.st.Pending.DeltaFailed)
	switch {
	case fromDelta:
		r.Delta = "applied"
	case a.st.Pending.DeltaFailed != "":
		r.Delta = "fallback"
	}
	a.facts(&r, a.st.Pending.SBOM, a.st.Pending.SupportUntil)
	*a.st.Last = r
	*rep = &r
	return a.enterTrial(ctx)
}

// downloadError wraps the download's refusals in this package's sentinels,
// so that callers test one set (errors.Is(err, update.ErrDigest)).
func downloadError(err error) error {
	for _, m := range []struct{ from, to error }{
		{fetch.ErrEndlessData, ErrEndlessData}, {fetch.ErrLength, ErrLength}, {fetch.ErrDigest, ErrDigest},
		{fetch.ErrSlowRetrieval, ErrSlowRetrieval}, {fetch.ErrInsecure, ErrInsecure},
	} {
		if errors.Is(err, m.from) {
			return fmt.Errorf("%w: %w", m.to, err)
		}
	}
	return err
}

// transient reports errors after which a download may resume: a cancelled
// context, a network failure, slow retrieval. A full disk is not: the slot
// is cleared so that the space is free again.
func transient(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return true
	}
	return !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EDQUOT) && !errors.Is(err, fs.ErrPermission) &&
		!errors.Is(err, ErrInsecure) && !errors.Is(err, fetch.ErrResponse)
}

// verifySlot hashes what the slot holds and compares it with the signed
// length and digest.
func (a *Agent) verifySlot(ctx context.Context, p *pending) error {
	r, err := a.cfg.Slots.Read(ctx, p.Slot)
	if err != nil {
		return fmt.Errorf("update: read slot %s: %w", p.Slot, err)
	}
	defer r.Close()
	// Exactly the signed length: a block device reads on past the image.
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(r, p.Length))
	if err != nil {
		return fmt.Errorf("update: read slot %s: %w", p.Slot, err)
	}
	if n != p.Length {
		return fmt.Errorf("%w: slot %s holds %d bytes, the release signed %d", ErrLength, p.Slot, n, p.Length)
	}
	if !bytes.Equal(h.Sum(nil), p.SHA256) {
		return fmt.Errorf("%w: slot %s after writing", ErrDigest, p.Slot)
	}
	return nil
}

// Confirm is called by the new software after its health check passed: the
// slot stays, and only now the anti-rollback floor (installed version and
// security counter) rises, so that a release that never proved healthy
// cannot lock the device out of its previous one. Confirm is idempotent.
func (a *Agent) Confirm(ctx context.Context) error {
	a.mu.Lock()
	var rep *Result
	err := a.confirmLocked(ctx, &rep)
	a.mu.Unlock()
	if rep != nil {
		a.report(ctx, *rep)
	}
	return err
}

func (a *Agent) confirmLocked(ctx context.Context, rep **Result) error {
	if err := a.usable(); err != nil {
		return err
	}
	booted, err := a.cfg.Slots.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: booted slot: %w", err)
	}
	if a.st.Phase != PhaseTrial {
		if a.st.Phase == PhaseIdle && booted == a.st.Installed.Slot {
			return nil // nothing on trial: already confirmed
		}
		if a.st.Phase == PhaseIdle && a.st.Last != nil && a.st.Last.Event == "reverted" {
			return fmt.Errorf("%w: release %d was reverted before it was confirmed", ErrNoTrial, a.st.Last.Version)
		}
		return fmt.Errorf("%w (%s)", ErrNoTrial, a.st.Phase)
	}
	if booted != a.st.Pending.Slot || !a.bootedSinceSwitch() {
		return fmt.Errorf("%w: slot %s runs, the update is in slot %s", ErrNotBooted, booted, a.st.Pending.Slot)
	}
	a.at("commit")
	if err := a.cfg.Slots.Confirm(ctx); err != nil {
		return fmt.Errorf("update: confirm slot %s: %w", booted, err)
	}
	return a.commitLocked(ctx, rep)
}

// commitLocked records a confirmed slot and raises the floors.
func (a *Agent) commitLocked(ctx context.Context, rep **Result) error {
	p := a.st.Pending
	r := a.result(ctx, "confirmed", p.Version, "")
	a.facts(&r, p.SBOM, p.SupportUntil)
	*a.st.Last = r
	*rep = &r
	a.st.Installed = Installed{Version: p.Version, SecurityCounter: max(p.SecurityCounter, a.st.Installed.SecurityCounter),
		Slot: p.Slot, SHA256: p.SHA256, Artifact: p.Artifact, SBOM: p.SBOM, SupportUntil: p.SupportUntil}
	if a.st.Floors.SecurityCounter < a.st.Installed.SecurityCounter {
		a.st.Floors.SecurityCounter = a.st.Installed.SecurityCounter
	}
	a.st.Phase, a.st.Pending = PhaseIdle, nil
	return a.store.save(a.st)
}

// Rollback reverts an update on trial now (the application found it
// unhealthy): the previous slot boots next. After Confirm there is nothing
// to roll back to: the previous release is below the raised floor.
func (a *Agent) Rollback(ctx context.Context) error {
	a.mu.Lock()
	if err := a.usable(); err != nil {
		a.mu.Unlock()
		return err
	}
	if a.st.Phase != PhaseTrial {
		a.mu.Unlock()
		return fmt.Errorf("%w (%s)", ErrNoTrial, a.st.Phase)
	}
	booted, err := a.cfg.Slots.Booted(ctx)
	if err == nil && (booted != a.st.Pending.Slot || !a.bootedSinceSwitch()) {
		// It never ran: that is an abort, not a verdict on the release.
		a.mu.Unlock()
		return a.Abort(ctx)
	}
	var rep *Result
	err = a.revertLocked(ctx, "rolled back by the application", &rep)
	a.mu.Unlock()
	if rep != nil {
		a.report(ctx, *rep)
	}
	return err
}

// Abort abandons an update that has not booted: a download is discarded, an
// installed or switched slot is switched back. On trial, use Rollback.
func (a *Agent) Abort(ctx context.Context) error {
	a.mu.Lock()
	r, err := a.abortLocked(ctx)
	a.mu.Unlock()
	if r != nil {
		a.report(ctx, *r)
	}
	return err
}

func (a *Agent) abortLocked(ctx context.Context) (*Result, error) {
	if err := a.usable(); err != nil {
		return nil, err
	}
	p := a.st.Pending
	resumed := p != nil && p.Aborting
	if a.st.Phase != PhaseIdle && !p.Aborting {
		// Record the intent first: a power cut in the middle of the
		// abort must not let Start carry the update on.
		p.Aborting = true
		if err := a.store.save(a.st); err != nil {
			p.Aborting = false
			return nil, err
		}
	}
	switch a.st.Phase {
	case PhaseIdle:
		return nil, nil
	case PhaseTrial:
		booted, err := a.cfg.Slots.Booted(ctx)
		if err != nil {
			return nil, fmt.Errorf("update: booted slot: %w", err)
		}
		if booted == p.Slot && a.bootedSinceSwitch() && !resumed {
			p.Aborting = false
			return nil, errors.Join(fmt.Errorf("%w: the update runs on trial; use Rollback", ErrBusy), a.store.save(a.st))
		}
		if err := a.cfg.Slots.Switch(ctx, a.st.Installed.Slot, false); err != nil {
			return nil, fmt.Errorf("update: switch back to slot %s: %w", a.st.Installed.Slot, err)
		}
		a.reboot = booted != a.st.Installed.Slot
	case PhaseInstalled, PhaseDownloading:
		next, _, err := a.cfg.Slots.Next(ctx)
		if err != nil {
			return nil, fmt.Errorf("update: next slot: %w", err)
		}
		if next == p.Slot {
			if err := a.cfg.Slots.Switch(ctx, a.st.Installed.Slot, false); err != nil {
				return nil, fmt.Errorf("update: switch back to slot %s: %w", a.st.Installed.Slot, err)
			}
		}
		img, err := a.cfg.Slots.Open(ctx, p.Slot)
		if err != nil {
			return nil, fmt.Errorf("update: open slot %s: %w", p.Slot, err)
		}
		err = img.Reset()
		if cerr := img.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("update: clear slot %s: %w", p.Slot, err)
		}
		if err := a.removeDeltaFile(); err != nil {
			return nil, err
		}
	}
	r := a.result(ctx, "failed", p.Version, "aborted by the application")
	a.st.Phase, a.st.Pending = PhaseIdle, nil
	if err := a.store.save(a.st); err != nil {
		return nil, err
	}
	return &r, nil
}

// Notify asks a running [Agent.Run] to check now, for example when the
// cloud announces a release through a signed command ([CheckCommand]).
// It never blocks.
func (a *Agent) Notify() {
	select {
	case a.notify <- struct{}{}:
	default:
	}
}

// Run checks for updates every interval (with up to 10% random jitter, so
// that a fleet does not poll in step) and whenever [Agent.Notify] is
// called, installing what it finds, until ctx ends. Refusals and failures
// are reported and logged, and Run goes on. After an install it returns
// nil (with Status().RebootNeeded set) so that the application restarts
// into the new slot; an update on trial waits for Confirm or Rollback.
func (a *Agent) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return errors.New("update: Run needs a positive interval")
	}
	for {
		if a.Status().Phase < PhaseInstalled {
			installed, err := a.Update(ctx)
			switch {
			case installed:
				return nil
			case err != nil && ctx.Err() == nil:
				a.log.Warn("update check", "err", err)
			}
		}
		wait := interval + time.Duration(rand.Int64N(int64(interval)/10+1))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-a.notify:
			t.Stop()
		case <-t.C:
		}
	}
}

// CheckCommand is the name of the signed command by which the cloud asks a
// device to check for an update now (transport.CommandSigner);
// updatelink.CommandHandler turns it into [Agent.Notify].
const CheckCommand = "update.check"

// ReportStream is the telemetry stream update results are published on
// (updatelink.TelemetryReporter publishes them there).
const ReportStream = "update"
