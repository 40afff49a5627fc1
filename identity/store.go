// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

// Files inside a device store directory.
const (
	storeAnchorsFile = "anchors.pem"
	storeTimeFile    = "time.state"
	keyFilePattern   = "key-%08d.pem"
	keyRefPattern    = "key-%08d.ref" // label of a key kept in a Keystore
	storeLabelFile   = "keys.label"   // this store's prefix for key labels
	certFilePattern  = "cert-%08d.pem"
)

// Identity is a device's current credential: its ID, its key (only ever a
// crypto.Signer) and its certificate chain, leaf first.
type Identity struct {
	DeviceID string
	Key      crypto.Signer
	Chain    []*x509.Certificate
	// Generation counts renewals; each has its own key.
	Generation int
}

// Certificate returns the device certificate.
func (id *Identity) Certificate() *x509.Certificate { return id.Chain[0] }

// TLSCertificate returns the identity as a TLS client certificate.
func (id *Identity) TLSCertificate() tls.Certificate {
	tc := tls.Certificate{PrivateKey: id.Key, Leaf: id.Chain[0]}
	for _, c := range id.Chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc
}

// StoreConfig configures a [Store]. The zero value is the default.
type StoreConfig struct {
	// Time is the wall clock. Default time.Now. Certificate checks use the
	// store's [TrustedClock], which never goes below what was verified.
	Time func() time.Time
	// Keys keeps the device keys in hardware (identity/pkcs11,
	// identity/tpm). Default nil: PKCS#8 files in the store directory.
	// A store keeps the kind of keys it was created with: a file key in a
	// store opened with a Keystore, or the reverse, is not loaded.
	Keys Keystore
	// KeyLabelPrefix starts the label of each hardware key, followed by
	// the generation number; stores sharing one token need distinct
	// prefixes. Default "d2c-device".
	KeyLabelPrefix string
}

// Store is the device half of identity: a directory (mode 0700) holding the
// fleet trust anchors, the trusted-time floor, and generations of key
// (PKCS#8, 0600) and certificate.
//
// A generation is complete when both its key and its certificate are on
// disk; the newest complete generation is the current identity. Renewal
// writes a new generation and only then removes the old one, each file
// atomically, so a crash or power cut at any instant leaves a usable
// identity: the old one or the new one, never neither.
//
// One process owns a store; within it, enrollments and renewals are
// serialized.
type Store struct {
	dir   string
	fsys  atomicfile.FS
	clock *TrustedClock
	keys  Keystore
	label string

	mu sync.Mutex // serializes install
}

// OpenStore opens (creating if needed) the device store in dir. It refuses a
// directory that group or others can access.
func OpenStore(dir string, cfg StoreConfig) (*Store, error) {
	return openStore(nil, dir, cfg)
}

func openStore(fsys atomicfile.FS, dir string, cfg StoreConfig) (*Store, error) {
	if fsys == nil {
		fsys = atomicfile.OS{}
	}
	if err := atomicfile.MkdirPrivate(fsys, dir); err != nil {
		return nil, err
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("identity: store: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: store directory %s has mode %04o (want 0700: chmod 700 %s)", ErrKeyPermissions, dir, st.Mode().Perm(), dir)
	}
	clock, err := openTrustedClock(fsys, filepath.Join(dir, storeTimeFile), cfg.Time)
	if err != nil {
		return nil, err
	}
	s := &Store{dir: dir, fsys: fsys, clock: clock, keys: cfg.Keys, label: cfg.KeyLabelPrefix}
	if s.keys != nil && s.label == "" {
		if s.label, err = s.storeLabel(); err != nil {
			return nil, err
		}
	}
	// Temporary files left by a crash mid-write are never part of state.
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*")); len(tmps) > 0 {
		for _, t := range tmps {
			_ = atomicfile.Scrub(t) // perhaps a key half written
			_ = os.Remove(t)
		}
	}
	if id, err := s.Current(); err == nil {
		// A certificate we verified proves the time is past its start.
		if err := clock.Observe(id.Certificate().NotBefore); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Dir returns the store directory.
func (s *Store) Dir() string { return s.dir }

// Clock returns the device's trusted clock, persisted in the store.
func (s *Store) Clock() *TrustedClock { return s.clock }

// Anchors returns the fleet trust anchors saved at enrollment.
func (s *Store) Anchors() ([]*x509.Certificate, error) {
	b, err := atomicfile.ReadFile(filepath.Join(s.dir, storeAnchorsFile), limits.PEMFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no trust anchors in %s", ErrNoIdentity, s.dir)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: anchors: %w", err)
	}
	return ParseCertificatesPEM(b)
}

// SetAnchors saves the fleet trust anchors (root and intermediates).
func (s *Store) SetAnchors(certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return fmt.Errorf("%w: no anchor", ErrMalformed)
	}
	return atomicfile.WriteFile(s.fsys, filepath.Join(s.dir, storeAnchorsFile), EncodeCertificatesPEM(certs...))
}

// generations lists generation numbers that have a key or a certificate
// file, newest first, and whether each is complete.
func (s *Store) generations() (all []int, complete map[int]bool, err error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: store: %w", err)
	}
	keys, certs := map[int]bool{}, map[int]bool{}
	for _, e := range entries {
		var g int
		switch n := e.Name(); {
		case s.keys == nil && scanGen(n, keyRefPattern, &g):
			// Never mistake a hardware-key store for an empty one: that
			// would invite an enrollment with a software key.
			return nil, nil, fmt.Errorf("%w: %s holds keys in a hardware keystore (%s): open it with StoreConfig.Keys", ErrKeystore, s.dir, n)
		case s.keys != nil && scanGen(n, keyFilePattern, &g):
			return nil, nil, fmt.Errorf("%w: %s holds a software key file (%s), not a hardware key: a keystore store never loads one", ErrKeystore, s.dir, n)
		case scanGen(n, keyFilePattern, &g), scanGen(n, keyRefPattern, &g):
			keys[g] = true
		case scanGen(n, certFilePattern, &g):
			certs[g] = true
		default:
			continue
		}
		if !containsInt(all, g) {
			all = append(all, g)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(all)))
	complete = map[int]bool{}
	for _, g := range all {
		complete[g] = keys[g] && certs[g]
	}
	return all, complete, nil
}

func scanGen(name, pattern string, g *int) bool {
	n, err := fmt.Sscanf(name, pattern, g)
	return err == nil && n == 1 && fmt.Sprintf(pattern, *g) == name
}

func containsInt(xs []int, x int) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

func (s *Store) keyPath(g int) string {
	if s.keys != nil {
		return filepath.Join(s.dir, fmt.Sprintf(keyRefPattern, g))
	}
	return filepath.Join(s.dir, fmt.Sprintf(keyFilePattern, g))
}

// storeLabel returns this store's label prefix for hardware keys, made
// once at random and kept in the store, so that stores sharing one token
// never name a key alike.
func (s *Store) storeLabel() (string, error) {
	path := filepath.Join(s.dir, storeLabelFile)
	b, err := atomicfile.ReadFile(path, 64)
	if err == nil {
		label := strings.TrimSpace(string(b))
		if label == "" || strings.ContainsAny(label, "\x00\n/") {
			return "", fmt.Errorf("%w: %s", ErrMalformed, path)
		}
		return label, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("identity: store label: %w", err)
	}
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	label := fmt.Sprintf("d2c-%x", r)
	if err := atomicfile.WriteFile(s.fsys, path, []byte(label+"\n")); err != nil {
		return "", err
	}
	return label, nil
}

// keyLabel is the label of generation g's key in the Keystore.
func (s *Store) keyLabel(g int) string { return fmt.Sprintf("%s-%08d", s.label, g) }

// readKey loads generation g's key: from its file, or from the Keystore by
// the label its reference file holds.
func (s *Store) readKey(ctx context.Context, g int) (crypto.Signer, error) {
	if s.keys == nil {
		return ReadKeyFile(s.keyPath(g))
	}
	label, err := s.readLabel(g)
	if err != nil {
		return nil, err
	}
	k, err := s.keys.Open(ctx, label)
	if err != nil {
		return nil, fmt.Errorf("%w: open key %q: %w", ErrKeystore, label, err)
	}
	return k, nil
}

func (s *Store) readLabel(g int) (string, error) {
	b, err := atomicfile.ReadFile(s.keyPath(g), 256)
	if err != nil {
		return "", fmt.Errorf("identity: key reference: %w", err)
	}
	label := strings.TrimSpace(string(b))
	if label == "" || strings.ContainsAny(label, "\x00\n") {
		return "", fmt.Errorf("%w: key reference %s", ErrMalformed, s.keyPath(g))
	}
	return label, nil
}

// newKey makes generation g's key, durable before it is used: a file, or
// a Keystore key whose label is recorded first, so that a crash never
// leaves a hardware key nobody knows of.
func (s *Store) newKey(ctx context.Context, g int, kt KeyType) (crypto.Signer, error) {
	if s.keys == nil {
		key, err := GenerateKey(kt)
		if err != nil {
			return nil, err
		}
		return key, writeKeyFile(s.fsys, s.keyPath(g), key)
	}
	label := s.keyLabel(g)
	if err := atomicfile.WriteFile(s.fsys, s.keyPath(g), []byte(label+"\n")); err != nil {
		return nil, err
	}
	key, err := s.keys.Create(ctx, label, kt)
	if err != nil {
		return nil, fmt.Errorf("%w: create key %q: %w", ErrKeystore, label, err)
	}
	return key, nil
}

// removeKey destroys generation g's key and its file.
//
// A hardware key is deleted in the keystore first, and its reference file
// is removed only once that succeeded, so that a failed deletion can be
// retried; an unreadable reference falls back to the label this store
// would have given. A key file is scrubbed (overwritten, fsynced) before
// it is removed: renewals must not leave old certified keys in freed
// blocks.
func (s *Store) removeKey(ctx context.Context, g int) error {
	if s.keys != nil {
		label, err := s.readLabel(g)
		if err != nil {
			label = s.keyLabel(g)
		}
		if err := s.keys.Delete(ctx, label); err != nil {
			return fmt.Errorf("%w: delete key %q: %w", ErrKeystore, label, err)
		}
	} else if err := atomicfile.Scrub(s.keyPath(g)); err != nil {
		return err
	}
	return atomicfile.Remove(s.fsys, s.keyPath(g))
}
func (s *Store) certPath(g int) string { return filepath.Join(s.dir, fmt.Sprintf(certFilePattern, g)) }

// Current returns the newest complete identity, or [ErrNoIdentity]. A key
// file readable by others fails with [ErrKeyPermissions], a keystore that
// cannot open the key with [ErrKeystore].
func (s *Store) Current() (*Identity, error) {
	all, complete, err := s.generations()
	if err != nil {
		return nil, err
	}
	var firstErr error
	for _, g := range all {
		if !complete[g] {
			continue
		}
		id, err := s.load(g)
		if err == nil {
			return id, nil
		}
		if errors.Is(err, ErrKeyPermissions) || errors.Is(err, ErrKeystore) {
			return nil, err // never skip to an older generation, nor hide the cause
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoIdentity, firstErr)
	}
	return nil, fmt.Errorf("%w: no key and certificate in %s", ErrNoIdentity, s.dir)
}

func (s *Store) load(g int) (*Identity, error) {
	key, err := s.readKey(context.Background(), g)
	if err != nil {
		return nil, err
	}
	b, err := atomicfile.ReadFile(s.certPath(g), limits.PEMFile)
	if err != nil {
		return nil, fmt.Errorf("identity: certificate: %w", err)
	}
	chain, err := ParseCertificatesPEM(b)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(key.Public(), chain[0].PublicKey) {
		return nil, fmt.Errorf("%w: generation %d: key does not match certificate", ErrMalformed, g)
	}
	id, err := deviceIDOf(chain[0])
	if err != nil {
		return nil, err
	}
	return &Identity{DeviceID: id, Key: key, Chain: chain, Generation: g}, nil
}

// nextGeneration returns a number above every generation on disk, complete
// or not, so a half-written one from a crash is never reused.
func (s *Store) nextGeneration() (int, error) {
	all, _, err := s.generations()
	if err != nil {
		return 0, err
	}
	if len(all) == 0 {
		return 1, nil
	}
	return all[0] + 1, nil
}

// install runs the common tail of enrollment and renewal: it generates the
// key of a new generation, makes its CSR with makeCSR, lets issue obtain a
// certificate for it, verifies the certificate, then commits and removes
// older generations.
func (s *Store) install(ctx context.Context, id string, kt KeyType, makeCSR func(crypto.Signer) ([]byte, error),
	issue func(ctx context.Context, csr []byte) (*x509.Certificate, error)) (*Identity, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	anchors, err := s.Anchors()
	if err != nil {
		return nil, err
	}
	g, err := s.nextGeneration()
	if err != nil {
		return nil, err
	}
	// The key is durable before it is used, so that a certificate is
	// never issued for a key that a crash could lose.
	key, err := s.newKey(ctx, g, kt)
	if err != nil {
		s.discard(g)
		return nil, err
	}
	csr, err := makeCSR(key)
	if err != nil {
		s.discard(g)
		return nil, err
	}
	cert, err := issue(ctx, csr)
	if err != nil {
		s.discard(g)
		return nil, err
	}
	chain, err := s.verifyIssued(cert, key, id, anchors)
	if err != nil {
		s.discard(g)
		return nil, err
	}
	if err := atomicfile.WriteFile(s.fsys, s.certPath(g), EncodeCertificatesPEM(chain...)); err != nil {
		return nil, err
	}
	// Committed: the new generation is current, whatever happens next, so
	// the caller gets it without an error. Raising the time floor and
	// removing older generations are best effort: a failure (or a crash)
	// leaves them for the next open or renewal, which prune again.
	_ = s.clock.Observe(cert.NotBefore)
	_ = s.prune(g)
	return &Identity{DeviceID: id, Key: key, Chain: chain, Generation: g}, nil
}

// verifyIssued checks that cert is for key and id and chains to the anchors
// at trusted time; it returns the chain to store (leaf and intermediates).
func (s *Store) verifyIssued(cert *x509.Certificate, key crypto.Signer, id string, anchors []*x509.Certificate) ([]*x509.Certificate, error) {
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("%w: issued certificate is for another key", ErrUntrusted)
	}
	if got, err := deviceIDOf(cert); err != nil || got != id {
		return nil, fmt.Errorf("%w: issued certificate is for %q, want %q", ErrUntrusted, truncate(cert.Subject.CommonName), id)
	}
	var roots, inter []*x509.Certificate
	for _, a := range anchors {
		if a.CheckSignatureFrom(a) == nil {
			roots = append(roots, a)
		} else {
			inter = append(inter, a)
		}
	}
	if err := verifyChain([]*x509.Certificate{cert}, inter, roots, s.clock.Now(), x509.ExtKeyUsageClientAuth, ""); err != nil {
		return nil, fmt.Errorf("%w: issued certificate: %v", ErrUntrusted, err)
	}
	chain := []*x509.Certificate{cert}
	for _, c := range inter {
		if cert.CheckSignatureFrom(c) == nil {
			chain = append(chain, c)
			break
		}
	}
	return chain, nil
}

// discard removes the files of an uncommitted generation.
func (s *Store) discard(g int) {
	_ = atomicfile.Remove(s.fsys, s.certPath(g))
	_ = s.removeKey(context.Background(), g)
}

// prune removes every generation but keep. Certificates go first so that a
// crash never leaves a generation that looks complete without its key.
func (s *Store) prune(keep int) error {
	all, _, err := s.generations()
	if err != nil {
		return err
	}
	for _, g := range all {
		if g == keep {
			continue
		}
		if err := atomicfile.Remove(s.fsys, s.certPath(g)); err != nil {
			return err
		}
		if err := s.removeKey(context.Background(), g); err != nil {
			return err
		}
	}
	return nil
}

// EnrollRequest describes a first enrollment.
type EnrollRequest struct {
	// DeviceID is the identity to enroll. Required.
	DeviceID string
	// Auth is the enrollment credential (token or IDevID). Required.
	Auth EnrollAuth
	// KeyType of the new device key. Default ECDSA P-256.
	KeyType KeyType
}

// Enroll performs a first enrollment over EST: it fetches the CA
// certificates (bootstrapping trust from client.BootstrapFingerprint if the
// store has no anchors yet), generates a key on the device, sends its CSR
// with the credential, verifies the issued certificate and commits it.
func (s *Store) Enroll(ctx context.Context, client ESTClient, req EnrollRequest) (*Identity, error) {
	if err := ValidateDeviceID(req.DeviceID); err != nil {
		return nil, err
	}
	client.Time = s.clock.Now
	if anchors, err := s.Anchors(); err == nil && len(client.Anchors) == 0 {
		// A store that already trusts a fleet keeps trusting it; a
		// fingerprint naming another fleet is an error, not ignored.
		if len(client.BootstrapFingerprint) > 0 && !containsFingerprint(anchors, client.BootstrapFingerprint) {
			return nil, fmt.Errorf("%w: store %s already trusts another fleet root than the fingerprint given", ErrUntrusted, s.dir)
		}
		client.Anchors = anchors
	}
	cas, err := client.CACerts(ctx)
	if err != nil {
		return nil, fmt.Errorf("identity: enroll %s: %w", req.DeviceID, err)
	}
	if err := s.SetAnchors(cas); err != nil {
		return nil, err
	}
	client.Anchors = cas
	auth := req.Auth
	if auth.DeviceID == "" {
		auth.DeviceID = req.DeviceID
	}
	enrollment := func(key crypto.Signer) ([]byte, error) { return NewCSR(key, req.DeviceID) }
	id, err := s.install(ctx, req.DeviceID, req.KeyType, enrollment, func(ctx context.Context, csr []byte) (*x509.Certificate, error) {
		return client.Enroll(ctx, csr, auth)
	})
	if err != nil {
		return nil, fmt.Errorf("identity: enroll %s: %w", req.DeviceID, err)
	}
	return id, nil
}

// RenewOptions tune [Store.Renew]. The zero value is the default.
type RenewOptions struct {
	// KeyType of the new key. Default ECDSA P-256.
	KeyType KeyType
	// AllowExpired lets a device whose certificate has expired try to
	// renew with it (the registrar must allow it too). Default false: an
	// expired device must enroll again.
	AllowExpired bool
}

// Renew obtains a new key and certificate with the current certificate
// (EST simplereenroll). On any failure the current identity stays in place
// and keeps working.
func (s *Store) Renew(ctx context.Context, client ESTClient, opts RenewOptions) (*Identity, error) {
	cur, err := s.Current()
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	if leaf := cur.Certificate(); now.After(leaf.NotAfter) && !opts.AllowExpired {
		return nil, fmt.Errorf("%w: %s expired at %s; enroll again, or opt in to renewal after expiry",
			ErrCertExpired, cur.DeviceID, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	anchors, err := s.Anchors()
	if err != nil {
		return nil, err
	}
	client.Anchors = anchors
	client.Time = s.clock.Now
	// RFC 7030 4.2.2: the request keeps the subject and subjectAltName
	// of the certificate it renews.
	renewal := func(key crypto.Signer) ([]byte, error) { return NewRenewalCSR(key, cur.Certificate()) }
	id, err := s.install(ctx, cur.DeviceID, opts.KeyType, renewal, func(ctx context.Context, csr []byte) (*x509.Certificate, error) {
		return client.Reenroll(ctx, csr, cur.TLSCertificate())
	})
	if err != nil {
		return nil, fmt.Errorf("identity: renew %s: %w", cur.DeviceID, err)
	}
	return id, nil
}

func containsFingerprint(certs []*x509.Certificate, fp []byte) bool {
	for _, c := range certs {
		if sum := sha256.Sum256(c.Raw); bytes.Equal(sum[:], fp) {
			return true
		}
	}
	return false
}
