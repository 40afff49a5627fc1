// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/update/slot"
)

// agentRepo is an update repository for agent tests: keys, signed
// metadata and artifacts, served on 127.0.0.1.
type agentRepo struct {
	t                 testing.TB
	rootKey, relKey   crypto.Signer
	tsKey             crypto.Signer
	root              *Root
	roots             map[uint64][]byte
	release, tstamp   []byte
	releaseVersion    uint64
	tsVersion         uint64
	mu                sync.Mutex
	files             map[string][]byte
	ranges            []string // Range headers seen for artifacts
	requested         []string // artifact (and delta) names requested, in order
	artifactOverride  func(w http.ResponseWriter, r *http.Request) bool
	srv               *httptest.Server
	now               time.Time
	hardware          string
	expiresRelease    time.Duration
	expiresTimestamps time.Duration
	rollout           *Rollout // signed into every timestamp stamp makes
}

func agentKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newAgentRepo(t testing.TB) *agentRepo {
	t.Helper()
	r := &agentRepo{t: t, rootKey: agentKey(t), relKey: agentKey(t), tsKey: agentKey(t), roots: map[uint64][]byte{},
		files: map[string][]byte{}, now: time.Now(), hardware: "gw-1", expiresRelease: 30 * 24 * time.Hour, expiresTimestamps: 24 * time.Hour}
	r.root = &Root{Version: 1, Expires: r.now.Add(365 * 24 * time.Hour)}
	for role, k := range map[Role]crypto.Signer{RoleRoot: r.rootKey, RoleRelease: r.relKey, RoleTimestamp: r.tsKey} {
		if err := r.root.SetRole(role, 1, k.Public()); err != nil {
			t.Fatal(err)
		}
	}
	b, err := r.root.Sign(r.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	r.roots[1] = b
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *agentRepo) serve(w http.ResponseWriter, req *http.Request) {
	name := strings.TrimPrefix(req.URL.Path, "/")
	r.mu.Lock()
	var body []byte
	ok := false
	switch {
	case name == "timestamp.json":
		body, ok = r.tstamp, r.tstamp != nil
	case name == fmt.Sprintf("%d.release.json", r.releaseVersion):
		body, ok = r.release, r.release != nil
	case strings.HasSuffix(name, ".root.json"):
		v, err := strconv.ParseUint(strings.TrimSuffix(name, ".root.json"), 10, 64)
		if err == nil {
			body, ok = r.roots[v]
		}
	default:
		body, ok = r.files[name]
		if ok {
			r.ranges = append(r.ranges, req.Header.Get("Range"))
		}
		r.requested = append(r.requested, name)
		override := r.artifactOverride
		r.mu.Unlock()
		if ok && override != nil && override(w, req) {
			return
		}
		if !ok {
			http.NotFound(w, req)
			return
		}
		http.ServeContent(w, req, name, time.Time{}, bytes.NewReader(body))
		return
	}
	r.mu.Unlock()
	if !ok {
		http.NotFound(w, req)
		return
	}
	_, _ = w.Write(body)
}

// publish signs and serves a release of image with a fresh timestamp.
func (r *agentRepo) publish(version, counter uint64, image []byte, signers ...crypto.Signer) {
	r.t.Helper()
	r.publishWith(version, counter, image, signers, nil)
}

// publishWith signs (by default with the release key) and serves a
// release of image with deltas, and a fresh timestamp.
func (r *agentRepo) publishWith(version, counter uint64, image []byte, signers []crypto.Signer, deltas []deltaFile) {
	r.t.Helper()
	if len(signers) == 0 {
		signers = []crypto.Signer{r.relKey}
	}
	name := fmt.Sprintf("image-%d.bin", version)
	art, err := NewArtifact("image", name, bytes.NewReader(image), nil)
	if err != nil {
		r.t.Fatal(err)
	}
	rel := &Release{Version: version, SecurityCounter: counter, HardwareClass: r.hardware, Artifacts: []Artifact{art},
		Expires: r.now.Add(r.expiresRelease)}
	for _, d := range deltas {
		rel.Deltas = append(rel.Deltas, d.entry)
	}
	rb, err := rel.Sign(signers...)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.files[name] = image
	for _, d := range deltas {
		r.files[d.entry.URI] = d.served
	}
	r.release, r.releaseVersion = rb, version
	r.mu.Unlock()
	r.stamp()
}

// stamp signs a new timestamp for the current release.
func (r *agentRepo) stamp() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tsVersion++
	ts, err := NewTimestamp(r.tsVersion, r.now.Add(r.expiresTimestamps), r.release)
	if err != nil {
		r.t.Fatal(err)
	}
	ts.Rollout = r.rollout
	if r.tstamp, err = ts.Sign(r.tsKey); err != nil {
		r.t.Fatal(err)
	}
}

// rotate publishes root N+1 with new release and timestamp keys.
func (r *agentRepo) rotate() {
	r.t.Helper()
	next := r.root.Next(r.now.Add(365 * 24 * time.Hour))
	r.relKey, r.tsKey = agentKey(r.t), agentKey(r.t)
	if err := next.SetRole(RoleRelease, 1, r.relKey.Public()); err != nil {
		r.t.Fatal(err)
	}
	if err := next.SetRole(RoleTimestamp, 1, r.tsKey.Public()); err != nil {
		r.t.Fatal(err)
	}
	b, err := next.Sign(r.rootKey)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.root = next
	r.roots[next.Version] = b
	r.mu.Unlock()
}

func (r *agentRepo) source() *HTTPSource { return &HTTPSource{BaseURL: r.srv.URL + "/"} }

func (r *agentRepo) seenRanges() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ranges...)
}

// agentDevice is a device with directory slots and an agent state
// directory; "restarting" it reopens both, as a new process would.
type agentDevice struct {
	t        testing.TB
	repo     *agentRepo
	dir      string
	slots    *slot.DirSlots
	agent    *Agent
	clock    *fakeClock
	reports  []Result
	tweak    func(*AgentConfig)
	reportMu sync.Mutex
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var factoryImage = []byte("factory image v0\n")

func newAgentDevice(t testing.TB, repo *agentRepo, tweak func(*AgentConfig)) *agentDevice {
	t.Helper()
	d := &agentDevice{t: t, repo: repo, dir: t.TempDir(), clock: &fakeClock{t: repo.now}, tweak: tweak}
	if err := slot.InitDirSlots(filepath.Join(d.dir, "slots"), bytes.NewReader(factoryImage)); err != nil {
		t.Fatal(err)
	}
	d.restart()
	return d
}

func (d *agentDevice) config() AgentConfig {
	cfg := AgentConfig{Dir: filepath.Join(d.dir, "agent"), Root: d.repo.roots[1], HardwareClass: d.repo.hardware,
		Slots: d.slots, Source: d.repo.source(), Clock: d.clock, MaxTrialStarts: 3, TrialTimeout: time.Hour, Client: &http.Client{},
		Report: func(_ context.Context, r Result) {
			d.reportMu.Lock()
			d.reports = append(d.reports, r)
			d.reportMu.Unlock()
		}}
	if d.tweak != nil {
		d.tweak(&cfg)
	}
	return cfg
}

// restart reopens the slots and the agent, as a new process after a
// restart or reboot does; it does not call Start.
func (d *agentDevice) restart() {
	d.t.Helper()
	if d.agent != nil {
		d.agent.Close()
	}
	s, err := slot.OpenDirSlots(filepath.Join(d.dir, "slots"))
	if err != nil {
		d.t.Fatal(err)
	}
	d.slots = s
	a, err := NewAgent(d.t.Context(), d.config())
	if err != nil {
		d.t.Fatal(err)
	}
	d.agent = a
	d.t.Cleanup(func() { a.Close() })
}

// running returns the image the device runs now (the booted slot's).
func (d *agentDevice) running() []byte {
	d.t.Helper()
	b, err := d.slots.Booted(d.t.Context())
	if err != nil {
		d.t.Fatal(err)
	}
	img, err := os.ReadFile(filepath.Join(d.dir, "slots", b, "image"))
	if err != nil {
		d.t.Fatal(err)
	}
	return img
}

func (d *agentDevice) lastReport() Result {
	d.reportMu.Lock()
	defer d.reportMu.Unlock()
	if len(d.reports) == 0 {
		return Result{}
	}
	return d.reports[len(d.reports)-1]
}

// stateHash hashes every file of the agent's state directory, to assert a
// refusal changed nothing.
func (d *agentDevice) stateHash() string {
	d.t.Helper()
	h := sha256.New()
	for _, n := range stateNames {
		b, err := os.ReadFile(filepath.Join(d.dir, "agent", n))
		if err != nil && !os.IsNotExist(err) {
			d.t.Fatal(err)
		}
		h.Write(b)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func image(version uint64, size int) []byte {
	b := bytes.Repeat([]byte{byte('a' + version%26)}, size)
	copy(b, fmt.Sprintf("image v%d\n", version))
	return b
}
