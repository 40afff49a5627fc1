// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command replay publishes a captured telemetry envelope again, as an
// attacker with access to the broker can, and shows the cloud verifier
// tell a harmless QoS 1 duplicate (dropped quietly) from a replay older than
// its window (refused and reported).
//
//	go run ./examples/attacks/replay
package main

import (
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
	n.Title("replay", "a captured telemetry envelope is published again")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	cloud, err := f.StartCloud(ctx, false)
	if err != nil {
		return err
	}
	store, err := f.Enroll(ctx, "door-1")
	if err != nil {
		return err
	}
	dev, err := f.Connect(ctx, store, lab.DeviceOptions{})
	if err != nil {
		return err
	}
	insider, err := f.Insider(ctx)
	if err != nil {
		return err
	}
	if err := insider.Subscribe(ctx, wire.AllUp); err != nil {
		return err
	}
	n.Lab("fleet on 127.0.0.1: CA, registrar, broker %s, cloud verifier; device door-1 enrolled and connected", f.Broker.Addr())
	n.Lab("the attacker has broker-level access: it reads and writes every d2c topic")

	// The device reports that the door opened; the cloud accepts it.
	if err := dev.Client.Publish(ctx, "door", transport.Reading{Time: time.Now(), Body: []byte(`{"door":"open"}`)}); err != nil {
		return err
	}
	rec, err := cloud.Record(ctx)
	if err != nil {
		return err
	}
	n.Lab(`door-1 published {"door":"open"}; the cloud accepted it: boot %d, seq %d`, rec.Boot, rec.Seq)
	captured, err := insider.Next(ctx, "/door")
	if err != nil {
		return err
	}
	n.Attacker("captured that envelope on %s (%d bytes)", captured.Topic, len(captured.Payload))

	n.Section("1. the same envelope again, at once")
	before := cloud.Stats()
	if err := insider.Publish(ctx, captured.Topic, captured.Payload); err != nil {
		return err
	}
	n.Attacker("published it again: to the cloud it looks like a QoS 1 redelivery")
	st, err := cloud.Verdict(ctx, before)
	if err != nil {
		return err
	}
	if st.Accepted != before.Accepted {
		return lab.Succeeded("the copy was accepted as a new reading")
	}
	if st.Duplicates != before.Duplicates+1 {
		return fmt.Errorf("expected a duplicate, verifier counters %+v", st)
	}
	if r, ok := cloud.Refusal(100 * time.Millisecond); ok {
		return fmt.Errorf("a duplicate was reported as a refusal: %v", r.Err)
	}
	n.D2C("the verifier classified it as a duplicate (wire.ErrDuplicate) and dropped it:\nnot passed to the application, not reported (accepted %d, duplicates %d)", st.Accepted, st.Duplicates)
	n.Why("QoS 1 delivers at least once: a device that lost a PUBACK, or a broker, may send a message twice.\n" +
		"The verifier remembers which (boot, seq) pairs it accepted, 256 per device, so a second copy\n" +
		"changes nothing and is no reason for an alarm.")

	n.Section("2. the same envelope after the window has moved on")
	const more = 300
	for i := range more {
		body := fmt.Sprintf(`{"door":"closed","check":%d}`, i)
		if err := dev.Client.Publish(ctx, "door", transport.Reading{Time: time.Now(), Body: []byte(body)}); err != nil {
			return err
		}
	}
	for range more {
		if _, err := cloud.Record(ctx); err != nil {
			return err
		}
	}
	n.Lab("door-1 published %d more readings (seq 1 to %d); the cloud accepted them", more, more)
	before = cloud.Stats()
	if err := insider.Publish(ctx, captured.Topic, captured.Payload); err != nil {
		return err
	}
	n.Attacker("published the envelope of seq 0 again, hoping the cloud has forgotten it")
	o, err := cloud.Next(ctx)
	if err != nil {
		return err
	}
	if o.Accepted != nil {
		return lab.Succeeded("the replay was accepted as a new reading: %s", o.Accepted.Readings[0].Body)
	}
	if !errors.Is(o.Refused, wire.ErrReplay) {
		return fmt.Errorf("refused, but not as a replay: %v", o.Refused)
	}
	n.D2C("the verifier refused it and reported it to the cloud service (CloudConfig.OnRefused):\n%v", o.Refused)
	n.Why("seq 0 is now %d behind the newest, below the window: the verifier can no longer tell a late\n"+
		"redelivery from an attack, so it refuses (wire.ErrReplay). Envelopes from a boot before the\n"+
		"previous one are refused too; the device writes its boot counter durably before a new boot's first message.", more)

	n.Stopped("the duplicate was dropped and the replay refused; the application saw the door open once")
	return nil
}
