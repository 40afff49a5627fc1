// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package tpm_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"fmt"
	"log"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/tpm"
)

// Example keeps a device's identity key in the TPM: the device store asks
// the keystore for a new TPM key at enrollment and at each renewal, and
// the identity's Key signs (TLS client handshakes, envelopes) inside the
// TPM. It needs a TPM, so it is compiled but not run.
func Example() {
	ks, err := tpm.Open(tpm.Config{Device: "/dev/tpmrm0", Dir: "/var/lib/d2c/tpm"})
	if err != nil {
		log.Fatal(err)
	}
	defer ks.Close()
	store, err := identity.OpenStore("/var/lib/d2c/identity", identity.StoreConfig{Keys: ks})
	if err != nil {
		log.Fatal(err)
	}
	id, err := store.Current()
	if err != nil {
		log.Fatal(err) // not enrolled yet: store.Enroll with a token
	}
	tlsCert := id.TLSCertificate() // for the MQTT or EST client
	fmt.Println(id.DeviceID, len(tlsCert.Certificate))
}

// ExampleKeystore_Create makes a TPM key directly and signs with it.
func ExampleKeystore_Create() {
	ks, err := tpm.Open(tpm.Config{Dir: "/var/lib/d2c/tpm"}) // /dev/tpmrm0
	if err != nil {
		log.Fatal(err)
	}
	defer ks.Close()
	key, err := ks.Create(context.Background(), "attestation", identity.ECDSAP256)
	if err != nil {
		log.Fatal(err)
	}
	digest := sha256.Sum256([]byte("message"))
	sig, err := key.Sign(nil, digest[:], crypto.SHA256) // ASN.1 DER ECDSA
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d-byte signature\n", len(sig))
}
