// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/d2c-iot/d2c/update/slot"
)

// ubootEnv is a U-Boot environment in memory, for the agent over
// slot.UBoot; bootloader actions are simulated by the test.
type ubootEnv struct {
	mu    sync.Mutex
	vars  map[string]string
	boots int // the kernel's boot ID, simulated
}

func (e *ubootEnv) Get(_ context.Context, names ...string) (map[string]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]string{}
	for _, n := range names {
		if v, ok := e.vars[n]; ok {
			out[n] = v
		}
	}
	return out, nil
}

func (e *ubootEnv) Set(_ context.Context, vars map[string]string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	maps.Copy(e.vars, vars)
	return nil
}

// boot simulates U-Boot at power-on: on trial it counts the boot and, over
// the limit, falls back (altbootcmd: the other slot, trial over).
func (e *ubootEnv) boot() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.boots++
	if e.vars["upgrade_available"] != "1" {
		return
	}
	n, _ := strconv.Atoi(e.vars["bootcount"])
	n++
	e.vars["bootcount"] = strconv.Itoa(n)
	if limit, _ := strconv.Atoi(e.vars["bootlimit"]); n > limit {
		e.vars["boot_part"] = slot.Other(e.vars["boot_part"])
		e.vars["upgrade_available"] = "0"
	}
}

// TestAgentUBootFallback runs the agent over U-Boot slots: an update that
// never confirms is reverted by the bootloader (boot count over the limit),
// and the agent recognises the fallback at its next start; an update that
// confirms clears upgrade_available.
func TestAgentUBootFallback(t *testing.T) {
	repo := newAgentRepo(t)
	dir := t.TempDir()
	env := &ubootEnv{vars: map[string]string{"boot_part": "a", "upgrade_available": "0", "bootcount": "0", "bootlimit": "3"}}
	for _, s := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(dir, "part-"+s), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dev := &agentDevice{t: t, repo: repo, dir: dir, clock: &fakeClock{t: repo.now}}
	var slots *slot.UBoot
	open := func() { // power on: U-Boot, then the device software
		env.boot()
		slots = &slot.UBoot{Env: env, Devices: map[string]string{"a": filepath.Join(dir, "part-a"), "b": filepath.Join(dir, "part-b")}}
		if dev.agent != nil {
			dev.agent.Close()
		}
		cfg := dev.config()
		cfg.Slots = slots
		cfg.BootID = func() (string, error) {
			env.mu.Lock()
			defer env.mu.Unlock()
			return strconv.Itoa(env.boots), nil
		}
		a, err := NewAgent(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		dev.agent = a
	}
	open()
	t.Cleanup(func() { dev.agent.Close() })
	ctx := t.Context()
	img := image(1, 64<<10)
	repo.publish(1, 1, img)
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if env.vars["boot_part"] != "b" || env.vars["upgrade_available"] != "1" {
		t.Fatalf("environment after Install: %v", env.vars)
	}
	b, err := os.ReadFile(filepath.Join(dir, "part-b"))
	if err != nil || !bytes.Equal(b, img) {
		t.Fatalf("partition b does not hold the image (%d bytes, %v)", len(b), err)
	}
	// The application restarts without a reboot: slot a still runs
	// although boot_part names b; nothing counts, Confirm is refused.
	{
		slots = &slot.UBoot{Env: env, Devices: map[string]string{"a": filepath.Join(dir, "part-a"), "b": filepath.Join(dir, "part-b")}}
		dev.agent.Close()
		cfg := dev.config()
		cfg.Slots = slots
		cfg.BootID = func() (string, error) { return strconv.Itoa(env.boots), nil }
		a, err := NewAgent(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		dev.agent = a
		st, err := a.Start(ctx)
		if err != nil || !st.RebootNeeded || st.Starts != 0 {
			t.Fatalf("restart without a reboot: %+v, %v", st, err)
		}
		if err := a.Confirm(ctx); !errors.Is(err, ErrNotBooted) {
			t.Fatalf("Confirm without a reboot: %v, want ErrNotBooted", err)
		}
	}
	// Three boots of b without Confirm, then U-Boot falls back to a.
	for i := 1; i <= 4; i++ {
		open()
		st, err := dev.agent.Start(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if i <= 3 && (st.Phase != PhaseTrial || st.Starts != i) {
			t.Fatalf("boot %d: %+v", i, st)
		}
		if i == 4 && (st.Phase != PhaseIdle || st.Installed.Version != 0 || st.Last == nil || st.Last.Event != "reverted") {
			t.Fatalf("boot after the fallback: %+v", st)
		}
	}
	if booted, _ := slots.Booted(ctx); booted != "a" {
		t.Fatalf("booted %s after the fallback, want a", booted)
	}
	// A board whose altbootcmd leaves upgrade_available set would count
	// boots of the good slot and flip back: the agent clears it.
	env.mu.Lock()
	env.vars["upgrade_available"], env.vars["bootcount"] = "1", "0"
	env.mu.Unlock()
	open()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if env.vars["upgrade_available"] != "0" || env.vars["boot_part"] != "a" {
		t.Fatalf("environment after Start: %v, want a confirmed, not on trial", env.vars)
	}
	// Again, and this time the health check passes.
	repo.publish(2, 1, image(2, 64<<10))
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatal(ok, err)
	}
	open()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dev.agent.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	if env.vars["upgrade_available"] != "0" || env.vars["boot_part"] != "b" {
		t.Fatalf("environment after Confirm: %v", env.vars)
	}
	open()
	if st, err := dev.agent.Start(ctx); err != nil || st.Installed.Version != 2 || st.Phase != PhaseIdle {
		t.Fatalf("after Confirm and a reboot: %+v, %v", st, err)
	}
}
