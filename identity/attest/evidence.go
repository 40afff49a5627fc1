// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package attest

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/d2c-iot/d2c/internal/limits"
)

// Evidence is what a device attests to: the claims of one token besides its
// subject (the device ID) and time.
type Evidence struct {
	// Nonce is the verifier's challenge, as [Verifier.Challenge] returned
	// it: 16 to 64 bytes (eat_nonce, RFC 9711 section 4.1). Required.
	Nonce []byte
	// SoftwareName names the running software (swname, RFC 9711 section
	// 4.2.6), e.g. "acme-gateway-firmware". Required, at most 128 bytes of
	// UTF-8 without control characters.
	SoftwareName string
	// SoftwareVersion is its version (swversion, RFC 9711 section 4.2.7) in
	// the CoSWID multipartnumeric scheme: decimal numbers separated by dots,
	// without leading zeros ("42", "1.4.2"). A device running d2c updates
	// reports strconv.FormatUint(agent.Status().Installed.Version, 10).
	// Required.
	SoftwareVersion string
	// ImageDigest is the SHA-256 of the running image: for a device
	// running d2c updates, agent.Status().Installed.SHA256 (claim
	// d2c_image_digest of the d2c profile). Required, not all zero.
	ImageDigest [32]byte
	// DebugStatus is the state of the debug facilities (dbgstat, RFC 9711
	// section 4.2.9). Default [DebugNotReported]: the claim is omitted.
	// [DebugDisabledPermanently] requires OEM.
	DebugStatus DebugStatus
	// SecureBoot reports whether the device booted software authorized by
	// its manufacturer (oemboot, RFC 9711 section 4.2.8). Default nil: the
	// claim is omitted. Setting it requires OEM.
	SecureBoot *bool
	// OEM identifies the manufacturer (oemid, RFC 9711 section 4.2.3).
	// Default: the claim is omitted.
	OEM OEMID
	// BootCount is the number of times the device has booted (bootcount,
	// RFC 9711 section 4.2.12). Default nil: the claim is omitted.
	BootCount *uint64
}

// OEMID identifies a device manufacturer (RFC 9711 section 4.2.3) by one of
// two means; the zero value means none. The random 128-bit form of the RFC
// is not part of the d2c profile: its JSON size in the RFC (24 characters of
// unpadded base64url) does not match 16 bytes.
type OEMID struct {
	// PEN is an IANA Private Enterprise Number, greater than 0.
	PEN uint32
	// OUI is an IEEE-assigned Organizationally Unique Identifier (MA-L),
	// 3 bytes.
	OUI []byte
}

func (o OEMID) isZero() bool { return o.PEN == 0 && len(o.OUI) == 0 }

func (o OEMID) validate() error {
	switch {
	case o.PEN != 0 && len(o.OUI) != 0:
		return fmt.Errorf("%w: oemid: set PEN or OUI, not both", ErrMalformed)
	case o.OUI != nil && len(o.OUI) != 3:
		return fmt.Errorf("%w: oemid: OUI of %d bytes, want 3", ErrMalformed, len(o.OUI))
	}
	return nil
}

// DebugStatus is the dbgstat claim (RFC 9711 section 4.2.9). Each level
// implies the ones before it, from [DebugEnabled] to
// [DebugDisabledFullyAndPermanently].
type DebugStatus uint8

// Debug status levels. The zero value means the claim is absent; the others
// are the five RFC 9711 states in order (CBOR values 0 to 4).
const (
	DebugNotReported DebugStatus = iota
	DebugEnabled
	DebugDisabled
	DebugDisabledSinceBoot
	DebugDisabledPermanently
	DebugDisabledFullyAndPermanently
)

// debugNames are the JSON values of dbgstat (RFC 9711 section 4.2.9 CDDL).
var debugNames = [...]string{
	DebugEnabled:                     "enabled",
	DebugDisabled:                    "disabled",
	DebugDisabledSinceBoot:           "disabled-since-boot",
	DebugDisabledPermanently:         "disabled-permanently",
	DebugDisabledFullyAndPermanently: "disabled-fully-and-permanently",
}

// String returns the claim's JSON value, or "not-reported".
func (d DebugStatus) String() string {
	switch {
	case d == DebugNotReported:
		return "not-reported"
	case int(d) < len(debugNames):
		return debugNames[d]
	}
	return "DebugStatus(" + strconv.Itoa(int(d)) + ")"
}

func parseDebugStatus(s string) (DebugStatus, bool) {
	for i, n := range debugNames {
		if n != "" && n == s {
			return DebugStatus(i), true
		}
	}
	return DebugNotReported, false
}

// validate checks ev against the d2c profile; it returns errors wrapping
// [ErrMalformed].
func (ev *Evidence) validate() error {
	if n := len(ev.Nonce); n < MinNonceSize || n > MaxNonceSize {
		return fmt.Errorf("%w: nonce of %d bytes, want %d to %d", ErrMalformed, n, MinNonceSize, MaxNonceSize)
	}
	if err := checkText("swname", ev.SoftwareName); err != nil {
		return err
	}
	if _, err := parseVersion(ev.SoftwareVersion); err != nil {
		return fmt.Errorf("%w: swversion: %v", ErrMalformed, err)
	}
	if ev.ImageDigest == ([32]byte{}) {
		return fmt.Errorf("%w: image digest is all zero", ErrMalformed)
	}
	if ev.DebugStatus > DebugDisabledFullyAndPermanently {
		return fmt.Errorf("%w: debug status %d", ErrMalformed, ev.DebugStatus)
	}
	if err := ev.OEM.validate(); err != nil {
		return err
	}
	// RFC 9711 section 4.2.8: "If this claim is present the oemid claim
	// MUST be present"; section 4.2.9.4 likewise for disabled-permanently.
	if ev.SecureBoot != nil && ev.OEM.isZero() {
		return fmt.Errorf("%w: oemboot requires oemid", ErrMalformed)
	}
	if ev.DebugStatus == DebugDisabledPermanently && ev.OEM.isZero() {
		return fmt.Errorf("%w: dbgstat disabled-permanently requires oemid", ErrMalformed)
	}
	return nil
}

// checkText bounds a text claim: 1 to limits.AttestationText bytes of UTF-8
// without control characters.
func checkText(name, s string) error {
	if s == "" || len(s) > limits.AttestationText {
		return fmt.Errorf("%w: %s of %d bytes, want 1 to %d", ErrMalformed, name, len(s), limits.AttestationText)
	}
	if !utf8.ValidString(s) || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return fmt.Errorf("%w: %s is not printable UTF-8", ErrMalformed, name)
	}
	return nil
}

// maxVersionParts bounds the numbers of a multipartnumeric version.
const maxVersionParts = 16

// parseVersion parses a CoSWID multipartnumeric version (RFC 9393 section
// 4.1, version-scheme 1): decimal numbers separated by dots. Leading zeros
// are refused so that each version has one spelling.
func parseVersion(s string) ([]uint64, error) {
	if s == "" || len(s) > limits.AttestationText {
		return nil, fmt.Errorf("version of %d bytes, want 1 to %d", len(s), limits.AttestationText)
	}
	parts := strings.Split(s, ".")
	if len(parts) > maxVersionParts {
		return nil, fmt.Errorf("version of %d parts, at most %d", len(parts), maxVersionParts)
	}
	out := make([]uint64, len(parts))
	for i, p := range parts {
		if p == "" || (len(p) > 1 && p[0] == '0') || strings.TrimLeft(p, "0123456789") != "" {
			return nil, fmt.Errorf("version %q is not multipartnumeric", clip(s))
		}
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("version %q: part out of range", clip(s))
		}
		out[i] = n
	}
	return out, nil
}

// compareVersions orders two parsed versions; missing parts count as 0, so
// "1.2" equals "1.2.0".
func compareVersions(a, b []uint64) int {
	for i := range max(len(a), len(b)) {
		var x, y uint64
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		switch {
		case x < y:
			return -1
		case x > y:
			return 1
		}
	}
	return 0
}

// clip shortens untrusted text quoted in an error.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
