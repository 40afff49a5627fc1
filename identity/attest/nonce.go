// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package attest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/internal/limits"
)

// NonceStore keeps the challenges a [Verifier] has issued until they are
// answered or expire. A nonce is a string (its base64url form) bound to one
// device.
//
// Consume must be atomic: of concurrent calls for one nonce, at most one
// succeeds. A fleet verifying attestations in several processes implements
// NonceStore on a shared database (a row per nonce deleted with
// DELETE ... RETURNING, a Redis GETDEL, ...) or routes each device to one
// process; [MemoryNonceStore] serves one process. A lost store (restart)
// only makes outstanding challenges fail with [ErrReplay]: devices ask
// again.
type NonceStore interface {
	// Issue records nonce as issued to device at issued, valid until
	// expiry. It fails with an error wrapping [ErrTooManyChallenges] when
	// the store is full.
	Issue(ctx context.Context, device, nonce string, issued, expiry time.Time) error
	// Consume removes nonce and returns the time it was issued, if it was
	// issued to device and has not expired at now. Otherwise it fails with
	// an error wrapping [ErrReplay] (never issued, already consumed or
	// evicted), [ErrReplay] and [ErrExpired] (expired; removed), or
	// [ErrWrongDevice] (issued to another device; left in place, so that
	// another device cannot burn it).
	Consume(ctx context.Context, device, nonce string, now time.Time) (issued time.Time, err error)
}

// MemoryNonceStore is a [NonceStore] in memory, bounded in two ways: each
// device has at most a few outstanding nonces (a new one evicts the
// device's oldest), and the store at most a total number (past it, Issue
// fails until some expire or are consumed). Expired nonces are forgotten as
// new ones are issued. It is safe for concurrent use.
type MemoryNonceStore struct {
	perDevice, total int

	mu       sync.Mutex
	nonces   map[string]nonceEntry
	byDevice map[string][]string // outstanding nonces, oldest first
	queue    []string            // nonces in issue order, possibly stale
	head     int                 // queue[:head] is done
}

type nonceEntry struct {
	device         string
	issued, expiry time.Time
}

var _ NonceStore = (*MemoryNonceStore)(nil)

// NewMemoryNonceStore returns an empty store that keeps at most perDevice
// outstanding nonces per device (0: [limits.AttestationNoncesPerDevice],
// 4) and total in all (0: [limits.AttestationNonces], 100 000; about 200
// bytes each).
func NewMemoryNonceStore(perDevice, total int) *MemoryNonceStore {
	if perDevice <= 0 {
		perDevice = limits.AttestationNoncesPerDevice
	}
	if total <= 0 {
		total = limits.AttestationNonces
	}
	return &MemoryNonceStore{perDevice: perDevice, total: total,
		nonces: map[string]nonceEntry{}, byDevice: map[string][]string{}}
}

// Issue implements [NonceStore].
func (s *MemoryNonceStore) Issue(ctx context.Context, device, nonce string, issued, expiry time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked(issued)
	if _, ok := s.nonces[nonce]; ok {
		return fmt.Errorf("attest: nonce issued twice")
	}
	if own := s.byDevice[device]; len(own) >= s.perDevice {
		s.removeLocked(own[0])
	}
	if len(s.nonces) >= s.total {
		return fmt.Errorf("%w: %d unexpired", ErrTooManyChallenges, len(s.nonces))
	}
	s.nonces[nonce] = nonceEntry{device: device, issued: issued, expiry: expiry}
	s.byDevice[device] = append(s.byDevice[device], nonce)
	s.queue = append(s.queue, nonce)
	s.compactLocked()
	return nil
}

// Consume implements [NonceStore].
func (s *MemoryNonceStore) Consume(ctx context.Context, device, nonce string, now time.Time) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.nonces[nonce]
	switch {
	case !ok:
		return time.Time{}, ErrReplay
	case e.device != device:
		return time.Time{}, fmt.Errorf("%w: nonce issued to %q, answered by %q", ErrWrongDevice, e.device, device)
	}
	s.removeLocked(nonce)
	if !now.Before(e.expiry) {
		return time.Time{}, fmt.Errorf("%w: %w: nonce expired at %s", ErrReplay, ErrExpired, e.expiry.UTC().Format(time.RFC3339))
	}
	return e.issued, nil
}

// Len returns the number of outstanding nonces, expired ones included
// until they are swept.
func (s *MemoryNonceStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.nonces)
}

// removeLocked forgets nonce; its queue slot goes stale.
func (s *MemoryNonceStore) removeLocked(nonce string) {
	e, ok := s.nonces[nonce]
	if !ok {
		return
	}
	delete(s.nonces, nonce)
	own := slices.DeleteFunc(s.byDevice[e.device], func(n string) bool { return n == nonce })
	if len(own) == 0 {
		delete(s.byDevice, e.device)
	} else {
		s.byDevice[e.device] = own
	}
}

// sweepLocked forgets the expired nonces at the front of the queue. Nonces
// are issued in time order with one lifetime, so the queue is in expiry
// order; were it not (a changed lifetime, a clock step), an expired nonce
// stays until it reaches the front or is consumed, and Consume still
// refuses it.
func (s *MemoryNonceStore) sweepLocked(now time.Time) {
	for s.head < len(s.queue) {
		n := s.queue[s.head]
		if e, ok := s.nonces[n]; ok {
			if now.Before(e.expiry) {
				break
			}
			s.removeLocked(n)
		}
		s.queue[s.head] = ""
		s.head++
	}
}

// compactLocked bounds the queue: stale slots (consumed or evicted nonces)
// behind a live one are dropped once they outnumber the live nonces.
func (s *MemoryNonceStore) compactLocked() {
	if s.head > len(s.queue)/2 {
		s.queue = slices.Delete(s.queue, 0, s.head)
		s.head = 0
	}
	if len(s.queue) <= 2*len(s.nonces)+64 {
		return
	}
	live := s.queue[:0]
	for _, n := range s.queue[s.head:] {
		if _, ok := s.nonces[n]; ok {
			live = append(live, n)
		}
	}
	clear(s.queue[len(live):])
	s.queue, s.head = live, 0
}
