// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package slot

import (
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// fileImage is what the images of [DirSlots] and [UBoot] share: a file or
// device at path, written through f from offset off on, and read back
// through a second descriptor for Existing. It implements every method of
// [Image] but Reset.
type fileImage struct {
	path string
	f    atomicfile.File // nil once closed
	r    *os.File        // for Existing, opened on first use
	off  int64
}

func (m *fileImage) Write(p []byte) (int, error) {
	if m.f == nil {
		return 0, fs.ErrClosed
	}
	n, err := m.f.Write(p)
	m.off += int64(n)
	return n, err
}

func (m *fileImage) Offset() int64 { return m.off }

func (m *fileImage) Existing() io.Reader {
	if m.r == nil {
		r, err := os.Open(m.path)
		if err != nil {
			return errReader{fmt.Errorf("slot: read image: %w", err)}
		}
		m.r = r
	}
	return io.NewSectionReader(m.r, 0, m.off)
}

// Sync fsyncs the image.
func (m *fileImage) Sync() error {
	if m.f == nil {
		return fs.ErrClosed
	}
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("slot: fsync image: %w", err)
	}
	return nil
}

// Close closes both descriptors; the image can be opened again.
func (m *fileImage) Close() error {
	var err error
	if m.r != nil {
		err = m.r.Close()
		m.r = nil
	}
	if m.f != nil {
		if cerr := m.f.Close(); err == nil {
			err = cerr
		}
		m.f = nil
	}
	return err
}

// errReader fails every read with err.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
