// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/statefile"
)

// TrustedClock is a device's notion of the current time for security checks.
//
// Devices often boot at 1970 or without a real-time clock, and a clock can be
// set back by an attacker to make expired credentials or metadata look
// valid. TrustedClock keeps a persisted floor that only rises: the latest
// time proven by something the device verified (the validity start of a
// certificate it checked, a verified server response, verified update
// metadata). Now returns the later of the system clock and the floor, so
// expiry checks never run in the past of what the device has seen.
type TrustedClock struct {
	path  string
	fsys  atomicfile.FS
	now   func() time.Time
	codec *statefile.Codec

	mu    sync.Mutex
	floor time.Time
}

type clockState struct {
	FloorUnix int64 `cbor:"1,keyasint"`
}

// OpenTrustedClock opens (or creates on first Observe) the floor persisted at
// path. now is the wall clock; nil means time.Now. A corrupt floor file is an
// error, never silently reset to zero.
func OpenTrustedClock(path string, now func() time.Time) (*TrustedClock, error) {
	return openTrustedClock(nil, path, now)
}

func openTrustedClock(fsys atomicfile.FS, path string, now func() time.Time) (*TrustedClock, error) {
	if now == nil {
		now = time.Now
	}
	codec, err := statefile.New("d2c.time.v1", 1)
	if err != nil {
		return nil, err
	}
	c := &TrustedClock{path: path, fsys: fsys, now: now, codec: codec}
	var st clockState
	switch err := codec.Load(path, &st); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("identity: trusted time floor: %w", err)
	default:
		c.floor = time.Unix(st.FloorUnix, 0)
	}
	return c, nil
}

// Now returns the later of the wall clock and the persisted floor.
func (c *TrustedClock) Now() time.Time {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Before(c.floor) {
		return c.floor
	}
	return now
}

// Floor returns the persisted floor (the zero time if none).
func (c *TrustedClock) Floor() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.floor
}

// Observe raises the floor to t, which must come from something verified,
// and persists it atomically. An earlier t changes nothing.
func (c *TrustedClock) Observe(t time.Time) error {
	t = t.Truncate(time.Second)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !t.After(c.floor) {
		return nil
	}
	if err := c.codec.Save(c.fsys, c.path, clockState{FloorUnix: t.Unix()}); err != nil {
		return fmt.Errorf("identity: persist trusted time floor: %w", err)
	}
	c.floor = t
	return nil
}
