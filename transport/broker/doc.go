// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package broker states what an MQTT broker must enforce for a d2c fleet,
// and writes it for mosquitto.
//
// The broker is the first line of defence, never the last: the cloud
// verifies every envelope's signature whatever the broker lets through.
// Its job is to keep a device from speaking or listening for another one.
// [MosquittoConfig] writes mosquitto 2.x's configuration and ACL file;
// [Authorize] is the same policy as a pure function, for the hooks of
// other brokers (transport/mochihook for mochi-mqtt); [ServiceRights]
// names what each cloud service may read and write.
package broker
