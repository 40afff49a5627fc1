// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/update/slot"
)

// assertUntouched checks that a refused update left the device as it was:
// the agent state files, the running image, and the slot booting next.
//
// A refused artifact comes after verified metadata, whose timestamp and
// release versions the agent keeps (they raise the metadata floors, as TUF
// does); then only the installed release and the security-counter floor
// are compared.
func (d *agentDevice) assertUntouched(before string, beforeSt state, artifact bool, running []byte) {
	d.t.Helper()
	if after := d.stateHash(); !artifact && after != before {
		d.t.Error("the refusal changed the agent state")
	}
	if st := d.agent.st; st.Installed.Version != beforeSt.Installed.Version || st.Floors.SecurityCounter != beforeSt.Floors.SecurityCounter || st.Pending != nil {
		d.t.Errorf("the refusal changed the installed release or its floor: %+v, was %+v", st, beforeSt)
	}
	if !bytes.Equal(d.running(), running) {
		d.t.Error("the running image changed")
	}
	b, _ := d.slots.Booted(d.t.Context())
	if next, trial, err := d.slots.Next(d.t.Context()); err != nil || next != b || trial {
		d.t.Errorf("next slot %s (trial %v, %v), want the booted %s", next, trial, err, b)
	}
	if st := d.agent.Status(); st.Phase != PhaseIdle {
		d.t.Errorf("phase %s after a refusal, want idle", st.Phase)
	}
}

// installV confirms release version v with counter c on dev.
func (d *agentDevice) installV(v, c uint64) {
	d.t.Helper()
	ctx := d.t.Context()
	d.repo.publish(v, c, image(v, 4096))
	if ok, err := d.agent.Update(ctx); err != nil || !ok {
		d.t.Fatalf("install v%d: %v %v", v, ok, err)
	}
	d.restart()
	if _, err := d.agent.Start(ctx); err != nil {
		d.t.Fatal(err)
	}
	if err := d.agent.Confirm(ctx); err != nil {
		d.t.Fatal(err)
	}
}

// TestAgentRefusesAttacks runs the attacks that reach the agent as a whole
// (the metadata attacks alone are in trust_test.go): each is refused with
// its sentinel, reported, and leaves the state, the running image and the
// next boot untouched.
func TestAgentRefusesAttacks(t *testing.T) {
	cases := []struct {
		name     string
		setup    func(repo *agentRepo, dev *agentDevice)
		want     error
		artifact bool // refused at download, after the metadata verified
	}{
		{"rollback to an older release", func(repo *agentRepo, dev *agentDevice) {
			dev.installV(2, 1)
			repo.publish(1, 1, image(1, 4096)) // validly signed, newer timestamp
		}, ErrRollback, false},
		{"security counter rollback", func(repo *agentRepo, dev *agentDevice) {
			dev.installV(2, 5)
			repo.publish(3, 4, image(3, 4096))
		}, ErrSecurityCounter, false},
		{"tampered image byte", func(repo *agentRepo, dev *agentDevice) {
			repo.publish(1, 1, image(1, 4096))
			repo.mu.Lock()
			bad := bytes.Clone(repo.files["image-1.bin"])
			bad[100] ^= 1
			repo.files["image-1.bin"] = bad
			repo.mu.Unlock()
		}, ErrDigest, true},
		{"endless data", func(repo *agentRepo, dev *agentDevice) {
			repo.publish(1, 1, image(1, 4096))
			repo.artifactOverride = func(w http.ResponseWriter, r *http.Request) bool {
				w.WriteHeader(http.StatusOK) // no Content-Length: chunked, endless
				for range 64 {
					if _, err := w.Write(make([]byte, 4096)); err != nil {
						break
					}
				}
				return true
			}
		}, ErrEndlessData, true},
		{"arbitrary image signed by an unknown key", func(repo *agentRepo, dev *agentDevice) {
			repo.publish(1, 1, image(1, 4096), agentKey(t))
		}, ErrUnknownKey, false},
		{"wrong hardware class", func(repo *agentRepo, dev *agentDevice) {
			repo.hardware = "other-board"
			repo.publish(1, 1, image(1, 4096))
			repo.hardware = "gw-1"
		}, ErrWrongHardware, false},
		{"freeze: stale timestamp, clock at 1970, trusted-time floor later", func(repo *agentRepo, dev *agentDevice) {
			repo.expiresTimestamps = time.Hour
			repo.publish(1, 1, image(1, 4096))
			// The device's clock reads 1970 but identity's floor, from
			// a verified certificate, is two hours after the timestamp
			// was signed: the trusted clock never reads earlier.
			dev.clock.mu.Lock()
			dev.clock.t = repo.now.Add(2 * time.Hour)
			dev.clock.mu.Unlock()
		}, ErrExpired, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			repo := newAgentRepo(t)
			dev := newAgentDevice(t, repo, nil)
			c.setup(repo, dev)
			before, beforeSt, running := dev.stateHash(), *dev.agent.st, dev.running()
			_, err := dev.agent.Update(t.Context())
			if !errors.Is(err, c.want) {
				t.Fatalf("Update: %v, want %v", err, c.want)
			}
			dev.assertUntouched(before, beforeSt, c.artifact, running)
			if r := dev.lastReport(); r.Event != "refused" && r.Event != "failed" {
				t.Errorf("last report %+v, want the refusal", r)
			}
			// The inactive slot holds nothing partial.
			other := slot.Other(string(mustBooted(t, dev)))
			if fi, err := os.Stat(filepath.Join(dev.dir, "slots", other, "image")); err == nil && fi.Size() != 0 && c.want != ErrRollback && c.want != ErrSecurityCounter {
				t.Errorf("inactive slot keeps %d bytes of a refused image", fi.Size())
			}
		})
	}
}

func mustBooted(t *testing.T, d *agentDevice) string {
	b, err := d.slots.Booted(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAgentSlowRetrieval: a server that trickles the image is abandoned at
// the minimum rate; what arrived is kept for a resume.
func TestAgentSlowRetrieval(t *testing.T) {
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, func(c *AgentConfig) { c.MinRate, c.RateWindow = 64<<10, 200*time.Millisecond })
	img := image(1, 64<<10)
	repo.publish(1, 1, img)
	repo.artifactOverride = func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", "65536")
		w.WriteHeader(http.StatusOK)
		for i := 0; i < len(img); i += 16 {
			if _, err := w.Write(img[i : i+16]); err != nil {
				return true
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return true
			case <-time.After(50 * time.Millisecond):
			}
		}
		return true
	}
	start := time.Now()
	_, err := dev.agent.Update(t.Context())
	if !errors.Is(err, ErrSlowRetrieval) {
		t.Fatalf("Update: %v, want ErrSlowRetrieval", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("slow retrieval noticed after %v", d)
	}
	if st := dev.agent.Status(); st.Phase != PhaseDownloading {
		t.Fatalf("phase %s, want downloading (resumable)", st.Phase)
	}
	if !bytes.Equal(dev.running(), factoryImage) {
		t.Fatal("running image changed")
	}
	// A good server later: the download completes.
	repo.artifactOverride = nil
	if ok, err := dev.agent.Update(t.Context()); err != nil || !ok {
		t.Fatal(ok, err)
	}
}

// TestAgentFastForwardRecovery: a stolen release key signs a huge version.
// The device installs it on trial, but its health check fails and it rolls
// back: the floor never rose, and after the release key is rotated the
// fleet takes the next real release.
func TestAgentFastForwardRecovery(t *testing.T) {
	repo := newAgentRepo(t)
	dev := newAgentDevice(t, repo, nil)
	ctx := t.Context()
	dev.installV(2, 1)
	repo.publish(1_000_000, 1_000_000, image(9, 4096)) // signed with the stolen (current) key
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatal(ok, err)
	}
	dev.restart()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dev.agent.Rollback(ctx); err != nil { // health check failed
		t.Fatal(err)
	}
	dev.restart()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st := dev.agent.Status(); st.Installed.Version != 2 || dev.agent.st.Floors.SecurityCounter != 1 {
		t.Fatalf("after the rollback: %+v floors %+v", st, dev.agent.st.Floors)
	}
	// Without a rotation, the real v3 is below the fast-forwarded floor.
	repo.publish(3, 2, image(3, 4096))
	if _, err := dev.agent.Update(ctx); !errors.Is(err, ErrRollback) {
		t.Fatalf("v3 before the rotation: %v, want ErrRollback", err)
	}
	// The repository rotates the stolen release and timestamp keys.
	repo.rotate()
	repo.publish(3, 2, image(3, 4096))
	dev.restart()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := dev.agent.Update(ctx); err != nil || !ok {
		t.Fatalf("v3 after the rotation: %v %v", ok, err)
	}
	// And the stolen key no longer counts.
	dev.restart()
	if _, err := dev.agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dev.agent.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	if st := dev.agent.Status(); st.Installed.Version != 3 {
		t.Fatalf("installed %d, want 3", st.Installed.Version)
	}
}

// TestAgentDiskFull installs into slots on a 512 KiB tmpfs with an image
// that does not fit: the install aborts cleanly, the slot is cleared and
// the running slot is untouched.
func TestAgentDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestAgentDiskFull needs root to mount a 512 KiB tmpfs (CI runs as root)")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
	repo := newAgentRepo(t)
	dev := &agentDevice{t: t, repo: repo, dir: mnt, clock: &fakeClock{t: repo.now}}
	if err := slot.InitDirSlots(filepath.Join(mnt, "slots"), bytes.NewReader(factoryImage)); err != nil {
		t.Fatal(err)
	}
	dev.restart()
	repo.publish(1, 1, image(1, 1<<20))
	before, running := dev.stateHash(), dev.running()
	_, err := dev.agent.Update(t.Context())
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("Update on a full disk: %v, want an error naming the full disk", err)
	}
	if st := dev.agent.Status(); st.Phase != PhaseIdle || st.Last == nil || st.Last.Event != "failed" {
		t.Fatalf("after the full disk: %+v", st)
	}
	_ = before
	if !bytes.Equal(dev.running(), running) {
		t.Fatal("running image changed")
	}
	if fi, err := os.Stat(filepath.Join(mnt, "slots", "b", "image")); err != nil || fi.Size() != 0 {
		t.Fatalf("inactive slot after the full disk: %v, %v bytes; want cleared", err, fi.Size())
	}
	// Space is back: a smaller release installs.
	repo.publish(2, 1, image(2, 64<<10))
	if ok, err := dev.agent.Update(t.Context()); err != nil || !ok {
		t.Fatal(ok, err)
	}
}
