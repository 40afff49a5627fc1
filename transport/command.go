// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/statefile"
	"github.com/d2c-iot/d2c/transport/internal/jws"
	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Command is a cloud-to-device instruction.
type Command struct {
	ID      uint64 // strictly increasing per device; the device refuses any ID not above the last
	Device  string
	Name    string
	Body    []byte
	Issued  time.Time
	Expires time.Time
}

type wireCommand struct {
	Device  string `cbor:"1,keyasint"`
	ID      uint64 `cbor:"2,keyasint"`
	Name    string `cbor:"3,keyasint"`
	Body    []byte `cbor:"4,keyasint"`
	Issued  int64  `cbor:"5,keyasint"`
	Expires int64  `cbor:"6,keyasint"`
}

// CommandSigner is the cloud half of commands: it signs a command for one
// device as a JWS (typ d2c-cmd+jws, kid = the command key's ID) with a
// short expiry.
type CommandSigner struct {
	// Key signs commands. Required. Devices are configured with its
	// public half.
	Key crypto.Signer
	// TTL is a command's lifetime. Default 5 minutes.
	TTL time.Duration
	// Time returns the current time. Default time.Now.
	Time func() time.Time

	mu     sync.Mutex
	lastID uint64
}

// Sign returns the envelope of a command for device. ID zero means "the
// next": microseconds since the epoch, strictly increasing in this process.
func (s *CommandSigner) Sign(cmd Command) ([]byte, error) {
	if err := identity.ValidateDeviceID(cmd.Device); err != nil {
		return nil, err
	}
	if cmd.Name == "" || len(cmd.Name) > 64 {
		return nil, fmt.Errorf("transport: command name must be 1 to 64 bytes")
	}
	now := time.Now
	if s.Time != nil {
		now = s.Time
	}
	t := now()
	ttl := s.TTL
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	if cmd.ID == 0 {
		s.mu.Lock()
		cmd.ID = max(uint64(t.UnixMicro()), s.lastID+1)
		s.lastID = cmd.ID
		s.mu.Unlock()
	}
	kid, err := identity.KeyID(s.Key.Public())
	if err != nil {
		return nil, err
	}
	signer, err := jws.NewSigner(s.Key, kid, wire.CommandType)
	if err != nil {
		return nil, err
	}
	c, err := newCodec()
	if err != nil {
		return nil, err
	}
	payload, err := c.m.Enc.Marshal(wireCommand{Device: cmd.Device, ID: cmd.ID, Name: cmd.Name, Body: cmd.Body,
		Issued: t.UnixMilli(), Expires: t.Add(ttl).UnixMilli()})
	if err != nil {
		return nil, err
	}
	sig, err := signer.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("transport: sign command: %w", err)
	}
	out, err := sig.CompactSerialize()
	return []byte(out), err
}

// commandVerifier is the device half of commands: signature by a configured
// fleet command key (chosen by kid among them, never from the envelope),
// bound to this device, unexpired at trusted time, ID above the last one
// executed (persisted before the command runs).
type commandVerifier struct {
	device string
	keys   map[string]crypto.PublicKey
	now    func() time.Time
	path   string
	fsys   atomicfile.FS
	codec  *statefile.Codec
	cbor   codec

	mu   sync.Mutex
	last uint64
}

type commandState struct {
	Last uint64 `cbor:"1,keyasint"`
}

func newCommandVerifier(fsys atomicfile.FS, path, device string, keys []crypto.PublicKey, now func() time.Time) (*commandVerifier, error) {
	cv := &commandVerifier{device: device, keys: map[string]crypto.PublicKey{}, now: now, path: path, fsys: fsys}
	for _, k := range keys {
		kid, err := identity.KeyID(k)
		if err != nil {
			return nil, err
		}
		cv.keys[kid] = k
	}
	var err error
	if cv.codec, err = statefile.New("d2c.commands.v1", 1); err != nil {
		return nil, err
	}
	if cv.cbor, err = newCodec(); err != nil {
		return nil, err
	}
	var st commandState
	switch err := cv.codec.Load(path, &st); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("transport: command state: %w", err)
	}
	cv.last = st.Last
	return cv, nil
}

// verify checks a command envelope and, if it is acceptable, records its ID
// as executed before returning it.
func (cv *commandVerifier) verify(b []byte) (Command, error) {
	obj, kid, err := jws.Parse(b, wire.CommandType)
	if err != nil {
		return Command{}, err
	}
	key, ok := cv.keys[kid]
	if !ok {
		return Command{}, fmt.Errorf("%w: command signed by unknown key %q", wire.ErrBadSignature, textutil.Clip(kid))
	}
	payload, err := jws.Verify(obj, key)
	if err != nil {
		return Command{}, err
	}
	var w wireCommand
	if err := cv.cbor.m.Dec.Unmarshal(payload, &w); err != nil {
		return Command{}, fmt.Errorf("%w: command: %v", wire.ErrMalformed, err)
	}
	if w.Device != cv.device {
		return Command{}, fmt.Errorf("%w: command for %q received by %q", wire.ErrWrongDevice, textutil.Clip(w.Device), cv.device)
	}
	cmd := Command{ID: w.ID, Device: w.Device, Name: w.Name, Body: w.Body, Issued: time.UnixMilli(w.Issued), Expires: time.UnixMilli(w.Expires)}
	if now := cv.now(); !now.Before(cmd.Expires) {
		return Command{}, fmt.Errorf("%w: %d expired at %s", ErrCommandExpired, cmd.ID, cmd.Expires.UTC().Format(time.RFC3339))
	}
	cv.mu.Lock()
	defer cv.mu.Unlock()
	if cmd.ID <= cv.last {
		return Command{}, fmt.Errorf("%w: ID %d, last executed %d", ErrCommandReplayed, cmd.ID, cv.last)
	}
	if err := cv.codec.Save(cv.fsys, cv.path, commandState{Last: cmd.ID}); err != nil {
		return Command{}, fmt.Errorf("transport: command state: %w", err)
	}
	cv.last = cmd.ID
	return cmd, nil
}

// lastRun returns the ID of the last command run.
func (cv *commandVerifier) lastRun() uint64 {
	cv.mu.Lock()
	defer cv.mu.Unlock()
	return cv.last
}
