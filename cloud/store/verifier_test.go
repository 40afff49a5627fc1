// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

// verifierFleet is a CA, one device and the cloud's decryption key.
type verifierFleet struct {
	ca    *identity.CA
	certs *transport.MemoryCertificates
	roots *x509.CertPool
	cloud *ecdsa.PrivateKey
	key   identity.Identity
	now   time.Time
}

func newVerifierFleet(t *testing.T) *verifierFleet {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	ca, err := identity.InitCA(filepath.Join(t.TempDir(), "ca"), identity.CAConfig{Fleet: "store test", Time: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	cloud, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	key, _ := identity.GenerateKey(identity.ECDSAP256)
	der, _ := identity.NewCSR(key, "dev-s")
	csr, _ := identity.ParseCSR(der)
	cert, err := ca.IssueDevice(csr, "dev-s")
	if err != nil {
		t.Fatal(err)
	}
	certs := &transport.MemoryCertificates{}
	certs.Add(cert, ca.Issuing())
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	return &verifierFleet{ca: ca, certs: certs, roots: roots, cloud: cloud, key: identity.Identity{DeviceID: "dev-s", Key: key}, now: now}
}

func (f *verifierFleet) verifier(t *testing.T, s *Store) *transport.Verifier {
	t.Helper()
	v, err := transport.NewVerifier(transport.VerifierConfig{Certificates: f.certs, Policy: identity.DeviceCertPolicy{Roots: f.roots, Revocations: f.ca},
		DecryptionKey: f.cloud, Replay: s, SessionKeys: s, Time: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestVerifiersShareTheStore: verifier processes on one store (here, one
// Store handle each) open every session-key envelope whose delivery any
// of them accepted, also one started after the delivery; accept each
// record once whichever receives it; refuse a replay whichever receives
// it; refuse an old delivery replayed once newer ones are kept; and the
// database holds the deliveries as received, never a plaintext key.
func TestVerifiersShareTheStore(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		f := newVerifierFleet(t)
		a := f.verifier(t, openStore(t, url))
		clock := func() time.Time { return f.now }
		sealer, err := transport.NewSealer("dev-s", f.key.Key, &transport.Encryption{CloudKey: &f.cloud.PublicKey, RotateAfter: 3}, clock)
		if err != nil {
			t.Fatal(err)
		}
		var envs, deliveries [][]byte
		for seq := range uint64(3 * (keptKeyDeliveries + 2)) {
			f.now = f.now.Add(time.Second)
			out, err := sealer.Seal(transport.Record{Stream: "temp", Boot: 1, Seq: seq, Time: f.now,
				Readings: []transport.Reading{{Time: f.now, Body: fmt.Appendf(nil, "%d", seq)}}})
			if err != nil {
				t.Fatal(err)
			}
			if out.KeyDelivery != nil {
				deliveries = append(deliveries, out.KeyDelivery)
				if _, err := a.Verify(t.Context(), wire.KeyTopic("dev-s"), out.KeyDelivery); err != nil {
					t.Fatalf("delivery %d: %v", len(deliveries), err)
				}
			}
			envs = append(envs, out.Envelope)
		}
		// b starts late: it never saw a delivery, and opens the envelopes
		// of every key the store keeps (the last 8 deliveries).
		b := f.verifier(t, openStore(t, url))
		firstKept := 3 * (len(deliveries) - keptKeyDeliveries)
		for i, env := range envs {
			v := a
			if i%2 == 1 {
				v = b
			}
			_, err := v.Verify(t.Context(), wire.TelemetryTopic("dev-s", "temp"), env)
			switch {
			case i >= firstKept && err != nil:
				t.Fatalf("envelope %d (key kept) by verifier %c: %v", i, "ab"[i%2], err)
			case i < firstKept && i%2 == 1 && !errors.Is(err, transport.ErrParked):
				// No verifier can open it any more: parked, never accepted
				// (it expires from the parking within a day).
				t.Fatalf("envelope %d (key no longer kept) by the late verifier: %v, want ErrParked", i, err)
			}
		}
		// Each is accepted once: every redelivery to either is a duplicate.
		for i := firstKept; i < len(envs); i++ {
			for _, v := range []*transport.Verifier{a, b} {
				if _, err := v.Verify(t.Context(), wire.TelemetryTopic("dev-s", "temp"), envs[i]); !errors.Is(err, wire.ErrDuplicate) {
					t.Fatalf("envelope %d again: %v, want ErrDuplicate", i, err)
				}
			}
		}
		// The first delivery, replayed, is older than the 8 kept.
		if _, err := b.Verify(t.Context(), wire.KeyTopic("dev-s"), deliveries[0]); !errors.Is(err, wire.ErrReplay) {
			t.Fatalf("replayed first delivery: %v, want ErrReplay", err)
		}
		s := openStore(t, url)
		var kept int
		if err := s.db.QueryRow("SELECT COUNT(*) FROM session_keys WHERE device = 'dev-s'").Scan(&kept); err != nil {
			t.Fatal(err)
		}
		if kept != keptKeyDeliveries {
			t.Fatalf("%d deliveries kept, want %d", kept, keptKeyDeliveries)
		}
		rows, err := s.db.Query("SELECT delivery FROM session_keys")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var d []byte
			if err := rows.Scan(&d); err != nil {
				t.Fatal(err)
			}
			found := false
			for _, x := range deliveries {
				found = found || string(x) == string(d)
			}
			if !found {
				t.Fatal("a kept delivery is not one of the deliveries as received")
			}
		}
		var records int
		if err := s.db.QueryRow("SELECT COUNT(*) FROM records").Scan(&records); err != nil {
			t.Fatal(err)
		}
		// Verifier a still holds the first keys it opened in its cache,
		// so it accepted its share of the early envelopes too.
		if want := len(envs) - firstKept + (firstKept+1)/2; records != want {
			t.Fatalf("%d records, want %d", records, want)
		}
	})
}

// TestParkedUntilKeyArrives: an envelope reaching verifier b before its
// session key's delivery reached verifier a is parked, not refused; once a
// keeps the delivery, b (or any verifier) accepts the envelope from the
// parking, once, and nothing stays parked. Parking is bounded per device.
func TestParkedUntilKeyArrives(t *testing.T) {
	backends(t, func(t *testing.T, url string) {
		f := newVerifierFleet(t)
		a, b := f.verifier(t, openStore(t, url)), f.verifier(t, openStore(t, url))
		sealer, err := transport.NewSealer("dev-s", f.key.Key, &transport.Encryption{CloudKey: &f.cloud.PublicKey}, func() time.Time { return f.now })
		if err != nil {
			t.Fatal(err)
		}
		out, err := sealer.Seal(transport.Record{Stream: "temp", Boot: 1, Seq: 1, Time: f.now, Readings: []transport.Reading{{Time: f.now, Body: []byte("first")}}})
		if err != nil {
			t.Fatal(err)
		}
		topic := wire.TelemetryTopic("dev-s", "temp")
		if _, err := b.Verify(t.Context(), topic, out.Envelope); !errors.Is(err, transport.ErrParked) {
			t.Fatalf("envelope before its key: %v, want ErrParked", err)
		}
		if recs, err := b.VerifyParked(t.Context(), 10); err != nil || len(recs) != 0 {
			t.Fatalf("parked envelopes verified before the key arrived: %d, %v", len(recs), err)
		}
		if _, err := a.Verify(t.Context(), wire.KeyTopic("dev-s"), out.KeyDelivery); err != nil {
			t.Fatal(err)
		}
		recs, err := b.VerifyParked(t.Context(), 10)
		if err != nil || len(recs) != 1 || string(recs[0].Readings[0].Body) != "first" {
			t.Fatalf("after the key arrived: %d records, %v", len(recs), err)
		}
		if recs, err := a.VerifyParked(t.Context(), 10); err != nil || len(recs) != 0 {
			t.Fatalf("verified twice from the parking: %d, %v", len(recs), err)
		}
		s := openStore(t, url)
		var parked int
		if err := s.db.QueryRow("SELECT COUNT(*) FROM parked").Scan(&parked); err != nil || parked != 0 {
			t.Fatalf("%d envelopes still parked (%v)", parked, err)
		}
		// A device (or whoever forges under its name) naming keys that
		// never come fills its parking, then is refused.
		junk := []byte(strings.Replace(string(out.Envelope), ".", "X.", 1))
		var refused error
		for range parkedPerDevice + 1 {
			if err := s.Park(t.Context(), "dev-j", "never", transport.Inbound{Topic: topic, Payload: junk}); err != nil {
				refused = err
			}
		}
		if !errors.Is(refused, ErrParkingFull) {
			t.Fatalf("parking past the bound: %v, want ErrParkingFull", refused)
		}
	})
}
