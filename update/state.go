// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/statefile"
)

// ErrState is returned when neither copy of the agent's state decodes: the
// agent refuses to act rather than guess what is installed.
var ErrState = errors.New("update: agent state unreadable")

// Phase is where the agent stands in an update.
type Phase uint8

// The phases, in the order an update passes them.
const (
	// PhaseIdle: the confirmed release runs; nothing is pending.
	PhaseIdle Phase = iota
	// PhaseDownloading: an artifact is being written into the inactive
	// slot (a restart resumes the download).
	PhaseDownloading
	// PhaseInstalled: the artifact is complete and verified in the
	// inactive slot; the switch to it is next.
	PhaseInstalled
	// PhaseTrial: the new slot boots on trial until Confirm, or the agent
	// (or the bootloader) reverts.
	PhaseTrial
)

func (p Phase) String() string {
	switch p {
	case PhaseIdle:
		return "idle"
	case PhaseDownloading:
		return "downloading"
	case PhaseInstalled:
		return "installed"
	case PhaseTrial:
		return "trial"
	}
	return fmt.Sprintf("phase(%d)", uint8(p))
}

// Installed describes the confirmed release the device runs.
type Installed struct {
	Version         uint64 `cbor:"1,keyasint"`
	SecurityCounter uint64 `cbor:"2,keyasint"`
	Slot            string `cbor:"3,keyasint"`
	SHA256          []byte `cbor:"4,keyasint,omitempty"`
	Artifact        string `cbor:"5,keyasint,omitempty"`
	// SBOM is the SHA-256 of the release's signed SBOM ([Release.SBOM]);
	// nil when it had none (or was confirmed by an agent that did not
	// record it).
	SBOM []byte `cbor:"6,keyasint,omitempty"`
	// SupportUntil is the end of the release's security support
	// ([Release.SupportUntil]), Unix ms; 0 when it stated none.
	SupportUntil int64 `cbor:"7,keyasint,omitempty"`
}

// pending is the release being installed.
type pending struct {
	Version         uint64 `cbor:"1,keyasint"`
	SecurityCounter uint64 `cbor:"2,keyasint"`
	Artifact        string `cbor:"3,keyasint"`
	Length          int64  `cbor:"4,keyasint"`
	SHA256          []byte `cbor:"5,keyasint"`
	URI             string `cbor:"6,keyasint"`
	Slot            string `cbor:"7,keyasint"`            // the slot written and tried
	Prev            string `cbor:"8,keyasint"`            // the slot to revert to
	Starts          int    `cbor:"9,keyasint"`            // starts counted on trial
	Since           int64  `cbor:"10,keyasint"`           // first start on trial, Unix ms of trusted time; 0 before
	BootID          string `cbor:"11,keyasint,omitempty"` // the boot during which the switch was made
	Aborting        bool   `cbor:"12,keyasint,omitempty"` // Abort began: a restart finishes it
	// Delta is set while the install builds the artifact from a delta;
	// nil on the full-image path.
	Delta *pendingDelta `cbor:"13,keyasint,omitempty"`
	// DeltaFailed says why the delta path was left for the full image.
	DeltaFailed string `cbor:"14,keyasint,omitempty"`
	// SBOM and SupportUntil are the release's facts, kept for Installed.
	SBOM         []byte `cbor:"15,keyasint,omitempty"`
	SupportUntil int64  `cbor:"16,keyasint,omitempty"`
}

// reverted names a release that booted here and failed: the same release
// (version and artifact digest) is not installed again.
type reverted struct {
	Version uint64 `cbor:"1,keyasint"`
	SHA256  []byte `cbor:"2,keyasint"`
}

// state is what the agent persists.
type state struct {
	Gen       uint64    `cbor:"1,keyasint"` // write generation; the newer copy wins
	Root      []byte    `cbor:"2,keyasint"` // the newest verified root metadata
	Floors    Floors    `cbor:"3,keyasint"`
	Installed Installed `cbor:"4,keyasint"`
	Phase     Phase     `cbor:"5,keyasint"`
	Pending   *pending  `cbor:"6,keyasint,omitempty"`
	Last      *Result   `cbor:"7,keyasint,omitempty"` // outcome of the last update, until reported
	Reverted  *reverted `cbor:"8,keyasint,omitempty"` // the last release reverted: not offered again
}

// stateStore keeps the state in two copies, written alternately, each
// atomically (temporary file, fsync, rename, directory fsync) and
// checksummed: if a write is torn anyway (a file system that does not keep
// rename atomic, a bad block), the other copy still holds the previous
// state.
type stateStore struct {
	dir   string
	fs    atomicfile.FS
	codec *statefile.Codec
}

const stateKind = "d2c-update-agent-state"

var stateNames = [2]string{"state-0.cbor", "state-1.cbor"}

func newStateStore(fsys atomicfile.FS, dir string) (*stateStore, error) {
	c, err := statefile.New(stateKind, 4096)
	if err != nil {
		return nil, err
	}
	return &stateStore{dir: dir, fs: fsys, codec: c}, nil
}

// load returns the newest copy that decodes; found is false when neither
// copy exists (a fresh device).
func (s *stateStore) load() (st *state, found bool, err error) {
	var errs []error
	for _, name := range stateNames {
		var c state
		err := s.codec.Load(filepath.Join(s.dir, name), &c)
		switch {
		case errors.Is(err, os.ErrNotExist):
			continue
		case err != nil:
			found = true
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		found = true
		if st == nil || c.Gen > st.Gen {
			st = &c
		}
	}
	if st == nil && found {
		return nil, true, fmt.Errorf("%w: %w", ErrState, errors.Join(errs...))
	}
	return st, found, nil
}

// save writes st as the next generation, into the copy not holding the
// current one.
func (s *stateStore) save(st *state) error {
	st.Gen++
	if err := s.codec.Save(s.fs, filepath.Join(s.dir, stateNames[st.Gen%2]), st); err != nil {
		st.Gen--
		return fmt.Errorf("update: save agent state: %w", err)
	}
	return nil
}
