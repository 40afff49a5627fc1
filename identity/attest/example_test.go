// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package attest_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/attest"
)

// Example runs one attestation: the cloud challenges a device, the device
// signs its evidence with its key, the cloud verifies the token against the
// device's registered certificate and its policy.
func Example() {
	ctx := context.Background()

	// A fleet CA and one enrolled device (normally done over EST).
	dir, err := os.MkdirTemp("", "d2c-attest-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ca, err := identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{})
	if err != nil {
		log.Fatal(err)
	}
	deviceKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		log.Fatal(err)
	}
	der, err := identity.NewCSR(deviceKey, "sensor-1")
	if err != nil {
		log.Fatal(err)
	}
	csr, err := identity.ParseCSR(der)
	if err != nil {
		log.Fatal(err)
	}
	cert, err := ca.IssueDevice(csr, "sensor-1")
	if err != nil {
		log.Fatal(err)
	}
	registered := map[string][][]*x509.Certificate{"sensor-1": {{cert, ca.Issuing()}}}

	// The cloud: a verifier over the registered certificates.
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	verifier, err := attest.NewVerifier(attest.VerifierConfig{
		Certificates: attest.CertificatesFunc(func(_ context.Context, id string) ([][]*x509.Certificate, error) {
			if c, ok := registered[id]; ok {
				return c, nil
			}
			return nil, fmt.Errorf("no device %q", id)
		}),
		CertPolicy: identity.DeviceCertPolicy{Roots: roots, Revocations: ca},
	})
	if err != nil {
		log.Fatal(err)
	}
	nonce, err := verifier.Challenge(ctx, "sensor-1")
	if err != nil {
		log.Fatal(err)
	}

	// The device: its image digest and version come from the update agent
	// (agent.Status().Installed.SHA256 and .Version).
	image := sha256.Sum256([]byte("firmware image 42"))
	installedVersion := uint64(42)
	token, err := attest.Sign(deviceKey, "sensor-1", attest.Evidence{
		Nonce:           nonce,
		SoftwareName:    "acme-gateway-firmware",
		SoftwareVersion: strconv.FormatUint(installedVersion, 10),
		ImageDigest:     image,
		DebugStatus:     attest.DebugDisabled,
	}, ca.Now())
	if err != nil {
		log.Fatal(err)
	}

	// The cloud again: verify once.
	policy := attest.Policy{
		AllowDigest:          attest.AllowDigests(image),
		MinSoftwareVersion:   "40",
		RequireDebugDisabled: true,
	}
	res, err := verifier.Verify(ctx, token, policy)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s runs %s %s, debug %s\n", res.DeviceID, res.Evidence.SoftwareName, res.Evidence.SoftwareVersion, res.Evidence.DebugStatus)

	_, err = verifier.Verify(ctx, token, policy)
	fmt.Println("replayed:", err)
	// Output:
	// sensor-1 runs acme-gateway-firmware 42, debug disabled
	// replayed: attest: nonce unknown or already used
}
