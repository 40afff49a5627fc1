// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package security_test

import (
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/transport/security"
	"github.com/d2c-iot/d2c/transport/wire"
)

// ExampleMonitor shows a cloud service alerting on devices whose broker
// keeps refusing their certificate: more than 3 refusals within 10
// minutes. The records come from a transport.Verifier (in a real service,
// through transport.CloudConfig.OnRecord).
func ExampleMonitor() {
	m := &security.Monitor{
		Thresholds: map[string]security.Threshold{
			security.MetricAuthFailures: {Max: 3, Window: 10 * time.Minute},
		},
		OnAlert: func(a security.Alert) {
			fmt.Printf("alert: %s reported %d %s (max %d)\n", a.Device, a.Count, a.Counter, a.Threshold.Max)
		},
	}
	report := func(seq uint64, failures int) wire.Record {
		body := fmt.Sprintf(`{"v":1,"since":0,"counts":{"auth_failures":%d},"totals":{}}`, failures)
		return wire.Record{Device: "gw-12", Stream: wire.SecurityStream, Boot: 1, Seq: seq,
			Readings: []wire.Reading{{Body: []byte(body)}}}
	}
	for seq, failures := range []int{2, 1, 4} {
		r, err := m.Observe(report(uint64(seq), failures))
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println("report", r.Seq, r.Counts)
	}
	fmt.Println("alerts:", m.Alerts())
	// Output:
	// report 0 map[auth_failures:2]
	// report 1 map[auth_failures:1]
	// alert: gw-12 reported 7 auth_failures (max 3)
	// report 2 map[auth_failures:4]
	// alerts: 1
}
