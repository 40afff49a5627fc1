// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package consent is per-stream consent to personal data (ETSI EN 303 645
// provision 6): a device declares what each telemetry stream is for
// ([Policy], in transport.ClientConfig.Streams); a stream marked Personal
// is sent only while the user's consent to its purpose is in force
// (transport.Client.GrantConsent, WithdrawConsent). Every change travels
// as a signed [Event] on [wire.ConsentStream], and a cloud service applies
// them to the telemetry it receives with a [Ledger], which discards what
// was sealed without consent in force, in the device's own sequence order.
package consent
