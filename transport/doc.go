// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package transport carries telemetry from devices to the cloud, and
// commands back, over MQTT v5 with mutual TLS 1.3, so that the cloud trusts
// the device, not the broker.
//
// # Device half
//
// [Dial] connects a device with its certificate from an identity.Store and
// verifies the broker against the fleet anchors; there is no plaintext
// scheme, no skipping of verification and no password mode. [Client.Publish]
// seals readings into an envelope: a CBOR record (device, stream, boot
// counter, sequence number, time, readings) signed as a JWS by the device
// key, optionally nested in a JWE to the cloud key ([Encryption]), and
// stores it in the durable outbox (package outbox) before returning. A delivery loop publishes
// stored envelopes at QoS 1, at most the broker's Receive Maximum in flight,
// and removes each only after a successful PUBACK; a PUBACK reason the
// broker will not change its mind about (0x87 not authorized...) drops the
// message and tells [ClientConfig.OnRefused]. [Client.Flush] waits until
// everything stored so far has been acknowledged. Reconnection uses
// exponential backoff with full jitter; [Client.AwaitConnection] waits for
// the broker and, when it is not reached in time, says why (the last failed
// attempt). Signed commands from the cloud run through
// [ClientConfig.OnCommand] once verified, unexpired, and newer than the
// last; updatelink hands update.check commands to an update
// agent.
//
// # Cloud half
//
// [Verifier] decrypts, checks the signature against the device's registered
// certificate (never a key from the message), checks that signer, record
// and topic agree, and classifies each (boot, seq) as fresh, duplicate (a
// QoS 1 redelivery, dropped) or replay (refused). [DialCloud] subscribes a
// cloud service, optionally through MQTT v5 shared subscriptions.
// [CommandSigner] signs commands.
//
// # Layout
//
// This package is the happy path of both halves. The machinery lives in
// subpackages named after one concept each, which import nothing of this
// one (but decommission's interfaces, which it implements):
//
//   - wire: the wire format, the lowest layer: topics, reserved streams,
//     records and their CBOR codec, media types, the errors every refusal
//     wraps. docs/protocol.md specifies it, with a worked example.
//   - outbox: the durable, crash-safe queue a client publishes from.
//   - broker: the broker's policy: mosquitto's configuration and ACL
//     ([broker.MosquittoConfig]) and the same rules as a function
//     ([broker.Authorize]) for other brokers; transport/mochihook applies
//     them to the embedded broker of transport/devbroker.
//   - consent: per-stream consent: the policies a client declares and the
//     cloud's ledger of consent events.
//   - security: security metrics: the reports devices send and the cloud's
//     monitor with alert thresholds.
//   - replay: the in-memory replay window, the default [ReplayState].
//   - decommission: the cloud half of a decommission
//     ([decommission.Forget]); the device half is [Client.Decommission].
//
// # Compatibility
//
// Until d2c 1.0 the API may change between minor versions. The wire format
// is versioned in its topics (d2c/v1/...) and media types.
package transport
