// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"fmt"
	"strings"

	"github.com/d2c-iot/d2c/internal/limits"
)

// DeviceURIPrefix prefixes a device ID in the URI subject alternative name of
// its certificate: urn:d2c:device:<id>.
const DeviceURIPrefix = "urn:d2c:device:"

// ValidateDeviceID checks the device ID format: 1 to 64 bytes of ASCII
// letters, digits, '.', '_' and '-', starting with a letter or digit.
//
// The format keeps a device ID safe everywhere it goes: as an MQTT topic
// level (no '/', '+', '#', NUL, no leading '$'), as a certificate common name
// and inside a URN (no ':' or spaces), and as a file name (no leading '.').
// Device IDs are case sensitive.
func ValidateDeviceID(id string) error {
	if len(id) == 0 || len(id) > limits.DeviceIDMaxLen {
		return fmt.Errorf("%w: length %d, want 1 to %d", ErrInvalidDeviceID, len(id), limits.DeviceIDMaxLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if alnum || i > 0 && (c == '.' || c == '_' || c == '-') {
			continue
		}
		return fmt.Errorf("%w: %q: byte %d (%q) not allowed", ErrInvalidDeviceID, truncate(id), i, c)
	}
	return nil
}

// DeviceURI returns the URI SAN of a device: urn:d2c:device:<id>.
func DeviceURI(id string) string { return DeviceURIPrefix + id }

// truncate shortens untrusted text before it goes into an error or a log.
func truncate(s string) string {
	const max = 80
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
