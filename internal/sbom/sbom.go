// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package sbom reads what d2c needs of a CycloneDX JSON software bill of
// materials (https://cyclonedx.org/docs/1.6/json/): that it is one
// (bomFormat "CycloneDX", specVersion 1.4 to 1.6), and the name, version
// and package URL of each component, nested components included. Every
// other member is left unread. The size, the number of components, their
// nesting and the length of each text are bounded (internal/limits).
//
// The operator tools use it: d2c update release sign checks the SBOM it
// signs into a release, d2c fleet affected finds the releases whose SBOM
// names a component. Devices never parse an SBOM; they report its signed
// digest.
package sbom

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/internal/strictjson"
)

// ErrNotCycloneDX is returned for a document that is not a CycloneDX JSON
// SBOM of a supported version, or breaks a bound.
var ErrNotCycloneDX = errors.New("sbom: not a CycloneDX 1.4-1.6 JSON SBOM")

// Component is one component of an SBOM, as listed.
type Component struct {
	Name    string
	Version string
	// PURL is the component's package URL ("pkg:deb/debian/openssl@3.0.1");
	// empty when not given.
	PURL string
}

// BOM is what d2c reads of an SBOM.
type BOM struct {
	// SpecVersion is "1.4", "1.5" or "1.6".
	SpecVersion string
	// Components lists every component, nested ones after their parent.
	Components []Component
}

// specVersions are the CycloneDX versions read.
var specVersions = []string{"1.4", "1.5", "1.6"}

type bomJSON struct {
	BOMFormat   string          `json:"bomFormat"`
	SpecVersion string          `json:"specVersion"`
	Components  []componentJSON `json:"components"`
}

type componentJSON struct {
	Name       string          `json:"name"`
	Version    string          `json:"version"`
	PURL       string          `json:"purl"`
	Components []componentJSON `json:"components"`
}

// Parse reads a CycloneDX JSON SBOM of at most limits.UpdateSBOM bytes.
func Parse(b []byte) (*BOM, error) {
	if len(b) > limits.UpdateSBOM {
		return nil, fmt.Errorf("%w: %d bytes (at most %d)", ErrNotCycloneDX, len(b), limits.UpdateSBOM)
	}
	// Every reader must read the same components from these signed bytes:
	// no member twice or twice but for case in one object ("Components"
	// beside "components" would hide a component from encoding/json and
	// not from other tools), no lone surrogate escape, bounded nesting.
	if err := strictjson.CheckNames(b, 2*limits.SBOMDepth+8); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotCycloneDX, err)
	}
	var w bomJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotCycloneDX, err)
	}
	if _, err := dec.Token(); err == nil {
		return nil, fmt.Errorf("%w: data after the document", ErrNotCycloneDX)
	}
	if w.BOMFormat != "CycloneDX" {
		return nil, fmt.Errorf("%w: bomFormat %q", ErrNotCycloneDX, clip(w.BOMFormat))
	}
	if !slices.Contains(specVersions, w.SpecVersion) {
		return nil, fmt.Errorf("%w: specVersion %q", ErrNotCycloneDX, clip(w.SpecVersion))
	}
	bom := &BOM{SpecVersion: w.SpecVersion}
	if err := bom.add(w.Components, 1); err != nil {
		return nil, err
	}
	return bom, nil
}

// add appends cs and their nested components, depth being cs's nesting.
func (bom *BOM) add(cs []componentJSON, depth int) error {
	if len(cs) > 0 && depth > limits.SBOMDepth {
		return fmt.Errorf("%w: components nested deeper than %d", ErrNotCycloneDX, limits.SBOMDepth)
	}
	for _, c := range cs {
		if len(bom.Components) >= limits.SBOMComponents {
			return fmt.Errorf("%w: more than %d components", ErrNotCycloneDX, limits.SBOMComponents)
		}
		for _, s := range []string{c.Name, c.Version, c.PURL} {
			if len(s) > limits.SBOMText {
				return fmt.Errorf("%w: a component's text of %d bytes (at most %d)", ErrNotCycloneDX, len(s), limits.SBOMText)
			}
		}
		if c.Name == "" {
			return fmt.Errorf("%w: a component without a name", ErrNotCycloneDX)
		}
		bom.Components = append(bom.Components, Component{Name: c.Name, Version: c.Version, PURL: c.PURL})
		if err := bom.add(c.Components, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// Has reports whether the SBOM lists a component of that name and version:
// by its name and version members, or by the name and version of its
// package URL.
func (bom *BOM) Has(name, version string) bool {
	for _, c := range bom.Components {
		if c.Name == name && c.Version == version {
			return true
		}
		if n, v, ok := PURLNameVersion(c.PURL); ok && n == name && v == version {
			return true
		}
	}
	return false
}

// PURLNameVersion returns the name and version of a package URL
// (https://github.com/package-url/purl-spec: pkg:type/namespace/name@version?qualifiers#subpath),
// percent-decoded; ok is false if it is not one or has no version.
func PURLNameVersion(purl string) (name, version string, ok bool) {
	rest, found := strings.CutPrefix(purl, "pkg:")
	if !found {
		return "", "", false
	}
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		rest = rest[:i]
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return "", "", false
	}
	path, ver := rest[:at], rest[at+1:]
	slash := strings.LastIndexByte(path, '/')
	if slash < 0 { // no type
		return "", "", false
	}
	name, err1 := url.PathUnescape(path[slash+1:])
	version, err2 := url.PathUnescape(ver)
	if err1 != nil || err2 != nil || name == "" || version == "" {
		return "", "", false
	}
	return name, version, true
}

// ParseQuery splits "NAME@VERSION" at its last '@' (a name may start with
// one: "@scope/pkg@1.0").
func ParseQuery(q string) (name, version string, err error) {
	at := strings.LastIndexByte(q, '@')
	if at <= 0 || at == len(q)-1 {
		return "", "", fmt.Errorf("component %q: want NAME@VERSION", q)
	}
	return q[:at], q[at+1:], nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
