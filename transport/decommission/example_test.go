// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package decommission_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/decommission"
)

// ExampleForget is the cloud half of a decommission: after sending the
// device the signed decommission.Command, the service revokes the
// device's certificates and forgets it. (A service on the fleet's cloud
// store calls its Store.Forget, which does the same in transactions.)
func ExampleForget() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "ca")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	ca, err := identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{Fleet: "example"})
	if err != nil {
		fmt.Println(err)
		return
	}
	// A device enrolled earlier.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := identity.NewCSR(key, "retired-1")
	csr, _ := identity.ParseCSR(der)
	cert, err := ca.IssueDevice(csr, "retired-1")
	if err != nil {
		fmt.Println(err)
		return
	}
	certs := &transport.MemoryCertificates{}
	certs.Add(append([]*x509.Certificate{cert}, ca.Chain()...)...)

	if err := decommission.Forget(ctx, "retired-1", certs, ca, nil); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("revoked:", errors.Is(ca.CheckRevoked(cert), identity.ErrRevoked))
	_, err = certs.DeviceCertificates(ctx, "retired-1")
	fmt.Println("registered:", err == nil)
	// Output:
	// revoked: true
	// registered: false
}
