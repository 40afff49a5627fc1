// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/atomicfile/crashfs"
	"github.com/d2c-iot/d2c/update/internal/slothook"
	"github.com/d2c-iot/d2c/update/slot"
)

// copyTree copies a device directory (slots with their link, agent state).
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v: %s", src, err, out)
	}
}

// openOn opens the device's slots and agent on fsys, as a process starting
// on the device would; it returns nil when the crash already hit.
func (d *agentDevice) openOn(fsys atomicfile.FS) error {
	if d.agent != nil {
		d.agent.Close()
		d.agent = nil
	}
	s, err := slothook.OpenDirSlots(fsys, filepath.Join(d.dir, "slots"))
	if err != nil {
		return err
	}
	d.slots = s.(*slot.DirSlots)
	cfg := d.config()
	cfg.fs = fsys
	a, err := NewAgent(d.t.Context(), cfg)
	if err != nil {
		return err
	}
	d.agent = a
	return nil
}

// TestAgentPowerFail cuts the power at every file-system operation of an
// update, MCUboot style: first a clean run counts the operations of an
// install of v2 over a confirmed v1 followed by a restart and either
// Confirm or a revert (the trial used up), then for each operation i a
// fresh copy of the device runs the same steps with the power failing at
// i. After each cut the device restarts on the real file system and the
// invariants must hold: the state decodes, the slot that boots holds a
// complete verified image (v1 or v2, never a mix), the installed version
// and the security-counter floor never fall below v1's, v2 is installed
// only if it was confirmed; and the device can still finish (or redo) the
// update.
func TestAgentPowerFail(t *testing.T) {
	repo := newAgentRepo(t)
	base := newAgentDevice(t, repo, nil)
	base.installV(1, 1)
	v1 := image(1, 4096)
	v2 := image(2, 200<<10)
	repo.publish(2, 2, v2)
	base.agent.Close()
	digests := map[[32]byte]string{sha256.Sum256(v1): "v1", sha256.Sum256(v2): "v2"}

	for _, scenario := range []string{"confirm", "revert"} {
		ops := cutPowerAtEveryOp(t, scenario, base.clone, powerFailSteps(t, scenario), func(d *agentDevice, i int) {
			d.checkAfterCrash(t, scenario, i, digests)
		})
		t.Logf("%s: power cut at each of %d file-system operations; every restart booted a verified image and finished", scenario, ops)
	}
}

// powerFailSteps returns the steps of an update of TestAgentPowerFail on
// fsys: a start, Update, then restarts and Confirm ("confirm"), or restarts
// until the trial is used up ("revert"). They stop at the first error (the
// power cut).
func powerFailSteps(t *testing.T, scenario string) func(d *agentDevice, fsys atomicfile.FS) error {
	return func(d *agentDevice, fsys atomicfile.FS) error {
		ctx := t.Context()
		if err := d.openOn(fsys); err != nil {
			return err
		}
		if _, err := d.agent.Start(ctx); err != nil {
			return err
		}
		if _, err := d.agent.Update(ctx); err != nil {
			return err
		}
		starts := 1
		if scenario == "revert" {
			starts = 4 // the fourth start reverts
		}
		for range starts {
			if err := d.openOn(fsys); err != nil {
				return err
			}
			if _, err := d.agent.Start(ctx); err != nil {
				return err
			}
		}
		if scenario == "confirm" {
			return d.agent.Confirm(ctx)
		}
		if err := d.openOn(fsys); err != nil {
			return err
		}
		_, err := d.agent.Start(ctx)
		return err
	}
}

// clone copies the device (slots with their link, agent state) to a new
// directory, not opened.
func (d *agentDevice) clone() *agentDevice {
	c := &agentDevice{t: d.t, repo: d.repo, dir: d.t.TempDir(), clock: d.clock}
	copyTree(d.t, d.dir, c.dir)
	return c
}

// cutPowerAtEveryOp runs steps on a fresh device() once to count its
// file-system operations, then once per operation i on another fresh
// device with the power failing at i, and calls check on each device
// after its cut (its agent closed). It returns the count.
func cutPowerAtEveryOp(t *testing.T, name string, device func() *agentDevice, steps func(*agentDevice, atomicfile.FS) error, check func(d *agentDevice, i int)) int {
	t.Helper()
	clean := &crashfs.FS{}
	d := device()
	if err := steps(d, clean); err != nil {
		t.Fatalf("%s: clean run: %v", name, err)
	}
	if d.agent != nil {
		d.agent.Close()
	}
	ops := clean.Ops()
	for i := 1; i <= ops; i++ {
		d := device()
		c := &crashfs.FS{FailAt: i}
		err := steps(d, c)
		if err == nil || !c.Crashed() {
			t.Fatalf("%s: crash at %d of %d: steps returned %v, crashed %v", name, i, ops, err, c.Crashed())
		}
		if d.agent != nil {
			d.agent.Close()
			d.agent = nil
		}
		check(d, i)
	}
	return ops
}

// checkAfterCrash restarts the device on the real file system, checks the
// invariants and drives the update to its end.
func (d *agentDevice) checkAfterCrash(t *testing.T, scenario string, i int, digests map[[32]byte]string) {
	t.Helper()
	ctx := t.Context()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s, power cut at operation %d: "+format, append([]any{scenario, i}, args...)...)
	}
	booting := func() string {
		next, _, err := d.slots.Next(ctx)
		if err != nil {
			fail("next slot: %v", err)
		}
		img, err := os.ReadFile(filepath.Join(d.dir, "slots", next, "image"))
		if err != nil {
			fail("read the image that boots: %v", err)
		}
		v, ok := digests[sha256.Sum256(img)]
		if !ok {
			fail("slot %s boots an image that is neither v1 nor v2 (%d bytes)", next, len(img))
		}
		return v
	}
	// Restart until the agent needs no more restarts.
	for n := 0; ; n++ {
		if err := d.openOn(atomicfile.OS{}); err != nil {
			fail("reopen: %v", err)
		}
		booting()
		st, err := d.agent.Start(ctx)
		if err != nil {
			fail("Start: %v", err)
		}
		if st.Installed.Version < 1 || d.agent.st.Floors.SecurityCounter < 1 {
			fail("installed %d, floor %d: below v1", st.Installed.Version, d.agent.st.Floors.SecurityCounter)
		}
		if st.Installed.Version == 2 && booting() != "v2" {
			fail("v2 confirmed but %s boots", booting())
		}
		if scenario == "revert" && st.Installed.Version != 1 {
			fail("installed %d without a Confirm", st.Installed.Version)
		}
		if !st.RebootNeeded {
			break
		}
		if n == 5 {
			fail("still needs a restart after 5")
		}
	}
	// Finish: the update completes from wherever the cut left it.
	st := d.agent.Status()
	if scenario == "revert" {
		if st.Phase == PhaseTrial && booting() == "v2" {
			return // still within its starts: a later start reverts
		}
		if booting() != "v1" && st.Phase == PhaseIdle {
			fail("idle but v2 boots without a Confirm")
		}
		return
	}
	if st.Phase == PhaseIdle && st.Installed.Version == 2 {
		return
	}
	if st.Phase != PhaseTrial {
		if _, err := d.agent.Update(ctx); err != nil && !errors.Is(err, ErrBusy) {
			fail("redo the update: %v", err)
		}
		if err := d.openOn(atomicfile.OS{}); err != nil {
			fail("reopen: %v", err)
		}
		if _, err := d.agent.Start(ctx); err != nil {
			fail("Start: %v", err)
		}
	}
	if err := d.agent.Confirm(ctx); err != nil {
		fail("Confirm: %v (status %+v)", err, d.agent.Status())
	}
	if st := d.agent.Status(); st.Installed.Version != 2 || booting() != "v2" {
		fail("after finishing: %+v, booting %s", st, booting())
	}
}

// TestAgentAbortPowerFail cuts the power at every file-system operation of
// an Abort of an installed update (switched, not yet booted): after the
// restart the update never goes on by itself; the confirmed release boots.
func TestAgentAbortPowerFail(t *testing.T) {
	repo := newAgentRepo(t)
	base := newAgentDevice(t, repo, nil)
	base.installV(1, 1)
	v1 := image(1, 4096)
	repo.publish(2, 2, image(2, 64<<10))
	base.agent.Close()
	// One process installs, then aborts (its slots were opened before
	// the switch: slot a is the one running).
	run := func(d *agentDevice, fsys atomicfile.FS, abort bool) error {
		if err := d.openOn(fsys); err != nil {
			return err
		}
		if _, err := d.agent.Update(t.Context()); err != nil {
			return err
		}
		if !abort {
			return nil
		}
		return d.agent.Abort(t.Context())
	}
	device := func() *agentDevice {
		d := &agentDevice{t: t, repo: repo, dir: t.TempDir(), clock: base.clock}
		copyTree(t, base.dir, d.dir)
		return d
	}
	install := &crashfs.FS{}
	if err := run(device(), install, false); err != nil {
		t.Fatal(err)
	}
	clean := &crashfs.FS{}
	if err := run(device(), clean, true); err != nil {
		t.Fatalf("clean abort: %v", err)
	}
	from, ops := install.Ops()+1, clean.Ops()
	for i := from; i <= ops; i++ {
		d := device()
		c := &crashfs.FS{FailAt: i}
		if err := run(d, c, true); err == nil || !c.Crashed() {
			t.Fatalf("crash at %d of %d: %v", i, ops, err)
		}
		d.agent.Close()
		d.agent = nil
		for n := 0; ; n++ {
			if err := d.openOn(atomicfile.OS{}); err != nil {
				t.Fatalf("crash at %d: reopen: %v", i, err)
			}
			st, err := d.agent.Start(t.Context())
			if err != nil {
				t.Fatalf("crash at %d: Start: %v", i, err)
			}
			if !st.RebootNeeded {
				break
			}
			if n == 3 {
				t.Fatalf("crash at %d: still needs a restart", i)
			}
		}
		st := d.agent.Status()
		if st.Phase == PhaseTrial && st.Installed.Version == 1 {
			// Cut before the abort was recorded: the abort never
			// happened, the restart booted the update on trial (floor
			// unchanged), and the application's rollback ends it.
			if err := d.agent.Rollback(t.Context()); err != nil {
				t.Fatalf("crash at %d: rollback: %v", i, err)
			}
			if err := d.openOn(atomicfile.OS{}); err != nil {
				t.Fatal(err)
			}
			var err error
			if st, err = d.agent.Start(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(d.running(), v1) || st.Installed.Version != 1 || st.Phase != PhaseIdle {
			t.Fatalf("crash at %d: %+v, running %q", i, st, d.running()[:10])
		}
	}
	t.Logf("abort: power cut at each of its %d file-system operations; the confirmed release boots after every one", ops-from+1)
}
