// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import "errors"

// Errors of the transport root. Envelope refusals wrap the errors of
// package wire (wire.ErrBadSignature, wire.ErrReplay...); the outbox,
// consent and replay packages have their own.
var (
	// ErrCommandExpired: the command's expiry has passed (trusted time).
	ErrCommandExpired = errors.New("transport: command expired")
	// ErrCommandReplayed: the command's ID is not above the last executed.
	ErrCommandReplayed = errors.New("transport: command replayed")

	// ErrPacketTooLarge: the broker sent an MQTT packet larger than the
	// Maximum Packet Size the client advertised in CONNECT (limits.MQTTPacket,
	// MQTT v5 section 3.1.2.11.4). The client drops the connection before
	// allocating the packet, logs the violation and reconnects with a growing
	// backoff. A broker doing this is broken or hostile.
	ErrPacketTooLarge = errors.New("transport: broker sent a packet over the client's Maximum Packet Size")

	// ErrBrokerProtocol: the broker sent bytes that are not an MQTT v5 packet
	// header (a reserved packet type or a malformed remaining length).
	ErrBrokerProtocol = errors.New("transport: broker broke the MQTT protocol")

	// ErrCertificateRejected: the broker refused the device certificate during
	// or right after the TLS handshake (revoked, expired, unknown CA). The
	// device backs off and keeps its queue; an operator must act (renew,
	// re-enroll, check the broker's CA and CRL).
	ErrCertificateRejected = errors.New("transport: broker rejected the device certificate")

	// ErrRefusedByBroker: the broker answered a publish or subscribe with a
	// reason code that retrying cannot fix (for example 0x87, not authorized).
	ErrRefusedByBroker = errors.New("transport: broker refused the message")

	// ErrInsecureGroup is returned by [DialCloud] for a shared-subscription
	// group name a device could guess (see [CloudConfig].Group).
	ErrInsecureGroup = errors.New("transport: insecure shared-subscription group")

	// ErrNoSuchCommand is returned by [Client.ReportCommandResult] for a
	// command this device has not run.
	ErrNoSuchCommand = errors.New("transport: no such command")

	// ErrUnknownSessionKey: no session-key delivery is kept for that device
	// and key ID.
	ErrUnknownSessionKey = errors.New("transport: unknown session key")

	// ErrParked: an envelope sealed under a session key whose delivery no
	// verifier has received yet was parked in the shared [SessionKeys] until
	// it arrives; it is neither accepted nor refused yet.
	ErrParked = errors.New("transport: envelope parked until its session key arrives")

	// ErrReplayState: the verifier's state could not decide (a shared store
	// unreachable: the replay windows, the registry of certificates, the
	// revocations, the session keys or the parking); the message was neither
	// accepted nor refused and may be verified again.
	ErrReplayState = errors.New("transport: replay state unavailable")
)
