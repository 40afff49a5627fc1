// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package security is the security monitoring of a fleet (ETSI EN 303 645
// provision 5.10, "examine system telemetry data"): a d2c client counts
// security-relevant events (refused certificates, failed connections,
// refused commands, a full outbox...) and reports them periodically as
// signed telemetry on [wire.SecurityStream] ([Report]); a cloud service
// feeds the verified reports to a [Monitor], which raises an [Alert] when
// a counter passes its [Threshold] within a window.
package security
