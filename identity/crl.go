// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"
	"time"
)

// ErrCRLRollback: a CRL older than (or as old as) the one already
// accepted was offered: an attacker or a stale mirror trying to un-revoke
// a certificate. It is refused; the newer CRL stays in force.
var ErrCRLRollback = errors.New("identity: CRL older than the one in force")

// ErrCRLStale: the CRL in force is past its nextUpdate and no newer one
// arrived, so revocation can no longer be known: every certificate is
// refused until a fresh CRL is accepted (fail closed).
var ErrCRLStale = errors.New("identity: CRL past its nextUpdate")

// CRLCache is the consumer side of a CA's CRLs, for cloud halves that do
// not hold the registry: it keeps the newest verified CRL of one issuer and
// answers [RevocationChecker] from it. [CRLCache.Update] accepts only a CRL
// signed by the issuer whose CRL number (RFC 5280 5.2.3) is higher than the
// one in force ([ErrCRLRollback] otherwise), and CheckRevoked fails closed
// with [ErrCRLStale] once the CRL in force is past its nextUpdate, so that
// a CRL that stops being refreshed never freezes revocation. Both
// refusals are counted ([CRLCache.Stats]). It is safe for concurrent use.
type CRLCache struct {
	issuer *x509.Certificate
	now    func() time.Time

	mu  sync.RWMutex
	cur *RevocationList

	rollbacks, staleChecks atomic.Uint64
}

// CRLStats counts a [CRLCache]'s refusals.
type CRLStats struct {
	// Number is the CRL number in force (0: none yet).
	Number uint64
	// NextUpdate is when the CRL in force goes stale.
	NextUpdate time.Time
	// RollbacksRefused counts CRLs refused as older than the one in force.
	RollbacksRefused uint64
	// StaleRefusals counts checks refused because the CRL was stale.
	StaleRefusals uint64
}

// NewCRLCache returns a cache for CRLs signed by issuer, with now as its
// clock (default time.Now). Until a CRL is accepted, CheckRevoked fails
// closed.
func NewCRLCache(issuer *x509.Certificate, now func() time.Time) *CRLCache {
	if now == nil {
		now = time.Now
	}
	return &CRLCache{issuer: issuer, now: now}
}

// Update parses, verifies and accepts a CRL (DER or PEM): signed by the
// issuer, not yet past its nextUpdate, and numbered above the CRL in
// force. A refused CRL changes nothing.
func (c *CRLCache) Update(data []byte) error {
	rl, err := ParseCRL(data, c.issuer)
	if err != nil {
		return err
	}
	if rl.number == nil {
		return fmt.Errorf("%w: CRL without a CRL number", ErrMalformed)
	}
	if now := c.now(); now.After(rl.next) {
		return fmt.Errorf("%w: the offered CRL %d expired at %s", ErrCRLStale, rl.number, rl.next.UTC().Format(time.RFC3339))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil && rl.number.Cmp(c.cur.number) <= 0 {
		c.rollbacks.Add(1)
		return fmt.Errorf("%w: offered number %d, in force %d", ErrCRLRollback, rl.number, c.cur.number)
	}
	c.cur = rl
	return nil
}

// CheckRevoked implements [RevocationChecker]: an error wrapping
// [ErrRevoked] for a listed certificate, and for every certificate while
// no fresh CRL is in force (wrapping [ErrCRLStale] too).
func (c *CRLCache) CheckRevoked(cert *x509.Certificate) error {
	c.mu.RLock()
	cur := c.cur
	c.mu.RUnlock()
	if cur == nil {
		c.staleChecks.Add(1)
		return fmt.Errorf("%w: %w: no CRL accepted yet", ErrRevoked, ErrCRLStale)
	}
	if now := c.now(); now.After(cur.next) {
		c.staleChecks.Add(1)
		return fmt.Errorf("%w: %w: CRL %d expired at %s; publish a fresh CRL", ErrRevoked, ErrCRLStale, cur.number, cur.next.UTC().Format(time.RFC3339))
	}
	return cur.CheckRevoked(cert)
}

// Stats returns the CRL in force and the refusals counted.
func (c *CRLCache) Stats() CRLStats {
	c.mu.RLock()
	defer c.mu.RUnlock()
	st := CRLStats{RollbacksRefused: c.rollbacks.Load(), StaleRefusals: c.staleChecks.Load()}
	if c.cur != nil {
		st.Number, st.NextUpdate = c.cur.number.Uint64(), c.cur.next
	}
	return st
}

var _ RevocationChecker = (*CRLCache)(nil)

// crlNumber returns a CRL's number, or nil if it has none.
func crlNumber(crl *x509.RevocationList) *big.Int {
	if crl.Number == nil {
		return nil
	}
	return new(big.Int).Set(crl.Number)
}
