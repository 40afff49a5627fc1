// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package outboxhook lets d2c's own tests open an outbox
// (transport/outbox) through a fault-injecting file system, such as
// internal/atomicfile/crashfs, without a file-system parameter in the
// outbox's exported API. Package outbox sets the hook when it is
// initialised; nothing else may.
package outboxhook

import "github.com/d2c-iot/d2c/internal/atomicfile"

// Open is outbox.Open on fsys. cfg is an outbox.Config and the value a
// *outbox.Outbox (this package cannot name the types: outbox imports it).
var Open func(fsys atomicfile.FS, cfg any) (any, error)
