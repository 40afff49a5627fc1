// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"flag"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// commandFlags returns every command's flags, by command path.
func commandFlags() map[string][]*flag.Flag {
	flags := map[string][]*flag.Flag{}
	for _, c := range commands() {
		fs := flag.NewFlagSet(c.path, flag.ContinueOnError)
		c.flags(fs)
		fs.VisitAll(func(f *flag.Flag) { flags[c.path] = append(flags[c.path], f) })
	}
	return flags
}

// TestOneFlagNamePerConcept walks every command's flags: a concept has one
// flag name in every command (issue 14, item 3), and a flag name that
// several commands define means the same thing in each.
func TestOneFlagNamePerConcept(t *testing.T) {
	// A concept, by a phrase of its flags' usage, and its one name.
	concepts := []struct{ phrase, name string }{
		{"fleet CA directory", "ca"},
		{"device store directory", "store"},
		{"key algorithm", "key-type"},
		{"fleet CA certificates to trust", "roots"},
		{"artifact name", "artifact"},
		{"service name", "service"},
		{"fleet's cloud store", "db"},
		{"repository directory", "repo"},
		{"hardware class", "hardware-class"},
		{"security counter of the release installed", "installed-security-counter"},
		{"release version installed", "installed-version"},
		{"registrar URL", "url"},
		{"DNS name or IP address", "host"},
		{"audit log directory", "log"},
	}
	// What a flag name defined by several commands means in each: its
	// usage there matches the pattern.
	shared := map[string]string{
		"artifact":            `^artifact name\b`,
		"ca":                  `^fleet CA directory\b`,
		"cert":                `certificate`, // read or written, as --key
		"cert-out":            `write .*certificate chain to this file`,
		"crl":                 `^fleet CRL, PEM\b`,
		"db":                  `^the fleet's cloud store, sqlite:PATH or postgres://`,
		"dev-any-address":     `^allow a non-loopback --listen address\b`,
		"device":              `\bdevice\b`, // a device ID
		"expires":             `^how long the .* valid$`,
		"group":               `\bdevice group\b`,
		"reason":              `\breason\b`,
		"hardware-class":      `\bhardware class\b`,
		"host":                `^DNS name or IP address\b`,
		"image":               `\bimage file\b`,
		"issuing-key":         `\bissuing CA key\b`,
		"json":                `\bprint one JSON object\b`,
		"key":                 `\bprivate\b.*\bkey\b`, // read or written
		"key-type":            `\bkey algorithm: p256\b.* or ed25519\b`,
		"listen":              `\baddress\b.*\blistens? on, host:port\b`,
		"log":                 `^audit log directory\b`,
		"out":                 `^(file|directory) to write\b`,
		"progress":            `^show a .*progress bar on stderr\b`,
		"repo":                `^repository directory\b`,
		"root":                `\broot pinned in the device\b`,
		"roots":               `^PEM file of fleet CA certificates to trust\b`,
		"service":             `^(cloud )?service name\b`,
		"state":               `\bstate\b.*\bdirectory|\bdirectory\b.*\bstate\b`,
		"store":               `^device store directory\b`,
		"url":                 `^registrar URL\b`,
		"url-file":            `^file to write the .*URL to once\b.*\blisten`,
		"release-pub":         `^public key\b`,
		"root-pub":            `^public key\b`,
		"timestamp-pub":       `^public key\b`,
		"release-threshold":   `^release keys needed\b`,
		"root-threshold":      `^root keys needed\b`,
		"timestamp-threshold": `^timestamp keys needed\b`,
	}
	flags := commandFlags()
	uses := map[string][]string{} // flag name: the commands that define it
	for path, fs := range flags {
		for _, f := range fs {
			uses[f.Name] = append(uses[f.Name], path)
			for _, c := range concepts {
				if strings.Contains(strings.ToLower(f.Usage), strings.ToLower(c.phrase)) && f.Name != c.name {
					t.Errorf("d2c %s --%s (%q) is about %q: name it --%s, as every command does", path, f.Name, f.Usage, c.phrase, c.name)
				}
			}
		}
	}
	for name, paths := range uses {
		if len(paths) < 2 {
			continue
		}
		slices.Sort(paths)
		pattern, ok := shared[name]
		if !ok {
			t.Errorf("--%s is a flag of %s: add to shared what it means in each (one name, one meaning)", name, strings.Join(paths, ", "))
			continue
		}
		re := regexp.MustCompile(pattern)
		for _, path := range paths {
			i := slices.IndexFunc(flags[path], func(f *flag.Flag) bool { return f.Name == name })
			if u := flags[path][i].Usage; !re.MatchString(u) {
				t.Errorf("d2c %s --%s means something else than in the other commands: %q does not match %q", path, name, u, pattern)
			}
		}
	}
	for name := range shared {
		if len(uses[name]) < 2 {
			t.Errorf("shared lists --%s, which %d command(s) define: drop it", name, len(uses[name]))
		}
	}
}

// TestRenamedFlags checks the table of renamed flags against the commands,
// and that an old name is refused with the new one named, not taken.
func TestRenamedFlags(t *testing.T) {
	flags := commandFlags()
	has := func(path, name string) bool {
		return slices.ContainsFunc(flags[path], func(f *flag.Flag) bool { return f.Name == name })
	}
	for path, renamed := range renamedFlags {
		if _, ok := flags[path]; !ok {
			t.Errorf("renamedFlags: no command %q", path)
			continue
		}
		for old, name := range renamed {
			if has(path, old) || !has(path, name) {
				t.Errorf("renamedFlags: d2c %s --%s is renamed --%s, but the command has --%s: %v, --%s: %v",
					path, old, name, old, has(path, old), name, has(path, name))
			}
			var stdout, stderr bytes.Buffer
			args := append(strings.Fields(path), "--"+old, "x")
			if code := run(t.Context(), args, &stdout, &stderr); code != exitUsage {
				t.Errorf("d2c %s: exit %d, want %d", strings.Join(args, " "), code, exitUsage)
			}
			first, _, _ := strings.Cut(stderr.String(), "\n")
			if want := "d2c: " + path + ": unknown flag --" + old + " (renamed --" + name + ")"; first != want {
				t.Errorf("d2c %s:\n%s\nwant first line %q", strings.Join(args, " "), stderr.String(), want)
			}
			if strings.Contains(stderr.String(), "did you mean") {
				t.Errorf("d2c %s: a guess besides the new name:\n%s", strings.Join(args, " "), stderr.String())
			}
		}
	}
	// The same in the configuration file.
	if got := renamedConfigKey("device.show.dir"); got != "device.show.store" {
		t.Errorf("renamedConfigKey(device.show.dir) = %q", got)
	}
	if got := renamedConfigKey("device.show.json"); got != "" {
		t.Errorf("renamedConfigKey(device.show.json) = %q", got)
	}
}
