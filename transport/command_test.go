// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile/crashfs"
	"github.com/d2c-iot/d2c/transport/wire"
)

func TestCommands(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	fleetKey, _ := identity.GenerateKey(identity.ECDSAP256)
	rogueKey, _ := identity.GenerateKey(identity.ECDSAP256)
	signer := &CommandSigner{Key: fleetKey, Time: clock}
	rogue := &CommandSigner{Key: rogueKey, Time: clock}
	state := filepath.Join(t.TempDir(), "commands.state")
	open := func() *commandVerifier {
		cv, err := newCommandVerifier(nil, state, "dev-c", []crypto.PublicKey{fleetKey.Public()}, clock)
		if err != nil {
			t.Fatal(err)
		}
		return cv
	}
	cv := open()
	reboot, err := signer.Sign(Command{Device: "dev-c", Name: "reboot", Body: []byte("now")})
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := cv.verify(reboot)
	if err != nil || cmd.Name != "reboot" || string(cmd.Body) != "now" {
		t.Fatalf("valid command: %+v %v", cmd, err)
	}
	// Replayed, also after a restart of the device.
	if _, err := cv.verify(reboot); !errors.Is(err, ErrCommandReplayed) {
		t.Fatalf("replay: %v", err)
	}
	if _, err := open().verify(reboot); !errors.Is(err, ErrCommandReplayed) {
		t.Fatalf("replay after restart: %v", err)
	}
	forB, _ := signer.Sign(Command{Device: "dev-b", Name: "unlock"})
	fromRogue, _ := rogue.Sign(Command{Device: "dev-c", Name: "unlock"})
	tampered := []byte(strings.Replace(string(reboot), string(reboot[len(reboot)-10:]), "AAAAAAAAAA", 1))
	expiredSigner := &CommandSigner{Key: fleetKey, TTL: time.Minute, Time: func() time.Time { return now.Add(-time.Hour) }}
	expired, _ := expiredSigner.Sign(Command{Device: "dev-c", Name: "old", ID: uint64(now.UnixMicro()) + 1000})
	unsigned := []byte(strings.Join(strings.Split(string(reboot), ".")[:2], ".") + ".")
	for name, tc := range map[string]struct {
		env  []byte
		want error
	}{
		"another device's command":      {forB, wire.ErrWrongDevice},
		"signed by an unknown key":      {fromRogue, wire.ErrBadSignature},
		"tampered signature":            {tampered, wire.ErrBadSignature},
		"expired":                       {expired, ErrCommandExpired},
		"signature removed":             {unsigned, wire.ErrBadSignature},
		"telemetry envelope as command": {[]byte("e30.e30.sig"), wire.ErrMalformed},
	} {
		if _, err := cv.verify(tc.env); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	// A later command still runs: refusals changed no state.
	next, _ := signer.Sign(Command{Device: "dev-c", Name: "ping"})
	if _, err := cv.verify(next); err != nil {
		t.Fatalf("next command: %v", err)
	}
}

func TestBootCounterRises(t *testing.T) {
	path := filepath.Join(t.TempDir(), "boot.state")
	var last uint64
	for i := range 3 {
		s, err := openSequence(nil, path)
		if err != nil {
			t.Fatal(err)
		}
		if s.boot <= last {
			t.Fatalf("start %d: boot %d not above %d", i, s.boot, last)
		}
		last = s.boot
		if a, b := s.take(1), s.take(2); a != 0 || b != 1 || s.take(1) != 3 {
			t.Fatalf("sequence numbers %d %d", a, b)
		}
	}
}

// TestBootCounterCrash: a power cut at any step of a start never lets a boot
// number be used twice.
func TestBootCounterCrash(t *testing.T) {
	count := &crashfs.FS{}
	if _, err := openSequence(count, filepath.Join(t.TempDir(), "boot.state")); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= count.Ops(); i++ {
		path := filepath.Join(t.TempDir(), "boot.state")
		used, _ := openSequence(nil, path) // boot 1, used
		if _, err := openSequence(&crashfs.FS{FailAt: i}, path); err == nil {
			t.Fatalf("crash at %d: start succeeded", i)
		}
		after, err := openSequence(nil, path)
		if err != nil {
			t.Fatalf("crash at %d: %v", i, err)
		}
		if after.boot <= used.boot {
			t.Fatalf("crash at %d: boot %d reused", i, after.boot)
		}
	}
}

func TestClassifyDialError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{tls.AlertError(44), true},
		{fmt.Errorf("failed to connect: %w", tls.AlertError(45)), true},
		{errors.New("failed to connect to tls://127.0.0.1:1: remote error: tls: bad certificate"), true},
		{errors.New("remote error: tls: revoked certificate"), true},
		{tls.AlertError(40), false}, // handshake failure: not about the certificate
		{errors.New("connection refused"), false},
	} {
		if got := errors.Is(classifyDialError(tc.err), ErrCertificateRejected); got != tc.want {
			t.Errorf("%v: classified %v, want %v", tc.err, got, tc.want)
		}
	}
}
