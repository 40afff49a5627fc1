// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update_test

import (
	"crypto/sha256"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/update"
)

// A release that states its facts: the SHA-256 of its CycloneDX SBOM and
// the end of its security support, signed with it. A tool reading the
// releases a repository published (current or past, expired or not)
// verifies each against the root with VerifyRelease.
func ExampleRoot_VerifyRelease() {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	k := exampleKeys(3)
	root := &update.Root{Version: 1, Expires: now.AddDate(1, 0, 0)}
	for role, key := range map[update.Role]int{update.RoleRoot: 0, update.RoleRelease: 1, update.RoleTimestamp: 2} {
		if err := root.SetRole(role, 1, k[key].Public()); err != nil {
			log.Fatal(err)
		}
	}
	sbom := []byte(`{"bomFormat":"CycloneDX","specVersion":"1.6","components":[{"name":"openssl","version":"3.0.1"}]}`)
	art, err := update.NewArtifact("rootfs.img", "v140/rootfs.img", strings.NewReader("firmware image 1.4.0\n"), nil)
	if err != nil {
		log.Fatal(err)
	}
	rel := &update.Release{Version: 140, SecurityCounter: 3, HardwareClass: "rpi4-arm64",
		Artifacts: []update.Artifact{art}, Expires: now.AddDate(0, 3, 0),
		SBOM:         &update.SBOMRef{Length: int64(len(sbom)), SHA256: sha256.Sum256(sbom), URI: "v140/sbom.cdx.json"},
		SupportUntil: time.Date(2031, 12, 31, 0, 0, 0, 0, time.UTC)}
	signed, err := rel.Sign(k[1])
	if err != nil {
		log.Fatal(err)
	}

	got, err := root.VerifyRelease(signed)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("release %d: SBOM %s (%d bytes, sha256 %x...), support until %s\n", got.Version, got.SBOM.URI, got.SBOM.Length,
		got.SBOM.SHA256[:4], got.SupportUntil.Format(time.DateOnly))
	// Output:
	// release 140: SBOM v140/sbom.cdx.json (97 bytes, sha256 e7dfa980...), support until 2031-12-31
}
