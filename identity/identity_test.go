// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/statefile"
)

func TestValidateDeviceID(t *testing.T) {
	for _, ok := range []string{"a", "sensor-1", "GW_01.eu", strings.Repeat("x", 64), "0"} {
		if err := ValidateDeviceID(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", strings.Repeat("x", 65), "a/b", "a+b", "a#", "a\x00b", "$SYS", "-lead", ".hidden",
		"_x", "a b", "a:b", "é", "dev\n"} {
		if err := ValidateDeviceID(bad); !errors.Is(err, ErrInvalidDeviceID) {
			t.Errorf("%q: %v, want ErrInvalidDeviceID", bad, err)
		}
	}
}

func TestTrustedClockFloorOnlyRises(t *testing.T) {
	path := filepath.Join(t.TempDir(), "time.state")
	wall := time.Unix(0, 0) // a device booting at 1970
	c, err := OpenTrustedClock(path, func() time.Time { return wall })
	if err != nil {
		t.Fatal(err)
	}
	if !c.Now().Equal(wall) {
		t.Fatalf("no floor yet: Now %v, want the wall clock", c.Now())
	}
	seen := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if err := c.Observe(seen); err != nil {
		t.Fatal(err)
	}
	if err := c.Observe(seen.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	// After a reboot the floor is still there, and the 1970 clock does
	// not pull trusted time below it.
	c2, err := OpenTrustedClock(path, func() time.Time { return wall })
	if err != nil {
		t.Fatal(err)
	}
	if !c2.Now().Equal(seen) || !c2.Floor().Equal(seen) {
		t.Fatalf("after restart Now %v floor %v, want %v", c2.Now(), c2.Floor(), seen)
	}
	later := seen.Add(24 * time.Hour)
	wall = later
	if !c2.Now().Equal(later) {
		t.Fatalf("a wall clock past the floor must win: %v", c2.Now())
	}
	// A corrupt floor is an error, never a silent reset to 1970.
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenTrustedClock(path, nil); !errors.Is(err, statefile.ErrCorrupt) {
		t.Fatalf("corrupt floor: %v, want ErrCorrupt", err)
	}
}

// TestExpiredCertificateAt1970 checks that a device whose clock fell back to
// 1970 still sees its certificate's expiry through the trusted-time floor.
func TestExpiredCertificateAt1970(t *testing.T) {
	f := newFleet(t, nil)
	s, id := f.enroll("dev-1970")
	f.clock.Advance(100 * 24 * time.Hour)
	// Something verified later (say update metadata) raised the floor.
	if err := s.Clock().Observe(f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	reopened, err := OpenStore(s.Dir(), StoreConfig{Time: func() time.Time { return time.Unix(0, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reopened.Renew(t.Context(), f.client(), RenewOptions{}); !errors.Is(err, ErrCertExpired) {
		t.Fatalf("renew at 1970 with an expired certificate: %v, want ErrCertExpired", err)
	}
	if now := reopened.Clock().Now(); now.Before(id.Certificate().NotAfter) {
		t.Fatalf("trusted time %v before the certificate's end %v", now, id.Certificate().NotAfter)
	}
}

func TestEnrollEd25519(t *testing.T) {
	f := newFleet(t, nil)
	s := f.device()
	id, err := s.Enroll(t.Context(), f.client(), EnrollRequest{DeviceID: "ed-1", KeyType: Ed25519, Auth: EnrollAuth{Token: f.token("ed-1")}})
	if err != nil {
		t.Fatal(err)
	}
	if id.Certificate().PublicKeyAlgorithm != x509.Ed25519 {
		t.Fatalf("key algorithm %v", id.Certificate().PublicKeyAlgorithm)
	}
}

func TestCAKeyPolicy(t *testing.T) {
	f := newFleet(t, nil)
	strict, err := LoadCA(f.caDir, CAConfig{AllowedKeys: []KeyType{ECDSAP256}, Time: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := GenerateKey(Ed25519)
	der, _ := NewCSR(k, "ed-2")
	csr, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := strict.IssueDevice(csr, "ed-2"); !errors.Is(err, ErrUnsupportedKey) {
		t.Fatalf("Ed25519 under a P-256-only policy: %v, want ErrUnsupportedKey", err)
	}
	// The issued names come from the authorized ID, never from the CSR.
	k2, _ := GenerateKey(ECDSAP256)
	der, _ = NewCSR(k2, "asked-for")
	csr, _ = ParseCSR(der)
	cert, err := strict.IssueDevice(csr, "authorized")
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "authorized" || cert.URIs[0].String() != DeviceURI("authorized") {
		t.Fatalf("issued %q %v", cert.Subject.CommonName, cert.URIs)
	}
	if cert.IsCA || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatal("device certificate must be a client-auth end entity")
	}
}

// TestIDevIDEnrollment enrolls with a manufacturer certificate instead of a
// token, and refuses an IDevID from an unknown manufacturer.
func TestIDevIDEnrollment(t *testing.T) {
	maker := newFleet(t, nil) // stands in for the manufacturer's CA
	mkIDevID := func(serial string, ca *CA) *tls.Certificate {
		k, _ := GenerateKey(ECDSAP256)
		der, _ := NewCSR(k, "idev")
		csr, _ := ParseCSR(der)
		cert, err := ca.IssueDevice(csr, "idev")
		if err != nil {
			t.Fatal(err)
		}
		// Re-issue with an 802.1AR serialNumber subject.
		tmpl := *cert
		tmpl.Subject = pkix.Name{SerialNumber: serial, CommonName: "Acme sensor"}
		tmpl.URIs, tmpl.RawSubject, tmpl.ExtraExtensions = nil, nil, nil
		c2, err := createCert(&tmpl, ca.Issuing(), k.Public(), ca.key)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Certificate{Certificate: [][]byte{c2.Raw, ca.Issuing().Raw}, PrivateKey: k}
	}
	makerRoots := x509.NewCertPool()
	makerRoots.AddCert(maker.ca.Root())
	f := newFleet(t, func(c *RegistrarConfig) { c.IDevIDRoots = makerRoots })

	s := f.device()
	id, err := s.Enroll(t.Context(), f.client(), EnrollRequest{DeviceID: "SN0001", Auth: EnrollAuth{IDevID: mkIDevID("SN0001", maker.ca)}})
	if err != nil {
		t.Fatal(err)
	}
	if id.DeviceID != "SN0001" {
		t.Fatalf("enrolled as %q", id.DeviceID)
	}
	// An IDevID for SN0002 cannot enroll SN0001.
	s2 := f.device()
	_, err = s2.Enroll(t.Context(), f.client(), EnrollRequest{DeviceID: "SN0001", Auth: EnrollAuth{IDevID: mkIDevID("SN0002", maker.ca)}})
	if !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("IDevID of another serial: %v, want ErrNotAuthorized", err)
	}
	// An IDevID from a CA the registrar does not trust is refused.
	rogue := newFleet(t, nil)
	s3 := f.device()
	_, err = s3.Enroll(t.Context(), f.client(), EnrollRequest{DeviceID: "SN0003", Auth: EnrollAuth{IDevID: mkIDevID("SN0003", rogue.ca)}})
	if !errors.Is(err, ErrUntrusted) {
		t.Fatalf("IDevID of an unknown manufacturer: %v, want ErrUntrusted", err)
	}
}

// TestRevocationSeenByRunningRegistrar revokes from another CA instance, as
// `d2c ca revoke` does beside a running registrar, which must see it at once.
func TestRevocationSeenByRunningRegistrar(t *testing.T) {
	f := newFleet(t, nil)
	s, id := f.enroll("dev-o")
	operator, err := LoadCA(f.caDir, CAConfig{Time: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := operator.Revoke(id.Certificate(), 1); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.CheckRevoked(id.Certificate()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("running CA did not see the revocation: %v", err)
	}
	if _, err := s.Renew(t.Context(), f.client(), RenewOptions{}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("renewal after revocation by another process: %v, want ErrRevoked", err)
	}
	// CRL numbers keep rising across instances.
	crl1, _ := f.ca.CRL()
	crl2, _ := operator.CRL()
	l1, _ := x509.ParseRevocationList(crl1)
	l2, _ := x509.ParseRevocationList(crl2)
	if l2.Number.Cmp(l1.Number) <= 0 || len(l2.RevokedCertificateEntries) != 1 {
		t.Fatalf("CRL numbers %v then %v, entries %d", l1.Number, l2.Number, len(l2.RevokedCertificateEntries))
	}
}

func TestCAFilesAndFleetName(t *testing.T) {
	f := newFleet(t, nil)
	for name, want := range map[string]os.FileMode{
		CARootKeyFile: 0o600, CAIssuingKeyFile: 0o600, CATokenKeyFile: 0o600,
		CATokenPublicKeyFile: 0o644, CARootCertFile: 0o644, CAIssuingCertFile: 0o644,
	} {
		st, err := os.Stat(filepath.Join(f.caDir, name))
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", name, st.Mode().Perm(), err, want)
		}
	}
	pub, err := ReadPublicKeyFile(filepath.Join(f.caDir, CATokenPublicKeyFile))
	if err != nil || !publicKeysEqual(f.issuer.Key.Public(), pub) {
		t.Fatalf("token.pub does not hold the token key's public half: %v", err)
	}
	// A CA loaded without a fleet name keeps the one given at init.
	ca, err := LoadCA(f.caDir, CAConfig{Time: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := GenerateKey(ECDSAP256)
	der, _ := NewCSR(k, "dev-n")
	csr, _ := ParseCSR(der)
	cert, err := ca.IssueDevice(csr, "dev-n")
	if err != nil {
		t.Fatal(err)
	}
	if got := cert.Subject.Organization; len(got) != 1 || got[0] != "test fleet" {
		t.Fatalf("organization %v, want the fleet name from init", got)
	}
}

func TestEnrollKeepsTheFleetItTrusts(t *testing.T) {
	f := newFleet(t, nil)
	other := newFleet(t, nil)
	s, _ := f.enroll("dev-k")
	c := f.client()
	c.BootstrapFingerprint = other.fingerprint()
	_, err := s.Enroll(t.Context(), c, EnrollRequest{DeviceID: "dev-k", Auth: EnrollAuth{Token: f.token("dev-k")}})
	if !errors.Is(err, ErrUntrusted) {
		t.Fatalf("enroll with another fleet's fingerprint into a store that trusts this one: %v, want ErrUntrusted", err)
	}
}

// TestConcurrentRevocationsNotLost revokes from two CA instances at once (as
// two `d2c ca revoke` processes would): no revocation may be lost.
func TestConcurrentRevocationsNotLost(t *testing.T) {
	f := newFleet(t, nil)
	var certs []*x509.Certificate
	for i := range 16 {
		k, _ := GenerateKey(ECDSAP256)
		id := fmt.Sprintf("dev-%d", i)
		der, _ := NewCSR(k, id)
		csr, _ := ParseCSR(der)
		c, err := f.ca.IssueDevice(csr, id)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	other, err := LoadCA(f.caDir, CAConfig{Time: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i, c := range certs {
		ca := f.ca
		if i%2 == 1 {
			ca = other
		}
		wg.Go(func() {
			if err := ca.Revoke(c, 0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	fresh, err := LoadCA(f.caDir, CAConfig{Time: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range certs {
		if err := fresh.CheckRevoked(c); !errors.Is(err, ErrRevoked) {
			t.Fatalf("revocation of %s lost", c.Subject.CommonName)
		}
	}
}

func TestIssueService(t *testing.T) {
	f := newFleet(t, nil)
	k, _ := GenerateKey(ECDSAP256)
	c, err := f.ca.IssueService(k.Public(), "verifier")
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject.CommonName != "svc:verifier" || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("service certificate %q %v", c.Subject.CommonName, c.ExtKeyUsage)
	}
	// A service certificate is not a device certificate.
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Root())
	if _, err := (DeviceCertPolicy{Roots: roots}).Verify([]*x509.Certificate{c, f.ca.Issuing()}, f.clock.Now()); !errors.Is(err, ErrInvalidDeviceID) {
		t.Fatalf("service certificate accepted as a device: %v", err)
	}
	if _, err := f.ca.IssueService(k.Public(), "a:b"); !errors.Is(err, ErrInvalidDeviceID) {
		t.Fatalf("service name with a colon: %v", err)
	}
}
