// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package wire is d2c's wire format, version 1, the lowest layer of
// transport: the topic scheme ([TelemetryTopic], [ParseTopic]), the
// reserved streams ([ConsentStream], [SecurityStream],
// [CommandResultStream]), the record an envelope signs ([Record]) and its
// one CBOR encoding ([Codec]), the JOSE media types, and the errors every
// refusal wraps ([ErrBadSignature], [ErrReplay]...). It imports nothing
// of transport's other packages; docs/protocol.md specifies the format
// with a worked example.
package wire
