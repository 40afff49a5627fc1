// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update_test

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
)

// exampleKeys generates throwaway keys. In production, root keys are
// generated and kept offline (identity.GenerateKey, identity.WriteKeyFile
// on an offline machine, or a hardware token behind crypto.Signer); only
// the public keys travel.
func exampleKeys(n int) []crypto.Signer {
	keys := make([]crypto.Signer, n)
	for i := range keys {
		k, err := identity.GenerateKey(identity.ECDSAP256)
		if err != nil {
			log.Fatal(err)
		}
		keys[i] = k
	}
	return keys
}

// The cloud half: a root with two of three offline root keys required, a
// release signed by the release key, and the short-lived timestamp that
// names it, re-signed by the online timestamp key.
func ExampleRelease_Sign() {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	k := exampleKeys(5)
	rootKeys, releaseKey, timestampKey := k[:3], k[3], k[4]

	root := &update.Root{Version: 1, Expires: now.AddDate(1, 0, 0)}
	for _, err := range []error{
		root.SetRole(update.RoleRoot, 2, rootKeys[0].Public(), rootKeys[1].Public(), rootKeys[2].Public()),
		root.SetRole(update.RoleRelease, 1, releaseKey.Public()),
		root.SetRole(update.RoleTimestamp, 1, timestampKey.Public()),
	} {
		if err != nil {
			log.Fatal(err)
		}
	}
	signedRoot, err := root.Sign(rootKeys[0], rootKeys[1]) // pinned on every device
	if err != nil {
		log.Fatal(err)
	}

	// Stream the image once: its length and SHA-256 are signed.
	image := strings.NewReader("firmware image 1.4.0\n")
	art, err := update.NewArtifact("rootfs.img", "https://cdn.example.com/rootfs-140.img", image, nil)
	if err != nil {
		log.Fatal(err)
	}
	rel := &update.Release{Version: 140, SecurityCounter: 3, HardwareClass: "rpi4-arm64",
		Artifacts: []update.Artifact{art}, Expires: now.AddDate(0, 3, 0)}
	signedRelease, err := rel.Sign(releaseKey)
	if err != nil {
		log.Fatal(err)
	}
	ts, err := update.NewTimestamp(1, now.Add(24*time.Hour), signedRelease)
	if err != nil {
		log.Fatal(err)
	}
	signedTimestamp, err := ts.Sign(timestampKey)
	if err != nil {
		log.Fatal(err)
	}

	fmt.Println("root signed:", len(signedRoot) > 0)
	fmt.Printf("artifact %s: %d bytes, sha256 %x...\n", art.Name, art.Length, art.SHA256[:4])
	fmt.Println("timestamp signed:", len(signedTimestamp) > 0)
	fmt.Println("timestamp names release", ts.Release.Version, "length matches:", ts.Release.Length == int64(len(signedRelease)))
	// Output:
	// root signed: true
	// artifact rootfs.img: 21 bytes, sha256 4b83bd51...
	// timestamp signed: true
	// timestamp names release 140 length matches: true
}

// The device half: from the pinned root and the persisted floors, verify
// the newer roots, the timestamp and the release; then check the download
// against the signed length and digest. An older release is refused.
func ExampleTrusted() {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	k := exampleKeys(3)
	rootKey, releaseKey, timestampKey := k[0], k[1], k[2]
	root := &update.Root{Version: 1, Expires: now.AddDate(1, 0, 0)}
	_ = root.SetRole(update.RoleRoot, 1, rootKey.Public())
	_ = root.SetRole(update.RoleRelease, 1, releaseKey.Public())
	_ = root.SetRole(update.RoleTimestamp, 1, timestampKey.Public())
	pinned, _ := root.Sign(rootKey)
	publish := func(version uint64, image string) (rel, ts []byte) {
		art, _ := update.NewArtifact("app.tar", "app.tar", strings.NewReader(image), nil)
		rel, _ = (&update.Release{Version: version, SecurityCounter: 1, HardwareClass: "gw-x86",
			Artifacts: []update.Artifact{art}, Expires: now.AddDate(0, 1, 0)}).Sign(releaseKey)
		t, _ := update.NewTimestamp(version, now.Add(time.Hour), rel)
		ts, _ = t.Sign(timestampKey)
		return rel, ts
	}
	relBytes, tsBytes := publish(7, "application 7\n")

	// On the device, with trusted time (identity.TrustedClock.Now()).
	floors := update.Floors{} // persisted by the agent
	tr, err := update.NewTrusted(pinned, floors, now, "gw-x86")
	if err != nil {
		log.Fatal(err)
	}
	// for v := tr.Root().Version + 1; ; v++ { fetch v.root.json; tr.UpdateRoot(b) } until not found
	if _, err := tr.UpdateTimestamp(tsBytes); err != nil {
		log.Fatal(err)
	}
	rel, err := tr.UpdateRelease(relBytes)
	if err != nil {
		log.Fatal(err)
	}
	newer, err := rel.Newer(6) // the installed version
	fmt.Println("release", rel.Version, "newer than 6:", newer, err)

	art, _ := rel.Artifact("app.tar")
	v := art.Verifier()
	_, _ = v.Write([]byte("application 7\n")) // the download, streamed
	fmt.Println("download verified:", v.Verify() == nil)
	floors = tr.Floors() // persist with tr.RootBytes()

	// Later, a mirror replays an older timestamp and release.
	oldRel, oldTS := publish(5, "application 5\n")
	tr, _ = update.NewTrusted(tr.RootBytes(), floors, now, "gw-x86")
	_, err = tr.UpdateTimestamp(oldTS)
	fmt.Println(errors.Is(err, update.ErrRollback), err)
	_ = oldRel
	// Output:
	// release 7 newer than 6: true <nil>
	// download verified: true
	// true update: rollback: timestamp version 5 is below the floor 7
}

// Root rotation: root 2 revokes a stolen release key. It is signed by a
// threshold of root 1's root keys and of its own; a device walks the
// roots one version at a time, and the revoked key's signatures are then
// refused.
func ExampleRoot_Next() {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	k := exampleKeys(4)
	rootKey, stolen, replacement, timestampKey := k[0], k[1], k[2], k[3]
	root1 := &update.Root{Version: 1, Expires: now.AddDate(1, 0, 0)}
	_ = root1.SetRole(update.RoleRoot, 1, rootKey.Public())
	_ = root1.SetRole(update.RoleRelease, 1, stolen.Public())
	_ = root1.SetRole(update.RoleTimestamp, 1, timestampKey.Public())
	signed1, _ := root1.Sign(rootKey)

	root2 := root1.Next(now.AddDate(1, 0, 0))
	if err := root2.SetRole(update.RoleRelease, 1, replacement.Public()); err != nil {
		log.Fatal(err)
	}
	signed2, err := root2.Sign(rootKey) // the old and the new root keys: here the same one
	if err != nil {
		log.Fatal(err)
	}

	tr, _ := update.NewTrusted(signed1, update.Floors{ReleaseVersion: 9}, now, "gw-x86")
	r, err := tr.UpdateRoot(signed2)
	fmt.Println("trusted root", r.Version, err, "release floor reset to", tr.Floors().ReleaseVersion)

	art, _ := update.NewArtifact("app.tar", "app.tar", strings.NewReader("evil\n"), nil)
	evil, _ := (&update.Release{Version: 10, HardwareClass: "gw-x86", Artifacts: []update.Artifact{art}, Expires: now.AddDate(0, 1, 0)}).Sign(stolen)
	ts, _ := update.NewTimestamp(1, now.Add(time.Hour), evil)
	signedTS, _ := ts.Sign(timestampKey)
	_, _ = tr.UpdateTimestamp(signedTS)
	_, err = tr.UpdateRelease(evil)
	fmt.Println(errors.Is(err, update.ErrUnknownKey))
	// Output:
	// trusted root 2 <nil> release floor reset to 0
	// true
}

// The device half end to end: an agent with the pinned root installs a
// signed release from a repository into the inactive slot, the application
// restarts into it on trial, and its health check confirms it. (The
// repository here is plain HTTP on 127.0.0.1; production repositories are
// HTTPS, the default of AgentConfig.Client.)
func ExampleNewAgent() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "d2c-agent-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// The vendor: a root pinned at manufacture, and release 2 signed and
	// published in a repository directory (`d2c update …` in practice).
	now := time.Now()
	k := exampleKeys(3)
	rootKey, releaseKey, timestampKey := k[0], k[1], k[2]
	root := &update.Root{Version: 1, Expires: now.AddDate(1, 0, 0)}
	_ = root.SetRole(update.RoleRoot, 1, rootKey.Public())
	_ = root.SetRole(update.RoleRelease, 1, releaseKey.Public())
	_ = root.SetRole(update.RoleTimestamp, 1, timestampKey.Public())
	pinned, err := root.Sign(rootKey)
	if err != nil {
		log.Fatal(err)
	}
	image := "application v2\n"
	art, _ := update.NewArtifact("app", "app-2.img", strings.NewReader(image), nil)
	rel, err := (&update.Release{Version: 2, SecurityCounter: 1, HardwareClass: "gw-x86",
		Artifacts: []update.Artifact{art}, Expires: now.AddDate(0, 1, 0)}).Sign(releaseKey)
	if err != nil {
		log.Fatal(err)
	}
	ts, _ := update.NewTimestamp(1, now.Add(time.Hour), rel)
	signedTS, err := ts.Sign(timestampKey)
	if err != nil {
		log.Fatal(err)
	}
	repoDir := filepath.Join(dir, "repo")
	_ = os.Mkdir(repoDir, 0o755)
	for name, b := range map[string][]byte{"1.root.json": pinned, "2.release.json": rel,
		"timestamp.json": signedTS, "app-2.img": []byte(image)} {
		if err := os.WriteFile(filepath.Join(repoDir, name), b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(repoDir)))
	defer srv.Close()

	// The device: slot a holds the factory version 0.
	slots := filepath.Join(dir, "slots")
	if err := slot.InitDirSlots(slots, strings.NewReader("application v0\n")); err != nil {
		log.Fatal(err)
	}
	start := func() *update.Agent { // at every start of the application
		s, err := slot.OpenDirSlots(slots)
		if err != nil {
			log.Fatal(err)
		}
		a, err := update.NewAgent(ctx, update.AgentConfig{
			Dir:           filepath.Join(dir, "agent"),
			Root:          pinned,
			HardwareClass: "gw-x86",
			Slots:         s,
			Source:        &update.HTTPSource{BaseURL: srv.URL + "/"},
			Client:        &http.Client{}, // may speak plain http: for this example only
		})
		if err != nil {
			log.Fatal(err)
		}
		st, err := a.Start(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("start: confirmed v%d, pending v%d, phase %s\n", st.Installed.Version, st.Pending, st.Phase)
		return a
	}

	a := start()
	installed, err := a.Update(ctx) // check, download into slot b while hashing, switch on trial
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("installed:", installed, "restart needed:", a.Status().RebootNeeded)
	a.Close()

	a = start() // the application restarted from slots/current/image
	defer a.Close()
	running, _ := os.ReadFile(filepath.Join(slots, "current", "image"))
	fmt.Printf("running %q\n", running)
	if err := a.Confirm(ctx); err != nil { // after the application's own health check
		log.Fatal(err)
	}
	fmt.Printf("confirmed: v%d, phase %s\n", a.Status().Installed.Version, a.Status().Phase)
	// Output:
	// start: confirmed v0, pending v0, phase idle
	// installed: true restart needed: true
	// start: confirmed v0, pending v2, phase trial
	// running "application v2\n"
	// confirmed: v2, phase idle
}
