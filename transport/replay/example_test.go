// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package replay_test

import (
	"errors"
	"fmt"

	"github.com/d2c-iot/d2c/transport/replay"
	"github.com/d2c-iot/d2c/transport/wire"
)

// ExampleWindow classifies a device's messages by (boot, seq): a QoS 1
// redelivery is a duplicate, a message from an earlier boot a replay.
func ExampleWindow() {
	w := replay.New(0)
	for _, m := range []struct{ boot, seq uint64 }{{7, 0}, {7, 1}, {7, 1}, {8, 0}, {6, 40}} {
		err := w.Check("gw-12", m.boot, m.seq)
		switch {
		case err == nil:
			fmt.Println(m.boot, m.seq, "fresh")
		case errors.Is(err, wire.ErrDuplicate):
			fmt.Println(m.boot, m.seq, "duplicate: drop it")
		case errors.Is(err, wire.ErrReplay):
			fmt.Println(m.boot, m.seq, "replay: refuse it")
		}
	}
	// Output:
	// 7 0 fresh
	// 7 1 fresh
	// 7 1 duplicate: drop it
	// 8 0 fresh
	// 6 40 replay: refuse it
}
