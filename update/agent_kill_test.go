// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/update/slot"
)

// TestHelperAgentProcess is the device of TestAgentKilled, run in a child
// process: it drives an update of v1 (100 KiB blocks served slowly enough
// to be caught mid-way) and, at the named point D2C_AGENT_KILL_AT, prints
// "AT <point>" and waits to be killed.
func TestHelperAgentProcess(t *testing.T) {
	point := os.Getenv("D2C_AGENT_KILL_AT")
	if point == "" {
		return // not a child
	}
	dir, base := os.Getenv("D2C_AGENT_DIR"), os.Getenv("D2C_AGENT_REPO")
	root, err := os.ReadFile(filepath.Join(dir, "root.json"))
	if err != nil {
		t.Fatal(err)
	}
	stop := func(at string) {
		if at == point {
			fmt.Printf("AT %s\n", at)
			_ = os.Stdout.Sync()
			select {} // SIGKILL ends it here
		}
	}
	ctx := context.Background()
	var agent *Agent
	open := func() {
		if agent != nil {
			agent.Close()
		}
		s, err := slot.OpenDirSlots(filepath.Join(dir, "slots"))
		if err != nil {
			t.Fatal(err)
		}
		agent, err = NewAgent(ctx, AgentConfig{Dir: filepath.Join(dir, "agent"), Root: root, HardwareClass: "gw-1", Slots: s,
			Source: &HTTPSource{BaseURL: base}, Client: &http.Client{}, MaxTrialStarts: 3, TrialTimeout: time.Hour,
			Progress: func(done, total int64) {
				if done > 0 && done < total {
					stop("download")
				}
			},
			hook: stop})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := agent.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	open()
	if _, err := agent.Update(ctx); err != nil {
		t.Fatal(err)
	}
	for range 4 { // the fourth start reverts (revert point)
		open()
		if point == "commit" {
			_ = agent.Confirm(ctx)
		}
	}
	t.Fatalf("point %s never reached", point)
}

// TestAgentKilled kills the agent with SIGKILL in each named state of an
// update, Mender style, then restarts it on the same disk and checks the
// defined outcome of that state:
//
//	download  the download resumes with a Range request, then installs
//	write     the complete download is verified again, then installs
//	switch    the restart switches to the verified slot, on trial
//	trial     the restart records the trial of the switched slot
//	commit    the restart counts one more trial start; Confirm completes
//	revert    the restart reverts (again); the device boots v0, v1 never confirmed
func TestAgentKilled(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	repo := newAgentRepo(t)
	img := image(1, 2<<20)
	repo.publish(1, 1, img)
	// Serve the artifact in 64 KiB pieces with a pause, so that the child
	// is caught mid-download.
	repo.artifactOverride = func(w http.ResponseWriter, r *http.Request) bool {
		start := int64(0)
		if rg := r.Header.Get("Range"); rg != "" {
			if _, err := fmt.Sscanf(rg, "bytes=%d-", &start); err != nil {
				return false
			}
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(img)-1, len(img)))
			w.Header().Set("Content-Length", fmt.Sprint(int64(len(img))-start))
			w.WriteHeader(http.StatusPartialContent)
		} else {
			w.Header().Set("Content-Length", fmt.Sprint(len(img)))
			w.WriteHeader(http.StatusOK)
		}
		for off := start; off < int64(len(img)); off += 64 << 10 {
			end := min(off+64<<10, int64(len(img)))
			if _, err := w.Write(img[off:end]); err != nil {
				return true
			}
			w.(http.Flusher).Flush()
			time.Sleep(5 * time.Millisecond)
		}
		return true
	}
	for _, point := range []string{"download", "write", "switch", "trial", "commit", "revert"} {
		t.Run(point, func(t *testing.T) {
			dev := &agentDevice{t: t, repo: repo, dir: t.TempDir(), clock: &fakeClock{t: repo.now}}
			dev.clock.t = time.Now() // the child uses the system clock
			if err := slot.InitDirSlots(filepath.Join(dev.dir, "slots"), bytes.NewReader(factoryImage)); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dev.dir, "root.json"), repo.roots[1], 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, exe, "-test.run=^TestHelperAgentProcess$", "-test.v")
			cmd.Env = append(os.Environ(), "D2C_AGENT_KILL_AT="+point, "D2C_AGENT_DIR="+dev.dir, "D2C_AGENT_REPO="+repo.srv.URL+"/")
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var log strings.Builder
			reached := false
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				log.WriteString(sc.Text() + "\n")
				if sc.Text() == "AT "+point {
					reached = true
					break
				}
			}
			if !reached {
				_ = cmd.Wait()
				t.Fatalf("child never reached %s:\n%s%s", point, log.String(), stderr.String())
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			err = cmd.Wait()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child: %v, want killed by SIGKILL", err)
			}
			nRanges := len(repo.seenRanges())
			if fi, err := os.Stat(filepath.Join(dev.dir, "slots", "b", "image")); err == nil {
				t.Logf("killed at %s with %d bytes in slot b", point, fi.Size())
			}

			// Restart on the same disk.
			dev.restart()
			st, err := dev.agent.Start(t.Context())
			if err != nil {
				t.Fatalf("Start after the kill: %v", err)
			}
			t.Logf("after SIGKILL at %s: %+v", point, st)
			switch point {
			case "download", "write":
				if st.Phase != PhaseDownloading {
					t.Fatalf("phase %s, want downloading", st.Phase)
				}
				if ok, err := dev.agent.Update(t.Context()); err != nil || !ok {
					t.Fatalf("resume: %v %v", ok, err)
				}
				if rs := repo.seenRanges()[nRanges:]; point == "download" && (len(rs) == 0 || !strings.HasPrefix(rs[0], "bytes=") || rs[0] == "bytes=0-") {
					t.Fatalf("the resumed download asked for %q, want a Range after the bytes already written", rs)
				}
				dev.restart()
				dev.mustStartConfirm(img)
			case "switch":
				if st.Phase != PhaseTrial || !st.RebootNeeded {
					t.Fatalf("%+v, want on trial with a restart needed", st)
				}
				dev.restart()
				dev.mustStartConfirm(img)
			case "trial":
				// Killed after the switch: the restart is already into
				// the new slot, and counts as its first start.
				if st.Phase != PhaseTrial || st.RebootNeeded || st.Starts != 1 {
					t.Fatalf("%+v, want on trial, start 1", st)
				}
				if err := dev.agent.Confirm(t.Context()); err != nil {
					t.Fatal(err)
				}
			case "commit":
				if st.Phase != PhaseTrial || st.Starts != 2 {
					t.Fatalf("%+v, want on trial at start 2", st)
				}
				if err := dev.agent.Confirm(t.Context()); err != nil {
					t.Fatal(err)
				}
				if st := dev.agent.Status(); st.Installed.Version != 1 {
					t.Fatalf("%+v", st)
				}
			case "revert":
				if st.Phase != PhaseIdle || !st.RebootNeeded || st.Installed.Version != 0 {
					t.Fatalf("%+v, want reverted to v0 with a restart needed", st)
				}
				dev.restart()
				if _, err := dev.agent.Start(t.Context()); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(dev.running(), factoryImage) {
					t.Fatal("not back on v0")
				}
			}
		})
	}
}

// mustStartConfirm starts the device on the new slot and confirms it.
func (d *agentDevice) mustStartConfirm(img []byte) {
	d.t.Helper()
	st, err := d.agent.Start(d.t.Context())
	if err != nil || st.Phase != PhaseTrial || st.RebootNeeded {
		d.t.Fatalf("Start on the new slot: %+v, %v", st, err)
	}
	if !bytes.Equal(d.running(), img) {
		d.t.Fatal("the new slot does not hold the new image")
	}
	if err := d.agent.Confirm(d.t.Context()); err != nil {
		d.t.Fatal(err)
	}
	if st := d.agent.Status(); st.Installed.Version != 1 || st.Phase != PhaseIdle {
		d.t.Fatalf("after Confirm: %+v", st)
	}
}
