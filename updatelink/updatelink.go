// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package updatelink connects an update agent ([update.Agent]) to a
// d2c transport client ([transport.Client]): the agent's results go to the
// cloud as signed telemetry ([TelemetryReporter]) and the cloud's signed
// "update.check" command makes the agent check at once ([CommandHandler]).
//
// It lives apart from both packages so that neither imports the other
// (docs/architecture.md): an agent that reports some other way, or not at
// all, links no MQTT client; a device without updates links no agent.
//
//	client, err := transport.Dial(ctx, transport.ClientConfig{
//		…,
//		OnCommand: func(ctx context.Context, c transport.Command) { handler(ctx, c) },
//	})
//	agent, err := update.NewAgent(ctx, update.AgentConfig{
//		…,
//		Report: updatelink.TelemetryReporter(client, logger),
//	})
//	handler = updatelink.CommandHandler(agent, appCommands)
package updatelink

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/update"
)

// Publisher publishes telemetry; *transport.Client implements it.
type Publisher interface {
	Publish(ctx context.Context, stream string, readings ...transport.Reading) error
}

var _ Publisher = (*transport.Client)(nil)

// TelemetryReporter returns an [update.AgentConfig].Report that publishes
// each result as signed telemetry on the [update.ReportStream] stream, its
// body the JSON of [update.Result], so that the cloud learns of every
// install, confirm, revert and refusal, and at each start of the release
// the device runs ("running", with its SBOM digest and support end;
// docs/update-format.md, "Update reports"), with the same guarantees as any
// reading: signed by the device key, stored durably before it is sent,
// never lost. A failure to store it is logged to log (nil discards).
func TelemetryReporter(p Publisher, log *slog.Logger) func(context.Context, update.Result) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return func(ctx context.Context, r update.Result) {
		body, err := json.Marshal(r)
		if err == nil {
			err = p.Publish(ctx, update.ReportStream, transport.Reading{Time: time.UnixMilli(r.Time), Body: body})
		}
		if err != nil {
			log.Error("update: report result", "event", r.Event, "version", r.Version, "err", err)
		}
	}
}

// CommandHandler returns a [transport.ClientConfig].OnCommand that notifies
// the agent ([update.Agent.Notify]) on an [update.CheckCommand] and passes
// every other command to next (which may be nil). The command arrived
// verified (signed by the fleet's command key, for this device, unexpired,
// never replayed); it only triggers a check: what gets installed is still
// decided by the signed update metadata alone.
func CommandHandler(a *update.Agent, next func(context.Context, transport.Command)) func(context.Context, transport.Command) {
	return func(ctx context.Context, c transport.Command) {
		if c.Name == update.CheckCommand {
			a.Notify()
			return
		}
		if next != nil {
			next(ctx, c)
		}
	}
}
