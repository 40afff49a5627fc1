package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/d2c-iot/d2c/identity"
)

// TestMain lets testscript run the test binary as the d2c command.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"d2c": main,
	})
}

// TestScript runs the scripts in testdata/script: each drives the real CLI
// as a subprocess, with a real registrar on 127.0.0.1 where needed.
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitfile": cmdWaitfile,
			"envfile":  cmdEnvfile,
		},
	})
}

// cmdWaitfile waits up to 10 seconds for a file to exist and be non-empty:
// waitfile FILE. A background registrar writes its URL file once it listens.
func cmdWaitfile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitfile FILE")
	}
	path := ts.MkAbs(args[0])
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, err := os.Stat(path); err == nil && st.Size() > 0 {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("%s did not appear within 10s", args[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cmdEnvfile sets an environment variable to the trimmed content of a
// file: envfile NAME FILE.
func cmdEnvfile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: envfile NAME FILE")
	}
	ts.Setenv(args[0], strings.TrimSpace(ts.ReadFile(args[1])))
}

// TestEveryCommandHasHelp calls run in process: every command answers
// --help on stdout with its purpose, usage, flags and an example, and the
// command list names it.
func TestEveryCommandHasHelp(t *testing.T) {
	var list strings.Builder
	if code := run(t.Context(), []string{"help"}, &list, io.Discard); code != exitOK {
		t.Fatalf("d2c help: exit %d", code)
	}
	for _, c := range commands() {
		var stdout, stderr strings.Builder
		args := append(strings.Fields(c.path), "--help")
		if code := run(t.Context(), args, &stdout, &stderr); code != exitOK || stderr.Len() != 0 {
			t.Errorf("d2c %s --help: exit %d, stderr %q", c.path, code, stderr.String())
		}
		for _, want := range []string{c.summary, "Usage:\n  d2c " + c.path, "Flags:", "Example:\n  d2c "} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("d2c %s --help lacks %q", c.path, want)
			}
		}
		if !strings.Contains(list.String(), c.path) {
			t.Errorf("d2c help does not list %q", c.path)
		}
	}
}

// TestHints checks that every condition an operator can act on maps to a
// hint, and that a command's own hint takes precedence.
func TestHints(t *testing.T) {
	for _, sentinel := range []error{
		identity.ErrInvalidDeviceID, identity.ErrKeyPermissions, identity.ErrUnsupportedKey,
		identity.ErrMalformed, identity.ErrTooLarge, identity.ErrTokenInvalid, identity.ErrTokenExpired,
		identity.ErrTokenReused, identity.ErrNotAuthorized, identity.ErrRevoked, identity.ErrCertExpired,
		identity.ErrUntrusted, identity.ErrNoTrustAnchor, identity.ErrNoIdentity,
	} {
		if hintFor(fmt.Errorf("context: %w", sentinel)) == "" {
			t.Errorf("no hint for %v", sentinel)
		}
	}
	// A reused token is also a refusal: the specific hint wins.
	both := fmt.Errorf("%w: %w", identity.ErrNotAuthorized, identity.ErrTokenReused)
	if h := hintFor(both); !strings.Contains(h, "already used") {
		t.Errorf("hint for a reused token: %q", h)
	}
	if h := hintFor(withHint(identity.ErrUntrusted, "specific")); h != "specific" {
		t.Errorf("command hint overridden: %q", h)
	}
	if h := hintFor(errors.New("something else")); h != "" {
		t.Errorf("hint for an unknown error: %q", h)
	}
}
