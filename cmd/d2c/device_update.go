// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
)

// metadataTimeout bounds each metadata request of "device update"; the
// artifact download is bounded by the agent's minimum rate instead.
const metadataTimeout = 30 * time.Second

// deviceUpdateStateDir is the default --state, inside the device store.
const deviceUpdateStateDir = "update"

func deviceUpdateCommand() *command {
	return &command{
		path:    "device update",
		summary: "check for an update and install it, or confirm, roll back, show status",
		usage: "--store DIR --root FILE --hardware-class H --slots DIR [--state DIR] " +
			"(--repo-url URL [--ca-roots FILE] [--insecure-http] [--progress] | --confirm | --rollback | --status [--json])",
		details: `
Runs the device's update agent (update.Agent) once, on A/B directory slots
(update/slot.DirSlots in --slots: the application runs SLOTS/current/image).

Without a mode flag it checks the repository at --repo-url as a device does
(the root pinned in --root, rotations one at a time, the timestamp, the
release; expiry against the device's trusted clock in --store), and installs a
newer release: it downloads the image into the other slot (resuming an
interrupted download), verifies its length and SHA-256, and makes that slot
boot next, on trial. It then says what happened: installed (restart the
application from SLOTS/current/image to run it), up to date, or refused, with
the attack the refusal stopped (rollback, freeze, mix-and-match, arbitrary
software...) and what to do. A release under a campaign (docs/update-format.md,
"The cohort rule") is installed only once the campaign's signed rule reaches
this device: by its device ID (from --store) or a --group it belongs to;
before that it is reported withheld.

--confirm is run by the new software once its health check has passed: only
then does the anti-rollback floor rise to the new release. --rollback goes
back to the previous slot instead. A release on trial that is not confirmed
within 3 starts or 30 minutes is reverted: every run of this command (but
--status) counts as a start of the software on trial, since with directory
slots the slot that current names when it runs is the one running.
--status prints the agent's state and changes nothing. With --json it is one
object: "phase", "installed" {"version", "security_counter", "slot", "sbom"
(hex SHA-256 of the release's SBOM, absent if none), "support_until" (end
of the release's security support, RFC 3339, absent if none stated)},
"pending" (the release on trial or being installed, 0 if none), "starts"
(starts counted on trial), "next_slot", "next_on_trial", and "last", the
last event, null or {"event", "version", "from", "time" (RFC 3339, UTC),
"reason"}.

The state lives in --state (default DIR/update). Slots missing in --slots are
created, with an empty image in slot a. --repo-url must be https, with the
system's roots or those in --ca-roots; --insecure-http allows a plain http
repository, such as "d2c update serve" (the metadata is signed either way,
but anyone on the path can withhold it). A progress bar goes to stderr when it
is a terminal, or with --progress.`,
		example: `d2c device update --store /var/lib/d2c --root /etc/d2c/root.json --hardware-class sensor-v2 \
    --slots /data/slots --repo-url https://updates.example.com/fleet/
d2c device update --store /var/lib/d2c --root /etc/d2c/root.json --hardware-class sensor-v2 \
    --slots /data/slots --confirm`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("store", "", "device store directory (from d2c device enroll): the trusted clock (required)")
			rootFile := fl.String("root", "", "the update root pinned in the device, root.json of d2c update root init (required)")
			hardware := fl.String("hardware-class", "", "this device's hardware class; releases for another are refused (required)")
			slotsDir := fl.String("slots", "", "A/B slot directory; created with an empty slot a if missing (required)")
			stateDir := fl.String("state", "", "update agent state directory (default: DIR/update)")
			repoURL := fl.String("repo-url", "", "update repository URL, https:// (required to check)")
			caRoots := fl.String("ca-roots", "", "PEM roots the repository's HTTPS certificate chains to (default: the system's)")
			insecure := fl.Bool("insecure-http", false, "allow a plain http:// --repo-url (development: d2c update serve)")
			artifact := fl.String("artifact", "", "artifact name to install, from a release of several")
			var groups stringList
			fl.Var(&groups, "group", "a device group this device belongs to, which a campaign may offer a release to first; repeatable")
			var progress autoBool
			fl.Var(&progress, "progress", "show a download progress bar on stderr; auto: when stderr is a terminal")
			confirm := fl.Bool("confirm", false, "confirm the release on trial: the new software is healthy")
			rollback := fl.Bool("rollback", false, "roll the release on trial back: the previous slot boots next")
			status := fl.Bool("status", false, "print the agent's state; change nothing")
			asJSON := fl.Bool("json", false, "with --status: print one JSON object (fields in the details below)")
			return func(ctx context.Context, s streams) error {
				if *dir == "" || *rootFile == "" || *hardware == "" || *slotsDir == "" {
					return usageErrorf("--store, --root, --hardware-class and --slots are required")
				}
				modes := 0
				for _, m := range []bool{*confirm, *rollback, *status} {
					if m {
						modes++
					}
				}
				if modes > 1 {
					return usageErrorf("give at most one of --confirm, --rollback and --status")
				}
				if *asJSON && !*status {
					return usageErrorf("--json goes with --status")
				}
				if modes == 0 && *repoURL == "" {
					return usageErrorf("--repo-url is required to check for an update")
				}
				if err := validName("hardware-class", *hardware); err != nil {
					return err
				}
				o := deviceUpdateOptions{dir: *dir, rootFile: *rootFile, hardware: *hardware, slots: *slotsDir,
					state: *stateDir, artifact: *artifact, groups: groups}
				if o.state == "" {
					o.state = filepath.Join(*dir, deviceUpdateStateDir)
				}
				if modes == 0 {
					src, client, err := repositorySource(*repoURL, *caRoots, *insecure)
					if err != nil {
						return err
					}
					o.source, o.client = src, client
					o.progress = progress.enabled(s.stderr)
				}
				switch {
				case *status:
					return deviceUpdateStatus(ctx, s, o, *asJSON)
				case *confirm:
					return deviceUpdateConfirm(ctx, s, o)
				case *rollback:
					return deviceUpdateRollback(ctx, s, o)
				}
				return deviceUpdateCheck(ctx, s, o)
			}
		},
	}
}

// deviceUpdateOptions are the parsed flags of "device update".
type deviceUpdateOptions struct {
	dir, rootFile, hardware, slots, state, artifact string
	groups                                          []string           // device groups a campaign may offer a release to first
	source                                          *update.HTTPSource // nil: no check in this mode
	client                                          *http.Client       // artifact downloads; nil: HTTPS with the system roots
	progress                                        bool
}

// repositorySource checks --repo-url and builds the metadata source and
// the artifact client: HTTPS only unless insecure, with the roots in
// caRoots if given.
func repositorySource(rawURL, caRoots string, insecure bool) (*update.HTTPSource, *http.Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, nil, usageErrorf("--repo-url %q: want https://host/path/", rawURL)
	}
	if u.Scheme == "http" && !insecure {
		return nil, nil, withHint(fmt.Errorf("refusing the plain http repository %s", rawURL),
			"use an https:// repository, or add --insecure-http for a development repository (`d2c update serve`)")
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/" // the metadata files are relative to the repository directory
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caRoots != "" {
		b, err := atomicfile.ReadFile(caRoots, limits.PEMFile)
		if err != nil {
			return nil, nil, err
		}
		certs, err := identity.ParseCertificatesPEM(b)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", caRoots, err)
		}
		tlsConf.RootCAs = x509.NewCertPool()
		for _, c := range certs {
			tlsConf.RootCAs.AddCert(c)
		}
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.TLSClientConfig = tlsConf
	var rt http.RoundTripper = base
	if !insecure {
		rt = httpsOnly{base}
	}
	src := &update.HTTPSource{BaseURL: u.String(), Client: &http.Client{Transport: rt, Timeout: metadataTimeout}}
	var client *http.Client
	if insecure || caRoots != "" {
		client = &http.Client{Transport: rt} // no timeout: the agent's minimum rate bounds a stalled download
	}
	return src, client, nil
}

// httpsOnly refuses any request that is not https, redirects included.
type httpsOnly struct{ rt http.RoundTripper }

func (h httpsOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" {
		return nil, fmt.Errorf("%w: %s", update.ErrInsecure, r.URL.Redacted())
	}
	return h.rt.RoundTrip(r)
}

// noSource is the Source of the modes that never check.
type noSource struct{}

var errNoSource = errors.New("no repository in this mode")

func (noSource) Root(context.Context, uint64) ([]byte, error)    { return nil, errNoSource }
func (noSource) Timestamp(context.Context) ([]byte, error)       { return nil, errNoSource }
func (noSource) Release(context.Context, uint64) ([]byte, error) { return nil, errNoSource }

// openAgent opens the slots (creating them if missing) and the agent.
func openAgent(ctx context.Context, s streams, o deviceUpdateOptions, cfg update.AgentConfig) (*update.Agent, *slot.DirSlots, error) {
	store, err := openExistingStore(o.dir)
	if err != nil {
		return nil, nil, err
	}
	root, err := readMeta(o.rootFile, limits.UpdateRoot)
	if err != nil {
		return nil, nil, fmt.Errorf("pinned root: %w", err)
	}
	slots, err := slot.OpenDirSlots(o.slots)
	if errors.Is(err, fs.ErrNotExist) {
		if err = slot.InitDirSlots(o.slots, nil); err != nil {
			return nil, nil, err
		}
		fmt.Fprintf(s.stderr, "created A/B slots in %s: slot a holds an empty image and boots\n", o.slots)
		slots, err = slot.OpenDirSlots(o.slots)
	}
	if err != nil {
		return nil, nil, err
	}
	cfg.Dir, cfg.Root, cfg.HardwareClass, cfg.Slots, cfg.Clock, cfg.Artifact = o.state, root, o.hardware, slots, store.Clock(), o.artifact
	cfg.Groups = o.groups
	if id, err := store.Current(); err == nil {
		cfg.Device = id.DeviceID // a campaign's cohort rule is evaluated on it
	}
	if cfg.Source == nil {
		cfg.Source = noSource{}
	}
	a, err := update.NewAgent(ctx, cfg)
	if err != nil {
		if errors.Is(err, update.ErrLocked) {
			return nil, nil, withHint(err, "another update agent (a running device application, or another `d2c device update`) "+
				"uses --state: wait for it, or stop it")
		}
		if !errors.Is(err, update.ErrState) && (isKeyRefusal(err) || errors.Is(err, update.ErrMalformed)) {
			return nil, nil, withHint(err, "--root is the root pinned in the device, byte for byte as signed: "+
				"root.json of the repository at manufacture (`d2c update root init`)")
		}
		return nil, nil, err
	}
	return a, slots, nil
}

// start runs the agent's start-of-application step and says what it did.
// It reports whether the step reverted a release on trial.
func start(ctx context.Context, s streams, a *update.Agent) (update.Status, bool, error) {
	before := a.Status()
	st, err := a.Start(ctx)
	if err != nil {
		return st, false, err
	}
	reverted := false
	if st.Last != nil && (before.Last == nil || *st.Last != *before.Last) {
		switch st.Last.Event {
		case "reverted":
			reverted = true
			fmt.Fprintf(s.stdout, "reverted release %d: %s\n", st.Last.Version, st.Last.Reason)
		case "failed":
			fmt.Fprintf(s.stdout, "release %d failed: %s\n", st.Last.Version, st.Last.Reason)
		}
	}
	return st, reverted, nil
}

// restartNote tells the operator to restart the application into the slot
// that boots next.
func restartNote(s streams, o deviceUpdateOptions, st update.Status) {
	fmt.Fprintf(s.stdout, "slot %s boots next, with release %d: restart the application from %s\n",
		st.Installed.Slot, st.Installed.Version, filepath.Join(o.slots, "current", "image"))
}

// deviceUpdateCheck checks and installs.
func deviceUpdateCheck(ctx context.Context, s streams, o deviceUpdateOptions) error {
	var bar *progressBar
	var done int64
	cfg := update.AgentConfig{Source: o.source, Client: o.client}
	if o.progress {
		cfg.Progress = func(n, total int64) {
			if bar != nil {
				bar.total, done = total, n
				bar.update(n)
			}
		}
	}
	a, slots, err := openAgent(ctx, s, o, cfg)
	if err != nil {
		return err
	}
	defer a.Close()
	st, reverted, err := start(ctx, s, a)
	if err != nil {
		return err
	}
	if reverted && st.RebootNeeded {
		restartNote(s, o, st)
		return nil
	}
	if st.Phase == update.PhaseTrial {
		return withHint(fmt.Errorf("%w: release %d is on trial in slot %s (start %d of 3)", update.ErrBusy, st.Pending, currentSlot(ctx, slots), st.Starts),
			"confirm it once the new software is healthy (--confirm), or go back (--rollback)")
	}
	offer, err := a.Check(ctx)
	if err != nil {
		return withHint(err, deviceUpdateHint(err, st, o))
	}
	if offer == nil {
		if rv := a.Status().Reverted; rv > st.Installed.Version {
			fmt.Fprintf(s.stdout, "release %d was reverted on this device and is not installed again; release %d runs from slot %s: "+
				"publish a newer release to update\n", rv, st.Installed.Version, st.Installed.Slot)
			return nil
		}
		if w := a.Status().Withheld; w != 0 {
			fmt.Fprintf(s.stdout, "release %d is verified but withheld: its campaign has not reached this device yet (or was halted); "+
				"release %d runs from slot %s\n", w, st.Installed.Version, st.Installed.Slot)
			return nil
		}
		fmt.Fprintf(s.stdout, "up to date: release %d runs from slot %s\n", st.Installed.Version, st.Installed.Slot)
		return nil
	}
	booted, _ := slots.Booted(ctx)
	fmt.Fprintf(s.stdout, "release %d available (running %d): %s, %d bytes\n", offer.Release.Version, st.Installed.Version,
		offer.Artifact.Name, offer.Artifact.Length)
	if o.progress {
		bar = newProgressBar(s.stderr, fmt.Sprintf("release %d", offer.Release.Version), path.Base(offer.Artifact.URI))
	}
	err = a.Install(ctx, offer)
	if bar != nil && !bar.last.IsZero() {
		bar.finish(done)
	}
	if err != nil {
		return withHint(err, deviceUpdateHint(err, st, o))
	}
	next := slot.Other(booted)
	fmt.Fprintf(s.stdout, "installed release %d into slot %s, on trial\n", offer.Release.Version, next)
	fmt.Fprintf(s.stdout, "restart the application from %s to run it; once it is healthy, confirm it:\n",
		filepath.Join(o.slots, "current", "image"))
	fmt.Fprintf(s.stdout, "  d2c device update --store %s --root %s --hardware-class %s --slots %s%s --confirm\n",
		o.dir, o.rootFile, o.hardware, o.slots, stateFlag(o))
	return nil
}

// stateFlag repeats --state in a suggested command line when it is not
// the default.
func stateFlag(o deviceUpdateOptions) string {
	if o.state == filepath.Join(o.dir, deviceUpdateStateDir) {
		return ""
	}
	return " --state " + o.state
}

// currentSlot names the slot running now.
func currentSlot(ctx context.Context, slots *slot.DirSlots) string {
	b, err := slots.Booted(ctx)
	if err != nil {
		return "?"
	}
	return b
}

// deviceUpdateConfirm confirms the release on trial.
func deviceUpdateConfirm(ctx context.Context, s streams, o deviceUpdateOptions) error {
	a, _, err := openAgent(ctx, s, o, update.AgentConfig{})
	if err != nil {
		return err
	}
	defer a.Close()
	st, reverted, err := start(ctx, s, a)
	if err != nil {
		return err
	}
	if reverted {
		restartNote(s, o, st)
		return withHint(fmt.Errorf("%w: release %d was reverted before it was confirmed", update.ErrNoTrial, st.Last.Version),
			"a release on trial gets 3 starts and 30 minutes to be confirmed; install it again with `d2c device update` "+
				"and confirm it sooner, once the new software is healthy")
	}
	if st.Phase == update.PhaseIdle {
		fmt.Fprintf(s.stdout, "nothing on trial: release %d runs from slot %s, confirmed\n", st.Installed.Version, st.Installed.Slot)
		return nil
	}
	if err := a.Confirm(ctx); err != nil {
		if errors.Is(err, update.ErrNoTrial) || errors.Is(err, update.ErrNotBooted) {
			return withHint(err, "restart the application from the new slot first; "+
				"`d2c device update --status` tells where the update stands")
		}
		return err
	}
	st = a.Status()
	fmt.Fprintf(s.stdout, "confirmed release %d in slot %s: devices now refuse any release below it (security counter %d)\n",
		st.Installed.Version, st.Installed.Slot, st.Installed.SecurityCounter)
	return nil
}

// deviceUpdateRollback rolls the release on trial back.
func deviceUpdateRollback(ctx context.Context, s streams, o deviceUpdateOptions) error {
	a, _, err := openAgent(ctx, s, o, update.AgentConfig{})
	if err != nil {
		return err
	}
	defer a.Close()
	st, reverted, err := start(ctx, s, a)
	if err != nil {
		return err
	}
	if reverted {
		restartNote(s, o, st) // the start step reverted it already, and said so
		return nil
	}
	if st.Phase != update.PhaseTrial {
		return withHint(fmt.Errorf("%w: release %d runs, confirmed", update.ErrNoTrial, st.Installed.Version),
			"only a release on trial (installed, not yet confirmed) can be rolled back: a confirmed release is "+
				"replaced by publishing a newer one")
	}
	pending := st.Pending
	if err := a.Rollback(ctx); err != nil {
		return err
	}
	fmt.Fprintf(s.stdout, "rolled back release %d\n", pending)
	restartNote(s, o, a.Status())
	return nil
}

// deviceUpdateStatus prints the agent's state.
func deviceUpdateStatus(ctx context.Context, s streams, o deviceUpdateOptions, asJSON bool) error {
	a, slots, err := openAgent(ctx, s, o, update.AgentConfig{})
	if err != nil {
		return err
	}
	defer a.Close()
	st := a.Status()
	next, trial, err := slots.Next(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(s.stdout, updateStatusJSON(st, next, trial))
	}
	w := s.stdout
	fmt.Fprintf(w, "phase:      %s\n", st.Phase)
	fmt.Fprintf(w, "installed:  release %d, security counter %d, slot %s\n", st.Installed.Version, st.Installed.SecurityCounter, st.Installed.Slot)
	printSupport(s, st.Installed, time.Now())
	if st.Pending != 0 {
		fmt.Fprintf(w, "pending:    release %d", st.Pending)
		if st.Phase == update.PhaseTrial {
			fmt.Fprintf(w, ", start %d of 3", st.Starts)
		}
		fmt.Fprintln(w)
	}
	onTrial := ""
	if trial {
		onTrial = ", on trial"
	}
	fmt.Fprintf(w, "next start: slot %s%s\n", next, onTrial)
	if l := st.Last; l != nil {
		fmt.Fprintf(w, "last:       %s release %d (from %d) at %s", l.Event, l.Version, l.From,
			time.UnixMilli(l.Time).UTC().Format(time.RFC3339))
		if l.Reason != "" {
			fmt.Fprintf(w, ": %s", l.Reason)
		}
		fmt.Fprintln(w)
	}
	return nil
}

// updateStatus is "device update --status --json"; its field names are
// stable.
type updateStatus struct {
	Phase     string `json:"phase"`
	Installed struct {
		Version         uint64 `json:"version"`
		SecurityCounter uint64 `json:"security_counter"`
		Slot            string `json:"slot"`
		SBOM            string `json:"sbom,omitempty"`
		SupportUntil    string `json:"support_until,omitempty"`
	} `json:"installed"`
	Pending     uint64             `json:"pending"`
	Starts      int                `json:"starts"`
	NextSlot    string             `json:"next_slot"`
	NextOnTrial bool               `json:"next_on_trial"`
	Last        *updateStatusEvent `json:"last"`
}

type updateStatusEvent struct {
	Event   string `json:"event"`
	Version uint64 `json:"version"`
	From    uint64 `json:"from"`
	Time    string `json:"time"`
	Reason  string `json:"reason"`
}

func updateStatusJSON(st update.Status, next string, trial bool) updateStatus {
	r := updateStatus{Phase: fmt.Sprint(st.Phase), Pending: st.Pending, Starts: st.Starts, NextSlot: next, NextOnTrial: trial}
	r.Installed.Version, r.Installed.SecurityCounter, r.Installed.Slot = st.Installed.Version, st.Installed.SecurityCounter, st.Installed.Slot
	r.Installed.SBOM, r.Installed.SupportUntil = installedFacts(st.Installed)
	if l := st.Last; l != nil {
		r.Last = &updateStatusEvent{Event: l.Event, Version: l.Version, From: l.From,
			Time: time.UnixMilli(l.Time).UTC().Format(time.RFC3339Nano), Reason: l.Reason}
	}
	return r
}

// deviceUpdateHint says what to do about a failed check or install, from
// the device's side: the refusal names the attack; the remedy is the
// vendor's.
func deviceUpdateHint(err error, st update.Status, o deviceUpdateOptions) string {
	switch {
	case errors.Is(err, update.ErrExpired):
		return "the repository's metadata has expired (a freeze attack, or a repository nobody re-signs): the vendor " +
			"re-signs the timestamp (`d2c update timestamp`) or the release; a device clock set far ahead has the same effect"
	case errors.Is(err, update.ErrSecurityCounter):
		return fmt.Sprintf("the release's security counter is below the device's floor %d (rollback to a vulnerable release): "+
			"the vendor signs a release with --security-counter %d or more", st.Installed.SecurityCounter, st.Installed.SecurityCounter)
	case errors.Is(err, update.ErrRollback):
		return fmt.Sprintf("the repository offers a release older than the running %d (a rollback attack, or a repository "+
			"restored from a backup): the vendor signs a release with --version %d or more", st.Installed.Version, st.Installed.Version+1)
	case errors.Is(err, update.ErrMixAndMatch):
		return "the release is not the one the timestamp names (mix-and-match): the repository was modified after " +
			"signing; the vendor checks it with `d2c update verify`"
	case errors.Is(err, update.ErrWrongHardware):
		return fmt.Sprintf("the release is not for %q: check --hardware-class and --repo-url (a repository per hardware class)", o.hardware)
	case isKeyRefusal(err), errors.Is(err, update.ErrWrongType):
		return "metadata not signed by the keys the device trusts (arbitrary metadata): a forged or modified " +
			"repository, or --root is not the root this repository was created with"
	case errors.Is(err, update.ErrDigest), errors.Is(err, update.ErrLength), errors.Is(err, update.ErrEndlessData):
		return "the image downloaded is not the one signed (arbitrary software); nothing was installed: the vendor " +
			"publishes the signed image again (`d2c update verify` checks it)"
	case errors.Is(err, update.ErrTooLarge):
		return "the repository sent more than the limits allow (endless data): check --repo-url"
	case errors.Is(err, update.ErrRootVersionSkip), errors.Is(err, update.ErrMalformed):
		return "the repository does not follow docs/update-format.md: the vendor checks it with `d2c update verify`"
	case errors.Is(err, update.ErrSlowRetrieval):
		return "the download was slower than 1 KiB/s (a slow-retrieval attack, or a bad link); what arrived is " +
			"kept: run the command again to resume"
	case errors.Is(err, update.ErrInsecure):
		return "the repository sent a plain http address: use https, or --insecure-http for development"
	case errors.Is(err, update.ErrBusy):
		return "`d2c device update --status` tells where the update stands"
	case errors.Is(err, update.ErrNotFound):
		return "no repository at --repo-url (its timestamp.json is missing): check the URL, which ends at the " +
			"directory holding timestamp.json"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "nothing listens at --repo-url: check the address and that the repository server runs"
	case errors.Is(err, context.Canceled):
		return "interrupted: what was downloaded is kept; run the command again to resume"
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		var cerr *tls.CertificateVerificationError
		if errors.As(err, &cerr) {
			return "the repository's HTTPS certificate is not trusted: give the roots it chains to with --ca-roots"
		}
		return "the repository could not be reached: check --repo-url and the network"
	}
	return ""
}
