// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/outbox"
	"github.com/d2c-iot/d2c/transport/wire"
)

// testFleet is a fleet CA with devices issued directly (enrollment is
// identity's business), a cloud encryption key, and a verifier.
type testFleet struct {
	t       testing.TB
	ca      *identity.CA
	certs   *MemoryCertificates
	cloud   *ecdsa.PrivateKey
	roots   *x509.CertPool
	now     time.Time
	devices map[string]crypto.Signer
}

func newTestFleet(t testing.TB) *testFleet {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	ca, err := identity.InitCA(filepath.Join(t.TempDir(), "ca"), identity.CAConfig{Fleet: "transport test", Time: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	cloud, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	return &testFleet{t: t, ca: ca, certs: &MemoryCertificates{}, cloud: cloud, roots: roots, now: now, devices: map[string]crypto.Signer{}}
}

// device issues a certificate for id, registers it and returns its key.
func (f *testFleet) device(id string, kt identity.KeyType) (crypto.Signer, *x509.Certificate) {
	f.t.Helper()
	key, err := identity.GenerateKey(kt)
	if err != nil {
		f.t.Fatal(err)
	}
	der, err := identity.NewCSR(key, id)
	if err != nil {
		f.t.Fatal(err)
	}
	csr, err := identity.ParseCSR(der)
	if err != nil {
		f.t.Fatal(err)
	}
	cert, err := f.ca.IssueDevice(csr, id)
	if err != nil {
		f.t.Fatal(err)
	}
	f.certs.Add(cert, f.ca.Issuing())
	f.devices[id] = key
	return key, cert
}

func (f *testFleet) verifier(mod func(*VerifierConfig)) *Verifier {
	f.t.Helper()
	cfg := VerifierConfig{
		Certificates:  f.certs,
		Policy:        identity.DeviceCertPolicy{Roots: f.roots, Revocations: f.ca},
		DecryptionKey: f.cloud,
		Time:          func() time.Time { return f.now },
	}
	if mod != nil {
		mod(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

func (f *testFleet) sealer(id string, enc *Encryption) *Sealer {
	f.t.Helper()
	s, err := NewSealer(id, f.devices[id], enc, func() time.Time { return f.now })
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

func reading(body string) []Reading {
	return []Reading{{Time: time.UnixMilli(1700000000000), Body: []byte(body)}}
}

// Outbox helpers for the consent gate's tests (the outbox's own tests have
// theirs in package outbox).

func obOpen(t testing.TB, cfg outbox.Config) *outbox.Outbox {
	t.Helper()
	o, err := outbox.Open(cfg)
	if err != nil {
		t.Fatalf("outbox.Open: %v", err)
	}
	return o
}

func obClose(t testing.TB, o *outbox.Outbox) {
	t.Helper()
	if err := o.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// obMsg is a message of stream (the key topic when stream is empty).
func obMsg(stream, body string, prio uint8) outbox.Message {
	topic := wire.KeyTopic("dev-1")
	if stream != "" {
		topic = wire.TelemetryTopic("dev-1", stream)
	}
	return outbox.Message{Topic: topic, Payload: []byte(body), Priority: prio, Stream: stream}
}

func obAppend(t testing.TB, o *outbox.Outbox, msgs ...outbox.Message) {
	t.Helper()
	if _, err := o.Append(t.Context(), msgs...); err != nil {
		t.Fatalf("Append: %v", err)
	}
}

// obAll returns every deliverable message.
func obAll(o *outbox.Outbox) []outbox.Message { return o.Next(1<<30, nil) }
