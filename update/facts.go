// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/d2c-iot/d2c/internal/limits"
)

// Release facts (docs/update-format.md, "release"): what a release states
// about itself beyond what a device installs, for the operator's records
// and the regulator's (EU Cyber Resilience Act Annex I; ETSI EN 303 645
// provision 5.3-13): its software bill of materials and the end of its
// security support. Devices report both for the release they run
// ([Result.SBOM], [Result.SupportUntil]).

// SBOMRef names the software bill of materials of a release: a CycloneDX
// JSON file, signed by its length and SHA-256 as an [Artifact] is.
type SBOMRef struct {
	// Length is the exact size in bytes: 1 to 16 MiB.
	Length int64
	// SHA256 is the SHA-256 of the file.
	SHA256 [32]byte
	// URI locates the file, with the rules of [Artifact.URI]; not
	// trusted: the length and digest are.
	URI string
}

// sbomJSON is the wire form of the "sbom" member.
type sbomJSON struct {
	Length int64  `json:"length"`
	SHA256 string `json:"sha256"`
	URI    string `json:"uri"`
}

// decodeFacts copies the "sbom" and "support_until" members into r.
func (w *releaseJSON) decodeFacts(r *Release) error {
	if w.SBOM != nil {
		d, err := parseDigest(w.SBOM.SHA256)
		if err != nil {
			return within("sbom", err)
		}
		r.SBOM = &SBOMRef{Length: w.SBOM.Length, SHA256: d, URI: w.SBOM.URI}
	}
	if w.SupportUntil != "" {
		t, err := time.Parse(timeLayout, w.SupportUntil)
		if err != nil || t.Format(timeLayout) != w.SupportUntil {
			return fmt.Errorf("%w: support_until %q is not YYYY-MM-DDThh:mm:ssZ", ErrMalformed, truncate(w.SupportUntil))
		}
		r.SupportUntil = t
	}
	return nil
}

// validateFacts checks the SBOM reference and the support end.
func (r *Release) validateFacts() error {
	if s := r.SBOM; s != nil {
		if s.Length <= 0 || s.Length > limits.UpdateSBOM {
			return fmt.Errorf("%w: sbom of %d bytes (want 1 to %d)", ErrMalformed, s.Length, limits.UpdateSBOM)
		}
		if err := (Artifact{URI: s.URI}).validateURI("sbom"); err != nil {
			return err
		}
	}
	if t := r.SupportUntil; !t.IsZero() {
		if y := t.UTC().Year(); y < 1970 || y > 9999 {
			return fmt.Errorf("%w: release support_until %v (want a time in years 1970 to 9999)", ErrMalformed, t)
		}
	}
	return nil
}

// encodeFacts writes the SBOM reference and the support end into w.
func (r *Release) encodeFacts(w *releaseJSON) {
	if s := r.SBOM; s != nil {
		w.SBOM = &sbomJSON{Length: s.Length, SHA256: hex.EncodeToString(s.SHA256[:]), URI: s.URI}
	}
	if !r.SupportUntil.IsZero() {
		w.SupportUntil = formatTime(r.SupportUntil)
	}
}

// VerifyRelease checks that signed is release metadata signed by a
// threshold of r's release keys, every signature by one of them and valid,
// and decodes it with the rules of docs/update-format.md. It checks no
// expiry, version, hardware class or security counter: those are a
// device's checks, against its trusted time and floors
// ([Trusted.UpdateRelease]). It is for tools that read the releases a
// repository published, current or past (d2c fleet affected).
func (r *Root) VerifyRelease(signed []byte) (*Release, error) {
	if err := r.validate(); err != nil {
		return nil, within("verify release", err)
	}
	payload, err := verifyRole(signed, RoleRelease, limits.UpdateRelease, r)
	if err != nil {
		return nil, err
	}
	return decodeRelease(payload)
}

// SupportEnded reports whether the security support of the installed
// release ended before now; false when no end is known.
func (i Installed) SupportEnded(now time.Time) bool {
	return i.SupportUntil != 0 && !now.Before(time.UnixMilli(i.SupportUntil))
}

// releaseFacts returns what the agent keeps of a release's facts: the
// SBOM's digest (nil: none) and the support end in Unix ms (0: none).
func releaseFacts(rel *Release) (sbom []byte, supportUntil int64) {
	if rel.SBOM != nil {
		sbom = bytes.Clone(rel.SBOM.SHA256[:])
	}
	if !rel.SupportUntil.IsZero() {
		supportUntil = rel.SupportUntil.UnixMilli()
	}
	return sbom, supportUntil
}

// facts fills the release facts of an "installed", "confirmed" or
// "running" result.
func (a *Agent) facts(r *Result, sbom []byte, supportUntil int64) {
	if len(sbom) > 0 {
		r.SBOM = hex.EncodeToString(sbom)
	}
	r.SupportUntil = supportUntil
	r.HardwareClass = a.cfg.HardwareClass
}

// runningLocked returns the "running" result of the Agent's first
// successful Start: the release whose slot runs, the confirmed one, or the
// one on trial once it booted (Reason "on trial"). It returns nil, and
// reports nothing yet, while the slot that runs is neither (a revert
// waiting for its restart).
func (a *Agent) runningLocked(ctx context.Context) *Result {
	booted, err := a.cfg.Slots.Booted(ctx)
	if err != nil {
		return nil
	}
	inst := a.st.Installed
	r := Result{Event: "running", From: inst.Version, Time: a.now().UnixMilli()}
	switch p := a.st.Pending; {
	case a.st.Phase == PhaseTrial && booted == p.Slot && a.bootedSinceSwitch():
		r.Version, r.Reason = p.Version, "on trial"
		a.facts(&r, p.SBOM, p.SupportUntil)
	case booted == inst.Slot:
		r.Version = inst.Version
		a.facts(&r, inst.SBOM, inst.SupportUntil)
	default:
		return nil
	}
	a.running = true
	a.log.Info("update running", "version", r.Version, "sbom", r.SBOM, "reason", r.Reason)
	return &r
}
