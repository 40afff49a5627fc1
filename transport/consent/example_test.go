// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package consent_test

import (
	"fmt"
	"log"

	"github.com/d2c-iot/d2c/transport/consent"
	"github.com/d2c-iot/d2c/transport/wire"
)

// ExampleLedger shows a cloud service applying a device's consent
// events to its telemetry: the records come from a Verifier (in a real
// service, through transport.CloudConfig.OnRecord) in the order they arrive.
func ExampleLedger() {
	event := func(seq uint64, granted bool, change int) wire.Record {
		body := fmt.Sprintf(`{"v":1,"stream":"heart","purpose":"heart-rate alerts","granted":%v,"change":%d,"time":1795000000000}`, granted, change)
		return wire.Record{Device: "wearable-7", Stream: wire.ConsentStream, Boot: 4, Seq: seq,
			Readings: []wire.Reading{{Body: []byte(body)}}}
	}
	reading := func(seq uint64) wire.Record {
		return wire.Record{Device: "wearable-7", Stream: "heart", Boot: 4, Seq: seq}
	}
	var ledger consent.Ledger
	for _, r := range []wire.Record{
		event(10, true, 1), // granted
		reading(11),
		reading(12),
		event(14, false, 2), // withdrawn
		reading(13),         // sealed before the withdrawal, in flight: discarded
		event(20, true, 3),  // granted again
		reading(21),
	} {
		if r.Stream == wire.ConsentStream {
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
