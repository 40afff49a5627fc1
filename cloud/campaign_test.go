// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package cloud_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/cloud"
	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/internal/jwsedit"
	"github.com/d2c-iot/d2c/internal/testbroker"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/internal/testrepo"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/wire"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
	"github.com/d2c-iot/d2c/updatelink"
)

// testRepo is an update repository (internal/testrepo) for the
// hardware class "gw" with the releases given, the newest as
// release.json; no timestamp yet.
type testRepo struct{ *testrepo.Repo }

const repoHardware = "gw"

func newTestRepo(t *testing.T, dir string, versions ...uint64) *testRepo {
	t.Helper()
	r := &testRepo{testrepo.New(t, dir, repoHardware)}
	for _, v := range versions {
		r.release(t, v)
	}
	return r
}

// release signs release version v (one image, v<V>/fw.bin, written too)
// and writes it as <V>.release.json and release.json; it returns the
// signed bytes.
func (r *testRepo) release(t *testing.T, v uint64) []byte {
	t.Helper()
	image := bytes.Repeat([]byte(fmt.Sprintf("firmware %d ", v)), 512)
	uri := fmt.Sprintf("v%d/fw.bin", v)
	r.Write(t, uri, image)
	return r.Release(t, v, uri, image, time.Now().AddDate(0, 1, 0))
}

// simDevice is one device of the simulated fleet: its transport client,
// its A/B directory slots and its update agent, restarted in process to
// "boot" a new slot.
type simDevice struct {
	id      string
	dir     string
	phase   int  // the campaign phase whose share first reaches its bucket
	reverts bool // the release's health check fails here
	client  *transport.Client

	mu     sync.Mutex
	status update.Status // at its last check
	err    error         // the first unexpected failure
}

// run runs the device until ctx ends: start the agent, settle a trial
// (confirm, or roll back where the release "fails its health check"),
// check every interval, and after an install restart into the new slot.
func (d *simDevice) run(ctx context.Context, root []byte, base string, client *http.Client, interval time.Duration) {
	for ctx.Err() == nil {
		slots, err := slot.OpenDirSlots(filepath.Join(d.dir, "slots"))
		if err != nil {
			d.fail(err)
			return
		}
		a, err := update.NewAgent(ctx, update.AgentConfig{Dir: filepath.Join(d.dir, "agent"), Root: root,
			HardwareClass: repoHardware, Device: d.id, Slots: slots,
			Source: &update.HTTPSource{BaseURL: base, Client: client}, Client: client,
			Report: updatelink.TelemetryReporter(d.client, nil)})
		if err != nil {
			d.fail(err)
			return
		}
		st, err := a.Start(ctx)
		if err == nil && st.Phase == update.PhaseTrial {
			if d.reverts {
				err = a.Rollback(ctx)
			} else {
				err = a.Confirm(ctx)
			}
		}
		if err != nil && ctx.Err() == nil {
			d.fail(err)
		}
		err = a.Run(ctx, interval)
		d.mu.Lock()
		d.status = a.Status()
		d.mu.Unlock()
		a.Close()
		if err != nil && ctx.Err() == nil {
			d.fail(err)
			return
		}
	}
}

func (d *simDevice) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err == nil {
		d.err = fmt.Errorf("%s: %w", d.id, err)
	}
}

// TestCampaignHaltsBadRelease: a campaign over a simulated fleet (device
// agents reporting signed results through mosquitto to the service's
// verifier, the service's update role serving the repository and
// running the campaign). Phase 1 confirms; the release reverts on half
// of phase 2; once 10 devices have finished and 20% of them failed, the
// campaign aborts: the timestamp's rule is halted, the devices outside
// phases 1 and 2 never install the release (no report, slots untouched),
// the confirmed devices stay on it, and a CDN replaying the wider
// pre-abort timestamp is refused by devices that saw the halted one.
func TestCampaignHaltsBadRelease(t *testing.T) {
	const (
		devices  = 240
		interval = 3 * time.Second // each device's check interval
	)
	f := newFleetNoBroker(t)
	mq := testbroker.Mosquitto(t, f.ca, []broker.ServiceRights{{Name: "verifier", Read: []string{wire.AllUp}}})
	repo := newTestRepo(t, filepath.Join(f.dir, "repo"), 2)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	addrs, ran := f.run(ctx, cloud.Config{
		Registrar: f.registrar(),
		Verifier:  &cloud.VerifierRole{Broker: mq.Addr, Certificate: testpki.Service(t, f.ca, "verifier"), Roots: f.roots},
		Update: &cloud.UpdateRole{Dir: repo.Dir, Listen: "127.0.0.1:0", Certificate: f.serverCert,
			TimestampKeys: []crypto.Signer{repo.TimestampKey}, TimestampValidity: time.Hour, CampaignEvery: 200 * time.Millisecond},
	})
	origin := "https://" + addrs.Update.String() + "/"
	httpClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: f.roots}, MaxIdleConnsPerHost: 64}}

	// The fleet: enrolled through the registrar, connected to mosquitto.
	start := time.Now()
	fleet := make([]*simDevice, devices)
	for i := range fleet {
		id := fmt.Sprintf("gw-%03d", i)
		idStore, _ := f.enroll(ctx, addrs.Registrar.String(), id)
		d := &simDevice{id: id, dir: filepath.Join(f.dir, "sim", id)}
		if err := slot.InitDirSlots(filepath.Join(d.dir, "slots"), strings.NewReader("factory image")); err != nil {
			t.Fatal(err)
		}
		var err error
		if d.client, err = transport.Dial(ctx, transport.ClientConfig{Broker: mq.Addr, Store: idStore,
			RetryMin: 50 * time.Millisecond, RetryMax: time.Second, SecurityReportInterval: -1}); err != nil {
			t.Fatal(err)
		}
		fleet[i] = d
	}
	t.Cleanup(func() {
		for _, d := range fleet {
			cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
			d.client.Close(cctx)
			ccancel()
		}
	})
	for _, d := range fleet {
		actx, acancel := context.WithTimeout(ctx, 30*time.Second)
		err := d.client.AwaitConnection(actx)
		acancel()
		if err != nil {
			t.Fatalf("%s: %v", d.id, err)
		}
	}

	// The campaign: 5% for 5 s, then 30%, then everyone; aborted at 20%
	// failures once 10 devices finished. The devices start once its
	// first phase is signed.
	camp, err := f.store.StartCampaign(ctx, store.CampaignPlan{HardwareClass: repoHardware, Release: 2, AbortAt: 2000, MinFinished: 10,
		Phases: []store.CampaignPhase{{Share: 500, Delay: 5 * time.Second}, {Share: 3000, Delay: time.Hour}, {Share: update.RolloutAll}}})
	if err != nil {
		t.Fatal(err)
	}
	byPhase := map[int][]*simDevice{}
	for _, d := range fleet {
		d.phase = camp.PhaseOf(d.id)
		byPhase[d.phase] = append(byPhase[d.phase], d)
		// Every other device of phase 2 fails the release's health check.
		d.reverts = d.phase == 1 && len(byPhase[1])%2 == 0
	}
	t.Logf("%d devices enrolled and connected in %v; %d in phase 1, %d in phase 2, %d after", devices,
		time.Since(start).Round(time.Millisecond), len(byPhase[0]), len(byPhase[1]), len(byPhase[2]))
	if len(byPhase[0]) == 0 || len(byPhase[1]) < 20 || len(byPhase[2]) == 0 {
		t.Fatal("the salt drew an unusable split; run again")
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, ts := fetchTimestamp(t, httpClient, origin, repo.Root); ts != nil && ts.Rollout != nil && ts.Rollout.Share == 500 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("phase 1's rule not signed within 10 s")
		}
	}
	start = time.Now()

	devCtx, stopDevices := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, d := range fleet {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.run(devCtx, repo.Root, origin, httpClient, interval)
		}()
	}
	defer func() {
		stopDevices()
		wg.Wait()
	}()

	// Watch the timestamp: keep the wider one phase 2 signed, to replay.
	var (
		wider   []byte
		aborted *store.Campaign
	)
	for deadline := time.Now().Add(45 * time.Second); aborted == nil; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			c, _ := f.store.LatestCampaign(ctx, repoHardware)
			p, _ := f.store.CampaignProgress(ctx, c)
			t.Fatalf("no abort within 45 s: campaign %+v, progress %+v", c, p)
		}
		if b, ts := fetchTimestamp(t, httpClient, origin, repo.Root); ts != nil && ts.Rollout != nil && ts.Rollout.Share == 3000 {
			wider = b
		}
		c, err := f.store.LatestCampaign(ctx, repoHardware)
		if err != nil {
			t.Fatal(err)
		}
		if c.State == store.CampaignAborted {
			aborted = c
		}
	}
	t.Logf("aborted %v after the devices started, at phase %d: %s", time.Since(start).Round(time.Millisecond), aborted.Phase+1, aborted.Reason)
	if aborted.Phase != 1 || !strings.Contains(aborted.Reason, "abort threshold of 20%") {
		t.Fatalf("aborted at phase %d for %q, want phase 2 at the threshold", aborted.Phase+1, aborted.Reason)
	}
	var halted *update.Timestamp
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, ts := fetchTimestamp(t, httpClient, origin, repo.Root); ts != nil && ts.Rollout.Halted() {
			halted = ts
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the timestamp's rule was not halted within 10 s of the abort")
		}
	}
	// Every device checks at least once more under the halted rule.
	time.Sleep(interval + interval/2)
	stopDevices()
	wg.Wait()
	for _, d := range fleet {
		if d.err != nil {
			t.Error(d.err)
		}
	}

	// Let the reports sent reach the store, then read them.
	var reports []store.UpdateReport
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		queued := 0
		for _, d := range fleet {
			queued += d.client.Stats().QueueDepth
		}
		if reports, err = f.store.UpdateReports(ctx, time.Time{}); err != nil {
			t.Fatal(err)
		}
		if queued == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reports still queued after 20 s", queued)
		}
	}
	installed, confirmed := map[string]time.Time{}, map[string]bool{}
	for _, r := range reports {
		if r.Result.Version != 2 {
			continue
		}
		switch r.Result.Event {
		case "installed":
			if _, ok := installed[r.Device]; !ok {
				installed[r.Device] = r.Time
			}
		case "confirmed":
			confirmed[r.Device] = true
		}
	}
	// Phase 1 confirmed; the devices after phase 2 never installed.
	for _, d := range byPhase[0] {
		if !confirmed[d.id] {
			t.Errorf("%s (phase 1) did not confirm the release", d.id)
		}
	}
	for _, d := range byPhase[2] {
		if at, ok := installed[d.id]; ok {
			t.Errorf("%s (after phase 2) installed the release at %v", d.id, at)
		}
		if d.status.Installed.Version != 0 || d.status.Phase != update.PhaseIdle || d.status.Pending != 0 {
			t.Errorf("%s (after phase 2): status %+v, want idle at version 0", d.id, d.status)
		}
		if _, err := os.Stat(filepath.Join(d.dir, "slots", slot.B, "image")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s (after phase 2): its slot b was written (%v)", d.id, err)
		}
	}
	// Confirmed devices stay on the release: the cloud forces no revert.
	stayed, late := 0, 0
	for _, d := range fleet {
		if confirmed[d.id] {
			if d.status.Installed.Version != 2 {
				t.Errorf("%s confirmed the release, then left it: %+v", d.id, d.status)
			}
			stayed++
		}
		// An install after the abort was decided: only a device that
		// fetched the wider timestamp just before it was replaced.
		if at, ok := installed[d.id]; ok && at.After(aborted.Updated.Add(interval+time.Second)) {
			late++
			t.Errorf("%s installed the release at %v, %v after the abort", d.id, at, at.Sub(aborted.Updated))
		}
	}
	phase2Untouched := 0
	for _, d := range byPhase[1] {
		if _, ok := installed[d.id]; !ok {
			phase2Untouched++
		}
	}
	p, err := f.store.CampaignProgress(ctx, aborted)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("progress: phase 1 %+v, phase 2 %+v, after %+v; %d confirmed stay; %d of phase 2 never installed; run %v",
		p.Phases[0], p.Phases[1], p.Phases[2], stayed, phase2Untouched, time.Since(start).Round(time.Millisecond))
	if p.Phases[2].Installed+p.Phases[2].Confirmed+p.Phases[2].Reverted != 0 || p.Total.Reverted == 0 || stayed < len(byPhase[0]) {
		t.Errorf("progress %+v", p)
	}

	// A CDN replaying the wider timestamp signed before the abort: a
	// device that saw the halted one refuses it (timestamp version floor).
	if wider == nil {
		t.Fatal("no phase 2 timestamp seen to replay")
	}
	cdn := staleCDN(t, repo.Dir, wider)
	d := byPhase[1][len(byPhase[1])-1]
	check := func(base string, c *http.Client) (*update.Offer, error) {
		slots, err := slot.OpenDirSlots(filepath.Join(d.dir, "slots"))
		if err != nil {
			t.Fatal(err)
		}
		a, err := update.NewAgent(ctx, update.AgentConfig{Dir: filepath.Join(d.dir, "agent"), Root: repo.Root, HardwareClass: repoHardware,
			Device: d.id, Slots: slots, Source: &update.HTTPSource{BaseURL: base, Client: c}, Client: c})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		return a.Check(ctx)
	}
	// The device sees the halted timestamp (if it had not yet), then the
	// CDN's replay.
	if o, err := check(origin, httpClient); err != nil || o != nil {
		t.Fatalf("%s checking the origin after the abort: offer %v, %v", d.id, o, err)
	}
	if o, err := check(cdn.URL+"/", cdn.Client()); !errors.Is(err, update.ErrRollback) || o != nil {
		t.Fatalf("a device that saw timestamp %d, offered the replayed wider one: %v %v, want ErrRollback", halted.Version, o, err)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}

// fetchTimestamp fetches the repository's timestamp and verifies it as a
// new device would; nil if there is none yet or it does not verify.
func fetchTimestamp(t *testing.T, c *http.Client, base string, root []byte) ([]byte, *update.Timestamp) {
	t.Helper()
	resp, err := c.Get(base + "timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, nil
	}
	tr, err := update.NewTrusted(root, update.Floors{}, time.Now(), repoHardware)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := tr.UpdateTimestamp(b)
	if err != nil {
		return nil, nil
	}
	return b, ts
}

// staleCDN serves the repository's files, but timestamp.json from
// timestamp: a mirror that serves what it likes, without any key.
func staleCDN(t *testing.T, dir string, timestamp []byte) *httptest.Server {
	files := http.FileServer(http.Dir(dir))
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/timestamp.json" {
			w.Write(timestamp)
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestCampaignWideningRefused: a CDN that widens the campaign's phase in
// timestamp.json, keeping the online key's signature, is refused by the
// devices it meant to reach, end to end through HTTPS; the origin's
// timestamp withholds the release from them.
func TestCampaignWideningRefused(t *testing.T) {
	f := newFleetNoBroker(t)
	repo := newTestRepo(t, filepath.Join(f.dir, "repo"), 2)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	camp, err := f.store.StartCampaign(ctx, store.CampaignPlan{HardwareClass: repoHardware, Release: 2, AbortAt: 500, MinFinished: 20,
		Phases: []store.CampaignPhase{{Share: 100, Delay: time.Hour}, {Share: update.RolloutAll}}})
	if err != nil {
		t.Fatal(err)
	}
	addrs, ran := f.run(ctx, cloud.Config{Update: &cloud.UpdateRole{Dir: repo.Dir, Listen: "127.0.0.1:0", Certificate: f.serverCert,
		TimestampKeys: []crypto.Signer{repo.TimestampKey}, TimestampValidity: time.Hour, CampaignEvery: 100 * time.Millisecond}})
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.roots}}}
	origin := "https://" + addrs.Update.String() + "/"
	var signed []byte
	for deadline := time.Now().Add(10 * time.Second); signed == nil; time.Sleep(50 * time.Millisecond) {
		if b, ts := fetchTimestamp(t, client, origin, repo.Root); ts != nil && ts.Rollout != nil && ts.Rollout.Share == 100 {
			signed = b
		}
		if time.Now().After(deadline) {
			t.Fatal("no timestamp with phase 1's rule")
		}
	}
	// A device outside 1%.
	id := "gw-outside"
	for i := 0; camp.PhaseOf(id) == 0; i++ {
		id = fmt.Sprintf("gw-outside-%d", i)
	}
	agent := func(base string, c *http.Client) *update.Agent {
		dir := filepath.Join(t.TempDir(), id)
		if err := slot.InitDirSlots(filepath.Join(dir, "slots"), nil); err != nil {
			t.Fatal(err)
		}
		slots, err := slot.OpenDirSlots(filepath.Join(dir, "slots"))
		if err != nil {
			t.Fatal(err)
		}
		a, err := update.NewAgent(ctx, update.AgentConfig{Dir: filepath.Join(dir, "agent"), Root: repo.Root, HardwareClass: repoHardware,
			Device: id, Slots: slots, Source: &update.HTTPSource{BaseURL: base, Client: c}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	a := agent(origin, client)
	if o, err := a.Check(ctx); err != nil || o != nil || a.Status().Withheld != 2 {
		t.Fatalf("from the origin: offer %v, err %v, status %+v: want release 2 withheld", o, err, a.Status())
	}
	widened, err := jwsedit.EditPayload(signed, func(p map[string]any) { p["rollout"].(map[string]any)["share"] = update.RolloutAll })
	if err != nil {
		t.Fatal(err)
	}
	cdn := staleCDN(t, repo.Dir, widened)
	b := agent(cdn.URL+"/", cdn.Client())
	if o, err := b.Check(ctx); !errors.Is(err, update.ErrBadSignature) || o != nil {
		t.Fatalf("from a CDN that widened the share: offer %v, err %v, want ErrBadSignature", o, err)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}
