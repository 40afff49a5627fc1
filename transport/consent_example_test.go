// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/d2c-iot/d2c/transport"
)

// Example_consent declares a stream that carries personal data: it is
// refused until the user consents to its purpose, and withdrawing consent
// stops it and purges what was queued. (No broker runs here: everything
// stays queued in the device's outbox.)
func Example_consent() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "d2c-consent-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	store := newExampleFleet(dir).device("wearable-7")

	const purpose = "heart-rate alerts to the wearer's doctor"
	dev, err := transport.Dial(ctx, transport.ClientConfig{
		Broker: "127.0.0.1:1",
		Store:  store,
		Streams: []transport.StreamPolicy{
			{Stream: "heart", Purpose: purpose, Personal: true},
			{Stream: "battery", Purpose: "device health"}, // not personal: no consent needed
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close(ctx)
	reading := transport.Reading{Time: time.Now(), Body: []byte(`{"bpm":61}`)}

	err = dev.Publish(ctx, "heart", reading)
	fmt.Println("before consent:", errors.Is(err, transport.ErrNoConsent))

	// The application asked the user, showing the declared purpose.
	if err := dev.GrantConsent(ctx, "heart", purpose); err != nil {
		log.Fatal(err)
	}
	fmt.Println("granted:", dev.Consent("heart").Granted, dev.Publish(ctx, "heart", reading))

	// Later the user changes their mind.
	if err := dev.WithdrawConsent(ctx, "heart"); err != nil {
		log.Fatal(err)
	}
	err = dev.Publish(ctx, "heart", reading)
	fmt.Println("withdrawn:", dev.Consent("heart").Granted, errors.Is(err, transport.ErrNoConsent))
	// Queued: the two consent events; the reading was purged.
	fmt.Println("queued:", dev.Stats().QueueDepth)
	// Output:
	// before consent: true
	// granted: true <nil>
	// withdrawn: false true
	// queued: 2
}

// ExampleConsentLedger shows a cloud service applying a device's consent
// events to its telemetry: the records come from a Verifier (in a real
// service, through CloudConfig.OnRecord) in the order they arrive.
func ExampleConsentLedger() {
	event := func(seq uint64, granted bool, change int) transport.Record {
		body := fmt.Sprintf(`{"v":1,"stream":"heart","purpose":"heart-rate alerts","granted":%v,"change":%d,"time":1795000000000}`, granted, change)
		return transport.Record{Device: "wearable-7", Stream: transport.ConsentStream, Boot: 4, Seq: seq,
			Readings: []transport.Reading{{Body: []byte(body)}}}
	}
	reading := func(seq uint64) transport.Record {
		return transport.Record{Device: "wearable-7", Stream: "heart", Boot: 4, Seq: seq}
	}
	var ledger transport.ConsentLedger
	for _, r := range []transport.Record{
		event(10, true, 1), // granted
		reading(11),
		reading(12),
		event(14, false, 2), // withdrawn
		reading(13),         // sealed before the withdrawal, in flight: discarded
		event(20, true, 3),  // granted again
		reading(21),
	} {
		if r.Stream == transport.ConsentStream {
			ev, err := ledger.Observe(r)
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("consent %d: granted=%v\n", ev.Change, ev.Granted)
			continue
		}
		fmt.Printf("reading seq %d: keep=%v\n", r.Seq, ledger.Allowed(r))
	}
	// Output:
	// consent 1: granted=true
	// reading seq 11: keep=true
	// reading seq 12: keep=true
	// consent 2: granted=false
	// reading seq 13: keep=false
	// consent 3: granted=true
	// reading seq 21: keep=true
}
