// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package consent

import (
	"errors"
	"testing"

	"github.com/d2c-iot/d2c/transport/wire"
)

// TestParseEventOneReading: a signed consent event has one reading, the
// one a service parsing the same bytes with another JSON library would
// see: a duplicate or case-variant "granted" is refused, not resolved the
// way encoding/json would (last wins, case ignored).
func TestParseEventOneReading(t *testing.T) {
	rec := func(body string) wire.Record {
		return wire.Record{Device: "wearable-7", Stream: wire.ConsentStream, Boot: 1, Seq: 1,
			Readings: []wire.Reading{{Body: []byte(body)}}}
	}
	const ok = `{"v":1,"stream":"heart","purpose":"alerts","granted":true,"change":1,"time":1795000000000}`
	if ev, err := ParseEvent(rec(ok)); err != nil || !ev.Granted {
		t.Fatalf("valid event: %+v, %v", ev, err)
	}
	for name, body := range map[string]string{
		"duplicate granted":    `{"v":1,"stream":"heart","purpose":"alerts","granted":false,"granted":true,"change":1,"time":1795000000000}`,
		"case-variant granted": `{"v":1,"stream":"heart","purpose":"alerts","granted":false,"Granted":true,"change":1,"time":1795000000000}`,
		"Granted alone":        `{"v":1,"stream":"heart","purpose":"alerts","Granted":true,"change":1,"time":1795000000000}`,
	} {
		if ev, err := ParseEvent(rec(body)); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("%s: %+v, %v, want wire.ErrMalformed", name, ev, err)
		}
	}
}
