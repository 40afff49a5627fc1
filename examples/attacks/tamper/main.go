// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command tamper plays an attacker in the middle (a compromised broker)
// who changes one byte of a telemetry envelope in transit: in a signed
// envelope the signature no longer verifies; in an encrypted one the
// AES-GCM tag does not.
//
//	go run ./examples/attacks/tamper
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

func main() { lab.Main(run) }

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("tamper", "one byte of a telemetry envelope is changed in transit")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	cloud, err := f.StartCloud(ctx, false)
	if err != nil {
		return err
	}
	insider, err := f.Insider(ctx)
	if err != nil {
		return err
	}
	if err := insider.Subscribe(ctx, wire.AllTelemetry); err != nil {
		return err
	}
	n.Lab("fleet on 127.0.0.1: CA, registrar, broker %s, cloud verifier", f.Broker.Addr())
	n.Lab("the attacker has broker-level access: it sees every envelope and can publish its own version")

	n.Section("1. a signed envelope")
	env, err := capture(ctx, f, cloud, insider, "boiler-1", false)
	if err != nil {
		return err
	}
	n.Lab(`boiler-1 published {"temp_c":21}, signed; the cloud accepted it`)
	tampered, err := lab.EditPayload(env, func(payload []byte) {
		i := bytes.Index(payload, []byte(`:21}`))
		payload[i+1] = '9' // 21 °C becomes 91 °C
	})
	if err != nil {
		return err
	}
	if err := insider.Publish(ctx, wire.TelemetryTopic("boiler-1", "heat"), tampered); err != nil {
		return err
	}
	n.Attacker(`decoded the JWS payload, changed one byte ("temp_c":21 becomes 91), re-encoded it, and published it`)
	if err := expectRefusal(ctx, n, cloud, wire.ErrBadSignature); err != nil {
		return err
	}
	n.Why("the device's ES256 signature covers the header and the payload (the CBOR record with the reading):\n" +
		"change one bit and the signature no longer verifies with the key of boiler-1's registered certificate.\n" +
		"Reading the payload needed no key at all, though: see the eavesdrop program.")

	n.Section("2. an encrypted envelope")
	env, err = capture(ctx, f, cloud, insider, "boiler-2", true)
	if err != nil {
		return err
	}
	n.Lab(`boiler-2 published {"temp_c":21}, signed and encrypted to the cloud; the cloud accepted it`)
	if lab.Visible(env, []byte("temp_c")) {
		return lab.Succeeded("the reading is readable in the encrypted envelope")
	}
	tampered, err = lab.EditCiphertext(env, func(ct []byte) { ct[len(ct)/2] ^= 0x01 })
	if err != nil {
		return err
	}
	if err := insider.Publish(ctx, wire.TelemetryTopic("boiler-2", "heat"), tampered); err != nil {
		return err
	}
	n.Attacker("could not find the reading in the JWE; flipped one bit of the ciphertext and published it")
	if err := expectRefusal(ctx, n, cloud, wire.ErrDecrypt); err != nil {
		return err
	}
	n.Why("AES-256-GCM authenticates what it encrypts: a changed ciphertext fails the tag check and yields no\n" +
		"plaintext at all; behind the encryption the device's signature is still there to check.")

	if st := cloud.Stats(); st.Accepted != 2 {
		return lab.Succeeded("the cloud accepted %d readings, 2 were genuine", st.Accepted)
	}
	n.Stopped("both tampered envelopes were refused; the cloud only ever recorded 21 °C")
	return nil
}

// capture enrolls and connects device id, has it publish one reading, waits
// for the cloud to accept it and returns the envelope the attacker saw.
func capture(ctx context.Context, f *lab.Fleet, cloud *lab.Cloud, insider *lab.MQTT, id string, encrypt bool) ([]byte, error) {
	store, err := f.Enroll(ctx, id)
	if err != nil {
		return nil, err
	}
	dev, err := f.Connect(ctx, store, lab.DeviceOptions{Encrypt: encrypt})
	if err != nil {
		return nil, err
	}
	if err := dev.Client.Publish(ctx, "heat", transport.Reading{Time: time.Now(), Body: []byte(`{"temp_c":21}`)}); err != nil {
		return nil, err
	}
	if _, err := cloud.Record(ctx); err != nil {
		return nil, err
	}
	m, err := insider.Next(ctx, "/"+id+"/up/tele/heat")
	return m.Payload, err
}

// expectRefusal waits for the verifier to refuse the tampered envelope
// with want.
func expectRefusal(ctx context.Context, n *lab.Narrator, cloud *lab.Cloud, want error) error {
	o, err := cloud.Next(ctx)
	if err != nil {
		return err
	}
	if o.Accepted != nil {
		return lab.Succeeded("the cloud accepted the tampered reading %s", o.Accepted.Readings[0].Body)
	}
	if !errors.Is(o.Refused, want) {
		return fmt.Errorf("refused, but not with %v: %v", want, o.Refused)
	}
	n.D2C("the verifier refused it and reported it: %v", o.Refused)
	return nil
}
