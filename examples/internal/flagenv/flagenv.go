// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package flagenv gives the example programs one way to be configured:
// flags, then environment variables, then a file.
package flagenv

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxConfigFile bounds a configuration file.
const maxConfigFile = 64 << 10

// Load parses args into fs, then gives every flag the command line
// left unset its value from the environment, else from the configuration
// file: flags override the environment, which overrides the file.
//
// The environment variable of flag "some-name" is prefix + "SOME_NAME"; an
// empty variable counts as unset. The file is named by the flag "config" or
// the variable prefix + "CONFIG"; each line is "name = value" with the flag's
// name, the value being the rest of the line with surrounding spaces
// removed; blank lines and lines starting with '#' are ignored. A name for
// which known reports false, or given twice, is an error, so that a typo
// cannot silently leave a setting at its default; known names that are not
// flags of fs (settings of other subcommands) are skipped.
func Load(fs *flag.FlagSet, args []string, prefix string, lookupEnv func(string) (string, bool), known func(string) bool) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	env := func(name string) (string, bool) {
		v, ok := lookupEnv(prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_")))
		return v, ok && v != ""
	}
	var path string
	if f := fs.Lookup("config"); f != nil {
		path = f.Value.String()
		if v, ok := env("config"); ok && !onCommandLine["config"] {
			path = v
		}
	}
	file := map[string]string{}
	if path != "" {
		var err error
		if file, err = readFile(path, known); err != nil {
			return err
		}
	}
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if onCommandLine[f.Name] || f.Name == "config" {
			return
		}
		if v, ok := env(f.Name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s%s: %v", prefix, strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_")), err))
			}
		} else if v, ok := file[f.Name]; ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %v", path, f.Name, err))
			}
		}
	})
	return errors.Join(errs...)
}

// readFile reads a "name = value" file of known names.
func readFile(path string, known func(string) bool) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxConfigFile {
		return nil, fmt.Errorf("%s: over %d bytes", path, maxConfigFile)
	}
	settings := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		_, dup := settings[name]
		switch {
		case !ok:
			return nil, fmt.Errorf("%s:%d: want name = value", path, n)
		case name == "config" || !known(name):
			return nil, fmt.Errorf("%s:%d: unknown setting %q", path, n, name)
		case dup:
			return nil, fmt.Errorf("%s:%d: %s given twice", path, n, name)
		}
		settings[name] = value
	}
	return settings, sc.Err()
}
