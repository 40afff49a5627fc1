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
	"github.com/d2c-iot/d2c/transport/consent"
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
		Streams: []consent.Policy{
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
	fmt.Println("before consent:", errors.Is(err, consent.ErrNoConsent))

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
	fmt.Println("withdrawn:", dev.Consent("heart").Granted, errors.Is(err, consent.ErrNoConsent))
	// Queued: the two consent events; the reading was purged.
	fmt.Println("queued:", dev.Stats().QueueDepth)
	// Output:
	// before consent: true
	// granted: true <nil>
	// withdrawn: false true
	// queued: 2
}
