package update

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/d2c-iot/d2c/transport"
)

// ReportStream is the telemetry stream update results are published on.
const ReportStream = "update"

// Publisher publishes telemetry; *transport.Client implements it.
type Publisher interface {
	Publish(ctx context.Context, stream string, readings ...transport.Reading) error
}

// TelemetryReporter returns an AgentConfig.Report that publishes each
// result as signed telemetry on the "update" stream, its body the JSON of
// [Result], so that the cloud learns of every install, confirm, revert and
// refusal with the same guarantees as any reading: signed by the device
// key, stored durably before it is sent, never lost. A failure to store it
// is logged to log (nil discards).
func TelemetryReporter(p Publisher, log *slog.Logger) func(context.Context, Result) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return func(ctx context.Context, r Result) {
		body, err := json.Marshal(r)
		if err == nil {
			err = p.Publish(ctx, ReportStream, transport.Reading{Time: time.UnixMilli(r.Time), Body: body})
		}
		if err != nil {
			log.Error("update: report result", "event", r.Event, "version", r.Version, "err", err)
		}
	}
}
