// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"context"

	"github.com/d2c-iot/d2c/transport/replay"
)

// ReplayState decides which verified telemetry records are fresh. It is
// the verifier's memory: a process-local [replay.Window] by default, or a
// database shared by every verifier (github.com/d2c-iot/d2c/cloud/store),
// so that any number of verifier processes accept each (device, boot,
// seq) exactly once and refuse a replay whichever process receives it.
type ReplayState interface {
	// Accept classifies recs in order by their (device, boot, seq) and
	// records the fresh ones, all in one durable step (a store also keeps
	// the fresh records for the application in the same transaction). It
	// returns one verdict per record: nil for a fresh one, an error
	// wrapping [wire.ErrDuplicate] or [wire.ErrReplay] otherwise. An error means
	// nothing was recorded.
	Accept(ctx context.Context, recs []Record) ([]error, error)
	// Forget removes a device's state (decommissioning).
	Forget(ctx context.Context, device string) error
}

var _ ReplayState = (*replay.Window)(nil)
