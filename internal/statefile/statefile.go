// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package statefile persists small device state as checksummed CBOR,
// written atomically.
//
// A state file is the CBOR array [kind, payload, sha256(kind || payload)],
// where payload is the deterministic CBOR encoding of the state value. The
// kind string names the state so that one file can never be read as another.
package statefile

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/cborx"
	"github.com/d2c-iot/d2c/internal/limits"
)

// ErrCorrupt is returned when a state file does not decode or its checksum
// does not match.
var ErrCorrupt = errors.New("state file corrupt")

type envelope struct {
	_       struct{} `cbor:",toarray"`
	Kind    string
	Payload []byte
	Sum     []byte
}

// Codec encodes and decodes state files of one kind.
type Codec struct {
	kind  string
	modes cborx.Modes
}

// New returns a codec for state files of the given kind whose arrays and maps
// hold at most maxElems elements.
func New(kind string, maxElems int) (*Codec, error) {
	m, err := cborx.New(maxElems)
	if err != nil {
		return nil, err
	}
	return &Codec{kind: kind, modes: m}, nil
}

func (c *Codec) sum(payload []byte) []byte {
	h := sha256.New()
	h.Write([]byte(c.kind))
	h.Write([]byte{0})
	h.Write(payload)
	return h.Sum(nil)
}

// Marshal encodes v as a checksummed state record.
func (c *Codec) Marshal(v any) ([]byte, error) {
	payload, err := c.modes.Enc.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("statefile: encode %s: %w", c.kind, err)
	}
	out, err := c.modes.Enc.Marshal(envelope{Kind: c.kind, Payload: payload, Sum: c.sum(payload)})
	if err != nil {
		return nil, fmt.Errorf("statefile: encode %s: %w", c.kind, err)
	}
	// Never write what Unmarshal would refuse to read back.
	if len(out) > limits.StateFile {
		return nil, fmt.Errorf("statefile: %s: %w (%d bytes)", c.kind, atomicfile.ErrTooLarge, len(out))
	}
	return out, nil
}

// Unmarshal decodes a state record into v, checking kind and checksum.
func (c *Codec) Unmarshal(data []byte, v any) error {
	if len(data) > limits.StateFile {
		return fmt.Errorf("statefile: %s: %w", c.kind, atomicfile.ErrTooLarge)
	}
	var env envelope
	if err := c.modes.Dec.Unmarshal(data, &env); err != nil {
		return fmt.Errorf("statefile: %s: %w: %v", c.kind, ErrCorrupt, err)
	}
	if env.Kind != c.kind {
		return fmt.Errorf("statefile: %w: kind %q, want %q", ErrCorrupt, env.Kind, c.kind)
	}
	if !bytes.Equal(env.Sum, c.sum(env.Payload)) {
		return fmt.Errorf("statefile: %s: %w: checksum mismatch", c.kind, ErrCorrupt)
	}
	if err := c.modes.Dec.Unmarshal(env.Payload, v); err != nil {
		return fmt.Errorf("statefile: %s: %w: %v", c.kind, ErrCorrupt, err)
	}
	return nil
}

// Save writes v to path atomically (mode 0600) through fsys (nil means the
// operating system).
func (c *Codec) Save(fsys atomicfile.FS, path string, v any) error {
	b, err := c.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(fsys, path, b)
}

// Load reads path into v. A missing file returns an error matching
// fs.ErrNotExist.
func (c *Codec) Load(path string, v any) error {
	b, err := atomicfile.ReadFile(path, limits.StateFile)
	if err != nil {
		return fmt.Errorf("statefile: %s: %w", c.kind, err)
	}
	return c.Unmarshal(b, v)
}
