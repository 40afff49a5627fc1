// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"context"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

var (
	_ identity.Registry            = (*Store)(nil)
	_ transport.CachedCertificates = (*Store)(nil)
)

// ErrUnknownCertificate: the certificate is not in the registry (it was
// not issued by a registrar recording into this store).
var ErrUnknownCertificate = errors.New("store: certificate not in the registry")

// Certificate statuses (the certificates.status column).
const (
	statusValid      = "valid"      // the device's newest certificate: may renew
	statusSuperseded = "superseded" // replaced by a renewal or a later enrollment: verifies what it signed, cannot renew
	statusRevoked    = "revoked"
)

// CRL reason codes (RFC 5280 section 5.3.1).
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
)

// serial is a certificate's serial number as the registry keys it:
// lowercase hexadecimal without leading zeros.
func serial(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// certRow is one row of the certificates table.
type certRow struct {
	serial, device, status  string
	supersededBy, renewedOf sql.NullString
	issued, notAfter        int64
}

// renewalRetryWindow is how long after a renewal the certificate it
// superseded may renew again (a device that lost the registrar's answer
// retries within minutes). Past it only the newest certificate renews, so
// a copy of an older key is worth nothing to a thief once the device has
// moved on.
const renewalRetryWindow = time.Hour

// Enrolled implements [identity.Registry]: in one transaction it consumes
// the token (refusing a used one with [identity.ErrTokenReused]), records
// the device, records the certificate as the device's valid one, and
// supersedes the device's earlier valid certificate, if any (a device
// enrolling again).
func (s *Store) Enrolled(ctx context.Context, device, tokenID string, tokenExpiry time.Time, chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("store: enrolled: no certificate")
	}
	now := s.now().UnixMilli()
	defer s.certCache.forget(device)
	return s.tx(ctx, func(tx *sql.Tx) error {
		if tokenID != "" {
			var one int
			err := tx.QueryRowContext(ctx, s.q("SELECT 1 FROM used_tokens WHERE jti = ?"), tokenID).Scan(&one)
			switch {
			case err == nil:
				return fmt.Errorf("%w: token %s", identity.ErrTokenReused, tokenID)
			case !errNoRows(err):
				return fmt.Errorf("store: used tokens: %w", err)
			}
			if _, err := tx.ExecContext(ctx, s.q("DELETE FROM used_tokens WHERE expires_ms < ?"), now); err != nil {
				return fmt.Errorf("store: used tokens: %w", err)
			}
			if _, err := tx.ExecContext(ctx, s.q("INSERT INTO used_tokens (jti, device, expires_ms, used_ms) VALUES (?, ?, ?, ?)"),
				tokenID, device, tokenExpiry.UnixMilli(), now); err != nil {
				return fmt.Errorf("store: used tokens: %w", err)
			}
		}
		if _, err := tx.ExecContext(ctx, s.q("INSERT INTO devices (id, created_ms) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET forgotten_ms = NULL"),
			device, now); err != nil {
			return fmt.Errorf("store: record device: %w", err)
		}
		rows, err := s.deviceCerts(ctx, tx, device)
		if err != nil {
			return err
		}
		if err := s.insertCert(ctx, tx, device, chain, "", now); err != nil {
			return err
		}
		for _, r := range rows {
			if r.status == statusValid {
				if err := s.supersede(ctx, tx, r.serial, serial(chain[0])); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// CanRenew implements [identity.Registry].
func (s *Store) CanRenew(ctx context.Context, cert *x509.Certificate) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := s.renewable(ctx, tx, cert)
		return err
	})
}

// Renewed implements [identity.Registry]: in one transaction it checks
// again that prev may renew, records the new certificate, and supersedes
// prev (and prev's successor, when a device renews again after losing the
// answer).
func (s *Store) Renewed(ctx context.Context, prev *x509.Certificate, chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("store: renewed: no certificate")
	}
	now := s.now().UnixMilli()
	defer s.certCache.forget(prev.Subject.CommonName)
	return s.tx(ctx, func(tx *sql.Tx) error {
		replaced, err := s.renewable(ctx, tx, prev)
		if err != nil {
			return err
		}
		if err := s.insertCert(ctx, tx, prev.Subject.CommonName, chain, serial(prev), now); err != nil {
			return err
		}
		for _, r := range replaced {
			if err := s.supersede(ctx, tx, r, serial(chain[0])); err != nil {
				return err
			}
		}
		return nil
	})
}

// renewable decides whether cert may renew, locking the device's
// certificates, and returns the serials the renewal supersedes: cert if
// it is the device's valid certificate; or, if cert was superseded by a
// renewal of its own whose certificate is still the valid one (the
// device lost that answer), cert's successor as well.
func (s *Store) renewable(ctx context.Context, tx *sql.Tx, cert *x509.Certificate) ([]string, error) {
	rows, err := s.deviceCerts(ctx, tx, cert.Subject.CommonName)
	if err != nil {
		return nil, err
	}
	byserial := map[string]certRow{}
	for _, r := range rows {
		byserial[r.serial] = r
	}
	me, ok := byserial[serial(cert)]
	if !ok {
		return nil, fmt.Errorf("%w: serial %s of %s", ErrUnknownCertificate, serial(cert), cert.Subject.CommonName)
	}
	switch me.status {
	case statusValid:
		return []string{me.serial}, nil
	case statusRevoked:
		return nil, fmt.Errorf("%w: serial %s of %s", identity.ErrRevoked, me.serial, me.device)
	}
	if next, ok := byserial[me.supersededBy.String]; ok && next.status == statusValid && next.renewedOf.String == me.serial &&
		s.now().UnixMilli()-next.issued < renewalRetryWindow.Milliseconds() {
		return []string{me.serial, next.serial}, nil
	}
	return nil, fmt.Errorf("%w: serial %s of %s was renewed; renew with the newest certificate", identity.ErrSuperseded, me.serial, me.device)
}

// deviceCerts reads (and with PostgreSQL locks) every certificate of
// device.
func (s *Store) deviceCerts(ctx context.Context, tx *sql.Tx, device string) ([]certRow, error) {
	rows, err := tx.QueryContext(ctx, s.q("SELECT serial, device, status, superseded_by, renewed_from, issued_ms, not_after_ms FROM certificates WHERE device = ? ORDER BY issued_ms"+s.d.forShare), device)
	if err != nil {
		return nil, fmt.Errorf("store: read certificates: %w", err)
	}
	defer rows.Close()
	var out []certRow
	for rows.Next() {
		var r certRow
		if err := rows.Scan(&r.serial, &r.device, &r.status, &r.supersededBy, &r.renewedOf, &r.issued, &r.notAfter); err != nil {
			return nil, fmt.Errorf("store: read certificates: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: read certificates: %w", err)
	}
	return out, nil
}

func (s *Store) insertCert(ctx context.Context, tx *sql.Tx, device string, chain []*x509.Certificate, renewedFrom string, now int64) error {
	leaf := chain[0]
	var issuers []byte
	for _, c := range chain[1:] {
		issuers = append(issuers, c.Raw...)
	}
	from := sql.NullString{String: renewedFrom, Valid: renewedFrom != ""}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO certificates (serial, device, issued_ms, not_before_ms, not_after_ms, der, chain, status, renewed_from)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`), serial(leaf), device, now, leaf.NotBefore.UnixMilli(), leaf.NotAfter.UnixMilli(),
		leaf.Raw, issuers, statusValid, from); err != nil {
		return fmt.Errorf("store: record certificate: %w", err)
	}
	return nil
}

func (s *Store) supersede(ctx context.Context, tx *sql.Tx, old, by string) error {
	if _, err := tx.ExecContext(ctx, s.q("UPDATE certificates SET status = ?, superseded_by = ?, superseded_ms = ? WHERE serial = ? AND status <> ?"),
		statusSuperseded, by, s.now().UnixMilli(), old, statusRevoked); err != nil {
		return fmt.Errorf("store: supersede certificate: %w", err)
	}
	s.revCache.forget(old)
	return nil
}

// DeviceCertificates implements [transport.CachedCertificates]: the
// chains of device's unrevoked, unexpired certificates, newest first (at
// most 8): the valid one, and the superseded ones, which still verify the
// envelopes they signed before the renewal. Each process remembers a
// device's chains for 5 seconds, so that the verifier's lookup for every
// envelope does not query the database and parse the certificates again;
// a registry change made in this process takes effect at once, one made
// in another within 5 seconds (the verifier checks revocation apart, as
// [Store.CheckRevoked] says, and asks [Store.FreshDeviceCertificates]
// before refusing an envelope that no cached certificate verifies, so a
// renewal or enrollment elsewhere is seen at once).
func (s *Store) DeviceCertificates(ctx context.Context, device string) ([][]*x509.Certificate, error) {
	if chains, ok := s.certCache.get(device, time.Now()); ok {
		return chains, nil
	}
	return s.FreshDeviceCertificates(ctx, device)
}

// FreshDeviceCertificates implements [transport.CachedCertificates]: it
// reads device's chains from the database, past the cache, and caches
// them.
func (s *Store) FreshDeviceCertificates(ctx context.Context, device string) ([][]*x509.Certificate, error) {
	now, gen := time.Now(), s.certCache.generation()
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT der, chain FROM certificates WHERE device = ? AND status <> ? AND not_after_ms > ?
		ORDER BY status = ? DESC, issued_ms DESC LIMIT 8`), device, statusRevoked, s.now().UnixMilli(), statusValid)
	if err != nil {
		return nil, fmt.Errorf("store: read certificates: %w", err)
	}
	defer rows.Close()
	var out [][]*x509.Certificate
	for rows.Next() {
		var der, issuers []byte
		if err := rows.Scan(&der, &issuers); err != nil {
			return nil, fmt.Errorf("store: read certificates: %w", err)
		}
		chain, err := x509.ParseCertificates(append(der, issuers...))
		if err != nil {
			return nil, fmt.Errorf("store: certificate of %s: %w", device, err)
		}
		out = append(out, chain)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: read certificates: %w", err)
	}
	if len(out) == 0 {
		// Say why: a revoked device is refused as revoked, not unknown.
		var revoked int
		if err := s.db.QueryRowContext(ctx, s.q("SELECT COUNT(*) FROM certificates WHERE device = ? AND status = ?"),
			device, statusRevoked).Scan(&revoked); err == nil && revoked > 0 {
			return nil, fmt.Errorf("%w: every certificate of %q is revoked", identity.ErrRevoked, device)
		}
		return nil, fmt.Errorf("%w: %q", wire.ErrUnknownDevice, device)
	}
	s.certCache.put(device, out, now.Add(certCacheTTL), gen)
	return out, nil
}

// certCacheTTL is how long one process serves a device's registered
// chains from memory.
const certCacheTTL = 5 * time.Second

// certCache remembers devices' registered chains for certCacheTTL.
// Lookups that find nothing are not remembered: a device enrolled in
// another process is found at its first envelope. Every registry write of
// this process forgets what it changed and moves the generation on, so
// that a lookup that read the database before the write does not cache
// what it read.
type certCache struct {
	mu  sync.Mutex
	m   map[string]certEntry
	gen uint64
}

type certEntry struct {
	chains [][]*x509.Certificate
	until  time.Time
}

func (c *certCache) get(device string, now time.Time) ([][]*x509.Certificate, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[device]
	return e.chains, ok && now.Before(e.until)
}

func (c *certCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put caches chains read from the database at generation gen, unless a
// write has been made since.
func (c *certCache) put(device string, chains [][]*x509.Certificate, until time.Time, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if c.m == nil || len(c.m) >= 1<<16 {
		c.m = map[string]certEntry{} // a cache: bounded, refilled on demand
	}
	c.m[device] = certEntry{chains, until}
}

// forget drops device's chains; with no device, every device's.
func (c *certCache) forget(device string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if device == "" {
		clear(c.m)
		return
	}
	delete(c.m, device)
}

// revocationCacheTTL is how long a certificate's revocation status is
// remembered by one process: a revocation made by another process takes
// effect here within it.
const revocationCacheTTL = 5 * time.Second

// revCache remembers revocation statuses for revocationCacheTTL, so that
// the verifier's check of every envelope does not query the database.
type revCache struct {
	mu sync.Mutex
	m  map[string]revStatus
}

type revStatus struct {
	revoked bool
	until   time.Time
}

func (c *revCache) get(serial string, now time.Time) (revStatus, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.m[serial]
	return st, ok && now.Before(st.until)
}

func (c *revCache) put(serial string, st revStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= 1<<16 {
		c.m = map[string]revStatus{} // a cache: bounded, refilled on demand
	}
	c.m[serial] = st
}

func (c *revCache) forget(serial string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, serial)
}

// CheckRevoked implements [identity.RevocationChecker] from the registry:
// an error wrapping [identity.ErrRevoked] for a revoked certificate. A
// certificate the registry does not know is not revoked by it. If the
// database cannot answer, the check fails closed (revoked) with an error
// that also wraps [transport.ErrReplayState]: undecided, for a verifier. A revocation
// made in another process takes effect here within 5 seconds.
func (s *Store) CheckRevoked(cert *x509.Certificate) error {
	sn, now := serial(cert), time.Now()
	st, ok := s.revCache.get(sn, now)
	if !ok {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var status string
		err := s.db.QueryRowContext(ctx, s.q("SELECT status FROM certificates WHERE serial = ?"), sn).Scan(&status)
		switch {
		case errNoRows(err):
		case err != nil:
			// Fail closed (revoked), and say it is undecided: a verifier
			// holds the message instead of refusing it for good.
			return fmt.Errorf("%w: %w: revocation status unavailable (failing closed): %v", identity.ErrRevoked, transport.ErrReplayState, err)
		}
		st = revStatus{revoked: status == statusRevoked, until: now.Add(revocationCacheTTL)}
		s.revCache.put(sn, st)
	}
	if st.revoked {
		return fmt.Errorf("%w: serial %s (%s)", identity.ErrRevoked, sn, cert.Subject.CommonName)
	}
	return nil
}

// Revoke revokes the certificate with the given serial number (any
// status but revoked) with an RFC 5280 reason code; it returns
// [ErrUnknownCertificate] for a serial the registry does not hold.
// Revoking twice is not an error. The next [Store.CRL] lists it.
func (s *Store) Revoke(ctx context.Context, serialNumber *big.Int, reason int) error {
	sn := serialNumber.Text(16)
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q("UPDATE certificates SET status = ?, revoked_ms = ?, reason = ? WHERE serial = ? AND status <> ?"),
			statusRevoked, s.now().UnixMilli(), reason, sn, statusRevoked)
		if err != nil {
			return fmt.Errorf("store: revoke: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			var one int
			if err := tx.QueryRowContext(ctx, s.q("SELECT 1 FROM certificates WHERE serial = ?"), sn).Scan(&one); errNoRows(err) {
				return fmt.Errorf("%w: serial %s", ErrUnknownCertificate, sn)
			}
		}
		return nil
	})
	s.revCache.forget(sn)
	s.certCache.forget("") // the serial's device is not known here; revocations are rare
	return err
}

// RevokeDevice revokes every unexpired certificate of device (valid and
// superseded alike, so that no key the device ever held can connect or
// renew) and returns how many it revoked.
func (s *Store) RevokeDevice(ctx context.Context, device string, reason int) (int, error) {
	var n int64
	defer s.certCache.forget(device)
	err := s.tx(ctx, func(tx *sql.Tx) error {
		rows, err := s.deviceCerts(ctx, tx, device)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, s.q("UPDATE certificates SET status = ?, revoked_ms = ?, reason = ? WHERE device = ? AND status <> ? AND not_after_ms > ?"),
			statusRevoked, s.now().UnixMilli(), reason, device, statusRevoked, s.now().UnixMilli())
		if err != nil {
			return fmt.Errorf("store: revoke %s: %w", device, err)
		}
		n, _ = res.RowsAffected()
		for _, r := range rows {
			s.revCache.forget(r.serial)
		}
		return nil
	})
	return int(n), err
}

// ForgetDevice is the cloud half of decommissioning over the store: it
// revokes every certificate of device (reason cessationOfOperation),
// deletes its replay windows, session-key deliveries, consent records and
// attestation nonces, and marks it forgotten. The verified records the
// application kept are the application's to delete. A forgotten device
// can enroll again only with a new token.
func (s *Store) ForgetDevice(ctx context.Context, device string) error {
	if _, err := s.RevokeDevice(ctx, device, ReasonCessationOfOperation); err != nil {
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, table := range []string{"replay", "session_keys", "parked", "consent", "attestation_nonces"} {
			if _, err := tx.ExecContext(ctx, s.q("DELETE FROM "+table+" WHERE device = ?"), device); err != nil {
				return fmt.Errorf("store: forget %s: %w", device, err)
			}
		}
		if _, err := tx.ExecContext(ctx, s.q("UPDATE devices SET forgotten_ms = ? WHERE id = ?"), s.now().UnixMilli(), device); err != nil {
			return fmt.Errorf("store: forget %s: %w", device, err)
		}
		return nil
	})
}

// CRLSigner signs a CRL of the given number listing entries
// ([identity.CA.SignCRL]).
type CRLSigner interface {
	SignCRL(number uint64, entries []x509.RevocationListEntry) ([]byte, error)
}

// CRL signs a new CRL with signer listing every revoked, unexpired
// certificate, and every certificate superseded by a renewal or a later
// enrollment more than an hour ago (reason superseded, RFC 5280 5.3.1:
// past the window in which a device that lost its renewal answer may
// still use it), numbered one above every CRL the store issued before
// (RFC 5280 5.2.3), in one transaction: two replicas never issue the same
// number, and a number is never reused. A broker loading it refuses a
// copy of an old key as it refuses a revoked one; the verifier still
// accepts what an old key signed before the renewal (envelopes queued on
// the device).
func (s *Store) CRL(ctx context.Context, signer CRLSigner) ([]byte, error) {
	var der []byte
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if s.d == postgres {
			// Serialize CRL issuance across replicas.
			if _, err := tx.ExecContext(ctx, "LOCK TABLE crls IN EXCLUSIVE MODE"); err != nil {
				return fmt.Errorf("store: CRL: %w", err)
			}
		}
		var last sql.NullInt64
		if err := tx.QueryRowContext(ctx, "SELECT MAX(number) FROM crls").Scan(&last); err != nil {
			return fmt.Errorf("store: CRL number: %w", err)
		}
		number := uint64(last.Int64) + 1
		now := s.now()
		rows, err := tx.QueryContext(ctx, s.q(`SELECT serial, revoked_ms, reason FROM certificates WHERE status = ? AND not_after_ms > ?
			UNION ALL SELECT serial, superseded_ms, ? FROM certificates WHERE status = ? AND not_after_ms > ? AND superseded_ms <= ?
			ORDER BY serial`),
			statusRevoked, now.UnixMilli(), ReasonSuperseded, statusSuperseded, now.UnixMilli(), now.Add(-renewalRetryWindow).UnixMilli())
		if err != nil {
			return fmt.Errorf("store: CRL entries: %w", err)
		}
		var entries []x509.RevocationListEntry
		for rows.Next() {
			var (
				sn      string
				at      sql.NullInt64
				reason  sql.NullInt64
				numeric big.Int
			)
			if err := rows.Scan(&sn, &at, &reason); err != nil {
				rows.Close()
				return fmt.Errorf("store: CRL entries: %w", err)
			}
			if _, ok := numeric.SetString(sn, 16); !ok {
				rows.Close()
				return fmt.Errorf("store: CRL entries: serial %q is not hexadecimal", sn)
			}
			entries = append(entries, x509.RevocationListEntry{SerialNumber: &numeric, RevocationTime: time.UnixMilli(at.Int64).UTC(), ReasonCode: int(reason.Int64)})
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("store: CRL entries: %w", err)
		}
		if der, err = signer.SignCRL(number, entries); err != nil {
			return err
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return fmt.Errorf("store: CRL signed: %w", err)
		}
		if _, err := tx.ExecContext(ctx, s.q("INSERT INTO crls (number, this_update_ms, next_update_ms) VALUES (?, ?, ?)"),
			int64(number), crl.ThisUpdate.UnixMilli(), crl.NextUpdate.UnixMilli()); err != nil {
			return fmt.Errorf("store: CRL number: %w", err)
		}
		return nil
	})
	return der, err
}

// CertificateCounts returns how many unexpired device certificates the
// store holds, by status ("valid", "superseded", "revoked").
func (s *Store) CertificateCounts(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, s.q("SELECT status, COUNT(*) FROM certificates WHERE not_after_ms > ? GROUP BY status"), s.now().UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("store: count certificates: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var (
			st string
			n  int
		)
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("store: count certificates: %w", err)
		}
		out[st] = n
	}
	return out, rows.Err()
}
