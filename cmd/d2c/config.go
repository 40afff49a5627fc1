// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// Every flag of every command can also be given by an environment variable
// or a line of the configuration file, in this order of precedence:
//
//	the command line > D2C_<COMMAND>_<FLAG> > the configuration file > the default
//
// The variable and the key are qualified by the whole command path: the
// same flag takes different values in different commands (--key is the
// broker's key for "broker config" and a release key for "update release
// sign"), so an unqualified D2C_KEY would leak from one into the other.

// configMaxSize bounds the configuration file.
const configMaxSize = 64 << 10

// noDefaultFlags are flags that carry secrets: never read from the
// environment (visible to every process of the user, and in /proc) or from
// the configuration file. Key flags take key references (files, PKCS#11
// URIs without PINs), which are safe to give there.
var noDefaultFlags = map[string]string{
	"token": "--token-file",
}

// envName is the environment variable of a command's flag:
// D2C_DEVICE_UPDATE_REPO_URL for "device update" --repo-url.
func envName(path, flagName string) string {
	r := strings.NewReplacer(" ", "_", "-", "_")
	return "D2C_" + strings.ToUpper(r.Replace(path+" "+flagName))
}

// configKey is the configuration file key of a command's flag:
// device.update.repo-url for "device update" --repo-url.
func configKey(path, flagName string) string {
	return strings.ReplaceAll(path, " ", ".") + "." + flagName
}

// configPath is the configuration file: $D2C_CLI_CONFIG (which must exist), or
// d2c/config in the user's configuration directory (if it exists). Not
// D2C_CONFIG: that is the device program's (examples/device), set where
// d2c may run too, and its keys are not d2c's.
func configPath(lookup func(string) (string, bool)) (path string, required bool) {
	if p, ok := lookup("D2C_CLI_CONFIG"); ok && p != "" {
		return p, true
	}
	dir, ok := lookup("XDG_CONFIG_HOME")
	if !ok || dir == "" {
		home, ok := lookup("HOME")
		if !ok || home == "" {
			return "", false
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "d2c", "config"), false
}

// configLine is one "key = value" line of the configuration file.
type configLine struct {
	pos        string // file:line
	key, value string
}

// readConfig reads the configuration file at path: "key = value" lines,
// blank lines and lines starting with '#' ignored. Every key must name a
// flag of a command, so that a typo is an error instead of a setting that
// silently does nothing.
func readConfig(path string, r io.Reader, cmds []*command) ([]configLine, error) {
	known := map[string]*flag.Flag{} // a fresh flag of each key, to check values on
	for _, c := range cmds {
		fs := flag.NewFlagSet(c.path, flag.ContinueOnError)
		c.flags(fs)
		fs.VisitAll(func(f *flag.Flag) { known[configKey(c.path, f.Name)] = f })
	}
	var lines []configLine
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		pos := fmt.Sprintf("%s:%d", path, n)
		key, value, ok := strings.Cut(line, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if !ok || key == "" {
			return nil, usageErrorf("%s: want \"command.flag = value\", as in \"device.show.store = /var/lib/d2c\"", pos)
		}
		f := known[key]
		if f == nil {
			msg := fmt.Sprintf("%s: unknown key %q: no command has this flag", pos, key)
			if renamed := renamedConfigKey(key); renamed != "" {
				msg += fmt.Sprintf(" (renamed %s)", renamed)
			} else if sug := nearest(key, mapKeys(known)); sug != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", sug)
			}
			return nil, usageErrorf("%s", msg)
		}
		if instead, secret := noDefaultFlags[f.Name]; secret {
			return nil, usageErrorf("%s: %s: --%s is a secret, never read from the configuration file: use %s", pos, key, f.Name, instead)
		}
		if err := f.Value.Set(value); err != nil {
			return nil, usageErrorf("%s: invalid value %q for %s: %v", pos, value, key, err)
		}
		lines = append(lines, configLine{pos: pos, key: key, value: value})
	}
	return lines, sc.Err()
}

// renamedConfigKey returns the new key of a flag renamed (renamedFlags),
// or "".
func renamedConfigKey(key string) string {
	i := strings.LastIndex(key, ".")
	if i < 0 {
		return ""
	}
	path := strings.ReplaceAll(key[:i], ".", " ")
	if n, ok := renamedFlags[path][key[i+1:]]; ok {
		return configKey(path, n)
	}
	return ""
}

func mapKeys[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// applyDefaults sets the flags of c that the command line left out from
// the environment, then from the configuration file. It sets them through
// their flag.Value, not fl.Set, so that fl.Visit still lists only the
// flags given on the command line (commands use it to tell modes apart).
func applyDefaults(c *command, fl *flag.FlagSet, lookup func(string) (string, bool)) error {
	given := map[string]bool{}
	fl.Visit(func(f *flag.Flag) { given[f.Name] = true })

	var cfg []configLine
	if path, required := configPath(lookup); path != "" {
		b, err := atomicfile.ReadFile(path, configMaxSize)
		switch {
		case errors.Is(err, fs.ErrNotExist) && !required:
		case err != nil:
			return withHint(fmt.Errorf("configuration file: %w", err), "check $D2C_CLI_CONFIG, or remove it; `d2c help environment` describes the file")
		default:
			// The file names the roots and keys commands trust: refuse one
			// that others could have changed, as ssh does.
			if st, serr := os.Stat(path); serr == nil && st.Mode().Perm()&0o022 != 0 {
				return withHint(fmt.Errorf("configuration file %s is writable by other users (mode %v)", path, st.Mode().Perm()),
					"chmod go-w "+path+"; if someone else could have changed it, check every path it names")
			}
			if cfg, err = readConfig(path, strings.NewReader(string(b)), commands()); err != nil {
				return err
			}
		}
	}

	var err error
	fl.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		env := envName(c.path, f.Name)
		v, _ := lookup(env)
		inEnv := v != "" // empty is unset, as for the device program
		key := configKey(c.path, f.Name)
		inCfg := slices.ContainsFunc(cfg, func(l configLine) bool { return l.key == key })
		if instead, secret := noDefaultFlags[f.Name]; secret && (inEnv || inCfg) {
			err = usageErrorf("--%s is a secret, never read from the environment (%s) or the configuration file (%s): use %s",
				f.Name, env, key, instead)
			return
		}
		if inEnv {
			if e := f.Value.Set(v); e != nil {
				err = usageErrorf("invalid value %q for --%s in the environment (%s): %v", v, f.Name, env, e)
			}
			return
		}
		for _, l := range cfg {
			if l.key != key {
				continue
			}
			if e := f.Value.Set(l.value); e != nil {
				err = usageErrorf("%s: invalid value %q for %s: %v", l.pos, l.value, key, e)
				return
			}
		}
	})
	return err
}

// printEnvironmentHelp is "d2c help environment".
func printEnvironmentHelp(w io.Writer) {
	fmt.Fprint(w, `Flags from the environment and the configuration file

Every flag of a command can also be given by an environment variable or a
line of the configuration file. The first of these wins:

  1. the flag on the command line
  2. the environment variable D2C_<COMMAND>_<FLAG>: the command path and the
     flag name in capitals, with '_' for spaces and '-', for example
     D2C_DEVICE_SHOW_STORE=/var/lib/d2c or D2C_DEVICE_UPDATE_REPO_URL=...
  3. the configuration file: lines "<command>.<flag> = <value>", the command
     path with '.' for spaces, for example
         # defaults for this operator
         device.show.store = /var/lib/d2c
         update.verify.root = /etc/d2c/root.json
     '#' starts a comment line; a repeatable flag takes one line per value
  4. the flag's default, as "d2c <command> --help" shows it

An empty variable counts as unset. Relative paths, from either, are
relative to the working directory, as on the command line.

The names always include the command: a flag takes different values in
different commands (--key is the broker's key in "broker config" and a
release key in "update release sign").

The configuration file is $D2C_CLI_CONFIG if set (it must exist), otherwise
$XDG_CONFIG_HOME/d2c/config, or ~/.config/d2c/config, if it exists. A key
that names no flag of any command, or a value the flag refuses, is an error
naming file:line, for every command: a typo never goes unnoticed. A file
that other users can write is refused (chmod go-w): it names the roots and
keys that commands trust.

Secrets are never read from either: --token (use --token-file). Key flags
take key references, files or PKCS#11 URIs with a pin-source, never the key
or the PIN itself. A postgres:// URL in --db is read from both: leave its
password out and to ~/.pgpass (or $PGPASSFILE).

Other variables:
  D2C_CLI_CONFIG   the configuration file (D2C_CONFIG is the device
                   program's, examples/device, which reads D2C_<FLAG>)
  D2C_CLOUD_DB, D2C_CLOUD_OPS
                   override "db" and "ops" of d2c cloud serve's --config
`)
}
