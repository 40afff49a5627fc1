// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package pkcs11_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"log"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/pkcs11"
)

// Example enrolls a device whose key is generated in, and never leaves, a
// PKCS#11 token. It needs a token (and a registrar), so it is compiled but
// not run by go test.
func Example() {
	ks, err := pkcs11.Open(pkcs11.Config{
		Module:     "/usr/lib/softhsm/libsofthsm2.so",
		TokenLabel: "device",
		PINFile:    "/etc/d2c/token.pin", // mode 0600
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ks.Close()

	store, err := identity.OpenStore("/var/lib/d2c/identity", identity.StoreConfig{Keys: ks})
	if err != nil {
		log.Fatal(err)
	}
	fingerprint := sha256.Sum256(nil) // the fleet root's SHA-256, given to the device
	est := identity.ESTClient{URL: "https://registrar.example.com", BootstrapFingerprint: fingerprint[:]}
	id, err := store.Enroll(context.Background(), est, identity.EnrollRequest{
		DeviceID: "sensor-42",
		Auth:     identity.EnrollAuth{Token: "<one-time enrollment token>"},
	})
	if err != nil {
		log.Fatal(err)
	}
	// id.Key signs inside the token: id.TLSCertificate() serves mutual TLS.
	fmt.Println("enrolled", id.DeviceID)
}

// ExampleKeystore_Create makes a key in the token directly, without a
// store, and signs a digest with it.
func ExampleKeystore_Create() {
	ks, err := pkcs11.Open(pkcs11.Config{Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "device", PINFile: "/etc/d2c/token.pin"})
	if err != nil {
		log.Fatal(err)
	}
	defer ks.Close()
	key, err := ks.Create(context.Background(), "my-app-key", identity.ECDSAP256)
	if err != nil {
		log.Fatal(err)
	}
	digest := sha256.Sum256([]byte("message"))
	sig, err := key.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("ASN.1 DER signature, %d bytes\n", len(sig))
}

// ExampleParseURI reads a key reference from configuration. Parsing does
// no I/O; a PIN written into the URI (pin-value) is refused.
func ExampleParseURI() {
	cfg, label, err := pkcs11.ParseURI("pkcs11:token=fleet-ca;object=issuing-1" +
		"?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/d2c/ca.pin")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(cfg.TokenLabel, label, cfg.PINFile)

	_, _, err = pkcs11.ParseURI("pkcs11:token=fleet-ca;object=issuing-1" +
		"?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=123456")
	fmt.Println(errors.Is(err, pkcs11.ErrUnsupportedURI))
	// Output:
	// fleet-ca issuing-1 /etc/d2c/ca.pin
	// true
}

// ExampleOpenURI signs a fleet CA's certificates and CRLs with an issuing
// key kept in a token. It needs the token, so it is compiled but not run
// by go test.
func ExampleOpenURI() {
	key, closeKey, err := pkcs11.OpenURI(context.Background(), "pkcs11:token=fleet-ca;object=issuing-1"+
		"?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/d2c/ca.pin")
	if err != nil {
		log.Fatal(err)
	}
	defer closeKey()
	ca, err := identity.LoadCA("/srv/d2c/ca", identity.CAConfig{IssuingKey: key})
	if err != nil {
		log.Fatal(err)
	}
	crl, err := ca.CRL()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("CRL of %d bytes, signed in the token\n", len(crl))
}
