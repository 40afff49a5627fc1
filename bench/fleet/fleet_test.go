// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/pgpeer"
	"github.com/d2c-iot/d2c/internal/testpeer"
)

// Sizes of the CI run: at least 1,000 devices; 20 readings each at 500
// readings/s for the fleet (one every 2 s per device) make a 40-second
// stream, long enough for the broker restart (at 35%; with the SDK's
// backoff every device is back within about 8 s) and the replica kill (at
// 65%) to both happen mid-stream.
const (
	testDevices  = 1000
	testReadings = 20
	testRate     = "500"
)

// TestFleetAtScale runs the fleet program as CI does (issue 13, "a fleet
// at scale"): 1,000 devices with their own keys enroll through two
// replicas of "d2c cloud serve" on one PostgreSQL store, connect to
// mosquitto with mutual TLS and publish; mid-stream the broker is
// restarted and a replica is killed (SIGKILL) and started again. Every
// device must enroll, connect and come back, and the records table must
// hold every reading exactly once and nothing else.
//
// The program and d2c are built with go build, not under the race
// detector this test may run with: race-instrumented simulators would be
// far too slow. mosquitto and PostgreSQL must be installed: a missing peer
// fails the test, never skips it. It takes about a minute on 2 cores.
func TestFleetAtScale(t *testing.T) {
	testpeer.Require(t, "mosquitto")
	if _, err := pgpeer.BinDir(); err != nil {
		t.Fatal(err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the fleet program and d2c: %v", err)
	}
	dir := t.TempDir()
	build := exec.Command(goBin, "build", "-o", dir+string(filepath.Separator),
		"github.com/d2c-iot/d2c/bench/fleet", "github.com/d2c-iot/d2c/cmd/d2c")
	// Whatever flags the test runs with (-race), the programs are plain
	// builds.
	build.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	start := time.Now()
	cmd := exec.Command(filepath.Join(dir, "fleet"), "-devices", strconv.Itoa(testDevices), "-readings", strconv.Itoa(testReadings), "-rate", testRate,
		"-json", "-timeout", "5m", "-d2c", filepath.Join(dir, "d2c"))
	terminateWithParent(cmd) // should this test die, the program cleans up
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	t.Logf("fleet program (%v):\n%s", time.Since(start).Round(time.Millisecond), stderr.String())
	var exit *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exit) {
		t.Fatalf("fleet program: %v", runErr)
	}
	var r result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("fleet program: exit %v, output not JSON (%v):\n%s", runErr, err, stdout.String())
	}

	if r.Devices != testDevices || r.Readings != testReadings {
		t.Fatalf("the program ran %d devices with %d readings each, want %d and %d", r.Devices, r.Readings, testDevices, testReadings)
	}
	for _, c := range []struct {
		what      string
		got, want int
	}{
		{"devices enrolled", r.Enrolled, testDevices},
		{"enrollments failed", r.EnrollErrors, 0},
		{"devices connected", r.Connected, testDevices},
		{"devices reconnected after the broker restart", r.Reconnected, testDevices},
		{"readings expected in the store", r.Expected, testDevices * testReadings},
		{"readings published", r.Published, testDevices * testReadings},
		{"records in the store", r.InStore, testDevices * testReadings},
		{"readings lost", r.Lost, 0},
		{"readings accepted twice", r.Duplicates, 0},
		{"unexpected records", r.Unexpected, 0},
		{"outboxes drained", r.Drained, testDevices},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.what, c.got, c.want)
		}
	}
	if !r.BrokerRestarted {
		t.Error("the broker was not restarted")
	}
	if !r.ReplicaKilled || !r.ReplicaRestarted {
		t.Errorf("replica killed %v, restarted %v: want both", r.ReplicaKilled, r.ReplicaRestarted)
	}
	if !r.Midstream {
		t.Errorf("the restarts were not both mid-stream: at %d and %d of %d readings", r.BrokerRestartAtPublished, r.ReplicaKillAtPublished, testDevices*testReadings)
	}
	if r.VerifierRefused != 0 || r.DeviceRefused != 0 {
		t.Errorf("refused: %v by the verifiers, %d by the broker; want none", r.VerifierRefused, r.DeviceRefused)
	}
	// The measurements are there.
	if r.EnrollSeconds <= 0 || r.ConnectSeconds <= 0 || r.ReconnectSeconds <= 0 || r.SteadyReadingsPerSecond <= 0 || len(r.Usage) != 4 {
		t.Errorf("measurements missing: enroll %v s, connect %v s, reconnect %v s, steady %v readings/s, %d usage rows",
			r.EnrollSeconds, r.ConnectSeconds, r.ReconnectSeconds, r.SteadyReadingsPerSecond, len(r.Usage))
	}
	for _, u := range r.Store {
		if u.Table == "records" && u.Rows != testDevices*testReadings {
			t.Errorf("store usage: %d rows of records, want %d", u.Rows, testDevices*testReadings)
		}
	}
	if len(r.Failures) > 0 {
		t.Errorf("the program reports: %s", strings.Join(r.Failures, "; "))
	}
	if runErr != nil {
		t.Errorf("fleet program: %v", runErr)
	}
	t.Logf("%d devices: enrolled in %.1f s, connected in %.1f s, all back %.1f s after the broker restart; %.0f verified readings/s steady (%s offered); lost %d, accepted twice %d",
		r.Devices, r.EnrollSeconds, r.ConnectSeconds, r.ReconnectSeconds, r.SteadyReadingsPerSecond, testRate, r.Lost, r.Duplicates)
}
