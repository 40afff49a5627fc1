// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package replay is the verifier's in-memory replay window: each device's
// (boot, seq) pairs are classified as fresh, duplicate (a QoS 1
// redelivery, wire.ErrDuplicate) or replay (wire.ErrReplay), in the manner
// of the IPsec anti-replay window (RFC 4303 section 3.4.3). A [Window] is
// the default transport.ReplayState of a single verifier process; several
// processes share one database instead (cloud/store).
package replay
