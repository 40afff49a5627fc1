// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package repo_test

import (
	"context"
	"crypto"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/repo"
)

// The update repository role of a cloud service: sign a timestamp once at
// start (a repository the key cannot sign for stops the service there),
// keep it fresh in the background, and serve the directory to devices.
func Example() {
	dir, timestampKey, cleanup := exampleRepository()
	defer cleanup()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	keys := []crypto.Signer{timestampKey} // in production: a PKCS#11 or TPM key
	ts, err := repo.SignTimestamp(ctx, dir, keys, 24*time.Hour, time.Now())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("timestamp version %d names release %d\n", ts.Version, ts.Release.Version)

	refreshed := make(chan error, 1)
	go func() {
		refreshed <- repo.Refresher{Dir: dir, Keys: keys, Validity: 24 * time.Hour}.Run(ctx)
	}()
	srv := httptest.NewServer(repo.Handler(dir, nil)) // in production: HTTPS
	defer srv.Close()

	// A device fetches the timestamp; nobody fetches the key.
	src := &update.HTTPSource{BaseURL: srv.URL + "/", Client: srv.Client()}
	if _, err := src.Timestamp(ctx); err != nil {
		log.Fatal(err)
	}
	resp, err := srv.Client().Get(srv.URL + "/timestamp.key")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println("timestamp.key:", resp.Status)

	cancel()
	fmt.Println("refresher stopped:", <-refreshed)
	// Output:
	// timestamp version 1 names release 7
	// timestamp.key: 404 Not Found
	// refresher stopped: <nil>
}

// Publishing a release under the lock: sign the timestamp that names it
// and check both as a device would, then write the release before the
// timestamp, so that a device never finds a timestamp naming a release it
// cannot fetch.
func ExampleNextTimestamp() {
	dir, timestampKey, cleanup := exampleRepository()
	defer cleanup()
	ctx := context.Background()

	unlock, err := repo.Lock(ctx, dir)
	if err != nil {
		log.Fatal(err)
	}
	defer unlock()
	signedRelease, err := os.ReadFile(filepath.Join(dir, "release.json")) // normally signed just now
	if err != nil {
		log.Fatal(err)
	}
	t, err := repo.NewTrusted(dir, time.Now(), "sensor-v2")
	if err != nil {
		log.Fatal(err)
	}
	ts, signed, err := repo.NextTimestamp(dir, t, signedRelease, []crypto.Signer{timestampKey}, time.Now().Add(24*time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	// ... publish the artifacts and DIR/7.release.json here, then:
	if err := os.WriteFile(filepath.Join(dir, "timestamp.json"), signed, 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("timestamp version %d names release %d\n", ts.Version, ts.Release.Version)
	// Output:
	// timestamp version 1 names release 7
}

// exampleRepository builds a repository with package update: root
// version 1, release 7 for "sensor-v2". The root and release keys are
// thrown away; in production they are offline.
func exampleRepository() (dir string, timestampKey crypto.Signer, cleanup func()) {
	dir, err := os.MkdirTemp("", "repo-example-")
	if err != nil {
		log.Fatal(err)
	}
	var k [3]crypto.Signer
	for i := range k {
		if k[i], err = identity.GenerateKey(identity.ECDSAP256); err != nil {
			log.Fatal(err)
		}
	}
	rootKey, releaseKey, timestampKey := k[0], k[1], k[2]
	root := &update.Root{Version: 1, Expires: time.Now().AddDate(1, 0, 0)}
	for role, key := range map[update.Role]crypto.Signer{update.RoleRoot: rootKey, update.RoleRelease: releaseKey, update.RoleTimestamp: timestampKey} {
		if err := root.SetRole(role, 1, key.Public()); err != nil {
			log.Fatal(err)
		}
	}
	signedRoot, err := root.Sign(rootKey)
	if err != nil {
		log.Fatal(err)
	}
	art, err := update.NewArtifact("image", "v7/fw.bin", strings.NewReader("firmware 7"), nil)
	if err != nil {
		log.Fatal(err)
	}
	rel := &update.Release{Version: 7, SecurityCounter: 1, HardwareClass: "sensor-v2",
		Artifacts: []update.Artifact{art}, Expires: time.Now().AddDate(0, 1, 0)}
	signedRelease, err := rel.Sign(releaseKey)
	if err != nil {
		log.Fatal(err)
	}
	for name, b := range map[string][]byte{"1.root.json": signedRoot, "root.json": signedRoot,
		"7.release.json": signedRelease, "release.json": signedRelease} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	return dir, timestampKey, func() { os.RemoveAll(dir) }
}
