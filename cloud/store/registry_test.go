// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/transport/wire"
)

// regFleet is a fleet CA and a registrar recording into a store, served
// over HTTPS on 127.0.0.1, with a controllable clock.
type regFleet struct {
	t        *testing.T
	dir      string
	ca       *identity.CA
	store    *Store
	tokenKey crypto.Signer
	est      identity.ESTClient
	now      time.Time
}

func newRegFleet(t *testing.T, url string) *regFleet {
	t.Helper()
	f := &regFleet{t: t, dir: t.TempDir(), now: time.Now().UTC().Truncate(time.Second)}
	clock := func() time.Time { return f.now }
	var err error
	if f.ca, err = identity.InitCA(filepath.Join(f.dir, "ca"), identity.CAConfig{Fleet: "registry test", Time: clock}); err != nil {
		t.Fatal(err)
	}
	if f.tokenKey, err = identity.ReadKeyFile(filepath.Join(f.dir, "ca", identity.CATokenKeyFile)); err != nil {
		t.Fatal(err)
	}
	if f.store, err = Open(t.Context(), Config{URL: url, Now: clock}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.store.Close() })
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: f.ca, TokenKeys: []crypto.PublicKey{f.tokenKey.Public()}, Registry: f.store})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(reg)
	srv.TLS = reg.TLSConfig(testpki.Server(t, f.ca, "127.0.0.1"))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	fp := sha256.Sum256(f.ca.Root().Raw)
	f.est = identity.ESTClient{URL: srv.URL, BootstrapFingerprint: fp[:], Time: clock}
	return f
}

// enroll enrolls id over EST with a new token, in a device store of its
// own.
func (f *regFleet) enroll(id string) *identity.Store {
	f.t.Helper()
	s := f.deviceStore(filepath.Join(f.dir, "dev-"+id))
	tok, err := identity.TokenIssuer{Key: f.tokenKey, Time: func() time.Time { return f.now }}.Issue(id)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := s.Enroll(f.t.Context(), f.est, identity.EnrollRequest{DeviceID: id, Auth: identity.EnrollAuth{Token: tok}}); err != nil {
		f.t.Fatal(err)
	}
	return s
}

func (f *regFleet) deviceStore(dir string) *identity.Store {
	f.t.Helper()
	s, err := identity.OpenStore(dir, identity.StoreConfig{Time: func() time.Time { return f.now }})
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// snapshot copies a device store's directory, as a device (or a thief)
// keeping its old keys would, and opens the copy.
func (f *regFleet) snapshot(s *identity.Store) *identity.Store {
	f.t.Helper()
	dst := filepath.Join(f.dir, "copies", filepath.Base(s.Dir())+"-"+time.Now().Format("150405.000000000"))
	if err := os.CopyFS(dst, os.DirFS(s.Dir())); err != nil {
		f.t.Fatal(err)
	}
	// CopyFS makes directories 0755 and files 0644; a key store is private.
	err := filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.Chmod(p, 0o700)
		}
		return os.Chmod(p, 0o600)
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return f.deviceStore(dst)
}

func (f *regFleet) renew(s *identity.Store) (*identity.Identity, error) {
	return s.Renew(f.t.Context(), f.est, identity.RenewOptions{})
}

func (f *regFleet) status(c *x509.Certificate) string {
	f.t.Helper()
	var st string
	if err := f.store.db.QueryRow(f.store.q("SELECT status FROM certificates WHERE serial = ?"), serial(c)).Scan(&st); err != nil {
		f.t.Fatalf("status of %s: %v", serial(c), err)
	}
	return st
}

func current(t *testing.T, s *identity.Store) *x509.Certificate {
	t.Helper()
	id, err := s.Current()
	if err != nil {
		t.Fatal(err)
	}
	return id.Certificate()
}

// TestRevocationBypass is issue 12's attack: a device enrolls and renews
// twice, keeping every key; the operator revokes the two newest
// certificates; the device renews with its first. The registry refuses
// it (superseded), whatever copy of the old keys the device kept.
func TestRevocationBypass(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		f := newRegFleet(t, url)
		dev := f.enroll("thief-1")
		first := f.snapshot(dev)
		f.now = f.now.Add(2 * time.Hour) // past the lost-answer window
		if _, err := f.renew(dev); err != nil {
			t.Fatal(err)
		}
		second := f.snapshot(dev)
		f.now = f.now.Add(2 * time.Hour)
		if _, err := f.renew(dev); err != nil {
			t.Fatal(err)
		}
		certs := []*x509.Certificate{current(t, first), current(t, second), current(t, dev)}
		for i, want := range []string{statusSuperseded, statusSuperseded, statusValid} {
			if got := f.status(certs[i]); got != want {
				t.Fatalf("certificate %d is %s, want %s", i+1, got, want)
			}
		}
		for _, c := range certs[1:] {
			if err := f.store.Revoke(t.Context(), c.SerialNumber, ReasonKeyCompromise); err != nil {
				t.Fatal(err)
			}
		}
		for name, s := range map[string]*identity.Store{"the first certificate": first, "the second (revoked)": second, "the third (revoked)": dev} {
			_, err := f.renew(s)
			if err == nil {
				t.Fatalf("renewal with %s succeeded", name)
			}
			if !errors.Is(err, identity.ErrSuperseded) && !errors.Is(err, identity.ErrRevoked) {
				t.Fatalf("renewal with %s: %v, want ErrSuperseded or ErrRevoked", name, err)
			}
		}
		var n int
		if err := f.store.db.QueryRow("SELECT COUNT(*) FROM certificates").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 3 {
			t.Fatalf("%d certificates recorded, want 3 (no refused renewal recorded one)", n)
		}
		// Revoking the device revokes every certificate it ever had.
		if got, err := f.store.RevokeDevice(t.Context(), "thief-1", ReasonKeyCompromise); err != nil || got != 1 {
			t.Fatalf("RevokeDevice revoked %d (%v), want the one left", got, err)
		}
		if _, err := f.renew(first); !errors.Is(err, identity.ErrRevoked) {
			t.Fatalf("renewal with the first certificate after RevokeDevice: %v, want ErrRevoked", err)
		}
	})
}

// TestRenewalLostAnswer: a device whose renewal answer was lost still
// holds the superseded certificate and may renew with it again within the
// retry window (its lost successor superseded in turn); past the window,
// or once the successor renewed, it may not.
func TestRenewalLostAnswer(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		f := newRegFleet(t, url)
		dev := f.enroll("lossy-1")
		kept, keptAgain := f.snapshot(dev), f.snapshot(dev) // two copies of the first certificate
		if _, err := f.renew(dev); err != nil {             // the answer the device "lost"
			t.Fatal(err)
		}
		lost := current(t, dev)
		retried, err := f.renew(kept)
		if err != nil {
			t.Fatalf("renewal retried with the superseded certificate: %v", err)
		}
		if f.status(lost) != statusSuperseded || f.status(retried.Certificate()) != statusValid {
			t.Fatalf("after the retry: lost certificate %s, new one %s", f.status(lost), f.status(retried.Certificate()))
		}
		// The lost successor cannot renew any more.
		if _, err := f.renew(dev); !errors.Is(err, identity.ErrSuperseded) {
			t.Fatalf("renewal with the lost successor: %v, want ErrSuperseded", err)
		}
		// Once the new certificate renews, the first one is done for.
		if _, err := f.renew(kept); err != nil {
			t.Fatal(err)
		}
		if _, err := f.renew(keptAgain); !errors.Is(err, identity.ErrSuperseded) {
			t.Fatalf("renewal with a certificate whose successor renewed: %v, want ErrSuperseded", err)
		}
		// Past the window, even the direct predecessor may not.
		older := f.snapshot(kept)
		if _, err := f.renew(kept); err != nil {
			t.Fatal(err)
		}
		f.now = f.now.Add(renewalRetryWindow + time.Minute)
		if _, err := f.renew(older); !errors.Is(err, identity.ErrSuperseded) {
			t.Fatalf("renewal with the predecessor past the retry window: %v, want ErrSuperseded", err)
		}
	})
}

// TestEnrollmentRecordedWithToken: the certificate is recorded in the
// transaction that consumes the token: a reused token is refused and
// records nothing; a second enrollment supersedes the first certificate;
// DeviceCertificates serves the chains with their issuing CA.
func TestEnrollmentRecordedWithToken(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		f := newRegFleet(t, url)
		tok, err := identity.TokenIssuer{Key: f.tokenKey, Time: func() time.Time { return f.now }}.Issue("cam-1")
		if err != nil {
			t.Fatal(err)
		}
		a := f.deviceStore(filepath.Join(f.dir, "a"))
		if _, err := a.Enroll(t.Context(), f.est, identity.EnrollRequest{DeviceID: "cam-1", Auth: identity.EnrollAuth{Token: tok}}); err != nil {
			t.Fatal(err)
		}
		b := f.deviceStore(filepath.Join(f.dir, "b"))
		if _, err := b.Enroll(t.Context(), f.est, identity.EnrollRequest{DeviceID: "cam-1", Auth: identity.EnrollAuth{Token: tok}}); !errors.Is(err, identity.ErrTokenReused) {
			t.Fatalf("reused token: %v, want ErrTokenReused", err)
		}
		second := f.enroll("cam-1")
		if f.status(current(t, a)) != statusSuperseded || f.status(current(t, second)) != statusValid {
			t.Fatal("a second enrollment did not supersede the first certificate")
		}
		chains, err := f.store.DeviceCertificates(t.Context(), "cam-1")
		if err != nil {
			t.Fatal(err)
		}
		if len(chains) != 2 || !chains[0][0].Equal(current(t, second)) || len(chains[0]) < 2 || !chains[0][1].Equal(f.ca.Issuing()) {
			t.Fatalf("DeviceCertificates: %d chains; want the newest first, each with its issuing CA", len(chains))
		}
		var n int
		if err := f.store.db.QueryRow("SELECT COUNT(*) FROM certificates").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("%d certificates recorded, want 2", n)
		}
	})
}

// TestDeviceCertificatesCache: a process serves a device's chains from
// its cache, yet a registry change it makes itself (renewal, revocation)
// takes effect there at once; another process's cache serves what it read
// until FreshDeviceCertificates (which the verifier calls before refusing
// a signature) reads past it.
func TestDeviceCertificatesCache(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		f := newRegFleet(t, url)
		other := openStore(t, url) // another verifier process
		dev := f.enroll("cached-1")
		first := current(t, dev)
		leaves := func(s *Store, fresh bool) []*x509.Certificate {
			t.Helper()
			get := s.DeviceCertificates
			if fresh {
				get = s.FreshDeviceCertificates
			}
			chains, err := get(t.Context(), "cached-1")
			if errors.Is(err, wire.ErrUnknownDevice) || errors.Is(err, identity.ErrRevoked) {
				return nil
			}
			if err != nil {
				t.Fatal(err)
			}
			var out []*x509.Certificate
			for _, c := range chains {
				out = append(out, c[0])
			}
			return out
		}
		for _, s := range []*Store{f.store, other} {
			if got := leaves(s, false); len(got) != 1 || !got[0].Equal(first) {
				t.Fatalf("after enrollment: %d chains, want the one certificate", len(got))
			}
		}
		f.now = f.now.Add(2 * time.Hour)
		if _, err := f.renew(dev); err != nil {
			t.Fatal(err)
		}
		renewed := current(t, dev)
		if got := leaves(f.store, false); len(got) != 2 || !got[0].Equal(renewed) {
			t.Fatalf("renewed in this process: %d chains, want the new one first, then the superseded", len(got))
		}
		if got := leaves(other, false); len(got) != 1 || !got[0].Equal(first) {
			t.Fatalf("renewed in another process: %d chains at once, want the cached one (for up to %v)", len(got), certCacheTTL)
		}
		if got := leaves(other, true); len(got) != 2 || !got[0].Equal(renewed) {
			t.Fatalf("FreshDeviceCertificates: %d chains, want the new one first", len(got))
		}
		if got := leaves(other, false); len(got) != 2 {
			t.Fatalf("after FreshDeviceCertificates: %d chains cached, want 2", len(got))
		}
		if _, err := f.store.RevokeDevice(t.Context(), "cached-1", ReasonKeyCompromise); err != nil {
			t.Fatal(err)
		}
		if got := leaves(f.store, false); got != nil {
			t.Fatalf("revoked in this process: %d chains served, want none", len(got))
		}
		if got := leaves(other, true); got != nil {
			t.Fatalf("revoked, read past the cache: %d chains served, want none", len(got))
		}
		// The lookup says why: the device is revoked, not unknown.
		if _, err := other.FreshDeviceCertificates(t.Context(), "cached-1"); !errors.Is(err, identity.ErrRevoked) {
			t.Fatalf("lookup of a revoked device: %v, want ErrRevoked", err)
		}
		if _, err := other.FreshDeviceCertificates(t.Context(), "never-1"); !errors.Is(err, wire.ErrUnknownDevice) {
			t.Fatalf("lookup of an unknown device: %v, want ErrUnknownDevice", err)
		}
		// What the other process may still serve from its cache, the
		// verifier's revocation check refuses (it has not asked about this
		// certificate before, so it reads the database).
		if err := other.CheckRevoked(renewed); !errors.Is(err, identity.ErrRevoked) {
			t.Fatalf("CheckRevoked in the other process: %v, want ErrRevoked", err)
		}
	})
}
