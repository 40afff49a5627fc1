// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/wire"
)

// MaxCommandOutput bounds [CommandResult.Output], so that a result with
// its JSON and base64 overhead fits one reading.
const MaxCommandOutput = 16 << 10

// CommandResult is what a device reports after running a command.
type CommandResult struct {
	// ID is the command's ([Command.ID]).
	ID uint64
	// Failed tells that the command did not do what it asked.
	Failed bool
	// Output is the application's answer (a reading, an error message),
	// at most MaxCommandOutput bytes. Optional.
	Output []byte
	// Time is when the command finished. Default: now, by the device's
	// trusted clock.
	Time time.Time
}

// cmdResultBody is the JSON body of a command result (docs/protocol.md).
type cmdResultBody struct {
	V      int    `json:"v"`
	ID     uint64 `json:"id"`
	Failed bool   `json:"failed"`
	Output []byte `json:"output,omitempty"` // standard base64 (encoding/json)
}

// ReportCommandResult reports the outcome of a command the device ran: it
// seals the result into a signed record of [wire.CommandResultStream] and stores
// it durably in the outbox, at a high priority; it returns once the record
// is on disk, and delivery follows as for telemetry. The ID must be of a
// command this client ran ([ErrNoSuchCommand]).
func (c *Client) ReportCommandResult(ctx context.Context, r CommandResult) error {
	if c.cmds == nil {
		return fmt.Errorf("%w: this client takes no commands (ClientConfig.OnCommand)", ErrNoSuchCommand)
	}
	if r.ID == 0 || r.ID > c.cmds.lastRun() {
		return fmt.Errorf("%w: ID %d was not run here", ErrNoSuchCommand, r.ID)
	}
	if len(r.Output) > MaxCommandOutput {
		return fmt.Errorf("transport: command result output of %d bytes, at most %d", len(r.Output), MaxCommandOutput)
	}
	if r.Time.IsZero() {
		r.Time = c.cfg.Store.Clock().Now()
	}
	body, err := json.Marshal(cmdResultBody{V: 1, ID: r.ID, Failed: r.Failed, Output: r.Output})
	if err != nil {
		return err
	}
	_, err = c.store(ctx, sealRequest{PublishOptions{Stream: wire.CommandResultStream, Priority: 254}, []Reading{{Time: r.Time, Body: body}}})
	return err
}

// ParseCommandResult decodes the command result of a verified record of
// [wire.CommandResultStream] (one reading, a JSON body). The decoding is
// strict: unknown fields, another version, a zero ID or an output over
// [MaxCommandOutput] are refused with an error wrapping [wire.ErrMalformed].
func ParseCommandResult(r Record) (CommandResult, error) {
	if r.Stream != wire.CommandResultStream {
		return CommandResult{}, fmt.Errorf("%w: command result: record of stream %q, want %q", wire.ErrMalformed, textutil.Clip(r.Stream), wire.CommandResultStream)
	}
	if len(r.Readings) != 1 {
		return CommandResult{}, fmt.Errorf("%w: command result: %d readings, want 1", wire.ErrMalformed, len(r.Readings))
	}
	var b cmdResultBody
	if err := textutil.DecodeStrictJSON(r.Readings[0].Body, &b); err != nil {
		return CommandResult{}, fmt.Errorf("%w: command result: %v", wire.ErrMalformed, err)
	}
	switch {
	case b.V != 1:
		return CommandResult{}, fmt.Errorf("%w: command result: version %d, want 1", wire.ErrMalformed, b.V)
	case b.ID == 0:
		return CommandResult{}, fmt.Errorf("%w: command result: ID 0", wire.ErrMalformed)
	case len(b.Output) > MaxCommandOutput:
		return CommandResult{}, fmt.Errorf("%w: command result: output of %d bytes, at most %d", wire.ErrMalformed, len(b.Output), MaxCommandOutput)
	}
	return CommandResult{ID: b.ID, Failed: b.Failed, Output: b.Output, Time: r.Readings[0].Time}, nil
}
