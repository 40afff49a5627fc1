// Package transport carries telemetry from devices to the cloud, and
// commands back, over MQTT v5 with mutual TLS 1.3, so that the cloud trusts
// the device and not the broker.
//
// This package is being built (issue 3); see docs/protocol.md.
package transport
