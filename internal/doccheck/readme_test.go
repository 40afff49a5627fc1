// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package doccheck_test

// The Go snippets of README.md, each the body of a function below that
// the compiler checks, up to its "// Not in README.md" line; the
// function's parameters are what the snippet takes from its
// surroundings. TestREADMESnippets keeps README.md identical to them:
// edit a snippet here, then run
//
//	go test ./internal/doccheck -run TestREADMESnippets -update
//
// Nothing here runs.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/http"
	"time"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
	"github.com/d2c-iot/d2c/updatelink"
)

// readmeSnippets are the functions whose bodies are README.md's Go
// snippets, in the README's order.
var readmeSnippets = []any{
	identityCloudSide,
	identityDeviceSide,
	transportDeviceSide,
	transportCloudSide,
	updateDeviceSide,
}

func identityCloudSide(serverCert tls.Certificate) {
	ca, _ := identity.InitCA("fleet-ca", identity.CAConfig{Fleet: "Acme sensors"})
	tokenKey, _ := identity.ReadKeyFile("fleet-ca/" + identity.CATokenKeyFile)
	used, _ := identity.OpenUsedTokens("state/used-tokens.state", nil)
	reg, _ := identity.NewRegistrar(identity.RegistrarConfig{
		CA: ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, UsedTokens: used,
	})
	srv := &http.Server{Addr: ":8443", Handler: reg, TLSConfig: reg.TLSConfig(serverCert)}
	go srv.ListenAndServeTLS("", "")
	token, _ := identity.TokenIssuer{Key: tokenKey}.Issue("sensor-42") // give it to the device
	// Not in README.md:
	_ = token
}

func identityDeviceSide(ctx context.Context, rootSHA256 []byte, token string) {
	store, _ := identity.OpenStore("/var/lib/acme/identity", identity.StoreConfig{})
	est := identity.ESTClient{URL: "https://est.acme.example:8443", BootstrapFingerprint: rootSHA256}
	id, err := store.Enroll(ctx, est, identity.EnrollRequest{
		DeviceID: "sensor-42", Auth: identity.EnrollAuth{Token: token},
	})
	// id.Key is a crypto.Signer; id.TLSCertificate() goes into a tls.Config.
	// identity.Renewer renews it before it expires: see transport below.
	// Not in README.md:
	_, _ = id, err
}

func transportDeviceSide(ctx context.Context, store *identity.Store, est identity.ESTClient, cloudPublicKey *ecdsa.PublicKey, body []byte) {
	dev, _ := transport.Dial(ctx, transport.ClientConfig{
		Broker:     "mqtt.acme.example:8883",                        // TLS 1.3, mutual, always
		Store:      store,                                           // identity and fleet anchors
		Encryption: &transport.Encryption{CloudKey: cloudPublicKey}, // optional
	})
	renewer := &identity.Renewer{Store: store, Client: est,
		OnRenew: func(*identity.Identity) { dev.Reload() }} // new connections present the new certificate
	go renewer.Run(ctx) // renews before expiry
	err := dev.Publish(ctx, "temperature", transport.Reading{Time: time.Now(), Body: body})
	// returns once the signed envelope is on disk; delivered in the background,
	// removed only after the broker's PUBACK
	// Not in README.md:
	_ = err
}

func transportCloudSide(ctx context.Context, roots *x509.CertPool, cloudKey *ecdsa.PrivateKey,
	addr string, svcCert tls.Certificate, groupSecret string, use func(transport.Record)) {
	st, _ := store.Open(ctx, store.Config{URL: "sqlite:/var/lib/d2c/fleet.db"})
	v, _ := transport.NewVerifier(transport.VerifierConfig{
		Certificates:  st, // every certificate the registrar issued (RegistrarConfig.Registry: st)
		Policy:        identity.DeviceCertPolicy{Roots: roots, Revocations: st},
		Replay:        st, // each (device, boot, seq) accepted once, by any verifier
		SessionKeys:   st,
		DecryptionKey: cloudKey,
	})
	cloud, _ := transport.DialCloud(ctx, transport.CloudConfig{Broker: addr, Certificate: svcCert,
		Roots: roots, Verifier: v, Group: groupSecret, // 16+ unguessable characters
		OnRecord: func(ctx context.Context, r transport.Record) { use(r) }})
	// Accepted records are also in the store's records table, committed
	// before the broker is acknowledged.
	// Not in README.md:
	_ = cloud
}

func updateDeviceSide(ctx context.Context, pinnedRoot []byte, store *identity.Store, dev *transport.Client,
	logger *slog.Logger, healthy func() bool) {
	slots, _ := slot.OpenDirSlots("/data/slots") // or &slot.UBoot{Env: slot.FWEnv{}, Devices: …}
	agent, _ := update.NewAgent(ctx, update.AgentConfig{
		Dir: "/data/update", Root: pinnedRoot, HardwareClass: "gateway-v1",
		Slots: slots, Source: &update.HTTPSource{BaseURL: "https://updates.acme.example/gw/"},
		Clock:  store.Clock(),                             // stale metadata noticed even at 1970
		Report: updatelink.TelemetryReporter(dev, logger), // results as signed telemetry
	})
	st, _ := agent.Start(ctx) // at every start: counts trial starts, reverts, finishes what a power cut interrupted
	if st.Phase == update.PhaseTrial && healthy() {
		agent.Confirm(ctx) // only now does the anti-rollback floor rise
	}
	installed, err := agent.Update(ctx) // check, verify, download into the other slot, switch on trial
	// err names the attack it stopped: errors.Is(err, update.ErrRollback), ErrExpired, ErrDigest, …
	// Not in README.md:
	_, _ = installed, err
}
