// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command inject-command plays an attacker with broker-level access who
// sends commands to a device: unsigned, signed by a key of its own,
// replayed, and meant for another device. The device refuses each one and
// reports it, signed, to the cloud.
//
//	go run ./examples/attacks/inject-command
package main

import (
	"context"
	"encoding/json"
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
	n.Title("inject-command", "commands injected through the broker")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	cloud, err := f.StartCloud(ctx, false)
	if err != nil {
		return err
	}
	store, err := f.Enroll(ctx, "lock-1")
	if err != nil {
		return err
	}
	lock, err := f.Connect(ctx, store, lab.DeviceOptions{Commands: true})
	if err != nil {
		return err
	}
	commander, err := f.Commander(ctx)
	if err != nil {
		return err
	}
	insider, err := f.Insider(ctx)
	if err != nil {
		return err
	}
	if err := insider.Subscribe(ctx, wire.TopicPrefix+"+/down/cmd"); err != nil {
		return err
	}
	n.Lab("fleet on 127.0.0.1: CA, registrar, broker %s, cloud verifier and command sender", f.Broker.Addr())
	n.Lab("door lock lock-1 runs commands signed by the fleet's command key (ClientConfig.CommandKeys)")
	n.Lab("the attacker has broker-level access: it reads and writes every d2c topic")

	// Genuine traffic the attacker records: a command for lock-1, and one
	// for another lock, which is not even online.
	if _, err := commander.Send(ctx, "lock-1", "unlock", "30s"); err != nil {
		return err
	}
	select {
	case c := <-lock.Commands:
		n.Lab("the cloud sent lock-1 a signed command; lock-1 verified it and ran: %s %s", c.Name, c.Body)
	case <-time.After(lab.Timeout):
		return errors.New("the genuine command did not arrive")
	}
	unlock1, err := insider.Next(ctx, "lock-1/down/cmd")
	if err != nil {
		return err
	}
	if _, err := commander.Send(ctx, "lock-2", "unlock", "30s"); err != nil {
		return err
	}
	unlock2, err := insider.Next(ctx, "lock-2/down/cmd")
	if err != nil {
		return err
	}
	n.Attacker("recorded lock-1's unlock command, and an unlock command the cloud sent to lock-2")

	attackerKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return err
	}
	ownSigned, err := (&transport.CommandSigner{Key: attackerKey}).Sign(transport.Command{Device: "lock-1", Name: "unlock", Body: []byte("forever")})
	if err != nil {
		return err
	}
	unsigned, err := lab.StripSignature(ownSigned)
	if err != nil {
		return err
	}
	attacks := []struct {
		what     string
		envelope []byte
		want     error
		why      string
	}{
		{"unsigned: an unlock command with \"alg\":\"none\" and no signature", unsigned, wire.ErrMalformed,
			"the device accepts only ES256 or EdDSA signatures; \"none\" is refused before the payload is even looked at."},
		{"signed with the attacker's own key, in the d2c format", ownSigned, wire.ErrBadSignature,
			"the device looks the signer up among the command keys it was configured with (by kid); the attacker's is not one."},
		{"replayed: lock-1's recorded unlock command, validly signed, sent again", unlock1.Payload, transport.ErrCommandReplayed,
			"every command has an ID above the last one the device ran, which it stores before running it (also across restarts)."},
		{"for another device: lock-2's validly signed unlock command, on lock-1's topic", unlock2.Payload, wire.ErrWrongDevice,
			"the signed command names the device it is for; the topic it arrived on does not count."},
	}
	for i, a := range attacks {
		n.Section("%d. %s", i+1, a.what)
		if err := insider.Publish(ctx, wire.CommandTopic("lock-1"), a.envelope); err != nil {
			return err
		}
		n.Attacker("published it on %s", wire.CommandTopic("lock-1"))
		o, err := lock.Next(ctx)
		if err != nil {
			return err
		}
		if o.Ran != nil {
			return lab.Succeeded("lock-1 ran the injected command %s %s", o.Ran.Name, o.Ran.Body)
		}
		if !errors.Is(o.Refused, a.want) {
			return fmt.Errorf("refused, but not with %v: %v", a.want, o.Refused)
		}
		n.D2C("lock-1 refused it (ClientConfig.OnRefused): %v", o.Refused)
		n.Why("%s", a.why)
		// The application reports the refusal to the cloud, as signed telemetry.
		report, _ := json.Marshal(map[string]string{"event": "command refused", "error": o.Refused.Error()})
		if err := lock.Client.Publish(ctx, "security", transport.Reading{Time: time.Now(), Body: report}); err != nil {
			return err
		}
		rec, err := cloud.Record(ctx)
		if err != nil {
			return err
		}
		n.D2C("the cloud received lock-1's signed report on stream %q", rec.Stream)
	}
	if st := lock.Client.Stats(); st.CommandsRun != 1 {
		return lab.Succeeded("lock-1 ran %d commands, only 1 was genuine", st.CommandsRun)
	}
	n.Stopped("lock-1 ran only the genuine command; the %d injected ones were refused and reported", len(attacks))
	return nil
}
