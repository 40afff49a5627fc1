// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package lab

import (
	"bytes"
	"context"
	"crypto"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
)

// HardwareClass is the class of the lab's update device.
const HardwareClass = "lab-gateway"

// Repo is a release repository on 127.0.0.1 with the vendor's keys:
// a root pinned in devices, a release key and an online timestamp key.
// It serves whatever it is told to, as a compromised mirror would; only
// the signatures are out of its reach (it holds the keys here so that the
// programs can publish genuine releases too).
type Repo struct {
	URL string

	srv                    *httptest.Server
	rootKey, relKey, tsKey crypto.Signer
	root                   []byte

	mu         sync.Mutex
	files      map[string][]byte
	timestamps uint64
}

// NewRepo generates the vendor's keys, signs root v1 and serves the
// repository on 127.0.0.1.
func NewRepo() (*Repo, error) {
	r := &Repo{files: map[string][]byte{}}
	root := &update.Root{Version: 1, Expires: time.Now().Add(365 * 24 * time.Hour)}
	for _, role := range []update.Role{update.RoleRoot, update.RoleRelease, update.RoleTimestamp} {
		k, err := identity.GenerateKey(identity.ECDSAP256)
		if err != nil {
			return nil, err
		}
		switch role {
		case update.RoleRoot:
			r.rootKey = k
		case update.RoleRelease:
			r.relKey = k
		case update.RoleTimestamp:
			r.tsKey = k
		}
		if err := root.SetRole(role, 1, k.Public()); err != nil {
			return nil, err
		}
	}
	var err error
	if r.root, err = root.Sign(r.rootKey); err != nil {
		return nil, err
	}
	r.files["1.root.json"] = r.root
	r.srv = httptest.NewServer(r)
	r.URL = r.srv.URL + "/"
	return r, nil
}

// Root returns root v1 as signed: what devices pin at manufacture.
func (r *Repo) Root() []byte { return r.root }

// Close stops the server.
func (r *Repo) Close() { r.srv.Close() }

// ServeHTTP serves the repository's files.
func (r *Repo) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	b, ok := r.files[req.URL.Path[1:]]
	r.mu.Unlock()
	if !ok {
		http.NotFound(w, req)
		return
	}
	http.ServeContent(w, req, req.URL.Path, time.Time{}, bytes.NewReader(b))
}

// Firmware returns the image of firmware version v.
func Firmware(v uint64) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("firmware v%d\n", v)), 10_000)
}

// Publish signs release version (security counter 1) of Firmware(version)
// and a new timestamp naming it, valid for ttl (a negative ttl makes a
// timestamp that has already expired), and serves them.
func (r *Repo) Publish(version uint64, ttl time.Duration) error {
	image := Firmware(version)
	name := fmt.Sprintf("firmware-%d.bin", version)
	art, err := update.NewArtifact("firmware", name, bytes.NewReader(image), nil)
	if err != nil {
		return err
	}
	rel := &update.Release{Version: version, SecurityCounter: 1, HardwareClass: HardwareClass,
		Artifacts: []update.Artifact{art}, Expires: time.Now().Add(30 * 24 * time.Hour)}
	rb, err := rel.Sign(r.relKey)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.timestamps++
	ts, err := update.NewTimestamp(r.timestamps, time.Now().Add(ttl), rb)
	if err != nil {
		return err
	}
	tb, err := ts.Sign(r.tsKey)
	if err != nil {
		return err
	}
	r.files[name] = image
	r.files[fmt.Sprintf("%d.release.json", version)] = rb
	r.files["timestamp.json"] = tb
	return nil
}

// Export writes the repository's files but its timestamp into dir, with
// release.json a copy of the newest release, in the layout a cloud
// service's update role serves and re-signs (update/repo), and returns
// the online timestamp key for that role.
func (r *Repo) Export(dir string) (crypto.Signer, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	newest := uint64(0)
	files := map[string][]byte{"root.json": r.root}
	for name, b := range r.files {
		if name == "timestamp.json" {
			continue
		}
		files[name] = b
		var v uint64
		if _, err := fmt.Sscanf(name, "%d.release.json", &v); err == nil && v > newest && name == fmt.Sprintf("%d.release.json", v) {
			newest = v
			files["release.json"] = b
		}
	}
	for name, b := range files {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return nil, err
		}
	}
	return r.tsKey, nil
}

// TamperImage changes one byte in the middle of the served image of
// version, after it was signed.
func (r *Repo) TamperImage(version uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	name := fmt.Sprintf("firmware-%d.bin", version)
	img := bytes.Clone(r.files[name])
	img[len(img)/2] ^= 0x01
	r.files[name] = img
}

// UpdateDevice is a device with A/B directory slots and an update agent
// that trusts the repository's root v1.
type UpdateDevice struct {
	Agent   *update.Agent
	Slots   *slot.DirSlots
	dir     string
	repo    *Repo
	clock   update.Clock
	mu      sync.Mutex
	reports []update.Result
}

// NewUpdateDevice makes a device in dir running factory firmware v0 from
// slot a, with clock as its trusted time (nil: the system clock), and
// starts it.
func NewUpdateDevice(ctx context.Context, dir string, repo *Repo, clock update.Clock) (*UpdateDevice, error) {
	d := &UpdateDevice{dir: dir, repo: repo, clock: clock}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := slot.InitDirSlots(filepath.Join(dir, "slots"), bytes.NewReader(Firmware(0))); err != nil {
		return nil, err
	}
	if _, err := d.Boot(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// Boot (re)starts the device: the slot the link names runs, and the agent
// does its start-up work.
func (d *UpdateDevice) Boot(ctx context.Context) (update.Status, error) {
	d.Close()
	s, err := slot.OpenDirSlots(filepath.Join(d.dir, "slots"))
	if err != nil {
		return update.Status{}, err
	}
	d.Slots = s
	d.Agent, err = update.NewAgent(ctx, update.AgentConfig{Dir: filepath.Join(d.dir, "agent"), Root: d.repo.Root(),
		HardwareClass: HardwareClass, Slots: s, Source: &update.HTTPSource{BaseURL: d.repo.URL},
		Client: &http.Client{}, // plain http on 127.0.0.1 for the lab: production uses HTTPS
		Clock:  d.clock,
		Report: func(_ context.Context, r update.Result) {
			d.mu.Lock()
			d.reports = append(d.reports, r)
			d.mu.Unlock()
		}})
	if err != nil {
		return update.Status{}, err
	}
	return d.Agent.Start(ctx)
}

// InstallAndConfirm installs what the repository offers, restarts into
// it and confirms it, as a healthy device does.
func (d *UpdateDevice) InstallAndConfirm(ctx context.Context) error {
	installed, err := d.Agent.Update(ctx)
	if err != nil {
		return err
	}
	if !installed {
		return fmt.Errorf("nothing installed")
	}
	if _, err := d.Boot(ctx); err != nil {
		return err
	}
	return d.Agent.Confirm(ctx)
}

// LastReport returns what the agent last reported (it would go to the
// cloud as signed telemetry with updatelink.TelemetryReporter).
func (d *UpdateDevice) LastReport() (update.Result, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.reports) == 0 {
		return update.Result{}, false
	}
	return d.reports[len(d.reports)-1], true
}

// SlotImage returns the image a slot holds.
func (d *UpdateDevice) SlotImage(ctx context.Context, name string) ([]byte, error) {
	rc, err := d.Slots.Read(ctx, name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// Close stops the agent.
func (d *UpdateDevice) Close() {
	if d.Agent != nil {
		d.Agent.Close()
		d.Agent = nil
	}
}
