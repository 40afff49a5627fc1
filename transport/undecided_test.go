// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
)

// flakyRegistry fails its first lookups as a database that dropped the
// connection would.
type flakyRegistry struct {
	transport.Certificates
	failures atomic.Int32
}

func (f *flakyRegistry) DeviceCertificates(ctx context.Context, device string) ([][]*x509.Certificate, error) {
	if f.failures.Add(-1) >= 0 {
		return nil, errors.New("store: read certificates: read tcp 127.0.0.1:5432: connection reset by peer")
	}
	return f.Certificates.DeviceCertificates(ctx, device)
}

// flakyRevocations cannot answer its first checks: fail closed, and say
// the answer is undecided (as cloud/store does).
type flakyRevocations struct {
	identity.RevocationChecker
	failures atomic.Int32
}

func (f *flakyRevocations) CheckRevoked(c *x509.Certificate) error {
	if f.failures.Add(-1) >= 0 {
		return fmt.Errorf("%w: %w: revocation status unavailable", identity.ErrRevoked, transport.ErrReplayState)
	}
	return f.RevocationChecker.CheckRevoked(c)
}

// TestCloudHoldsUndecided: when the verifier's shared state cannot answer
// in the first stage (a registry lookup that fails, a revocation check
// that cannot be made), the cloud service neither accepts nor refuses:
// it holds the acknowledgement and verifies again, so every genuine
// reading arrives, none refused, none twice.
func TestCloudHoldsUndecided(t *testing.T) {
	f := newE2EFleet(t)
	store := f.enroll("sensor-1")
	reg := &flakyRegistry{Certificates: f.certs}
	reg.failures.Store(2)
	rev := &flakyRevocations{RevocationChecker: f.ca}
	rev.failures.Store(2)
	v, err := transport.NewVerifier(transport.VerifierConfig{Certificates: reg,
		Policy: identity.DeviceCertPolicy{Roots: f.roots, Revocations: rev}})
	if err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	f.cloud(col, v, "verifier")
	dev, err := transport.Dial(t.Context(), transport.ClientConfig{Broker: f.broker.Addr(), Store: store, SecurityReportInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close(context.Background())
	const n = 6
	for i := range n {
		if err := dev.Publish(t.Context(), "temp", transport.Reading{Time: time.Now(), Body: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	col.wait(t, n, 20*time.Second)
	time.Sleep(300 * time.Millisecond) // a duplicate would show now
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.recs) != n || len(col.refused) != 0 {
		t.Fatalf("%d records, refused %v; want %d and none refused", len(col.recs), col.refused, n)
	}
	if reg.failures.Load() >= 0 || rev.failures.Load() >= 0 {
		t.Fatalf("the failures were not exercised: registry %d, revocations %d left", reg.failures.Load()+1, rev.failures.Load()+1)
	}
	if st := v.Stats(); st.Accepted != n || st.Refused != 0 {
		t.Fatalf("verifier %+v", st)
	}
}
