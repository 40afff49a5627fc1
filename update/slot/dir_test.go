// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package slot_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/atomicfile/crashfs"
	"github.com/d2c-iot/d2c/update/internal/slothook"
	"github.com/d2c-iot/d2c/update/slot"
)

// openDirSlots is slot.OpenDirSlots on fsys (nil: the operating system).
func openDirSlots(fsys atomicfile.FS, dir string) (*slot.DirSlots, error) {
	if fsys == nil {
		return slot.OpenDirSlots(dir)
	}
	s, err := slothook.OpenDirSlots(fsys, dir)
	if err != nil {
		return nil, err
	}
	return s.(*slot.DirSlots), nil
}

func initDir(t *testing.T, image string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "slots")
	if err := slot.InitDirSlots(dir, strings.NewReader(image)); err != nil {
		t.Fatal(err)
	}
	return dir
}

func openDir(t *testing.T, fsys atomicfile.FS, dir string) *slot.DirSlots {
	t.Helper()
	s, err := openDirSlots(fsys, dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func wantNext(t *testing.T, s slot.Slots, want string, wantTrial bool) {
	t.Helper()
	got, trial, err := s.Next(context.Background())
	if err != nil || got != want || trial != wantTrial {
		t.Fatalf("Next = %q, %v, %v; want %q, %v", got, trial, err, want, wantTrial)
	}
}

func wantBooted(t *testing.T, s slot.Slots, want string) {
	t.Helper()
	got, err := s.Booted(context.Background())
	if err != nil || got != want {
		t.Fatalf("Booted = %q, %v; want %q", got, err, want)
	}
}

func readSlot(t *testing.T, s slot.Slots, name string) string {
	t.Helper()
	r, err := s.Read(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeImage(t *testing.T, s slot.Slots, name, content string) {
	t.Helper()
	img, err := s.Open(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := img.Reset(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(img, content); err != nil {
		t.Fatal(err)
	}
	if err := img.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestDirSlotsUpdateConfirm walks an update: resume a partial write, switch
// on trial, restart, confirm.
func TestDirSlotsUpdateConfirm(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, "v1")
	s := openDir(t, nil, dir)
	wantBooted(t, s, "a")
	wantNext(t, s, "a", false)
	if got := readSlot(t, s, "a"); got != "v1" {
		t.Fatalf("slot a holds %q", got)
	}
	if _, err := s.Open(ctx, "a"); !errors.Is(err, slot.ErrActiveSlot) {
		t.Fatalf("Open(booted) = %v, want ErrActiveSlot", err)
	}

	// A first attempt writes part of the image and is interrupted.
	img, err := s.Open(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if img.Offset() != 0 {
		t.Fatalf("fresh slot b: offset %d", img.Offset())
	}
	io.WriteString(img, "version ")
	img.Sync()
	img.Close()

	// The second resumes after the bytes already there.
	img, err = s.Open(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if img.Offset() != 8 {
		t.Fatalf("resumed offset %d, want 8", img.Offset())
	}
	if b, err := io.ReadAll(img.Existing()); err != nil || string(b) != "version " {
		t.Fatalf("Existing = %q, %v", b, err)
	}
	io.WriteString(img, "two")
	if img.Offset() != 11 {
		t.Fatalf("offset %d after write, want 11", img.Offset())
	}
	if err := img.Sync(); err != nil {
		t.Fatal(err)
	}
	img.Close()
	if got := readSlot(t, s, "b"); got != "version two" {
		t.Fatalf("slot b holds %q", got)
	}
	if st, err := os.Stat(filepath.Join(dir, "b", "image")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("image mode %v, %v; want 0600", st.Mode().Perm(), err)
	}

	if err := s.Switch(ctx, "b", true); err != nil {
		t.Fatal(err)
	}
	wantBooted(t, s, "a")
	wantNext(t, s, "b", true)
	if _, err := s.Open(ctx, "b"); !errors.Is(err, slot.ErrActiveSlot) {
		t.Fatalf("Open(next) = %v, want ErrActiveSlot", err)
	}
	if err := s.Confirm(ctx); !errors.Is(err, slot.ErrSwitchPending) {
		t.Fatalf("Confirm before restart = %v, want ErrSwitchPending", err)
	}

	// Restart into b, on trial; the health check passes.
	s = openDir(t, nil, dir)
	wantBooted(t, s, "b")
	wantNext(t, s, "b", true)
	if err := s.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	wantNext(t, s, "b", false)
	if err := s.Confirm(ctx); err != nil {
		t.Fatalf("second Confirm: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*", ".*")); len(m) != 0 {
		t.Fatalf("temporaries left: %v", m)
	}
}

// TestDirSlotsRevert: a trial that fails its health check goes back to the
// previous slot, confirmed.
func TestDirSlotsRevert(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, "v1")
	s := openDir(t, nil, dir)
	writeImage(t, s, "b", "v2")
	if err := s.Switch(ctx, "b", true); err != nil {
		t.Fatal(err)
	}
	s = openDir(t, nil, dir)
	wantBooted(t, s, "b")
	wantNext(t, s, "b", true)
	// The agent counted too many starts without a Confirm.
	if err := s.Switch(ctx, slot.Other("b"), false); err != nil {
		t.Fatal(err)
	}
	wantNext(t, s, "a", false)
	s = openDir(t, nil, dir)
	wantBooted(t, s, "a")
	wantNext(t, s, "a", false)
	if got := readSlot(t, s, "a"); got != "v1" {
		t.Fatalf("slot a holds %q", got)
	}

	// b's stale trial marker does not leak into a later switch.
	writeImage(t, s, "b", "v3")
	if err := s.Switch(ctx, "b", false); err != nil {
		t.Fatal(err)
	}
	wantNext(t, s, "b", false)
}

func TestDirSlotsReset(t *testing.T) {
	ctx := context.Background()
	s := openDir(t, nil, initDir(t, "v1"))
	img, err := s.Open(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	io.WriteString(img, "garbage")
	if err := img.Reset(); err != nil {
		t.Fatal(err)
	}
	if img.Offset() != 0 {
		t.Fatalf("offset %d after Reset", img.Offset())
	}
	io.WriteString(img, "ok")
	img.Sync()
	if got := readSlot(t, s, "b"); got != "ok" {
		t.Fatalf("slot b holds %q", got)
	}
	if b, _ := io.ReadAll(img.Existing()); string(b) != "ok" {
		t.Fatalf("Existing = %q", b)
	}
}

func TestDirSlotsUnknownSlot(t *testing.T) {
	ctx := context.Background()
	s := openDir(t, nil, initDir(t, "v1"))
	for _, name := range []string{"", "c", "A", "../a", "a/"} {
		if _, err := s.Open(ctx, name); !errors.Is(err, slot.ErrUnknownSlot) {
			t.Errorf("Open(%q) = %v", name, err)
		}
		if _, err := s.Read(ctx, name); !errors.Is(err, slot.ErrUnknownSlot) {
			t.Errorf("Read(%q) = %v", name, err)
		}
		if err := s.Switch(ctx, name, false); !errors.Is(err, slot.ErrUnknownSlot) {
			t.Errorf("Switch(%q) = %v", name, err)
		}
		if o := slot.Other(name); o != "" {
			t.Errorf("Other(%q) = %q", name, o)
		}
	}
	if slot.Other("a") != "b" || slot.Other("b") != "a" {
		t.Error("Other does not pair a and b")
	}
}

func TestDirSlotsSwitchNeedsImage(t *testing.T) {
	s := openDir(t, nil, initDir(t, "v1"))
	if err := s.Switch(context.Background(), "b", true); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Switch to an empty slot = %v, want ErrNotExist", err)
	}
	wantNext(t, s, "a", false)
}

func TestDirSlotsInitAndOpenErrors(t *testing.T) {
	dir := initDir(t, "v1")
	if err := slot.InitDirSlots(dir, nil); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("InitDirSlots twice = %v, want ErrExist", err)
	}
	if _, err := slot.OpenDirSlots(t.TempDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenDirSlots on an empty dir = %v, want ErrNotExist", err)
	}
	link := filepath.Join(dir, "current")
	os.Remove(link)
	os.Symlink("../etc", link)
	if _, err := slot.OpenDirSlots(dir); !errors.Is(err, slot.ErrBadState) {
		t.Fatalf("current -> ../etc: %v, want ErrBadState", err)
	}

	// A nil initial image is an empty slot a.
	s := openDir(t, nil, initDir(t, ""))
	if got := readSlot(t, s, "a"); got != "" {
		t.Fatalf("slot a holds %q", got)
	}
}

func TestDirSlotsContext(t *testing.T) {
	s := openDir(t, nil, initDir(t, "v1"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Open(ctx, "b"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open with a cancelled context = %v", err)
	}
	if err := s.Switch(ctx, "b", true); !errors.Is(err, context.Canceled) {
		t.Fatalf("Switch with a cancelled context = %v", err)
	}
}

// crashUpdate is the whole device-side sequence on directory slots: resume
// writing slot b, fsync, switch on trial, restart, confirm.
func crashUpdate(fsys atomicfile.FS, dir string, image []byte) error {
	ctx := context.Background()
	s, err := openDirSlots(fsys, dir)
	if err != nil {
		return err
	}
	img, err := s.Open(ctx, "b")
	if err != nil {
		return err
	}
	defer img.Close()
	rest := image[img.Offset():]
	for len(rest) > 0 { // several writes, so a crash can land between them
		n := min(len(rest), len(image)/4+1)
		if _, err := img.Write(rest[:n]); err != nil {
			return err
		}
		rest = rest[n:]
	}
	if err := img.Sync(); err != nil {
		return err
	}
	if err := img.Close(); err != nil {
		return err
	}
	if err := s.Switch(ctx, "b", true); err != nil {
		return err
	}
	s, err = openDirSlots(fsys, dir) // the application restarts
	if err != nil {
		return err
	}
	return s.Confirm(ctx)
}

// TestDirSlotsCrashAtEveryStep cuts power at every file-system operation of
// an update (resume write, fsync, switch on trial, restart, confirm) and
// checks what a restarted device finds: current names a or b, that slot's
// image is complete (the old or the new one, never partial), the trial state
// decodes, a partial slot b is a prefix of the new image, and the update
// can be finished from there.
func TestDirSlotsCrashAtEveryStep(t *testing.T) {
	oldImg := bytes.Repeat([]byte("old "), 1000)
	newImg := bytes.Repeat([]byte("new image "), 3000)
	prepare := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), "slots")
		if err := slot.InitDirSlots(dir, bytes.NewReader(oldImg)); err != nil {
			t.Fatal(err)
		}
		// An earlier attempt left the first third of the new image.
		if err := os.WriteFile(filepath.Join(dir, "b", "image"), newImg[:len(newImg)/3], 0o600); err != nil {
			t.Fatal(err)
		}
		return dir
	}

	count := &crashfs.FS{}
	if err := crashUpdate(count, prepare(t), newImg); err != nil {
		t.Fatal(err)
	}
	total := count.Ops()
	outcomes := map[string]int{}
	for i := 1; i <= total; i++ {
		dir := prepare(t)
		cfs := &crashfs.FS{FailAt: i}
		if err := crashUpdate(cfs, dir, newImg); !errors.Is(err, crashfs.ErrCrash) {
			t.Fatalf("crash at %d/%d: err %v, want ErrCrash", i, total, err)
		}
		s, err := slot.OpenDirSlots(dir)
		if err != nil {
			t.Fatalf("crash at %d: reopen: %v", i, err)
		}
		next, trial, err := s.Next(context.Background())
		if err != nil {
			t.Fatalf("crash at %d: Next: %v", i, err)
		}
		want := oldImg
		if next == "b" {
			want = newImg
		} else if trial {
			t.Fatalf("crash at %d: the old slot a is on trial", i)
		}
		got, _ := os.ReadFile(filepath.Join(dir, next, "image"))
		if !bytes.Equal(got, want) {
			t.Fatalf("crash at %d: current -> %s holds %d bytes, not its complete image", i, next, len(got))
		}
		outcome := next
		if trial {
			outcome += "+trial"
		}
		outcomes[outcome]++

		// Finish the update from wherever the crash left it.
		if next == "a" {
			partial, _ := os.ReadFile(filepath.Join(dir, "b", "image"))
			if len(partial) < len(newImg)/3 || !bytes.HasPrefix(newImg, partial) {
				t.Fatalf("crash at %d: slot b holds %d bytes, not a prefix of the new image", i, len(partial))
			}
			if err := crashUpdate(nil, dir, newImg); err != nil {
				t.Fatalf("crash at %d: finishing: %v", i, err)
			}
		} else if err := s.Confirm(context.Background()); err != nil {
			t.Fatalf("crash at %d: confirming: %v", i, err)
		}
		s = openDir(t, nil, dir)
		wantBooted(t, s, "b")
		wantNext(t, s, "b", false)
		if got, _ := os.ReadFile(filepath.Join(dir, "b", "image")); !bytes.Equal(got, newImg) {
			t.Fatalf("crash at %d: finished slot b holds %d bytes", i, len(got))
		}
	}
	t.Logf("%d crash points covered: outcomes %v", total, outcomes)
	if outcomes["a"] == 0 || outcomes["b+trial"] == 0 || outcomes["b"] == 0 {
		t.Errorf("outcomes %v: want old, trial and confirmed states all reached", outcomes)
	}
}

// TestInitDirSlotsCrashAtEveryStep: a crash while initialising leaves no
// current link (InitDirSlots runs again) or a complete slot a.
func TestInitDirSlotsCrashAtEveryStep(t *testing.T) {
	image := bytes.Repeat([]byte("factory "), 1000)
	count := &crashfs.FS{}
	if err := slothook.InitDirSlots(count, filepath.Join(t.TempDir(), "s"), bytes.NewReader(image)); err != nil {
		t.Fatal(err)
	}
	total := count.Ops()
	for i := 1; i <= total; i++ {
		dir := filepath.Join(t.TempDir(), "s")
		if err := slothook.InitDirSlots(&crashfs.FS{FailAt: i}, dir, bytes.NewReader(image)); !errors.Is(err, crashfs.ErrCrash) {
			t.Fatalf("crash at %d: %v", i, err)
		}
		if _, err := os.Lstat(filepath.Join(dir, "current")); errors.Is(err, fs.ErrNotExist) {
			if err := slot.InitDirSlots(dir, bytes.NewReader(image)); err != nil {
				t.Fatalf("crash at %d: init again: %v", i, err)
			}
		}
		s := openDir(t, nil, dir)
		wantNext(t, s, "a", false)
		if got := readSlot(t, s, "a"); got != string(image) {
			t.Fatalf("crash at %d: slot a holds %d bytes", i, len(got))
		}
	}
	t.Logf("%d crash points covered", total)
}
