// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity/audit"
)

// TestAgentInstallConfirm walks one update: check, download into the
// inactive slot, switch on trial, restart, confirm; the floor rises only at
// Confirm.
func TestAgentInstallConfirm(t *testing.T) {
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	ctx := t.Context()
	if st, err := dev.agent.Start(ctx); err != nil || st.Phase != PhaseIdle || st.RebootNeeded {
		t.Fatalf("fresh Start: %+v, %v", st, err)
	}
	// Nothing published yet.
	if _, err := dev.agent.Check(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Check on an empty repository: %v, want ErrNotFound", err)
	}
	img := image(1, 100_000)
	repo.publish(1, 1, img)
	var progress []int64
	dev.agent.cfg.Progress = func(done, total int64) { progress = append(progress, done) }
	ok, err := dev.agent.Update(ctx)
	if err != nil || !ok {
		t.Fatalf("Update: %v, %v", ok, err)
	}
	if len(progress) == 0 || progress[len(progress)-1] != int64(len(img)) {
		t.Errorf("progress %v, want it to end at %d", progress, len(img))
	}
	st := dev.agent.Status()
	if st.Phase != PhaseTrial || !st.RebootNeeded || st.Pending != 1 || st.Installed.Version != 0 {
		t.Fatalf("after Install: %+v", st)
	}
	if r := dev.lastReport(); r.Event != "installed" || r.Version != 1 {
		t.Errorf("report %+v", r)
	}
	if err := dev.agent.Confirm(ctx); !errors.Is(err, ErrNotBooted) {
		t.Fatalf("Confirm before the restart: %v, want ErrNotBooted", err)
	}
	// The same check again offers nothing: the release is installed.
	if o, err := dev.agent.Check(ctx); err != nil || o != nil {
		t.Fatalf("Check while installed: %+v, %v", o, err)
	}

	dev.restart()
	if !bytes.Equal(dev.running(), img) {
		t.Fatal("after the restart the device does not run the new image")
	}
	st, err = dev.agent.Start(ctx)
	if err != nil || st.Phase != PhaseTrial || st.Starts != 1 || st.RebootNeeded {
		t.Fatalf("Start on trial: %+v, %v", st, err)
	}
	if dev.agent.st.Floors.SecurityCounter != 0 {
		t.Fatalf("security-counter floor %d before Confirm, want 0", dev.agent.st.Floors.SecurityCounter)
	}
	if err := dev.agent.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	st = dev.agent.Status()
	if st.Phase != PhaseIdle || st.Installed.Version != 1 || st.Installed.SecurityCounter != 1 || dev.agent.st.Floors.SecurityCounter != 1 {
		t.Fatalf("after Confirm: %+v floors %+v", st, dev.agent.st.Floors)
	}
	if r := dev.lastReport(); r.Event != "confirmed" || r.Version != 1 {
		t.Errorf("report %+v", r)
	}
	if err := dev.agent.Confirm(ctx); err != nil {
		t.Fatalf("second Confirm: %v (Confirm is idempotent)", err)
	}
	// Survives a restart; up to date.
	dev.restart()
	if st, err := dev.agent.Start(ctx); err != nil || st.Phase != PhaseIdle || st.Installed.Version != 1 {
		t.Fatalf("Start after Confirm: %+v, %v", st, err)
	}
	if o, err := dev.agent.Check(ctx); err != nil || o != nil {
		t.Fatalf("Check when up to date: %+v, %v", o, err)
	}
}

// TestAgentRevertAfterStarts: new software that never confirms is reverted
// after MaxTrialStarts starts; the floor stays.
func TestAgentRevertAfterStarts(t *testing.T) {
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	ctx := t.Context()
	repo.publish(1, 1, image(1, 5000))
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatal(ok, err)
	}
	for i := 1; i <= 3; i++ {
		dev.restart()
		st, err := dev.agent.Start(ctx)
		if err != nil || st.Phase != PhaseTrial || st.Starts != i {
			t.Fatalf("start %d: %+v, %v", i, st, err)
		}
	}
	dev.restart()
	st, err := dev.agent.Start(ctx)
	if err != nil || st.Phase != PhaseIdle || !st.RebootNeeded || st.Installed.Version != 0 {
		t.Fatalf("fourth start: %+v, %v", st, err)
	}
	if r := dev.lastReport(); r.Event != "reverted" || !strings.Contains(r.Reason, "3 starts") {
		t.Errorf("report %+v", r)
	}
	dev.restart()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dev.running(), factoryImage) {
		t.Fatal("not back on the factory image")
	}
	if f := dev.agent.st.Floors.SecurityCounter; f != 0 {
		t.Fatalf("security-counter floor %d after a revert, want 0", f)
	}
	// The reverted release is not installed again (that would loop); a
	// newer one is.
	if ok, err := dev.agent.Update(ctx); err != nil || ok {
		t.Fatalf("Update after the revert: installed %v, %v; want nothing", ok, err)
	}
	repo.publish(2, 1, image(2, 5000))
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatalf("Update with a newer release: %v, %v", ok, err)
	}
}

// TestAgentRevertAfterTime: a trial that outlasts TrialTimeout reverts at
// the next start.
func TestAgentRevertAfterTime(t *testing.T) {
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	ctx := t.Context()
	repo.publish(1, 1, image(1, 5000))
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatal(ok, err)
	}
	dev.restart()
	if st, err := dev.agent.Start(ctx); err != nil || st.Phase != PhaseTrial {
		t.Fatal(st, err)
	}
	dev.clock.add(2 * time.Hour)
	dev.restart()
	st, err := dev.agent.Start(ctx)
	if err != nil || st.Phase != PhaseIdle || !st.RebootNeeded {
		t.Fatalf("start after the trial time: %+v, %v", st, err)
	}
}

// TestAgentRollbackAndAbort: the application rolls back an unhealthy
// update, or abandons one before it boots.
func TestAgentRollbackAndAbort(t *testing.T) {
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	ctx := t.Context()
	if err := dev.agent.Rollback(ctx); !errors.Is(err, ErrNoTrial) {
		t.Fatalf("Rollback with nothing on trial: %v", err)
	}
	repo.publish(1, 1, image(1, 5000))
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatal(ok, err)
	}
	// Abort before the restart: the switch is undone.
	if err := dev.agent.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if next, trial, _ := dev.slots.Next(ctx); next != "a" || trial {
		t.Fatalf("after Abort next = %s (trial %v), want a", next, trial)
	}
	// Install again, boot it, roll it back.
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatal(ok, err)
	}
	dev.restart()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dev.agent.Abort(ctx); !errors.Is(err, ErrBusy) {
		t.Fatalf("Abort on trial: %v, want ErrBusy", err)
	}
	if err := dev.agent.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if st := dev.agent.Status(); st.Phase != PhaseIdle || !st.RebootNeeded || st.Installed.Version != 0 {
		t.Fatalf("after Rollback: %+v", st)
	}
	dev.restart()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dev.running(), factoryImage) {
		t.Fatal("not back on the factory image")
	}
}

// TestAgentResumesDownload: a download cut mid-way resumes from the last
// byte written, with an HTTP Range request, not from zero.
func TestAgentResumesDownload(t *testing.T) {
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	ctx := t.Context()
	img := image(1, 256<<10)
	repo.publish(1, 1, img)
	cut := true
	repo.artifactOverride = func(w http.ResponseWriter, r *http.Request) bool {
		if !cut || r.Header.Get("Range") != "" {
			return false
		}
		cut = false
		// Half the image, then the connection drops.
		w.Header().Set("Content-Length", "262144")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(img[:100<<10])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatal(ok, err)
	}
	ranges := repo.seenRanges()
	if len(ranges) < 2 || ranges[0] != "" || !strings.HasPrefix(ranges[1], "bytes=") || ranges[1] == "bytes=0-" {
		t.Fatalf("requests' Range headers %q: want the second to resume after the cut", ranges)
	}
	dev.restart()
	if !bytes.Equal(dev.running(), img) {
		t.Fatal("resumed image differs")
	}
}

// TestAgentRunNotify: Run polls on its interval, and Notify (what a signed
// "update.check" command calls) makes it check at once.
func TestAgentRunNotify(t *testing.T) {
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- dev.agent.Run(ctx, time.Hour) }()
	time.Sleep(50 * time.Millisecond) // the first check finds nothing
	repo.publish(1, 1, image(1, 4096))
	dev.agent.Notify()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("Run did not install after the notice")
	}
	if st := dev.agent.Status(); st.Phase != PhaseTrial || !st.RebootNeeded {
		t.Fatalf("after Run: %+v", st)
	}
	if err := dev.agent.Run(ctx, 0); err == nil {
		t.Fatal("Run with a zero interval accepted")
	}
}

// TestAgentStateCopies: a torn or corrupted newest copy of the state is
// survived by the other copy (one generation older); with both copies
// unreadable the agent refuses to start rather than guess.
func TestAgentStateCopies(t *testing.T) {
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	repo.publish(1, 1, image(1, 4096))
	if ok, err := dev.agent.Update(t.Context()); err != nil || !ok {
		t.Fatal(ok, err)
	}
	gen := dev.agent.st.Gen
	newest := filepath.Join(dev.dir, "agent", stateNames[gen%2])
	b, err := os.ReadFile(newest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(newest, b[:len(b)/2], 0o600); err != nil { // torn
		t.Fatal(err)
	}
	dev.restart()
	if got := dev.agent.st.Gen; got != gen-1 {
		t.Fatalf("loaded generation %d, want the older copy %d", got, gen-1)
	}
	if _, err := dev.agent.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Both copies bad.
	dev.agent.Close()
	for _, n := range stateNames {
		if err := os.WriteFile(filepath.Join(dev.dir, "agent", n), []byte("garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err = NewAgent(t.Context(), dev.config())
	if !errors.Is(err, ErrState) {
		t.Fatalf("NewAgent with both copies corrupt: %v, want ErrState", err)
	}
}

// TestAgentAudit: with an audit log, every outcome is recorded, and the
// log verifies.
func TestAgentAudit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	log, err := audit.Open(audit.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, func(c *AgentConfig) { c.Audit = log })
	repo.publish(2, 1, image(2, 4096))
	if ok, err := dev.agent.Update(t.Context()); err != nil || !ok {
		t.Fatal(ok, err)
	}
	dev.restart()
	if _, err := dev.agent.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := dev.agent.Confirm(t.Context()); err != nil {
		t.Fatal(err)
	}
	repo.publish(1, 1, image(1, 4096)) // a rollback attempt: refused, recorded
	if _, err := dev.agent.Update(t.Context()); !errors.Is(err, ErrRollback) {
		t.Fatalf("rollback: %v", err)
	}
	recs, _, err := audit.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []audit.Kind
	for _, r := range recs {
		kinds = append(kinds, r.Kind)
	}
	want := []audit.Kind{audit.KindCheckpoint, audit.KindUpdateInstall, audit.KindUpdateConfirm, audit.KindUpdateRefused}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Fatalf("audit records %v, want %v", kinds, want)
	}
}

// TestAgentReviewFindings: an altered offer is refused; a rollback before
// the new slot ran is an abort (the release is not marked reverted); Start
// counts one trial start per process; a closed agent refuses calls.
func TestAgentReviewFindings(t *testing.T) {
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	ctx := t.Context()
	repo.publish(1, 1, image(1, 4096))
	o, err := dev.agent.Check(ctx)
	if err != nil || o == nil {
		t.Fatal(o, err)
	}
	forged := *o
	rel := *o.Release
	rel.SecurityCounter = 1 << 60
	forged.Release = &rel
	if err := dev.agent.Install(ctx, &forged); err == nil {
		t.Fatal("Install accepted an offer whose security counter was raised after Check")
	}
	forged = *o
	forged.Artifact.SHA256[0] ^= 1
	if err := dev.agent.Install(ctx, &forged); err == nil {
		t.Fatal("Install accepted an offer whose digest was changed after Check")
	}
	if err := dev.agent.Install(ctx, o); err != nil {
		t.Fatal(err)
	}
	// Rolled back before it ran: an abort, offered again later.
	if err := dev.agent.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if st := dev.agent.Status(); st.Phase != PhaseIdle || st.Reverted != 0 || st.RebootNeeded {
		t.Fatalf("after a rollback before the restart: %+v", st)
	}
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatalf("the aborted release is offered again: %v %v", ok, err)
	}
	dev.restart()
	for range 5 {
		if st, err := dev.agent.Start(ctx); err != nil || st.Starts != 1 || st.Phase != PhaseTrial {
			t.Fatalf("Start called again in one process: %+v, %v", st, err)
		}
	}
	dev.agent.Close()
	if _, err := dev.agent.Start(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
}

// TestAgentLocked: a second agent on the same state directory is refused
// with ErrLocked instead of waiting for good.
func TestAgentLocked(t *testing.T) {
	defer func(d time.Duration) { agentLockWait = d }(agentLockWait)
	agentLockWait = 100 * time.Millisecond
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	start := time.Now()
	if _, err := NewAgent(t.Context(), dev.config()); !errors.Is(err, ErrLocked) {
		t.Fatalf("second agent: %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("refused after %v", d)
	}
}
