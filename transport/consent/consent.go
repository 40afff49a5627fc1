// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package consent

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/d2c-iot/d2c/transport/internal/textutil"
)

// ErrNoConsent is returned by transport.Client.Publish for a stream declared
// Personal in transport.ClientConfig.Streams while no consent for its declared
// purpose is in force. Nothing is stored.
var ErrNoConsent = errors.New("transport: no consent for this personal stream")

// Bounds of consent state.
const (
	// MaxPurpose bounds a purpose, in bytes.
	MaxPurpose = 256
	// MaxStreams bounds the streams a device records consent for, the
	// streams a client declares, and the streams the [Ledger] tracks per
	// device.
	MaxStreams = 256
)

// Policy declares what a telemetry stream is for (see
// transport.ClientConfig.Streams).
type Policy struct {
	// Stream is the stream name ([wire.ValidateStream]); not one of the
	// reserved "d2c." streams. Required.
	Stream string
	// Purpose says what the stream's data is used for, in the words the
	// user is shown when asked for consent: 1 to 256 bytes of UTF-8
	// without control characters. Required when Personal.
	Purpose string
	// Personal marks a stream that carries personal data: it is sent only
	// while the user's consent to Purpose is in force
	// (transport.Client.GrantConsent). Default false: the stream (device health,
	// for example) needs no consent.
	Personal bool
}

// State is the consent recorded for one stream.
type State struct {
	Stream  string
	Purpose string // the purpose consented to (or withdrawn from)
	// Granted reports consent in force: granted, and its consent event
	// stored in the outbox. transport.Client.Consent also requires Purpose to be
	// the stream's declared purpose.
	Granted bool
	Time    time.Time // when it last changed, by the device's trusted clock
	// Change is the store's change counter at the last change: it rises
	// by one at every grant or withdrawal of any stream, and never
	// decreases.
	Change uint64
}

// ValidatePurpose checks a purpose: 1 to [MaxPurpose] bytes of UTF-8
// without control characters.
func ValidatePurpose(p string) error {
	if p == "" || len(p) > MaxPurpose || !utf8.ValidString(p) || strings.ContainsFunc(p, unicode.IsControl) {
		return fmt.Errorf("transport: purpose %q: want 1 to %d bytes of UTF-8 without control characters", textutil.Clip(p), MaxPurpose)
	}
	return nil
}

// eventBody is the JSON body of a consent event (docs/protocol.md).
type eventBody struct {
	V       int    `json:"v"`
	Stream  string `json:"stream"`
	Purpose string `json:"purpose"`
	Granted bool   `json:"granted"`
	Change  uint64 `json:"change"`
	Time    int64  `json:"time"`
}

// Body returns the JSON body of ev's reading on [wire.ConsentStream]
// (docs/protocol.md); Device, Boot and Seq come from the record.
func (ev Event) Body() ([]byte, error) {
	return json.Marshal(eventBody{V: 1, Stream: ev.Stream, Purpose: ev.Purpose, Granted: ev.Granted, Change: ev.Change, Time: ev.Time.UnixMilli()})
}
