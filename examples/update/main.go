// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command update runs the over-the-air update loop on this machine,
// narrated, and then the attacks it stops: release keys and a pinned root,
// a signed release served on 127.0.0.1, a device that downloads it into its
// inactive slot, boots it on trial and confirms it; a release whose health
// check fails, reverted; then a rollback to an older release, a tampered
// image and stale (frozen) metadata, each refused with the attack named.
//
//	go run ./examples/update [--keep]
package main

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/examples/internal/narrate"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "update example:", err)
		os.Exit(1)
	}
}

// repo is the release server: signed metadata and images over HTTP.
type repo struct {
	mu                  sync.Mutex
	files               map[string][]byte
	rootKey, rel, tsKey crypto.Signer
	root                []byte
	timestamps          uint64
}

func (r *repo) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	b, ok := r.files[req.URL.Path[1:]]
	r.mu.Unlock()
	if !ok {
		http.NotFound(w, req)
		return
	}
	http.ServeContent(w, req, req.URL.Path, time.Time{}, bytes.NewReader(b))
}

// publish signs release version with image and a timestamp valid for ttl.
func (r *repo) publish(version, counter uint64, image []byte, ttl time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	name := fmt.Sprintf("firmware-%d.bin", version)
	art, err := update.NewArtifact("firmware", name, bytes.NewReader(image), nil)
	if err != nil {
		return err
	}
	rel := &update.Release{Version: version, SecurityCounter: counter, HardwareClass: "gateway-v1",
		Artifacts: []update.Artifact{art}, Expires: time.Now().Add(30 * 24 * time.Hour)}
	rb, err := rel.Sign(r.rel)
	if err != nil {
		return err
	}
	r.timestamps++
	ts, err := update.NewTimestamp(r.timestamps, time.Now().Add(ttl), rb)
	if err != nil {
		return err
	}
	tb, err := ts.Sign(r.tsKey)
	if err != nil {
		return err
	}
	r.files[name], r.files[fmt.Sprintf("%d.release.json", version)], r.files["timestamp.json"] = image, rb, tb
	return nil
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fl := flag.NewFlagSet("update", flag.ContinueOnError)
	keep := fl.Bool("keep", false, "keep the temporary directory (keys, repository, device slots)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "d2c-update-example-")
	if err != nil {
		return err
	}
	if *keep {
		defer fmt.Fprintf(out, "\nstate kept in %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	n := narrate.New(out)

	n.Step("Release keys: root (offline), release, timestamp (online); root v1 is pinned in the device at manufacture")
	r := &repo{files: map[string][]byte{}}
	keys := map[update.Role]*crypto.Signer{update.RoleRoot: &r.rootKey, update.RoleRelease: &r.rel, update.RoleTimestamp: &r.tsKey}
	root := &update.Root{Version: 1, Expires: time.Now().Add(365 * 24 * time.Hour)}
	for _, role := range []update.Role{update.RoleRoot, update.RoleRelease, update.RoleTimestamp} {
		k, err := identity.GenerateKey(identity.ECDSAP256)
		if err != nil {
			return err
		}
		*keys[role] = k
		if err := root.SetRole(role, 1, k.Public()); err != nil {
			return err
		}
	}
	if r.root, err = root.Sign(r.rootKey); err != nil {
		return err
	}
	r.files["1.root.json"] = r.root
	n.Say("root v1: %d bytes of JWS JSON, one signature per root key; roles release and timestamp, threshold 1", len(r.root))
	srv := httptest.NewServer(r)
	defer srv.Close()

	n.Step("The device: factory firmware v0 in slot a, slot b empty, an update agent")
	slots := filepath.Join(dir, "device", "slots")
	if err := slot.InitDirSlots(slots, bytes.NewReader([]byte("firmware v0\n"))); err != nil {
		return err
	}
	var agent *update.Agent
	boot := func() (update.Status, error) { // the device (re)starts
		if agent != nil {
			agent.Close()
		}
		s, err := slot.OpenDirSlots(slots)
		if err != nil {
			return update.Status{}, err
		}
		agent, err = update.NewAgent(ctx, update.AgentConfig{Dir: filepath.Join(dir, "device", "agent"), Root: r.root,
			HardwareClass: "gateway-v1", Slots: s, Source: &update.HTTPSource{BaseURL: srv.URL + "/"},
			Client: &http.Client{}}) // plain http on 127.0.0.1 for the example: production uses HTTPS
		if err != nil {
			return update.Status{}, err
		}
		return agent.Start(ctx)
	}
	defer func() {
		if agent != nil {
			agent.Close()
		}
	}()
	if _, err := boot(); err != nil {
		return err
	}
	n.Say("slots in %s; running slot a", slots)

	firmware := func(v int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("firmware v%d\n", v)), 50_000) }
	n.Step("The vendor signs release v1 (security counter 1) and serves it on %s", srv.URL)
	if err := r.publish(1, 1, firmware(1), 24*time.Hour); err != nil {
		return err
	}
	n.Step("The device checks, downloads into slot b while hashing, and switches to it on trial")
	o, err := agent.Check(ctx)
	if err != nil || o == nil {
		return fmt.Errorf("check: offer %v, %v", o, err)
	}
	n.Say("verified: root v1 → timestamp → release v%d for %s, artifact %s (%d bytes, SHA-256 %x…)", o.Release.Version,
		o.Release.HardwareClass, o.Artifact.Name, o.Artifact.Length, o.Artifact.SHA256[:6])
	if err := agent.Install(ctx, o); err != nil {
		return err
	}
	st := agent.Status()
	n.Say("installed in slot b, phase %s, restart needed: %v", st.Phase, st.RebootNeeded)

	n.Step("Restart into slot b: on trial until the application's health check confirms it")
	if st, err = boot(); err != nil {
		return err
	}
	n.Say("phase %s, start %d of 3", st.Phase, st.Starts)
	if err := agent.Confirm(ctx); err != nil {
		return err
	}
	st = agent.Status()
	n.Say("health check passed → Confirm: running v%d, security-counter floor now %d", st.Installed.Version, st.Installed.SecurityCounter)

	n.Step("Release v2 installs, but its health check fails: the application rolls back")
	if err := r.publish(2, 1, firmware(2), 24*time.Hour); err != nil {
		return err
	}
	if _, err := agent.Update(ctx); err != nil {
		return err
	}
	if _, err = boot(); err != nil {
		return err
	}
	if err := agent.Rollback(ctx); err != nil {
		return err
	}
	if st, err = boot(); err != nil {
		return err
	}
	n.Say("reverted: running v%d again, last event %q", st.Installed.Version, st.Last.Event)

	n.Step("Attack: the server offers v1 again, validly signed, to roll the device back")
	if err := r.publish(1, 1, firmware(1), 24*time.Hour); err != nil {
		return err
	}
	if err := expectRefusal(n, agent, ctx, update.ErrRollback); err != nil {
		return err
	}

	n.Step("Attack: release v3 is signed, but one byte of its image is changed in transit")
	if err := r.publish(3, 1, firmware(3), 24*time.Hour); err != nil {
		return err
	}
	r.mu.Lock()
	img := bytes.Clone(r.files["firmware-3.bin"])
	img[len(img)/2] ^= 0x01
	r.files["firmware-3.bin"] = img
	r.mu.Unlock()
	if err := expectRefusal(n, agent, ctx, update.ErrDigest); err != nil {
		return err
	}

	n.Step("Attack: a mirror freezes the device on stale metadata (a timestamp that expired)")
	if err := r.publish(4, 1, firmware(4), -time.Minute); err != nil {
		return err
	}
	if err := expectRefusal(n, agent, ctx, update.ErrExpired); err != nil {
		return err
	}
	st = agent.Status()
	n.Say("the device still runs v%d, verified, from slot %s", st.Installed.Version, st.Installed.Slot)
	fmt.Fprintln(out, "\ndone: one release installed and confirmed, one reverted, three attacks refused")
	return nil
}

// expectRefusal runs an update that must be refused with want.
func expectRefusal(n *narrate.Narrator, agent *update.Agent, ctx context.Context, want error) error {
	_, err := agent.Update(ctx)
	if !errors.Is(err, want) {
		return fmt.Errorf("update: got %v, want %v", err, want)
	}
	n.Say("refused: %v", err)
	return nil
}
