// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command eavesdrop plays an eavesdropping broker: a service subscribed to
// every d2c topic with broker-level access. Without end-to-end encryption
// it reads the readings in clear (a signature proves who wrote them, it
// does not hide them); with encryption (transport.Encryption) it sees only
// JWE ciphertext, while the cloud still reads them.
//
//	go run ./examples/attacks/eavesdrop
package main

import (
	"context"
	"io"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

// secret is what the attacker looks for: personal data.
const secret = `"heart_rate":52`

func main() { lab.Main(run) }

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("eavesdrop", "the broker reads the telemetry it carries")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	cloud, err := f.StartCloud(ctx, false)
	if err != nil {
		return err
	}
	spy, err := f.Insider(ctx)
	if err != nil {
		return err
	}
	if err := spy.Subscribe(ctx, wire.TopicPrefix+"#"); err != nil {
		return err
	}
	n.Lab("fleet on 127.0.0.1: CA, registrar, broker %s, cloud verifier", f.Broker.Addr())
	n.Lab("the attacker is a service with broker-level access, subscribed to %s#: everything", wire.TopicPrefix)

	n.Section("1. a sleep tracker without end-to-end encryption")
	seen, err := publish(ctx, n, f, cloud, spy, "sleep-1", false)
	if err != nil {
		return err
	}
	if !seen {
		return lab.Succeeded("nothing to compare: the signed-only reading was not readable")
	}
	n.Why("a JWS signs its payload but does not hide it: base64url is an encoding, not encryption.\n" +
		"TLS protects each hop (device to broker, broker to cloud), and the broker sits between the hops.")

	n.Section("2. the same tracker with end-to-end encryption to the cloud key (transport.Encryption)")
	seen, err = publish(ctx, n, f, cloud, spy, "sleep-2", true)
	if err != nil {
		return err
	}
	if seen {
		return lab.Succeeded("the broker-side subscriber read the encrypted reading")
	}
	n.D2C("the broker-side subscriber found %s in none of sleep-2's messages; the cloud read it", secret)
	n.Why("the device signs the record, then encrypts it with AES-256-GCM under a session key that it sent to\n" +
		"the cloud wrapped with ECDH-ES to the cloud's public key (up/key): only the holder of the cloud's\n" +
		"private key can read. Still visible to the broker: the topic (device ID and stream name), sizes, timing.")

	n.Stopped("with encryption on, the broker carried the reading without being able to read it")
	return nil
}

// publish enrolls and connects device id, has it publish one reading, and
// reports what the spy saw of it and whether the secret was readable.
func publish(ctx context.Context, n *lab.Narrator, f *lab.Fleet, cloud *lab.Cloud, spy *lab.MQTT, id string, encrypt bool) (bool, error) {
	store, err := f.Enroll(ctx, id)
	if err != nil {
		return false, err
	}
	dev, err := f.Connect(ctx, store, lab.DeviceOptions{Encrypt: encrypt})
	if err != nil {
		return false, err
	}
	if err := dev.Client.Publish(ctx, "vitals", transport.Reading{Time: time.Now(), Body: []byte(`{` + secret + `,"asleep":true}`)}); err != nil {
		return false, err
	}
	rec, err := cloud.Record(ctx)
	if err != nil {
		return false, err
	}
	n.Lab("%s published {%s,\"asleep\":true}; the cloud verified it and read %s", id, secret, rec.Readings[0].Body)
	seen := false
	for _, m := range spy.Drain(time.Second) {
		if !strings.Contains(m.Topic, "/"+id+"/") {
			continue
		}
		n.Attacker("got %s (%d bytes):\n%s", m.Topic, len(m.Payload), lab.Peek(m.Payload))
		seen = seen || lab.Visible(m.Payload, []byte(secret))
	}
	return seen, nil
}
