// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package slot_test

import (
	"context"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/d2c-iot/d2c/update/slot"
)

// memEnv is an in-memory U-Boot environment that counts Set calls.
type memEnv struct {
	vars map[string]string
	sets int
}

func (m *memEnv) Get(_ context.Context, names ...string) (map[string]string, error) {
	out := map[string]string{}
	for _, n := range names {
		if v, ok := m.vars[n]; ok {
			out[n] = v
		}
	}
	return out, nil
}

func (m *memEnv) Set(_ context.Context, vars map[string]string) error {
	m.sets++
	for n, v := range vars {
		if v == "" {
			delete(m.vars, n)
		} else {
			m.vars[n] = v
		}
	}
	return nil
}

// bootUBoot plays U-Boot's boot count logic (CONFIG_BOOTCOUNT_ENV) with an
// altbootcmd that flips boot_part and ends the trial.
func bootUBoot(env map[string]string) {
	if env["upgrade_available"] != "1" {
		return
	}
	n, _ := strconv.Atoi(env["bootcount"])
	limit, _ := strconv.Atoi(env["bootlimit"])
	n++
	env["bootcount"] = strconv.Itoa(n)
	if n > limit {
		env["boot_part"] = slot.Other(env["boot_part"])
		env["upgrade_available"], env["bootcount"] = "0", "0"
	}
}

func newUBoot(t *testing.T, env slot.EnvStore) *slot.UBoot {
	dir := t.TempDir()
	devs := map[string]string{}
	for _, s := range []string{"a", "b"} {
		devs[s] = filepath.Join(dir, "dev-"+s)
		if _, err := os.Stat(devs[s]); err != nil {
			if err := os.WriteFile(devs[s], nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	return &slot.UBoot{Env: env, Devices: devs, ProgressDir: dir}
}

func TestUBootTrialConfirm(t *testing.T) {
	ctx := context.Background()
	env := &memEnv{vars: map[string]string{"boot_part": "a", "bootlimit": "3"}}
	u := newUBoot(t, env)
	wantBooted(t, u, "a")
	wantNext(t, u, "a", false)
	if _, err := u.Open(ctx, "a"); !errors.Is(err, slot.ErrActiveSlot) {
		t.Fatalf("Open(booted) = %v", err)
	}
	writeImage(t, u, "b", "v2")
	if got := readSlot(t, u, "b"); got != "v2" {
		t.Fatalf("slot b holds %q", got)
	}
	env.sets = 0
	if err := u.Switch(ctx, "b", true); err != nil {
		t.Fatal(err)
	}
	if env.sets != 1 {
		t.Fatalf("Switch made %d Set calls, want 1 (atomic)", env.sets)
	}
	want := map[string]string{"boot_part": "b", "upgrade_available": "1", "bootcount": "0", "bootlimit": "3"}
	if !maps.Equal(env.vars, want) {
		t.Fatalf("environment after Switch %v, want %v", env.vars, want)
	}
	wantBooted(t, u, "a") // still running a
	wantNext(t, u, "b", true)
	if err := u.Confirm(ctx); !errors.Is(err, slot.ErrSwitchPending) {
		t.Fatalf("Confirm before the reboot = %v, want ErrSwitchPending", err)
	}

	bootUBoot(env.vars)
	u = newUBoot(t, env)
	wantBooted(t, u, "b")
	wantNext(t, u, "b", true)
	if err := u.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	wantNext(t, u, "b", false)
	if env.vars["bootcount"] != "0" {
		t.Fatalf("bootcount %q after Confirm", env.vars["bootcount"])
	}
}

// TestUBootFallback: a trial never confirmed exhausts bootlimit and U-Boot
// falls back; a Confirm from software that booted over the limit is
// refused.
func TestUBootFallback(t *testing.T) {
	ctx := context.Background()
	env := &memEnv{vars: map[string]string{"boot_part": "a", "bootlimit": "2"}}
	u := newUBoot(t, env)
	writeImage(t, u, "b", "v2")
	if err := u.Switch(ctx, "b", true); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		bootUBoot(env.vars)
	}
	u = newUBoot(t, env)
	wantBooted(t, u, "a")
	wantNext(t, u, "a", false)

	// An altbootcmd that does not end the trial leaves the count over the
	// limit: confirming would vouch for the failed slot.
	env.vars = map[string]string{"boot_part": "b", "upgrade_available": "1", "bootcount": "3", "bootlimit": "2"}
	u = newUBoot(t, env)
	st, err := u.State(ctx)
	if err != nil || !st.FellBack() {
		t.Fatalf("State = %+v, %v; want FellBack", st, err)
	}
	if err := u.Confirm(ctx); !errors.Is(err, slot.ErrBootLimit) {
		t.Fatalf("Confirm over the limit = %v, want ErrBootLimit", err)
	}
}

func TestUBootValuesAndVarNames(t *testing.T) {
	ctx := context.Background()
	env := &memEnv{vars: map[string]string{"mender_boot_part": "2"}}
	u := newUBoot(t, env)
	u.Values = map[string]string{"a": "2", "b": "3"}
	u.BootPartVar, u.UpgradeAvailableVar = "mender_boot_part", "upgrade"
	wantBooted(t, u, "a")
	writeImage(t, u, "b", "v2")
	if err := u.Switch(ctx, "b", true); err != nil {
		t.Fatal(err)
	}
	if env.vars["mender_boot_part"] != "3" || env.vars["upgrade"] != "1" {
		t.Fatalf("environment %v", env.vars)
	}
}

func TestUBootBadState(t *testing.T) {
	for name, vars := range map[string]map[string]string{
		"no boot_part":      {},
		"unknown boot_part": {"boot_part": "c"},
		"bad flag":          {"boot_part": "a", "upgrade_available": "yes"},
		"bad count":         {"boot_part": "a", "bootcount": "-1"},
	} {
		u := newUBoot(t, &memEnv{vars: vars})
		if _, _, err := u.Next(context.Background()); !errors.Is(err, slot.ErrBadState) {
			t.Errorf("%s: Next = %v, want ErrBadState", name, err)
		}
	}
}

// TestUBootResume: with ProgressDir, Open resumes from the last synced
// offset; Switch forgets it.
func TestUBootResume(t *testing.T) {
	ctx := context.Background()
	env := &memEnv{vars: map[string]string{"boot_part": "a"}}
	u := newUBoot(t, env)
	img, err := u.Open(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(img, "synced ")
	img.Sync()
	io.WriteString(img, "lost") // not synced: a power cut may lose it
	img.Close()

	img, err = u.Open(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if img.Offset() != 7 {
		t.Fatalf("resumed at %d, want 7", img.Offset())
	}
	if b, _ := io.ReadAll(img.Existing()); string(b) != "synced " {
		t.Fatalf("Existing = %q", b)
	}
	io.WriteString(img, "rest")
	img.Sync()
	img.Close()
	if got := readSlot(t, u, "b"); got != "synced rest" {
		t.Fatalf("slot b holds %q", got)
	}
	if err := u.Switch(ctx, "b", false); err != nil {
		t.Fatal(err)
	}
	if err := u.Switch(ctx, "a", false); err != nil { // back, so b is writable
		t.Fatal(err)
	}
	img, err = u.Open(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Offset() != 0 {
		t.Fatalf("after Switch, Open resumes at %d, want 0", img.Offset())
	}
}
