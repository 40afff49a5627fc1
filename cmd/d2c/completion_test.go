// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/internal/testpeer"
)

// TestCompletion checks the three scripts: each names every command and
// flag of the table; bash, zsh and fish (peers: a missing one fails) accept their
// syntax; and the bash script completes as it should when run.
func TestCompletion(t *testing.T) {
	scripts := map[string]string{}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		var stdout, stderr bytes.Buffer
		if code := run(t.Context(), []string{"completion", sh}, &stdout, &stderr); code != exitOK || stderr.Len() > 0 {
			t.Fatalf("d2c completion %s: exit %d\n%s", sh, code, &stderr)
		}
		scripts[sh] = stdout.String()
		for _, c := range commands() {
			w := strings.Fields(c.path)
			if !strings.Contains(stdout.String(), w[len(w)-1]) {
				t.Errorf("%s script lacks %q", sh, c.path)
			}
			for _, f := range newCompletionTable(commands()).flags[c.path] {
				if !strings.Contains(stdout.String(), f.name) {
					t.Errorf("%s script lacks %s's --%s", sh, c.path, f.name)
				}
			}
		}
		path := filepath.Join(t.TempDir(), "d2c."+sh)
		if err := os.WriteFile(path, stdout.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		bin := testpeer.Require(t, sh) // CI and scripts/test.sh install zsh and fish
		if out, err := exec.Command(bin, "-n", path).CombinedOutput(); err != nil {
			t.Errorf("%s -n rejects the script: %v\n%s", sh, err, out)
		}
	}

	// Run the bash function on a few command lines.
	path := filepath.Join(t.TempDir(), "d2c.bash")
	if err := os.WriteFile(path, []byte(scripts["bash"]), 0o644); err != nil {
		t.Fatal(err)
	}
	for line, want := range map[string]string{
		"d2c ":                       "ca token registrar cloud broker dev tail fleet device update rollout audit version completion help",
		"d2c ca s":                   "server-cert service-cert",
		"d2c update r":               "root release",
		"d2c update root ":           "init rotate",
		"d2c ca init --c":            "--ca",
		"d2c broker config --s":      "--service",
		"d2c device update --c":      "--ca-roots --confirm",
		"d2c ca init --ca ":          "", // a flag's value: file names, by bash's default
		"d2c completion ":            "bash zsh fish",
		"d2c nonsense ":              "",
		"d2c tail --broker x --devi": "--device --devices",
		"d2c dev broker --dev-any-a": "--dev-any-address",
	} {
		words := strings.Fields(line)
		if strings.HasSuffix(line, " ") {
			words = append(words, "")
		}
		var quoted []string
		for _, w := range words {
			quoted = append(quoted, shQuote(w))
		}
		script := "source " + shQuote(path) + "\nCOMP_WORDS=(" + strings.Join(quoted, " ") + ")\n" +
			"COMP_CWORD=" + strconv.Itoa(len(words)-1) + "\n_d2c\necho \"${COMPREPLY[*]}\"\n"
		out, err := exec.Command("bash", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("completing %q: %q, want %q", line, got, want)
		}
	}

	// zsh, with _describe and _files stubbed: the words offered.
	{
		path := filepath.Join(t.TempDir(), "_d2c")
		if err := os.WriteFile(path, []byte(scripts["zsh"]), 0o644); err != nil {
			t.Fatal(err)
		}
		script := `compdef() { :; }; source ` + shQuote(path) + `
_describe() { print -r -- "${(P)${@[-1]}}"; }
_files() { print files; }
words=(d2c ca s); CURRENT=3; _d2c
words=(d2c device update --st); CURRENT=4; _d2c
words=(d2c ca init --ca x); CURRENT=5; _d2c`
		out, err := exec.Command("zsh", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("zsh: %v\n%s", err, out)
		}
		for _, want := range []string{" server-cert:issue a TLS server certificate", " service-cert:issue a client certificate",
			"--status:print the agent's state", "--state:update agent state directory", "\nfiles\n"} {
			if !strings.Contains("\n"+string(out), want) {
				t.Errorf("zsh completion lacks %q:\n%s", want, out)
			}
		}
	}
	// fish: complete -C runs the completions of a command line.
	{
		path := filepath.Join(t.TempDir(), "d2c.fish")
		if err := os.WriteFile(path, []byte(scripts["fish"]), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("fish", "-c", "source "+shQuote(path)+`; complete -C "d2c ca s"; complete -C "d2c tail --dev"`).CombinedOutput()
		if err != nil {
			t.Fatalf("fish: %v\n%s", err, out)
		}
		for _, want := range []string{"server-cert\tissue a TLS server certificate", "service-cert\t", "--device\tprint only this device",
			"--devices\tdirectory of device certificates"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("fish completion lacks %q:\n%s", want, out)
			}
		}
	}
}
