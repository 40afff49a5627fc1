// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package wire

import "strings"

// Streams of the SDK itself. Every stream whose name starts with "d2c." is
// reserved ([IsReserved]): a device application cannot publish on it or
// declare it.
const (
	// ConsentStream carries the device's consent events, one per record.
	ConsentStream = "d2c.consent"
	// SecurityStream carries the device's security-metrics reports.
	SecurityStream = "d2c.security"
	// CommandResultStream carries command results: a device reports the
	// outcome of a command it ran as a signed record of this stream, on
	// its command-result topic ([CommandResultTopic]), one result a
	// record. Like telemetry it is sequenced, stored durably and
	// replay-checked by the cloud, which trusts the device's signature,
	// not the broker.
	CommandResultStream = "d2c.cmdres"

	reservedPrefix = "d2c."
)

// IsReserved reports whether stream is reserved for the SDK ("d2c.").
func IsReserved(stream string) bool { return strings.HasPrefix(stream, reservedPrefix) }

// ReplayWindowSize is how many sequence numbers below the highest seen
// the cloud's replay window remembers per device: a message more than
// that far behind is refused as a replay, so a device sends nothing that
// far ahead of its oldest unacknowledged message.
const ReplayWindowSize = 256
