// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command impersonate plays an attacker who owns device A and wants to
// speak for device B: A's firmware publishes on B's topic (the broker
// refuses it, and the d2c client reports ErrRefusedByBroker), A subscribes
// to other devices' topics (refused), and a compromised broker moves A's
// genuine envelope onto B's topic (the verifier refuses the device mismatch).
//
//	go run ./examples/attacks/impersonate
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/outbox"
	"github.com/d2c-iot/d2c/transport/wire"
)

func main() { lab.Main(run) }

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("impersonate", "device A publishes as device B")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	cloud, err := f.StartCloud(ctx, false)
	if err != nil {
		return err
	}
	storeA, err := f.Enroll(ctx, "meter-a")
	if err != nil {
		return err
	}
	if _, err := f.Enroll(ctx, "meter-b"); err != nil {
		return err
	}
	n.Lab("fleet on 127.0.0.1: CA, registrar, broker %s, cloud verifier; meters meter-a and meter-b enrolled", f.Broker.Addr())
	n.Lab("the attacker owns meter-a: its firmware, its key, its certificate")

	n.Section("1. meter-a publishes on meter-b's topic")
	idA, err := storeA.Current()
	if err != nil {
		return err
	}
	sealer, err := transport.NewSealer(idA.DeviceID, idA.Key, nil, nil)
	if err != nil {
		return err
	}
	env, err := sealer.Seal(transport.Record{Stream: "energy", Boot: 1, Seq: 0, Time: time.Now(),
		Readings: []transport.Reading{{Time: time.Now(), Body: []byte(`{"kwh":0}`)}}})
	if err != nil {
		return err
	}
	// The d2c client of meter-a delivers whatever its outbox holds; the
	// compromised firmware queues a message for meter-b's topic there
	// (docs/architecture.md, "Device state directory").
	topicB := wire.TelemetryTopic("meter-b", "energy")
	box, err := outbox.Open(outbox.Config{Dir: filepath.Join(storeA.Dir(), "transport", "outbox")})
	if err != nil {
		return err
	}
	_, err = box.Append(ctx, outbox.Message{Topic: topicB, Payload: env.Envelope, Stream: "energy"})
	if cerr := box.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	n.Attacker(`meter-a's firmware queued {"kwh":0}, signed with meter-a's key, for %s`, topicB)
	devA, err := f.Connect(ctx, storeA, lab.DeviceOptions{})
	if err != nil {
		return err
	}
	refusal, ok := devA.Refusal(lab.Timeout)
	if !ok {
		return lab.Succeeded("the broker took meter-a's message for meter-b's topic")
	}
	if !errors.Is(refusal.Err, transport.ErrRefusedByBroker) {
		return fmt.Errorf("refused, but not by the broker: %v", refusal.Err)
	}
	n.D2C("the broker answered %s; meter-a's d2c client dropped the message and told the application\n(ClientConfig.OnRefused): %v", refusal.Reason, refusal.Err)
	n.Why("the broker takes a client's identity from its certificate's CN (meter-a), never from the message or the\n" +
		"MQTT user name, and its ACL lets a device write only under d2c/v1/dev/<its ID>/up/#.\n" +
		"The refusal is final: retrying cannot change it, so the client does not resend it forever.")

	n.Section("2. meter-a subscribes to other devices' topics")
	mine, err := lab.DialMQTT(ctx, f.Broker.Addr(), &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.Roots, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{idA.TLSCertificate()}}, "meter-a", "", "")
	if err != nil {
		return err
	}
	defer mine.Close()
	for _, filter := range []string{"d2c/v1/dev/meter-b/down/#", wire.AllUp} {
		err := mine.Subscribe(ctx, filter)
		if err == nil {
			return lab.Succeeded("the broker let meter-a subscribe to %s", filter)
		}
		if !lab.NotAuthorized(err) {
			return err
		}
		n.Attacker("tried to subscribe to %s with its own MQTT client and meter-a's certificate", filter)
		n.D2C("the broker refused the subscription: %v, not authorized", err)
	}
	n.Why("a device reads only under d2c/v1/dev/<its ID>/down/#; a filter is allowed only if every topic it can match is.")

	n.Section("3. a compromised broker moves meter-a's envelope onto meter-b's topic")
	insider, err := f.Insider(ctx)
	if err != nil {
		return err
	}
	if err := insider.Subscribe(ctx, wire.AllUp); err != nil {
		return err
	}
	if err := devA.Client.Publish(ctx, "energy", transport.Reading{Time: time.Now(), Body: []byte(`{"kwh":0}`)}); err != nil {
		return err
	}
	if _, err := cloud.Record(ctx); err != nil {
		return err
	}
	genuine, err := insider.Next(ctx, "/energy")
	if err != nil {
		return err
	}
	n.Lab(`meter-a published {"kwh":0} on its own topic; the cloud accepted it as meter-a's`)
	if err := insider.Publish(ctx, topicB, genuine.Payload); err != nil {
		return err
	}
	n.Attacker("the broker published that genuine, validly signed envelope on %s", topicB)
	o, err := cloud.Next(ctx)
	if err != nil {
		return err
	}
	if o.Accepted != nil {
		return lab.Succeeded("the cloud took meter-a's envelope as %s's", o.Accepted.Device)
	}
	if !errors.Is(o.Refused, wire.ErrWrongDevice) {
		return fmt.Errorf("refused, but not as a device mismatch: %v", o.Refused)
	}
	n.D2C("the verifier refused it and reported it: %v", o.Refused)
	n.Why("the verifier requires the signer (kid, checked against the registered certificate), the device in the\n" +
		"signed record and the device in the topic to be the same: an envelope proves who signed it, and the\n" +
		"verifier does not let the topic say otherwise.")

	n.Stopped("meter-a could neither publish nor listen as another device, and its envelope could not be passed off as meter-b's")
	return nil
}
