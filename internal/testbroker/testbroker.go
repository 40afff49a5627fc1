// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package testbroker runs mosquitto for a test as a fleet would: the
// configuration and ACL that transport/broker generates, a server
// certificate from the fleet CA, and the CA's CRL, on a free 127.0.0.1
// port ([internal/testpeer.Mosquitto] starts it).
package testbroker

import (
	"crypto"
	"crypto/tls"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
	"github.com/d2c-iot/d2c/internal/testpki"
	"github.com/d2c-iot/d2c/transport/broker"
)

// Mosquitto runs mosquitto with the configuration and ACL that
// broker.MosquittoConfig generates for ca's fleet and services, on a free
// 127.0.0.1 port. A missing mosquitto fails the test.
func Mosquitto(t testing.TB, ca *identity.CA, services []broker.ServiceRights) *testpeer.Broker {
	t.Helper()
	return testpeer.Mosquitto(t, Conf(t, ca, testpki.Server(t, ca, "127.0.0.1"), services, broker.MosquittoConfig{}))
}

// Conf writes the files of a mosquitto serving ca's fleet with server's
// certificate (its chain with the issuing CA, its key, the CA's CRL, the
// ACL for services) into a temporary directory, fills them into mc, and
// returns the configuration mc generates, its listener on
// [testpeer.Mosquitto]'s free-port placeholder.
func Conf(t testing.TB, ca *identity.CA, server tls.Certificate, services []broker.ServiceRights, mc broker.MosquittoConfig) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyPEM, err := identity.MarshalPrivateKey(server.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	crl, err := ca.CRL()
	if err != nil {
		t.Fatal(err)
	}
	mc.Listen = "127.0.0.1:1883" // replaced by testpeer's free port below
	mc.CAFile = write("ca.pem", identity.EncodeCertificatesPEM(ca.Root(), ca.Issuing()))
	mc.CertFile = write("server.pem", append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: server.Certificate[0]}),
		identity.EncodeCertificatesPEM(ca.Issuing())...))
	mc.KeyFile = write("server.key", keyPEM)
	mc.CRLFile = write("crl.pem", pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl}))
	mc.ACLFile = filepath.Join(dir, "acl")
	mc.Services = services
	conf, err := mc.Conf()
	if err != nil {
		t.Fatal(err)
	}
	acl, err := mc.ACL()
	if err != nil {
		t.Fatal(err)
	}
	write("acl", []byte(acl))
	return strings.Replace(conf, "\nlistener 1883 127.0.0.1\n", "\nlistener {{port}} 127.0.0.1\n", 1)
}
