// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update_test

import (
	"bytes"
	"fmt"
	"log"

	"github.com/d2c-iot/d2c/update"
)

// A release that carries, beside its image, a delta from the previous
// release's image: devices that run release 1 download the delta, a few
// hundred bytes here, instead of the 2 MiB image.
func ExampleNewDelta() {
	v1 := bytes.Repeat([]byte("release 1 of the firmware, "), 80000) // about 2 MiB
	v2 := bytes.Clone(v1)
	copy(v2[1<<20:], "release 2 fixes this line") // a small change
	art, err := update.NewArtifact("firmware", "v2/firmware.bin", bytes.NewReader(v2), nil)
	if err != nil {
		log.Fatal(err)
	}
	var delta bytes.Buffer // in practice, a file published at the URI
	d, err := update.NewDelta(&delta, "v2/firmware.from-v1.delta", art, bytes.NewReader(v2),
		update.DeltaBase{Version: 1, Image: bytes.NewReader(v1), Length: int64(len(v1))})
	if err != nil {
		log.Fatal(err)
	}
	rel := &update.Release{Version: 2, SecurityCounter: 1, HardwareClass: "gw-1",
		Artifacts: []update.Artifact{art}, Deltas: []update.Delta{d}}
	fmt.Printf("delta to %s from version %d at %s; image %d bytes, delta under 2000: %v\n",
		d.Artifact, d.FromVersion, d.URI, art.Length, d.Length < 2000)
	fmt.Println("release 2 lists", len(rel.Deltas), "delta")
	// Output:
	// delta to firmware from version 1 at v2/firmware.from-v1.delta; image 2160000 bytes, delta under 2000: true
	// release 2 lists 1 delta
}
