// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"

	"github.com/d2c-iot/d2c/identity"
)

func ExampleValidateDeviceID() {
	for _, id := range []string{"sensor-42", "kitchen/oven", "#", "$SYS"} {
		fmt.Println(id, identity.ValidateDeviceID(id) == nil)
	}
	// Output:
	// sensor-42 true
	// kitchen/oven false
	// # false
	// $SYS false
}

func ExampleTokenIssuer() {
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		log.Fatal(err)
	}
	token, err := identity.TokenIssuer{Key: key}.Issue("sensor-42")
	if err != nil {
		log.Fatal(err)
	}
	tok, err := identity.TokenVerifier{Keys: []crypto.PublicKey{key.Public()}}.Verify(token)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("token for", tok.DeviceID)
	// Output: token for sensor-42
}

// Example shows the whole identity loop: a fleet CA, an enrollment token, a
// registrar over HTTPS, and a device that enrolls with the token, renews, and
// is then revoked.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "d2c-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// Cloud: the fleet CA, a single-use token store and the registrar.
	ca, err := identity.InitCA(filepath.Join(dir, "ca"), identity.CAConfig{Fleet: "Example Fleet"})
	if err != nil {
		log.Fatal(err)
	}
	tokenKey, err := identity.ReadKeyFile(filepath.Join(dir, "ca", identity.CATokenKeyFile))
	if err != nil {
		log.Fatal(err)
	}
	used, err := identity.OpenUsedTokens(filepath.Join(dir, "used-tokens.state"), nil)
	if err != nil {
		log.Fatal(err)
	}
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, UsedTokens: used})
	if err != nil {
		log.Fatal(err)
	}
	srvKey, _ := identity.GenerateKey(identity.ECDSAP256)
	srvCert, err := ca.IssueServer(srvKey.Public(), "127.0.0.1")
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(reg)
	srv.TLS = reg.TLSConfig(tls.Certificate{Certificate: [][]byte{srvCert.Raw, ca.Issuing().Raw}, PrivateKey: srvKey})
	srv.StartTLS()
	defer srv.Close()

	// The operator issues a one-time token for the device and gives the
	// device the root fingerprint.
	token, err := identity.TokenIssuer{Key: tokenKey}.Issue("sensor-42")
	if err != nil {
		log.Fatal(err)
	}
	fp := sha256.Sum256(ca.Root().Raw)

	// Device: enroll over EST, with a key generated on the device.
	store, err := identity.OpenStore(filepath.Join(dir, "device"), identity.StoreConfig{})
	if err != nil {
		log.Fatal(err)
	}
	est := identity.ESTClient{URL: srv.URL, BootstrapFingerprint: fp[:]}
	id, err := store.Enroll(ctx, est, identity.EnrollRequest{DeviceID: "sensor-42", Auth: identity.EnrollAuth{Token: token}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("enrolled", id.DeviceID, id.Certificate().URIs[0])

	// The token works once.
	_, err = store.Enroll(ctx, est, identity.EnrollRequest{DeviceID: "sensor-42", Auth: identity.EnrollAuth{Token: token}})
	fmt.Println("second use refused:", errors.Is(err, identity.ErrTokenReused))

	// Renewal with the current certificate: a new key, a new certificate.
	renewed, err := store.Renew(ctx, est, identity.RenewOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("renewed, new key:", !renewed.Certificate().Equal(id.Certificate()))

	// Revocation: the device can no longer renew.
	if err := ca.Revoke(renewed.Certificate(), 1); err != nil {
		log.Fatal(err)
	}
	_, err = store.Renew(ctx, est, identity.RenewOptions{})
	fmt.Println("revoked device refused:", errors.Is(err, identity.ErrRevoked))
	// Output:
	// enrolled sensor-42 urn:d2c:device:sensor-42
	// second use refused: true
	// renewed, new key: true
	// revoked device refused: true
}
