// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"strconv"
	"time"

	"github.com/d2c-iot/d2c/identity"
)

// The helpers below append one record of a known kind with conventional
// detail keys. Values are clipped to 256 bytes (invalid UTF-8 replaced),
// so that a long error text never costs the record.

// Enrollment records the device's first certificate: its device ID,
// serial number, expiry and key ID.
func (l *Log) Enrollment(ctx context.Context, cert *x509.Certificate) error {
	return l.appendHelper(ctx, KindEnrollment, certDetail(cert))
}

// Renewal records a renewed certificate, as [Log.Enrollment] does.
func (l *Log) Renewal(ctx context.Context, cert *x509.Certificate) error {
	return l.appendHelper(ctx, KindRenewal, certDetail(cert))
}

func certDetail(cert *x509.Certificate) Detail {
	if cert == nil {
		return nil
	}
	d := Detail{
		"device":    cert.Subject.CommonName,
		"serial":    cert.SerialNumber.Text(16),
		"not_after": cert.NotAfter.UTC().Format(time.RFC3339),
	}
	if kid, err := identity.KeyID(cert.PublicKey); err == nil {
		d["key"] = kid
	}
	return d
}

// Attestation records that the device signed an attestation token: the
// token's SHA-256, which the cloud can match with the token it verified.
func (l *Log) Attestation(ctx context.Context, token []byte) error {
	sum := sha256.Sum256(token)
	return l.appendHelper(ctx, KindAttestation, Detail{"token_sha256": hex.EncodeToString(sum[:])})
}

// UpdateResult records an outcome of the update agent (update.Result's
// fields): event "installed", "confirmed", "reverted", "refused" or
// "failed" maps to [KindUpdateInstall], [KindUpdateConfirm],
// [KindUpdateRevert], [KindUpdateRefused] or [KindUpdateFailed] (any
// other event to KindUpdateFailed). "running", the release the agent
// reports at each start, is a start, not an update step: it records
// nothing and returns nil. Wire it as the agent's Report:
//
//	Report: func(ctx context.Context, r update.Result) {
//		_ = auditLog.UpdateResult(ctx, r.Event, r.Version, r.From, r.Reason)
//	},
func (l *Log) UpdateResult(ctx context.Context, event string, version, from uint64, reason string) error {
	kind := KindUpdateFailed
	switch event {
	case "running":
		return nil
	case "installed":
		kind = KindUpdateInstall
	case "confirmed":
		kind = KindUpdateConfirm
	case "reverted":
		kind = KindUpdateRevert
	case "refused":
		kind = KindUpdateRefused
	}
	d := Detail{"event": event, "version": strconv.FormatUint(version, 10), "from": strconv.FormatUint(from, 10)}
	if reason != "" {
		d["reason"] = reason
	}
	return l.appendHelper(ctx, kind, d)
}

// CommandRefused records a command from the cloud that was refused.
func (l *Log) CommandRefused(ctx context.Context, command, reason string) error {
	return l.appendHelper(ctx, KindCommandRefused, Detail{"command": command, "reason": reason})
}

// MessageRefused records a message refused for good (by the broker, or a
// received one that did not verify). Wire it as transport's OnRefused:
//
//	OnRefused: func(r transport.Refusal) {
//		if r.MessageID == 0 { // a command
//			_ = auditLog.CommandRefused(context.Background(), r.Topic, r.Reason)
//			return
//		}
//		_ = auditLog.MessageRefused(context.Background(), r.Topic, r.Reason)
//	},
func (l *Log) MessageRefused(ctx context.Context, topic, reason string) error {
	return l.appendHelper(ctx, KindMessageRefused, Detail{"topic": topic, "reason": reason})
}

// ConsentChange records that the user granted or withdrew consent for a
// telemetry stream.
func (l *Log) ConsentChange(ctx context.Context, stream string, granted bool) error {
	return l.appendHelper(ctx, KindConsent, Detail{"stream": stream, "granted": strconv.FormatBool(granted)})
}

// Decommission records that the device is being decommissioned. Append it
// (and publish a last signed head) before the keys are destroyed.
func (l *Log) Decommission(ctx context.Context, reason string) error {
	return l.appendHelper(ctx, KindDecommission, Detail{"reason": reason})
}

func (l *Log) appendHelper(ctx context.Context, kind Kind, d Detail) error {
	for k, v := range d {
		d[k] = clipValue(v)
	}
	_, err := l.Append(ctx, kind, d)
	return err
}
