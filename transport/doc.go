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
// stores it in a durable [Outbox] before returning. A delivery loop publishes
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
// [CommandSigner] signs commands. [MosquittoConfig] generates the broker
// configuration and ACL that confine each device to its own topics
// ([Authorize] states the same rules for other brokers; transport/mochihook
// applies them to the embedded broker of transport/devbroker).
//
// # Wire format
//
// docs/protocol.md specifies topics, envelope fields and CBOR keys,
// algorithms and replay rules, with a worked example.
//
// # Compatibility
//
// Until d2c 1.0 the API may change between minor versions. The wire format
// is versioned in its topics (d2c/v1/...) and media types.
package transport
