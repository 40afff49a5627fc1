// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package atomicfile writes files so that a crash or power cut at any instant
// leaves either the old content or the new content, never a mix.
//
// Every write follows the same steps: create a temporary file beside the
// target (mode 0600), write, fsync, close, rename over the target, fsync the
// directory. The steps go through the [FS] interface so that tests can stop
// the sequence at any step (see the crashfs subpackage).
package atomicfile

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrTooLarge is returned by [ReadFile] when a file exceeds its limit.
var ErrTooLarge = errors.New("file exceeds size limit")

// File is a temporary file being written.
type File interface {
	io.Writer
	Name() string
	Sync() error
	Close() error
	Chmod(mode fs.FileMode) error
}

// FS is the set of file-system operations whose order decides crash safety.
type FS interface {
	// CreateTemp creates a new file with mode 0600 in dir, as os.CreateTemp.
	CreateTemp(dir, pattern string) (File, error)
	// OpenFile opens a file as os.OpenFile, for append-only journals.
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	// Rename replaces newpath by oldpath atomically, as os.Rename.
	Rename(oldpath, newpath string) error
	// Remove deletes a file, as os.Remove.
	Remove(name string) error
	// SyncDir fsyncs a directory so that renames and removals in it persist.
	SyncDir(dir string) error
	// MkdirAll creates a directory and its parents with mode perm.
	MkdirAll(dir string, perm fs.FileMode) error
	// Symlink creates newname as a symbolic link to oldname, as os.Symlink.
	// It fails if newname exists; [SwitchSymlink] replaces a link
	// atomically.
	Symlink(oldname, newname string) error
}

// OS is the [FS] of the operating system.
type OS struct{}

// CreateTemp implements [FS].
func (OS) CreateTemp(dir, pattern string) (File, error) { return os.CreateTemp(dir, pattern) }

// OpenFile implements [FS].
func (OS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	return os.OpenFile(name, flag, perm)
}

// Rename implements [FS].
func (OS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

// Remove implements [FS].
func (OS) Remove(name string) error { return os.Remove(name) }

// MkdirAll implements [FS].
func (OS) MkdirAll(dir string, perm fs.FileMode) error { return os.MkdirAll(dir, perm) }

// Symlink implements [FS].
func (OS) Symlink(oldname, newname string) error { return os.Symlink(oldname, newname) }

// SyncDir implements [FS].
func (OS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// WriteFile atomically replaces name with data, mode 0600, through fsys
// (nil means [OS]). When it returns nil the new content is durable; when it
// returns an error the old content (or absence) is still in place.
func WriteFile(fsys FS, name string, data []byte) error {
	return WriteFileMode(fsys, name, data, 0o600)
}

// WriteFileMode is [WriteFile] with another mode, for public files (CRLs,
// certificates) that a broker running as another user must read. Secrets
// always use WriteFile.
func WriteFileMode(fsys FS, name string, data []byte, perm fs.FileMode) error {
	if fsys == nil {
		fsys = OS{}
	}
	dir, base := filepath.Split(name)
	if dir == "" {
		dir = "."
	}
	f, err := fsys.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("atomicfile: create temporary for %s: %w", name, err)
	}
	tmp := f.Name()
	fail := func(step string, err error) error {
		_ = f.Close()
		_ = fsys.Remove(tmp)
		return fmt.Errorf("atomicfile: %s %s: %w", step, name, err)
	}
	if perm != 0o600 {
		if err := f.Chmod(perm); err != nil {
			return fail("chmod", err)
		}
	}
	if _, err := f.Write(data); err != nil {
		return fail("write", err)
	}
	if err := f.Sync(); err != nil {
		return fail("fsync", err)
	}
	if err := f.Close(); err != nil {
		_ = fsys.Remove(tmp)
		return fmt.Errorf("atomicfile: close %s: %w", name, err)
	}
	if err := fsys.Rename(tmp, name); err != nil {
		_ = fsys.Remove(tmp)
		return fmt.Errorf("atomicfile: rename %s: %w", name, err)
	}
	if err := fsys.SyncDir(dir); err != nil {
		return fmt.Errorf("atomicfile: fsync directory of %s: %w", name, err)
	}
	return nil
}

// SwitchSymlink atomically points link at target through fsys (nil means
// [OS]): it creates a temporary symbolic link beside link, renames it over
// link and fsyncs the directory. Whatever instant power fails, link is
// either the old link (or absent, if there was none) or the new one; a crash
// before the rename may leave a temporary link named "."+base(link)+".tmp-*"
// behind, which [RemoveTemps] deletes. target is stored as given: a relative
// target resolves against link's directory.
func SwitchSymlink(fsys FS, target, link string) error {
	if fsys == nil {
		fsys = OS{}
	}
	dir, base := filepath.Split(link)
	if dir == "" {
		dir = "."
	}
	var tmp string
	for try := 0; ; try++ {
		tmp = filepath.Join(dir, "."+base+".tmp-"+rand.Text())
		err := fsys.Symlink(target, tmp)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || try == 3 {
			return fmt.Errorf("atomicfile: create temporary link for %s: %w", link, err)
		}
	}
	if err := fsys.Rename(tmp, link); err != nil {
		_ = fsys.Remove(tmp)
		return fmt.Errorf("atomicfile: rename link %s: %w", link, err)
	}
	if err := fsys.SyncDir(dir); err != nil {
		return fmt.Errorf("atomicfile: fsync directory of %s: %w", link, err)
	}
	return nil
}

// RemoveTemps deletes the temporary files and links that an interrupted
// [WriteFile] or [SwitchSymlink] of name left beside it ("."+base+".tmp-*").
// Call it only while no other writer of name runs.
func RemoveTemps(fsys FS, name string) error {
	if fsys == nil {
		fsys = OS{}
	}
	dir, base := filepath.Split(name)
	if dir == "" {
		dir = "."
	}
	matches, err := filepath.Glob(filepath.Join(dir, "."+globEscape(base)+".tmp-*"))
	if err != nil {
		return fmt.Errorf("atomicfile: find temporaries of %s: %w", name, err)
	}
	if len(matches) == 0 {
		return nil
	}
	for _, m := range matches {
		if err := fsys.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("atomicfile: remove temporary %s: %w", m, err)
		}
	}
	if err := fsys.SyncDir(dir); err != nil {
		return fmt.Errorf("atomicfile: fsync directory of %s: %w", name, err)
	}
	return nil
}

// globEscape quotes the pattern characters of filepath.Match in s.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Remove deletes name and fsyncs its directory. A missing file is not an
// error.
func Remove(fsys FS, name string) error {
	if fsys == nil {
		fsys = OS{}
	}
	if err := fsys.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("atomicfile: remove %s: %w", name, err)
	}
	if err := fsys.SyncDir(filepath.Dir(name)); err != nil {
		return fmt.Errorf("atomicfile: fsync directory of %s: %w", name, err)
	}
	return nil
}

// MkdirPrivate creates dir (and parents) with mode 0700 and fsyncs its
// parent. An existing directory is left as it is.
func MkdirPrivate(fsys FS, dir string) error {
	if fsys == nil {
		fsys = OS{}
	}
	if err := fsys.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("atomicfile: create directory %s: %w", dir, err)
	}
	return fsys.SyncDir(filepath.Dir(filepath.Clean(dir)))
}

// ReadFile reads at most max bytes of name; a longer file is refused with
// [ErrTooLarge] instead of being truncated.
func ReadFile(name string, max int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadAll(f, max)
}

// ReadAll reads r to the end, refusing with [ErrTooLarge] more than max bytes.
func ReadAll(r io.Reader, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w (%d bytes)", ErrTooLarge, max)
	}
	return b, nil
}

// Scrub overwrites a regular file with zeros and fsyncs it, so that its
// content does not stay in the blocks the file system frees when it is
// removed. A missing file is not an error. On flash with wear levelling or
// a copy-on-write file system an old copy may survive on the medium: only
// encryption at rest or a hardware keystore answers that.
func Scrub(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("atomicfile: scrub %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("atomicfile: scrub %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil
	}
	zero := make([]byte, 64<<10)
	for left := st.Size(); left > 0; left -= int64(len(zero)) {
		if _, err := f.Write(zero[:min(left, int64(len(zero)))]); err != nil {
			return fmt.Errorf("atomicfile: scrub %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("atomicfile: scrub %s: %w", path, err)
	}
	return nil
}

// ScrubTree scrubs every regular file below dir, then removes dir and
// fsyncs its parent. It goes on past errors and returns them joined; a
// missing dir is not an error.
func ScrubTree(dir string) error {
	var errs []error
	// A directory given as a symbolic link (a state directory kept on
	// another partition) is scrubbed where it really is, then both go.
	link := ""
	if real, err := filepath.EvalSymlinks(dir); err == nil && real != dir {
		if st, err := os.Lstat(dir); err == nil && st.Mode()&fs.ModeSymlink != 0 {
			link, dir = dir, real
		}
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			return nil
		}
		if d.Type().IsRegular() {
			errs = append(errs, Scrub(p))
		}
		return nil
	})
	errs = append(errs, err)
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, OS{}.SyncDir(filepath.Dir(dir)))
	if link != "" {
		errs = append(errs, os.Remove(link), OS{}.SyncDir(filepath.Dir(link)))
	}
	return errors.Join(errs...)
}
