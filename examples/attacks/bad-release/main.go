// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command bad-release ships a release that crashes on one board revision,
// under a campaign (d2c rollout): the release reaches the fleet phase by
// phase, the devices report their results as signed telemetry, and the
// cloud service aborts the campaign once the failures cross its threshold,
// so that the rest of the fleet never installs it. Then a mirror tries to
// widen the halted campaign by editing timestamp.json: the devices refuse
// it.
//
//	go run ./examples/attacks/bad-release
package main

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/cloud"
	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/internal/jwsedit"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
	"github.com/d2c-iot/d2c/updatelink"
)

func main() { lab.Main(run) }

const (
	gateways = 60
	interval = time.Second // each gateway's check interval
)

// The campaign: 10% of the gateways for 3 seconds, then 40%, then all;
// aborted once 5 have finished and 20% of those failed.
var plan = store.CampaignPlan{HardwareClass: lab.HardwareClass, Release: 2, AbortAt: 2000, MinFinished: 5,
	Phases: []store.CampaignPhase{{Share: 1000, Delay: 3 * time.Second}, {Share: 4000, Delay: time.Hour}, {Share: update.RolloutAll}}}

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("bad-release", "a release that crashes on one board revision is offered to the whole fleet")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := store.Open(ctx, store.Config{URL: "sqlite:" + filepath.Join(f.Dir, "cloud", "fleet.db")})
	if err != nil {
		return err
	}
	defer st.Close()
	repo, err := lab.NewRepo()
	if err != nil {
		return err
	}
	defer repo.Close()
	if err := repo.Publish(2, time.Hour); err != nil {
		return err
	}
	dir := filepath.Join(f.Dir, "cloud", "repo")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tsKey, err := repo.Export(dir + ".new")
	if err != nil {
		return err
	}
	// Any web server or CDN serves the repository: plain HTTP on
	// 127.0.0.1 for the lab, HTTPS in production.
	origin := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer origin.Close()

	cert, err := f.ServiceCertificate("verifier")
	if err != nil {
		return err
	}
	cctx, stopCloud := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() {
		ran <- cloud.Run(cctx, cloud.Config{Store: st,
			Verifier: &cloud.VerifierRole{Broker: f.Broker.Addr(), Certificate: cert, Roots: f.Roots},
			Update: &cloud.UpdateRole{Dir: dir, TimestampKeys: []crypto.Signer{tsKey}, TimestampValidity: time.Hour,
				CampaignEvery: 200 * time.Millisecond}})
	}()
	defer func() {
		stopCloud()
		<-ran
	}()
	n.Lab("cloud service: verifier and update role on the store; repository with release 2 served on %s", origin.URL)

	fleet := make([]*gateway, gateways)
	for i := range fleet {
		if fleet[i], err = newGateway(ctx, f, st, fmt.Sprintf("gw-%02d", i)); err != nil {
			return err
		}
		fleet[i].revB = i%3 == 2
	}
	c, err := st.StartCampaign(ctx, plan)
	if err != nil {
		return err
	}
	// The release is published once its campaign exists: the service
	// signs its first timestamp with phase 1's rule.
	if err := os.Rename(dir, dir+".empty"); err != nil {
		return err
	}
	if err := os.Rename(dir+".new", dir); err != nil {
		return err
	}
	for deadline := time.Now().Add(lab.Timeout); !strings.HasPrefix(ruleOf(dir, repo.Root()), "share 1000"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("no timestamp with phase 1's rule: %s", ruleOf(dir, repo.Root()))
		}
	}
	inPhase := map[int]int{}
	for _, g := range fleet {
		g.phase = c.PhaseOf(g.id)
		inPhase[g.phase]++
	}
	n.Lab("%d gateways enrolled and connected, every third one a board revision B", gateways)
	n.Lab("campaign %d (d2c rollout start): release 2 to 10%% of the gateways for 3 s, then 40%%, then all; abort at 20%%\n"+
		"failures once 5 finished. By their bucket: %d gateways in phase 1, %d in phase 2, %d after", c.ID, inPhase[0], inPhase[1], inPhase[2])
	n.Attacker("release 2 crashes on board revision B: its health check fails there after the restart, and the\n" +
		"gateway rolls back")

	n.Section("1. the campaign")
	dctx, stopDevices := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, g := range fleet {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.run(dctx, repo.Root(), origin.URL+"/")
		}()
	}
	stop := func() {
		stopDevices()
		wg.Wait()
	}
	defer stop()
	var last *store.Campaign
	for deadline := time.Now().Add(lab.Timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if last, err = st.LatestCampaign(ctx, lab.HardwareClass); err != nil {
			return err
		}
		if last.State == store.CampaignAborted {
			break
		}
	}
	if last.State == store.CampaignAborted {
		n.D2C("campaign %d aborted in phase %d: %s", last.ID, last.Phase+1, last.Reason)
		// Every gateway checks at least once more under the halted rule.
		time.Sleep(2 * interval)
	}
	stop()
	installed, reverted, after, installedAfter := 0, 0, 0, 0
	for _, g := range fleet {
		if g.err != nil {
			return g.err
		}
		if g.installed {
			installed++
			if g.revB {
				reverted++
			}
		}
		if g.phase > last.Phase {
			after++
			if g.installed {
				installedAfter++
			}
		}
	}
	switch {
	case last.State != store.CampaignAborted:
		return lab.Succeeded("the campaign never halted (%s, phase %d): %d gateways installed the bad release, %d of them reverted",
			last.State, last.Phase+1, installed, reverted)
	case installedAfter > 0:
		return lab.Succeeded("the bad release reached %d gateways after phase %d, where the campaign aborted", installedAfter, last.Phase+1)
	}
	p, err := st.CampaignProgress(ctx, last)
	if err != nil {
		return err
	}
	for i := range last.Phase + 1 {
		n.D2C("phase %d: %d offered, %d confirmed, %d reverted", i+1, p.Phases[i].Offered, p.Phases[i].Confirmed, p.Phases[i].Reverted)
	}
	n.D2C("none of the %d gateways after phase %d installed release 2", after, last.Phase+1)
	n.D2C("the timestamp now carries the rule %s", ruleOf(dir, repo.Root()))
	n.Why("each gateway reports every install, confirm and revert as telemetry signed by its own key; the service\n" +
		"counts them per device from the store and aborts once the failures among the finished gateways reach the\n" +
		"threshold. The abort is a new timestamp whose cohort rule offers the release to no device: every gateway\n" +
		"that has not switched to it is offered nothing (Status.Withheld); the confirmed ones keep it.")

	n.Section("2. a mirror widens the halted campaign")
	signed, err := os.ReadFile(filepath.Join(dir, "timestamp.json"))
	if err != nil {
		return err
	}
	widened, err := jwsedit.EditPayload(signed, func(p map[string]any) {
		p["rollout"].(map[string]any)["share"] = update.RolloutAll
	})
	if err != nil {
		return err
	}
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/timestamp.json" {
			w.Write(widened)
			return
		}
		http.FileServer(http.Dir(dir)).ServeHTTP(w, r)
	}))
	defer mirror.Close()
	n.Attacker("the mirror sets the rule's share to 100%% in timestamp.json, keeping the timestamp key's signature")
	var victim *gateway
	for _, g := range fleet {
		if g.phase > 0 {
			victim = g
			break
		}
	}
	a, err := victim.agent(ctx, repo.Root(), mirror.URL+"/")
	if err != nil {
		return err
	}
	defer a.Close()
	offer, err := a.Check(ctx)
	if offer != nil || err == nil {
		return lab.Succeeded("%s was offered release 2 by the mirror", victim.id)
	}
	if !errors.Is(err, update.ErrBadSignature) {
		return fmt.Errorf("not refused as a bad signature: %v", err)
	}
	n.D2C("%s refused: %v", victim.id, err)
	n.Why("the cohort rule is part of the timestamp the online key signs: a mirror cannot widen a phase, and\n" +
		"cannot replay an older, wider timestamp either (the version floor); it can only freeze a gateway on the\n" +
		"last one it saw until that one expires.")

	n.Stopped("the campaign halted the bad release after %d finished gateways; %d gateways never installed it",
		p.Total.Finished(), gateways-installed)
	return nil
}

// gateway is one device: its client, its slots and its update agent.
type gateway struct {
	id, dir   string
	phase     int  // the campaign phase that first reaches its bucket
	revB      bool // release 2 fails its health check here
	client    *transport.Client
	installed bool  // it installed release 2
	err       error // an unexpected failure
}

func newGateway(ctx context.Context, f *lab.Fleet, st *store.Store, id string) (*gateway, error) {
	ids, err := f.Enroll(ctx, id)
	if err != nil {
		return nil, err
	}
	cur, err := ids.Current()
	if err != nil {
		return nil, err
	}
	// The lab's registrar records in its own registry; the cloud store
	// learns the certificate here (one registrar on the store in a fleet:
	// cloud.RegistrarRole).
	if err := st.Enrolled(ctx, id, "", time.Time{}, cur.Chain); err != nil {
		return nil, err
	}
	d, err := f.Connect(ctx, ids, lab.DeviceOptions{})
	if err != nil {
		return nil, err
	}
	g := &gateway{id: id, dir: filepath.Join(f.Dir, "gateways", id), client: d.Client}
	if err := slot.InitDirSlots(filepath.Join(g.dir, "slots"), nil); err != nil {
		return nil, err
	}
	return g, nil
}

// agent opens the gateway's slots and starts its agent on base.
func (g *gateway) agent(ctx context.Context, root []byte, base string) (*update.Agent, error) {
	slots, err := slot.OpenDirSlots(filepath.Join(g.dir, "slots"))
	if err != nil {
		return nil, err
	}
	return update.NewAgent(ctx, update.AgentConfig{Dir: filepath.Join(g.dir, "agent"), Root: root,
		HardwareClass: lab.HardwareClass, Device: g.id, Slots: slots,
		Source: &update.HTTPSource{BaseURL: base}, Client: &http.Client{}, // plain HTTP on 127.0.0.1 for the lab
		Report: updatelink.TelemetryReporter(g.client, nil)})
}

// run runs the gateway until ctx ends: start, settle a trial (confirm,
// or roll back on board revision B), check every interval, and restart
// into a new slot after an install.
func (g *gateway) run(ctx context.Context, root []byte, base string) {
	for ctx.Err() == nil {
		a, err := g.agent(ctx, root, base)
		if err != nil {
			g.err = err
			return
		}
		st, err := a.Start(ctx)
		if err == nil && st.Phase == update.PhaseTrial {
			g.installed = true
			if g.revB {
				err = a.Rollback(ctx)
			} else {
				err = a.Confirm(ctx)
			}
		}
		if err == nil {
			err = a.Run(ctx, interval)
		}
		a.Close()
		if err != nil && ctx.Err() == nil {
			g.err = fmt.Errorf("%s: %w", g.id, err)
			return
		}
	}
}

// ruleOf describes the cohort rule of the repository's timestamp.
func ruleOf(dir string, root []byte) string {
	b, err := os.ReadFile(filepath.Join(dir, "timestamp.json"))
	if err != nil {
		return err.Error()
	}
	t, err := update.NewTrusted(root, update.Floors{}, time.Now(), lab.HardwareClass)
	if err != nil {
		return err.Error()
	}
	ts, err := t.UpdateTimestamp(b)
	switch {
	case err != nil:
		return err.Error()
	case ts.Rollout == nil:
		return fmt.Sprintf("none: every device (timestamp version %d)", ts.Version)
	case ts.Rollout.Halted():
		return fmt.Sprintf("share %d, no group: halted (timestamp version %d)", ts.Rollout.Share, ts.Version)
	}
	return fmt.Sprintf("share %d (timestamp version %d)", ts.Rollout.Share, ts.Version)
}
