// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package outbox is the durable queue a d2c client publishes from: every
// sealed envelope is stored here, fsynced, before Publish returns, and
// leaves only when the broker has acknowledged it (or it expired, was
// dropped or purged). Messages survive broker outages, crashes and power
// cuts; torn or corrupt file tails are set aside, never fatal.
//
// [Open] opens (or creates) an outbox directory; [Outbox.Append] stores
// messages in one group commit; [Outbox.Next] hands out the deliverable
// ones by priority, within the cloud's replay window
// ([wire.ReplayWindowSize]) for sequenced messages; [Outbox.Ack] removes
// them. transport.Client owns one; use this package directly only to build
// another sender on the same guarantees.
//
// The on-disk format and the recovery rules are in outbox.go's header
// comment and docs/architecture.md.
package outbox
