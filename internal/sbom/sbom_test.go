// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package sbom

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/internal/fuzzcorpus"
	"github.com/d2c-iot/d2c/internal/limits"
)

const example = `{
  "bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
  "metadata": {"component": {"type": "firmware", "name": "sensor"}},
  "components": [
    {"type": "library", "name": "libssl3", "version": "3.0.11-1", "purl": "pkg:deb/debian/openssl@3.0.1?arch=arm64",
     "components": [{"type": "library", "name": "zlib", "version": "1.3"}]},
    {"type": "library", "name": "busybox", "version": "1.36.1", "licenses": [{"license": {"id": "GPL-2.0-only"}}]},
    {"type": "library", "name": "@scope/pkg", "version": "2.0.0"}
  ]
}`

func TestParse(t *testing.T) {
	bom, err := Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	if bom.SpecVersion != "1.5" || len(bom.Components) != 4 || bom.Components[1].Name != "zlib" {
		t.Fatalf("%+v", bom)
	}
	for _, c := range []struct {
		q    string
		want bool
	}{
		{"openssl@3.0.1", true},    // by purl
		{"libssl3@3.0.11-1", true}, // by name and version
		{"zlib@1.3", true},         // nested
		{"busybox@1.36.1", true},
		{"@scope/pkg@2.0.0", true},
		{"openssl@3.0.2", false},
		{"sensor@1", false}, // the subject is not a component
		{"busybox@1.36", false},
	} {
		name, version, err := ParseQuery(c.q)
		if err != nil {
			t.Fatal(err)
		}
		if got := bom.Has(name, version); got != c.want {
			t.Errorf("Has(%s) = %v, want %v", c.q, got, c.want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	deep := `{"name":"x","components":[`
	var nested strings.Builder
	nested.WriteString(`{"bomFormat":"CycloneDX","specVersion":"1.6","components":[`)
	for range limits.SBOMDepth + 1 {
		nested.WriteString(deep)
	}
	nested.WriteString(strings.Repeat("]}", limits.SBOMDepth+1) + "]}")
	var many strings.Builder
	many.WriteString(`{"bomFormat":"CycloneDX","specVersion":"1.6","components":[`)
	for i := range limits.SBOMComponents + 1 {
		if i > 0 {
			many.WriteString(",")
		}
		many.WriteString(`{"name":"c"}`)
	}
	many.WriteString("]}")
	for name, doc := range map[string]string{
		"spdx":        `{"spdxVersion":"SPDX-2.3"}`,
		"format":      `{"bomFormat":"cyclonedx","specVersion":"1.5"}`,
		"old version": `{"bomFormat":"CycloneDX","specVersion":"1.3"}`,
		"new version": `{"bomFormat":"CycloneDX","specVersion":"1.7"}`,
		"not json":    `bomFormat: CycloneDX`,
		"trailing":    `{"bomFormat":"CycloneDX","specVersion":"1.5"} {}`,
		"no name":     `{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"version":"1"}]}`,
		"long name":   `{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"` + strings.Repeat("a", limits.SBOMText+1) + `"}]}`,
		"name type":   `{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":1}]}`,
		"deep":        nested.String(),
		"many":        many.String(),
		"deep arrays": `{"bomFormat":"CycloneDX","specVersion":"1.5","x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`,
		"too large":   `{"bomFormat":"CycloneDX","specVersion":"1.5","x":"` + strings.Repeat("a", limits.UpdateSBOM) + `"}`,
	} {
		if _, err := Parse([]byte(doc)); !errors.Is(err, ErrNotCycloneDX) {
			t.Errorf("%s: %v, want ErrNotCycloneDX", name, err)
		}
	}
}

func TestPURLNameVersion(t *testing.T) {
	for purl, want := range map[string]string{
		"pkg:deb/debian/openssl@3.0.1?arch=arm64":   "openssl@3.0.1",
		"pkg:npm/%40angular/core@16.0.0":            "core@16.0.0",
		"pkg:golang/golang.org/x/net@v0.17.0#http2": "net@v0.17.0",
		"pkg:generic/a%20b@1%2B2":                   "a b@1+2",
		"pkg:deb/debian/openssl":                    "",
		"openssl@3":                                 "",
		"pkg:openssl@3":                             "",
		"pkg:deb/@3":                                "",
	} {
		n, v, ok := PURLNameVersion(purl)
		got := ""
		if ok {
			got = n + "@" + v
		}
		if got != want {
			t.Errorf("PURLNameVersion(%q) = %q, want %q", purl, got, want)
		}
	}
}

func TestParseQuery(t *testing.T) {
	for _, q := range []string{"", "openssl", "openssl@", "@3.0.1"} {
		if _, _, err := ParseQuery(q); err == nil {
			t.Errorf("ParseQuery(%q) accepted", q)
		}
	}
}

// FuzzParse: Parse never panics, and what it accepts keeps the bounds.
func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Fuzz(func(t *testing.T, b []byte) {
		bom, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrNotCycloneDX) {
				t.Fatalf("error %v does not wrap ErrNotCycloneDX", err)
			}
			return
		}
		if len(bom.Components) > limits.SBOMComponents {
			t.Fatalf("%d components", len(bom.Components))
		}
		for _, c := range bom.Components {
			if c.Name == "" || len(c.Name) > limits.SBOMText || len(c.Version) > limits.SBOMText || len(c.PURL) > limits.SBOMText {
				t.Fatalf("component %+v", c)
			}
			if n, v, ok := PURLNameVersion(c.PURL); ok && !bom.Has(n, v) {
				t.Fatalf("Has(%s@%s) false for a listed purl", n, v)
			}
			if c.Version != "" && !bom.Has(c.Name, c.Version) {
				t.Fatalf("Has(%s@%s) false for a listed component", c.Name, c.Version)
			}
		}
	})
}

func TestFuzzCorpus(t *testing.T) { fuzzcorpus.Check(t, ".") }

// TestParseCycloneDXGomod reads an SBOM as a real generator writes it:
// cyclonedx-gomod v1.10.0's "mod -json" of this module (specVersion 1.6,
// schema, metadata, hashes, licenses and dependencies besides the
// components).
func TestParseCycloneDXGomod(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "cyclonedx-gomod.json"))
	if err != nil {
		t.Fatal(err)
	}
	bom, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if bom.SpecVersion != "1.6" || len(bom.Components) != 39 {
		t.Fatalf("specVersion %s, %d components", bom.SpecVersion, len(bom.Components))
	}
	for q, want := range map[string]bool{
		"github.com/jackc/pgx/v5@v5.13.0": true, // the module path, as Go names it
		"crypto11@v1.5.0":                 true, // the package URL's name
		"github.com/jackc/pgx/v5@v5.12.0": false,
		"github.com/d2c-iot/d2c@(devel)":  false, // the subject, in metadata
	} {
		name, version, err := ParseQuery(q)
		if err != nil {
			t.Fatal(err)
		}
		if got := bom.Has(name, version); got != want {
			t.Errorf("Has(%s) = %v, want %v", q, got, want)
		}
	}
}

// TestParseOneReading: an SBOM that other CycloneDX tools would read
// otherwise than encoding/json (a member twice, or twice but for case; a
// lone surrogate escape) is refused, so that no component can hide from
// d2c fleet affected behind a signed digest (from the adversarial
// review: the first three were read without openssl).
func TestParseOneReading(t *testing.T) {
	for _, doc := range []string{
		`{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"openssl","version":"3.0.1"}],"Components":[]}`,
		`{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"openssl","version":"3.0.1"}],"components":[]}`,
		`{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"openssl","version":"3.0.1","NAME":"zlib"}]}`,
		`{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"open\udc00ssl","version":"3.0.1"}]}`,
	} {
		if bom, err := Parse([]byte(doc)); !errors.Is(err, ErrNotCycloneDX) {
			t.Errorf("%s: %+v, %v, want ErrNotCycloneDX", doc, bom, err)
		}
	}
	ok := `{"bomFormat":"CycloneDX","specVersion":"1.5","metadata":{"Name":"x"},"components":[{"name":"open\ud83d\ude00ssl","version":"3.0.1"}]}`
	if _, err := Parse([]byte(ok)); err != nil {
		t.Fatalf("case variants in different objects and a surrogate pair: %v", err)
	}
}
