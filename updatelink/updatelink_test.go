// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package updatelink_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/outbox"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
	"github.com/d2c-iot/d2c/updatelink"
)

type recordingPublisher struct {
	mu       sync.Mutex
	streams  []string
	readings []transport.Reading
	err      error
}

func (p *recordingPublisher) Publish(_ context.Context, stream string, rs ...transport.Reading) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	for _, r := range rs {
		p.streams = append(p.streams, stream)
		p.readings = append(p.readings, r)
	}
	return nil
}

// TestTelemetryReporter: a result becomes one reading on the update
// stream, at the result's time, its body the JSON a cloud service decodes;
// a failure to store it is logged.
func TestTelemetryReporter(t *testing.T) {
	p := &recordingPublisher{}
	report := updatelink.TelemetryReporter(p, nil)
	at := time.UnixMilli(1795000000123)
	report(t.Context(), update.Result{Event: "installed", Version: 7, From: 6, Time: at.UnixMilli()})
	if len(p.readings) != 1 || p.streams[0] != update.ReportStream || !p.readings[0].Time.Equal(at) {
		t.Fatalf("published %q %+v", p.streams, p.readings)
	}
	var r update.Result
	if err := json.Unmarshal(p.readings[0].Body, &r); err != nil || r.Event != "installed" || r.Version != 7 || r.From != 6 {
		t.Fatalf("body %s: %+v %v", p.readings[0].Body, r, err)
	}

	var logged strings.Builder
	p.err = outbox.ErrFull
	report = updatelink.TelemetryReporter(p, slog.New(slog.NewTextHandler(&logged, nil)))
	report(t.Context(), update.Result{Event: "refused", Version: 8, Reason: "rollback"})
	if !strings.Contains(logged.String(), "outbox full") || !strings.Contains(logged.String(), "event=refused") {
		t.Fatalf("a failed report logged %q", logged.String())
	}
}

// countingSource is an update.Source that serves nothing and tells of
// every check (a timestamp request).
type countingSource struct{ checks chan struct{} }

func (s countingSource) Root(context.Context, uint64) ([]byte, error) { return nil, update.ErrNotFound }
func (s countingSource) Release(context.Context, uint64) ([]byte, error) {
	return nil, update.ErrNotFound
}
func (s countingSource) Timestamp(context.Context) ([]byte, error) {
	s.checks <- struct{}{}
	return nil, errors.New("no repository here")
}

// TestCommandHandler: the signed update.check command makes a running
// agent check at once; every other command goes to the next handler.
func TestCommandHandler(t *testing.T) {
	dir := t.TempDir()
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	root := &update.Root{Version: 1, Expires: time.Now().AddDate(1, 0, 0)}
	for _, role := range []update.Role{update.RoleRoot, update.RoleRelease, update.RoleTimestamp} {
		if err := root.SetRole(role, 1, key.Public()); err != nil {
			t.Fatal(err)
		}
	}
	pinned, err := root.Sign(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := slot.InitDirSlots(filepath.Join(dir, "slots"), nil); err != nil {
		t.Fatal(err)
	}
	slots, err := slot.OpenDirSlots(filepath.Join(dir, "slots"))
	if err != nil {
		t.Fatal(err)
	}
	src := countingSource{checks: make(chan struct{}, 8)}
	a, err := update.NewAgent(t.Context(), update.AgentConfig{Dir: filepath.Join(dir, "agent"), Root: pinned,
		HardwareClass: "test", Slots: slots, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	go a.Run(ctx, time.Hour)
	check := func(what string) {
		t.Helper()
		select {
		case <-src.checks:
		case <-ctx.Done():
			t.Fatalf("no check %s", what)
		}
	}
	check("at the start of Run")

	var passed []string
	h := updatelink.CommandHandler(a, func(_ context.Context, c transport.Command) { passed = append(passed, c.Name) })
	h(ctx, transport.Command{Name: "reboot"})
	select {
	case <-src.checks:
		t.Fatal("another command made the agent check")
	case <-time.After(50 * time.Millisecond):
	}
	h(ctx, transport.Command{Name: update.CheckCommand})
	check("after " + update.CheckCommand)
	if len(passed) != 1 || passed[0] != "reboot" {
		t.Fatalf("commands passed on: %q, want only reboot", passed)
	}
	updatelink.CommandHandler(a, nil)(ctx, transport.Command{Name: "reboot"}) // no next: ignored
}
