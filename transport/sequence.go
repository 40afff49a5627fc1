// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"errors"
	"fmt"
	"io/fs"
	"sync"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/statefile"
)

// sequence hands out the (boot, seq) pairs of one device. The boot counter
// is read, incremented and written durably (fsync) before any pair of the
// new boot is used, so no pair is ever reused after a crash or reboot, at
// the cost of one atomic write per start. Within a boot, seq counts from 0
// in memory.
type sequence struct {
	boot uint64

	mu   sync.Mutex
	next uint64
}

type bootState struct {
	Boot uint64 `cbor:"1,keyasint"`
}

func openSequence(fsys atomicfile.FS, path string) (*sequence, error) {
	codec, err := statefile.New("d2c.boot.v1", 1)
	if err != nil {
		return nil, err
	}
	var st bootState
	switch err := codec.Load(path, &st); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		// A corrupt counter cannot be trusted to be the highest: refuse,
		// rather than risk reusing pairs the cloud would drop as replays.
		return nil, fmt.Errorf("transport: boot counter: %w", err)
	}
	st.Boot++
	if err := codec.Save(fsys, path, st); err != nil {
		return nil, fmt.Errorf("transport: boot counter: %w", err)
	}
	return &sequence{boot: st.Boot}, nil
}

// take reserves n consecutive sequence numbers and returns the first.
func (s *sequence) take(n uint64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	first := s.next
	s.next += n
	return first
}
