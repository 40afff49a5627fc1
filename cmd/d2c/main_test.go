// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
)

// TestMain lets testscript run the test binary as the d2c command.
func TestMain(m *testing.M) {
	testscript.Main(cleanupAfter{m}, map[string]func(){
		"d2c": main,
	})
}

// cleanupAfter removes what the tests left in the system once they ran:
// testscript.Main exits without returning.
type cleanupAfter struct{ m *testing.M }

func (c cleanupAfter) Run() int {
	code := c.m.Run()
	testpeer.RemoveSoftHSM()
	return code
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
		wants := []string{c.summary, "Usage:\n  d2c " + c.path, "Example:\n  d2c "}
		fs := flag.NewFlagSet(c.path, flag.ContinueOnError)
		c.flags(fs)
		hasFlags := false
		fs.VisitAll(func(f *flag.Flag) {
			hasFlags = true
			// flag.UnquoteUsage would take a `quoted` word for the
			// value's name.
			if strings.Contains(f.Usage, "`") {
				t.Errorf("d2c %s --%s: backquote in the usage %q", c.path, f.Name, f.Usage)
			}
		})
		if hasFlags {
			wants = append(wants, "Flags:")
		}
		for _, want := range wants {
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
	if h := hintFor(withHint(identity.ErrUntrusted, "")); h == "" {
		t.Error("an empty command hint hides the table's")
	}
	if h := hintFor(errors.New("something else")); h != "" {
		t.Errorf("hint for an unknown error: %q", h)
	}
}

// TestExamplesAreValid checks every "d2c ..." line of every command's
// example: it names a command, and every --flag it gives is one of that
// command's flags. An example that no longer runs is worse than none.
func TestExamplesAreValid(t *testing.T) {
	cmds := commands()
	byPath := map[string]*command{}
	for _, c := range cmds {
		byPath[c.path] = c
	}
	for _, c := range cmds {
		for _, line := range exampleCommands(c.example) {
			args := shellWords(line)
			if len(args) == 0 || args[0] != "d2c" {
				continue
			}
			args = args[1:]
			var target *command
			for n := min(len(args), 3); n > 0 && target == nil; n-- {
				target = byPath[strings.Join(args[:n], " ")]
			}
			if target == nil {
				t.Errorf("%s: example %q names no command", c.path, line)
				continue
			}
			fs := flag.NewFlagSet(target.path, flag.ContinueOnError)
			target.flags(fs)
			for _, a := range args {
				name, ok := strings.CutPrefix(a, "--")
				if !ok {
					continue
				}
				name, _, _ = strings.Cut(name, "=")
				if fs.Lookup(name) == nil {
					t.Errorf("%s: example %q gives --%s, which %q does not define", c.path, line, name, target.path)
				}
			}
		}
	}
}

// exampleCommands joins an example's continued lines and returns its
// commands, one per line.
func exampleCommands(example string) []string {
	return strings.Split(strings.ReplaceAll(strings.TrimSpace(example), "\\\n", " "), "\n")
}

// shellWords splits a command line roughly as sh does: quotes group,
// and the words of a redirection, pipe or list end the command.
func shellWords(line string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	for i, w := range words {
		if w == ">" || w == "|" || w == "&&" || w == ";" || w == "<" {
			return words[:i]
		}
	}
	return words
}
