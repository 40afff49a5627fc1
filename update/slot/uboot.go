// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package slot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// EnvStore reads and writes bootloader environment variables.
type EnvStore interface {
	// Get returns the values of names; a variable that is not set is
	// absent from the map.
	Get(ctx context.Context, names ...string) (map[string]string, error)
	// Set sets all of vars in one atomic step; an empty value deletes the
	// variable.
	Set(ctx context.Context, vars map[string]string) error
}

// UBoot are A/B slots chosen by a U-Boot environment, with U-Boot's boot
// count limit as the trial mechanism:
//
//   - BootPartVar (boot_part) names the slot U-Boot boots;
//   - UpgradeAvailableVar (upgrade_available) = 1 makes U-Boot count boots
//     in BootCountVar (bootcount, CONFIG_BOOTCOUNT_ENV) and, past
//     BootLimitVar (bootlimit), run altbootcmd instead of bootcmd.
//
// UBoot assumes the board's altbootcmd flips boot_part to the other slot
// and, typically, clears upgrade_available and bootcount: that is the
// fallback. Booted therefore trusts boot_part as the running slot.
//
// [UBoot.Switch] writes boot_part, upgrade_available and bootcount in one
// [EnvStore.Set] (one `fw_setenv -s` script, which fw_setenv applies
// atomically thanks to the redundant environment copy).
//
// The zero value is not usable: Env and Devices must be set. A UBoot must
// be used through one pointer for the life of the process, since the
// booted slot is read once.
type UBoot struct {
	// Env is the bootloader environment, usually [FWEnv]. Required.
	Env EnvStore
	// Devices maps "a" and "b" to the block device (or file) holding each
	// slot's image, e.g. /dev/mmcblk0p2. Required for Open and Read.
	Devices map[string]string
	// Values maps "a" and "b" to the boot_part value that selects each
	// slot, e.g. "2" and "3". Default: "a" and "b".
	Values map[string]string
	// ProgressDir, if set, is a directory where Open records how many
	// bytes of each slot's image are durable (file <slot>.progress), so
	// that an interrupted download resumes. Default "": no resume, Open
	// starts at byte 0.
	ProgressDir string

	// BootPartVar names the variable selecting the slot. Default
	// "boot_part".
	BootPartVar string
	// UpgradeAvailableVar names the trial flag. Default
	// "upgrade_available".
	UpgradeAvailableVar string
	// BootCountVar names the boot counter. Default "bootcount".
	BootCountVar string
	// BootLimitVar names the boot count limit. Default "bootlimit".
	BootLimitVar string

	mu     sync.Mutex
	booted string
}

var _ Slots = (*UBoot)(nil)

// UBootState is the decoded U-Boot environment of a [UBoot].
type UBootState struct {
	// Slot is the slot boot_part selects.
	Slot string
	// UpgradeAvailable reports upgrade_available = 1: Slot boots on trial.
	UpgradeAvailable bool
	// BootCount and BootLimit are bootcount and bootlimit (0 if unset).
	BootCount, BootLimit int
}

// FellBack reports whether U-Boot counted more trial boots than its limit,
// so it runs (or ran) altbootcmd: the trial failed.
func (s UBootState) FellBack() bool {
	return s.UpgradeAvailable && s.BootLimit > 0 && s.BootCount > s.BootLimit
}

func (u *UBoot) vars() (part, upgrade, count, limit string) {
	part, upgrade, count, limit = u.BootPartVar, u.UpgradeAvailableVar, u.BootCountVar, u.BootLimitVar
	if part == "" {
		part = "boot_part"
	}
	if upgrade == "" {
		upgrade = "upgrade_available"
	}
	if count == "" {
		count = "bootcount"
	}
	if limit == "" {
		limit = "bootlimit"
	}
	return
}

func (u *UBoot) value(slot string) string {
	if v, ok := u.Values[slot]; ok {
		return v
	}
	return slot
}

// State reads and decodes the environment.
func (u *UBoot) State(ctx context.Context) (UBootState, error) {
	if u.Env == nil {
		return UBootState{}, errors.New("slot: UBoot.Env is not set")
	}
	part, upgrade, count, limit := u.vars()
	env, err := u.Env.Get(ctx, part, upgrade, count, limit)
	if err != nil {
		return UBootState{}, fmt.Errorf("slot: read U-Boot environment: %w", err)
	}
	var st UBootState
	v, ok := env[part]
	if !ok {
		return UBootState{}, fmt.Errorf("%w: %s is not set", ErrBadState, part)
	}
	for _, s := range []string{A, B} {
		if v == u.value(s) {
			st.Slot = s
		}
	}
	if st.Slot == "" || u.value(A) == u.value(B) {
		return UBootState{}, fmt.Errorf("%w: %s=%q selects neither slot", ErrBadState, part, v)
	}
	switch env[upgrade] {
	case "", "0":
	case "1":
		st.UpgradeAvailable = true
	default:
		return UBootState{}, fmt.Errorf("%w: %s=%q, want 0 or 1", ErrBadState, upgrade, env[upgrade])
	}
	for _, c := range []struct {
		name string
		dst  *int
	}{{count, &st.BootCount}, {limit, &st.BootLimit}} {
		s, ok := env[c.name]
		if !ok || s == "" {
			continue
		}
		n, err := strconv.ParseUint(s, 10, 31)
		if err != nil {
			return UBootState{}, fmt.Errorf("%w: %s=%q is not a count", ErrBadState, c.name, s)
		}
		*c.dst = int(n)
	}
	return st, nil
}

// Booted implements [Slots]: the slot boot_part named at the first call of
// any method on u (the process's start), assuming altbootcmd flips
// boot_part when it falls back.
func (u *UBoot) Booted(ctx context.Context) (string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.booted == "" {
		st, err := u.State(ctx)
		if err != nil {
			return "", err
		}
		u.booted = st.Slot
	}
	return u.booted, nil
}

// Next implements [Slots]: boot_part, on trial when upgrade_available is 1.
// Check [UBoot.State] for a trial that already exhausted its boot limit.
func (u *UBoot) Next(ctx context.Context) (string, bool, error) {
	if _, err := u.Booted(ctx); err != nil {
		return "", false, err
	}
	st, err := u.State(ctx)
	if err != nil {
		return "", false, err
	}
	return st.Slot, st.UpgradeAvailable, nil
}

func (u *UBoot) device(slot string) (string, error) {
	if err := check(slot); err != nil {
		return "", err
	}
	dev := u.Devices[slot]
	if dev == "" {
		return "", fmt.Errorf("slot: no device configured for slot %s", slot)
	}
	return dev, nil
}

func (u *UBoot) progressPath(slot string) string {
	if u.ProgressDir == "" {
		return ""
	}
	return filepath.Join(u.ProgressDir, slot+".progress")
}

// Open implements [Slots]. It writes the device from the offset recorded
// in ProgressDir (0 without one); a regular file is truncated to that
// offset.
func (u *UBoot) Open(ctx context.Context, slot string) (Image, error) {
	dev, err := u.device(slot)
	if err != nil {
		return nil, err
	}
	booted, err := u.Booted(ctx)
	if err != nil {
		return nil, err
	}
	st, err := u.State(ctx)
	if err != nil {
		return nil, err
	}
	if slot == booted || slot == st.Slot {
		return nil, fmt.Errorf("%w: open %s (booted %s, next %s)", ErrActiveSlot, slot, booted, st.Slot)
	}
	img := &devImage{fileImage: fileImage{path: dev}, progress: u.progressPath(slot)}
	if img.progress != "" {
		b, err := atomicfile.ReadFile(img.progress, 32)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("slot: open %s: read progress: %w", slot, err)
		default:
			n, perr := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			if perr == nil && n >= 0 {
				img.off = n // a corrupt record means starting over
			}
		}
	}
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("slot: open %s: %w", slot, err)
	}
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		if img.off > fi.Size() {
			img.off = fi.Size()
		}
		if err := f.Truncate(img.off); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("slot: open %s: %w", slot, err)
		}
		img.regular = true
	}
	if _, err := f.Seek(img.off, io.SeekStart); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("slot: open %s: %w", slot, err)
	}
	img.f = f
	return img, nil
}

// Read implements [Slots]: the whole device; read only the image's length.
func (u *UBoot) Read(ctx context.Context, slot string) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dev, err := u.device(slot)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(dev)
	if err != nil {
		return nil, fmt.Errorf("slot: read %s: %w", slot, err)
	}
	return f, nil
}

// Switch implements [Slots]: one Set of boot_part = slot, upgrade_available
// = 1 (trial) or 0, bootcount = 0. It forgets slot's recorded progress
// first, so that the next Open of slot starts over.
func (u *UBoot) Switch(ctx context.Context, slot string, trial bool) error {
	if err := check(slot); err != nil {
		return err
	}
	if _, err := u.Booted(ctx); err != nil {
		return err
	}
	if p := u.progressPath(slot); p != "" {
		if err := atomicfile.Remove(nil, p); err != nil {
			return fmt.Errorf("slot: switch to %s: %w", slot, err)
		}
	}
	part, upgrade, count, _ := u.vars()
	flag := "0"
	if trial {
		flag = "1"
	}
	if err := u.Env.Set(ctx, map[string]string{part: u.value(slot), upgrade: flag, count: "0"}); err != nil {
		return fmt.Errorf("slot: switch to %s: %w", slot, err)
	}
	return nil
}

// Confirm implements [Slots]: upgrade_available = 0, bootcount = 0. It
// refuses with [ErrBootLimit] a trial whose boot count is over the limit,
// and with [ErrSwitchPending] when boot_part no longer names the booted
// slot.
func (u *UBoot) Confirm(ctx context.Context) error {
	booted, err := u.Booted(ctx)
	if err != nil {
		return err
	}
	st, err := u.State(ctx)
	if err != nil {
		return err
	}
	if st.Slot != booted {
		return fmt.Errorf("%w: confirm %s: %s boots next", ErrSwitchPending, booted, st.Slot)
	}
	if st.FellBack() {
		return fmt.Errorf("%w: confirm %s: bootcount %d > bootlimit %d", ErrBootLimit, booted, st.BootCount, st.BootLimit)
	}
	_, upgrade, count, _ := u.vars()
	if err := u.Env.Set(ctx, map[string]string{upgrade: "0", count: "0"}); err != nil {
		return fmt.Errorf("slot: confirm %s: %w", booted, err)
	}
	return nil
}

// devImage is a slot image on a block device (or a regular file), with its
// durable length recorded beside it when progress is set. Its f is always
// an *os.File.
type devImage struct {
	fileImage
	progress string
	regular  bool
}

var _ Image = (*devImage)(nil)

// Reset implements [Image]: it truncates a regular file and writes from 0.
func (m *devImage) Reset() error {
	f, ok := m.f.(*os.File)
	if !ok { // closed
		return fs.ErrClosed
	}
	if m.regular {
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("slot: reset image: %w", err)
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("slot: reset image: %w", err)
	}
	m.off = 0
	return m.Sync()
}

// Sync fsyncs the device, then records the offset as durable.
func (m *devImage) Sync() error {
	if err := m.fileImage.Sync(); err != nil {
		return err
	}
	if m.progress != "" {
		if err := atomicfile.WriteFile(nil, m.progress, []byte(strconv.FormatInt(m.off, 10)+"\n")); err != nil {
			return fmt.Errorf("slot: record progress: %w", err)
		}
	}
	return nil
}
