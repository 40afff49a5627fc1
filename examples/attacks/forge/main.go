// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command forge plays an attacker who makes up a device: its own key, a
// certificate from a CA of its own naming a real device, and telemetry
// signed with that key claiming the device's ID. The broker refuses the
// certificate, and the cloud verifier refuses the signature.
//
//	go run ./examples/attacks/forge
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

func main() { lab.Main(run) }

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("forge", "an attacker signs telemetry with its own key, claiming to be a fleet device")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	cloud, err := f.StartCloud(ctx, false)
	if err != nil {
		return err
	}
	if _, err := f.Enroll(ctx, "smoke-1"); err != nil {
		return err
	}
	n.Lab("fleet on 127.0.0.1: CA, registrar, broker %s, cloud verifier; device smoke-1 enrolled", f.Broker.Addr())

	n.Section("1. connect to the broker as smoke-1")
	fake, err := lab.SelfMadeCertificate("smoke-1")
	if err != nil {
		return err
	}
	n.Attacker("made a CA of its own (\"Attack Lab root CA\") and a client certificate CN=smoke-1 from it")
	err = lab.CheckTLS(ctx, f.Broker.Addr(), &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.Roots, ServerName: "127.0.0.1",
		// Present it whatever CAs the broker says it accepts.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &fake, nil }})
	if err == nil {
		return lab.Succeeded("the broker accepted a certificate the fleet CA never issued")
	}
	n.D2C("the broker refused the TLS handshake: %v", err)
	n.Why("the broker accepts only client certificates that chain to the fleet root (devbroker.Config.ClientRoots,\n" +
		"mosquitto's cafile with require_certificate): the name in a certificate means nothing without the CA's signature.")

	n.Section("2. inject forged telemetry through the broker")
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return err
	}
	sealer, err := transport.NewSealer("smoke-1", key, nil, nil)
	if err != nil {
		return err
	}
	forged, err := sealer.Seal(transport.Record{Stream: "alarm", Boot: 1, Seq: 0, Time: time.Now(),
		Readings: []transport.Reading{{Time: time.Now(), Body: []byte(`{"smoke":false,"battery":"ok"}`)}}})
	if err != nil {
		return err
	}
	insider, err := f.Insider(ctx)
	if err != nil {
		return err
	}
	topic := wire.TelemetryTopic("smoke-1", "alarm")
	if err := insider.Publish(ctx, topic, forged.Envelope); err != nil {
		return err
	}
	n.Attacker("sealed {\"smoke\":false} as smoke-1 with the d2c format (JWS, kid smoke-1) and its own key,\n"+
		"and published it on %s with broker-level access", topic)
	o, err := cloud.Next(ctx)
	if err != nil {
		return err
	}
	if o.Accepted != nil {
		return lab.Succeeded("the cloud accepted the forged reading %s", o.Accepted.Readings[0].Body)
	}
	if !errors.Is(o.Refused, wire.ErrBadSignature) {
		return fmt.Errorf("refused, but not for its signature: %v", o.Refused)
	}
	n.D2C("the verifier refused it and reported it: %v", o.Refused)
	n.Why("the verifier takes smoke-1's public key from the certificate the fleet CA issued to smoke-1 and the\n" +
		"cloud registered at enrollment (VerifierConfig.Certificates), never from the message. The \"kid\" only\n" +
		"says whose key to look up; the attacker's key is not that one, so the ES256 signature does not verify.")

	n.Stopped("the made-up certificate was refused at TLS and the forged reading at the verifier")
	return nil
}
