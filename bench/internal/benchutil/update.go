// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package benchutil

import (
	"crypto"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/update"
)

// UpdateKeys are the keys of a one-key-per-role update repository and its
// signed root (version 1, valid for a day).
type UpdateKeys struct {
	Root               []byte
	Release, Timestamp crypto.Signer
}

// NewUpdateKeys generates ECDSA P-256 keys for the three roles and signs
// the root.
func NewUpdateKeys() (*UpdateKeys, error) {
	keys := make([]crypto.Signer, 3)
	for i := range keys {
		k, err := identity.GenerateKey(identity.ECDSAP256)
		if err != nil {
			return nil, err
		}
		keys[i] = k
	}
	root := &update.Root{Version: 1, Expires: time.Now().Add(24 * time.Hour)}
	for i, role := range []update.Role{update.RoleRoot, update.RoleRelease, update.RoleTimestamp} {
		if err := root.SetRole(role, 1, keys[i].Public()); err != nil {
			return nil, err
		}
	}
	b, err := root.Sign(keys[0])
	if err != nil {
		return nil, err
	}
	return &UpdateKeys{Root: b, Release: keys[1], Timestamp: keys[2]}, nil
}

// Sign signs rel (valid for an hour) and a timestamp of version ts naming
// it.
func (k *UpdateKeys) Sign(rel *update.Release, ts uint64) (release, timestamp []byte, err error) {
	rel.Expires = time.Now().Add(time.Hour)
	if release, err = rel.Sign(k.Release); err != nil {
		return nil, nil, err
	}
	t, err := update.NewTimestamp(ts, time.Now().Add(time.Hour), release)
	if err != nil {
		return nil, nil, err
	}
	timestamp, err = t.Sign(k.Timestamp)
	return release, timestamp, err
}

// HeapPeak runs fn while sampling the heap in use every few milliseconds,
// and returns the peak growth over what was in use before it.
func HeapPeak(fn func() error) (uint64, error) {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var top atomic.Uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > before.HeapInuse && m.HeapInuse-before.HeapInuse > top.Load() {
				top.Store(m.HeapInuse - before.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	err := fn()
	close(stop)
	<-done
	return top.Load(), err
}
