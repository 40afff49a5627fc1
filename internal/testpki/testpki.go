// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package testpki issues throwaway certificates from a fleet CA for tests:
// a fresh key per certificate, returned as a tls.Certificate with the
// issuing CA in its chain, ready for a TLS client or server.
package testpki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/d2c-iot/d2c/identity"
)

// Key returns a new ECDSA P-256 key.
func Key(t testing.TB) crypto.Signer {
	t.Helper()
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// Server issues a TLS server certificate for hosts.
func Server(t testing.TB, ca *identity.CA, hosts ...string) tls.Certificate {
	t.Helper()
	return issue(t, ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueServer(pub, hosts...) })
}

// Service issues a cloud service's client certificate (CN "svc:<name>").
func Service(t testing.TB, ca *identity.CA, name string) tls.Certificate {
	t.Helper()
	return issue(t, ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueService(pub, name) })
}

// Device issues a device certificate for id through a real CSR, as the
// registrar does.
func Device(t testing.TB, ca *identity.CA, id string) tls.Certificate {
	t.Helper()
	key := Key(t)
	der, err := identity.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueDevice(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw, ca.Issuing().Raw}, PrivateKey: key, Leaf: cert}
}

func issue(t testing.TB, ca *identity.CA, sign func(crypto.PublicKey) (*x509.Certificate, error)) tls.Certificate {
	t.Helper()
	key := Key(t)
	cert, err := sign(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw, ca.Issuing().Raw}, PrivateKey: key, Leaf: cert}
}
