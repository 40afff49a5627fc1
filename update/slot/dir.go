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

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/update/internal/slothook"
)

// Names inside a [DirSlots] directory.
const (
	currentLink = "current" // symbolic link to "a" or "b": the slot that boots next
	imageFile   = "image"   // the image inside a slot directory
	trialFile   = "trial"   // inside a slot directory: that slot boots on trial
)

// DirSlots are A/B slots kept as two directories of one directory:
//
//	dir/a/image     slot a's image (mode 0600)
//	dir/b/image     slot b's image
//	dir/current  -> a   the slot that starts next (a relative symbolic link)
//	dir/b/trial     present: b starts on trial when current names it
//
// The application starts from dir/current/image, and "booting" is the
// application (re)starting: [OpenDirSlots] at start records the slot
// current names then as the booted slot. Trial fallback is the agent's job
// (it counts starts); DirSlots only records the trial state.
//
// Crash safety: [DirSlots.Switch] first settles the trial marker of the
// slot it switches to, which does not yet boot, and then renames a new link
// over current ([atomicfile.SwitchSymlink]); the rename is the one commit
// point. Images are written only in the slot that neither runs nor boots
// next, and Switch fsyncs an image before naming it. A power cut at any
// file-system operation therefore leaves current naming a complete image
// and the trial state decodable.
type DirSlots struct {
	dir    string
	fsys   atomicfile.FS
	booted string
}

var _ Slots = (*DirSlots)(nil)

// InitDirSlots creates directory slots in dir (created 0700 if missing):
// slot a holds image (nil means an empty image), slot b is empty, and
// current names a, not on trial. It refuses a dir that already has a
// current link (an error wrapping [fs.ErrExist]). A crash before it returns
// leaves dir without the link, and InitDirSlots can run again.
func InitDirSlots(dir string, image io.Reader) error {
	return initDirSlots(atomicfile.OS{}, dir, image)
}

func init() {
	slothook.InitDirSlots = initDirSlots
	slothook.OpenDirSlots = func(fsys atomicfile.FS, dir string) (any, error) {
		s, err := openDirSlots(fsys, dir)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return s, nil
	}
	slothook.OpenImageFile = func(fsys atomicfile.FS, path string) (any, error) {
		img := &dirImage{fileImage: fileImage{path: path}, fsys: fsys, dir: filepath.Dir(path)}
		if err := img.open(0); err != nil {
			return nil, err // not a typed nil in the interface
		}
		return Image(img), nil
	}
}

// initDirSlots is [InitDirSlots] on fsys: the operating system's file
// system in production, a crash simulation in tests (through slothook).
func initDirSlots(fsys atomicfile.FS, dir string, image io.Reader) error {
	link := filepath.Join(dir, currentLink)
	if _, err := os.Lstat(link); err == nil {
		return fmt.Errorf("slot: init %s: %w", dir, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("slot: init %s: %w", dir, err)
	}
	if err := atomicfile.MkdirPrivate(fsys, dir); err != nil {
		return fmt.Errorf("slot: init: %w", err)
	}
	for _, s := range []string{A, B} {
		if err := fsys.MkdirAll(filepath.Join(dir, s), 0o700); err != nil {
			return fmt.Errorf("slot: init: %w", err)
		}
	}
	if err := fsys.SyncDir(dir); err != nil {
		return fmt.Errorf("slot: init: fsync %s: %w", dir, err)
	}
	if err := atomicfile.Remove(fsys, filepath.Join(dir, A, trialFile)); err != nil {
		return fmt.Errorf("slot: init: %w", err)
	}
	path := filepath.Join(dir, A, imageFile)
	f, err := fsys.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("slot: init: %w", err)
	}
	if image != nil {
		if _, err := io.Copy(f, image); err != nil {
			_ = f.Close()
			return fmt.Errorf("slot: init: write %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("slot: init: fsync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("slot: init: close %s: %w", path, err)
	}
	if err := fsys.SyncDir(filepath.Join(dir, A)); err != nil {
		return fmt.Errorf("slot: init: fsync %s: %w", filepath.Join(dir, A), err)
	}
	if err := atomicfile.SwitchSymlink(fsys, A, link); err != nil {
		return fmt.Errorf("slot: init: %w", err)
	}
	return nil
}

// OpenDirSlots opens the directory slots that [InitDirSlots] created in
// dir. Call it once as the application starts: the slot dir/current names
// at that moment is the booted slot. It removes the temporary links and
// files an interrupted switch left behind. A dir without a current link is
// refused with an error wrapping [fs.ErrNotExist].
func OpenDirSlots(dir string) (*DirSlots, error) {
	return openDirSlots(atomicfile.OS{}, dir)
}

// openDirSlots is [OpenDirSlots] on fsys.
func openDirSlots(fsys atomicfile.FS, dir string) (*DirSlots, error) {
	s := &DirSlots{dir: dir, fsys: fsys}
	cur, err := s.current()
	if err != nil {
		return nil, err
	}
	s.booted = cur
	for _, name := range []string{
		filepath.Join(dir, currentLink),
		filepath.Join(dir, A, trialFile),
		filepath.Join(dir, B, trialFile),
	} {
		if err := atomicfile.RemoveTemps(fsys, name); err != nil {
			return nil, fmt.Errorf("slot: open %s: %w", dir, err)
		}
	}
	return s, nil
}

// current reads the slot the current link names.
func (s *DirSlots) current() (string, error) {
	link := filepath.Join(s.dir, currentLink)
	target, err := os.Readlink(link)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("slot: %s is not initialised (no %s link): %w", s.dir, currentLink, err)
		}
		return "", fmt.Errorf("slot: read %s: %w", link, err)
	}
	if check(target) != nil {
		return "", fmt.Errorf("%w: %s names %q, want \"a\" or \"b\"", ErrBadState, link, target)
	}
	return target, nil
}

func (s *DirSlots) trial(slot string) (bool, error) {
	_, err := os.Lstat(filepath.Join(s.dir, slot, trialFile))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("slot: read trial state of %s: %w", slot, err)
}

// Booted implements [Slots]: the slot current named when [OpenDirSlots]
// ran.
func (s *DirSlots) Booted(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	return s.booted, nil
}

// Next implements [Slots]: the slot current names, on trial when that
// slot's trial marker exists.
func (s *DirSlots) Next(ctx context.Context) (string, bool, error) {
	if err := ctx.Err(); err != nil {
		return "", false, err
	}
	cur, err := s.current()
	if err != nil {
		return "", false, err
	}
	trial, err := s.trial(cur)
	if err != nil {
		return "", false, err
	}
	return cur, trial, nil
}

// Open implements [Slots]. The image is dir/<slot>/image, opened
// append-only (created 0600 if missing); its size is the resume offset.
func (s *DirSlots) Open(ctx context.Context, slot string) (Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := check(slot); err != nil {
		return nil, err
	}
	cur, err := s.current()
	if err != nil {
		return nil, err
	}
	if slot == s.booted || slot == cur {
		return nil, fmt.Errorf("%w: open %s (booted %s, next %s)", ErrActiveSlot, slot, s.booted, cur)
	}
	dir := filepath.Join(s.dir, slot)
	img := &dirImage{fileImage: fileImage{path: filepath.Join(dir, imageFile)}, fsys: s.fsys, dir: dir}
	if err := img.open(0); err != nil {
		return nil, err
	}
	return img, nil
}

// Read implements [Slots].
func (s *DirSlots) Read(ctx context.Context, slot string) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := check(slot); err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(s.dir, slot, imageFile))
	if err != nil {
		return nil, fmt.Errorf("slot: read %s: %w", slot, err)
	}
	return f, nil
}

// Switch implements [Slots]. It fsyncs slot's image, sets or clears slot's
// trial marker, then points current at slot: the rename is the commit.
func (s *DirSlots) Switch(ctx context.Context, slot string, trial bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := check(slot); err != nil {
		return err
	}
	cur, err := s.current()
	if err != nil {
		return err
	}
	path := filepath.Join(s.dir, slot, imageFile)
	if st, err := os.Stat(path); err != nil {
		return fmt.Errorf("slot: switch to %s: %w", slot, err)
	} else if !st.Mode().IsRegular() {
		return fmt.Errorf("slot: switch to %s: %s is not a regular file", slot, path)
	}
	if slot != cur {
		// Names the image only once its bytes are durable, whoever wrote
		// them.
		f, err := s.fsys.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fmt.Errorf("slot: switch to %s: %w", slot, err)
		}
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("slot: switch to %s: fsync image: %w", slot, err)
		}
	}
	if err := s.setTrial(slot, trial); err != nil {
		return fmt.Errorf("slot: switch to %s: %w", slot, err)
	}
	if slot == cur {
		return nil
	}
	if err := atomicfile.SwitchSymlink(s.fsys, slot, filepath.Join(s.dir, currentLink)); err != nil {
		return fmt.Errorf("slot: switch to %s: %w", slot, err)
	}
	return nil
}

// setTrial creates or removes slot's trial marker, if it is not already as
// wanted.
func (s *DirSlots) setTrial(slot string, trial bool) error {
	has, err := s.trial(slot)
	if err != nil || has == trial {
		return err
	}
	marker := filepath.Join(s.dir, slot, trialFile)
	if trial {
		return atomicfile.WriteFile(s.fsys, marker, []byte("trial\n"))
	}
	return atomicfile.Remove(s.fsys, marker)
}

// Confirm implements [Slots]: it removes the booted slot's trial marker.
func (s *DirSlots) Confirm(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cur, err := s.current()
	if err != nil {
		return err
	}
	if cur != s.booted {
		return fmt.Errorf("%w: confirm %s: %s starts next", ErrSwitchPending, s.booted, cur)
	}
	if err := s.setTrial(s.booted, false); err != nil {
		return fmt.Errorf("slot: confirm %s: %w", s.booted, err)
	}
	return nil
}

// dirImage is a slot image file written through an [atomicfile.FS].
type dirImage struct {
	fileImage
	fsys atomicfile.FS
	dir  string
}

var _ Image = (*dirImage)(nil)

// open opens the image append-only, with extra flags (os.O_TRUNC), and
// fsyncs the slot directory so that a new file's entry is durable.
func (m *dirImage) open(extra int) error {
	f, err := m.fsys.OpenFile(m.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|extra, 0o600)
	if err != nil {
		return fmt.Errorf("slot: open image: %w", err)
	}
	st, err := os.Stat(m.path)
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("slot: open image: %w", err)
	}
	if err := m.fsys.SyncDir(m.dir); err != nil {
		_ = f.Close()
		return fmt.Errorf("slot: open image: fsync %s: %w", m.dir, err)
	}
	m.f, m.off = f, st.Size()
	return nil
}

// Reset implements [Image]: it reopens the image truncated.
func (m *dirImage) Reset() error {
	if err := m.Close(); err != nil {
		return fmt.Errorf("slot: reset image: %w", err)
	}
	if err := m.open(os.O_TRUNC); err != nil {
		return err
	}
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("slot: reset image: fsync: %w", err)
	}
	return nil
}
