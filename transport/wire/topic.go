// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package wire

import (
	"errors"
	"fmt"
	"strings"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/internal/textutil"
)

// Topic scheme, version 1. Every topic has the device ID as its fourth
// level, so that a broker can confine each device to its own subtree by
// certificate identity alone (mosquitto's %u with use_identity_as_username):
//
//	d2c/v1/dev/{device}/up/tele/{stream}   device → cloud: telemetry envelopes
//	d2c/v1/dev/{device}/up/key             device → cloud: session-key deliveries
//	d2c/v1/dev/{device}/up/cmdres          device → cloud: command results (signed records
//	                                       of the reserved stream d2c.cmdres)
//	d2c/v1/dev/{device}/down/cmd           cloud → device: signed commands
//
// A device may publish under .../up/# and subscribe under .../down/# of its
// own ID, nothing else. Cloud services authenticate with certificates whose
// CN is "svc:<name>": the colon cannot appear in a device ID, so no device
// can ever hold a service's rights.
const (
	TopicPrefix = "d2c/v1/dev/"
	upTele      = "up/tele/"
	upKey       = "up/key"
	upCmdResult = "up/cmdres"
	downCmd     = "down/cmd"
)

// ErrInvalidTopic is returned for a topic outside the scheme.
var ErrInvalidTopic = errors.New("transport: topic outside the d2c/v1 scheme")

// TelemetryTopic returns the topic of a device's telemetry stream.
func TelemetryTopic(device, stream string) string {
	return TopicPrefix + device + "/" + upTele + stream
}

// CommandTopic returns the topic a device receives its commands on.
func CommandTopic(device string) string { return TopicPrefix + device + "/" + downCmd }

// CommandResultTopic returns the topic a device reports command results on.
func CommandResultTopic(device string) string { return TopicPrefix + device + "/" + upCmdResult }

// KeyTopic returns the topic a device delivers its session keys on.
func KeyTopic(device string) string { return TopicPrefix + device + "/" + upKey }

// Cloud-side subscription filters, all devices.
const (
	AllTelemetry      = TopicPrefix + "+/" + upTele + "#"
	AllKeys           = TopicPrefix + "+/" + upKey
	AllCommandResults = TopicPrefix + "+/" + upCmdResult
	AllUp             = TopicPrefix + "+/up/#"
)

// TopicKind names what a parsed topic carries.
type TopicKind int

// Topic kinds.
const (
	KindTelemetry TopicKind = iota + 1
	KindKey
	KindCommandResult
	KindCommand
)

// ParsedTopic is a topic of the scheme, split.
type ParsedTopic struct {
	Device string
	Kind   TopicKind
	Stream string // telemetry only
}

// ParseTopic splits a topic of the scheme. The device level must be a valid
// device ID, and a stream a valid stream name ([ValidateStream]).
func ParseTopic(topic string) (ParsedTopic, error) {
	rest, ok := strings.CutPrefix(topic, TopicPrefix)
	if !ok {
		return ParsedTopic{}, fmt.Errorf("%w: %q", ErrInvalidTopic, textutil.Clip(topic))
	}
	device, rest, ok := strings.Cut(rest, "/")
	if !ok || identity.ValidateDeviceID(device) != nil {
		return ParsedTopic{}, fmt.Errorf("%w: bad device level in %q", ErrInvalidTopic, textutil.Clip(topic))
	}
	p := ParsedTopic{Device: device}
	switch {
	case strings.HasPrefix(rest, upTele):
		p.Kind, p.Stream = KindTelemetry, rest[len(upTele):]
		if err := ValidateStream(p.Stream); err != nil {
			return ParsedTopic{}, fmt.Errorf("%w: %v", ErrInvalidTopic, err)
		}
	case rest == upKey:
		p.Kind = KindKey
	case rest == upCmdResult:
		p.Kind = KindCommandResult
	case rest == downCmd:
		p.Kind = KindCommand
	default:
		return ParsedTopic{}, fmt.Errorf("%w: %q", ErrInvalidTopic, textutil.Clip(topic))
	}
	return p, nil
}

// ValidateStream checks a telemetry stream name: 1 to 64 bytes of ASCII
// letters, digits, '.', '_' and '-' (the device ID alphabet), so that it is
// one safe topic level.
func ValidateStream(stream string) error {
	if err := identity.ValidateDeviceID(stream); err != nil {
		return fmt.Errorf("transport: invalid stream name %q: same format as a device ID", textutil.Clip(stream))
	}
	return nil
}
