// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package slot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// Bounds on what FWEnv reads from the tools. (Candidates for
// internal/limits.)
const (
	// fwOutputMax bounds fw_printenv's standard output for the few
	// variables asked for; U-Boot environments are at most a few hundred
	// KiB in all.
	fwOutputMax = 256 << 10
	// fwStderrMax bounds the diagnostics kept from a tool.
	fwStderrMax = 4 << 10
	// fwNameMax bounds a variable name.
	fwNameMax = 256
)

// ErrToolMissing is returned by [FWEnv] when fw_printenv or fw_setenv
// cannot be run (not installed, or not at the configured path).
var ErrToolMissing = errors.New("slot: U-Boot environment tool not found (install libubootenv-tool or u-boot-tools)")

// FWEnv is the [EnvStore] of the U-Boot environment through the
// fw_printenv and fw_setenv tools (libubootenv or U-Boot's tools/env),
// which read their configuration from /etc/fw_env.config.
type FWEnv struct {
	// Printenv is the fw_printenv program, a path or a name looked up in
	// $PATH. Default "fw_printenv".
	Printenv string
	// Setenv is the fw_setenv program. Default "fw_setenv".
	Setenv string
	// Config, if set, is passed as -c <Config> to both tools. Default "":
	// the tools' own default (/etc/fw_env.config).
	Config string
}

var _ EnvStore = FWEnv{}

func (e FWEnv) run(ctx context.Context, tool string, args ...string) (stdout []byte, err error) {
	if e.Config != "" {
		args = append([]string{"-c", e.Config}, args...)
	}
	cmd := exec.CommandContext(ctx, tool, args...)
	out := &capped{max: fwOutputMax}
	diag := &capped{max: fwStderrMax, quiet: true}
	cmd.Stdout, cmd.Stderr = out, diag
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	if err != nil && (errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission)) {
		return nil, fmt.Errorf("%w: %s: %v", ErrToolMissing, tool, err)
	}
	if out.over {
		return nil, fmt.Errorf("slot: %s printed more than %d bytes", tool, fwOutputMax)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("slot: %s: %w", tool, ctx.Err())
		}
		return out.buf.Bytes(), &toolError{tool: tool, err: err, stderr: diag.buf.String()}
	}
	return out.buf.Bytes(), nil
}

// toolError is a tool that exited with an error status.
type toolError struct {
	tool, stderr string
	err          error
}

func (e *toolError) Error() string {
	msg := strings.TrimSpace(e.stderr)
	if msg == "" {
		return fmt.Sprintf("slot: %s: %v", e.tool, e.err)
	}
	return fmt.Sprintf("slot: %s: %v: %s", e.tool, e.err, msg)
}

func (e *toolError) Unwrap() error { return e.err }

// Get implements [EnvStore] with `fw_printenv name...`. Every output line
// must be name=value for a name asked for, each at most once; a variable
// reported as not defined is absent from the result.
func (e FWEnv) Get(ctx context.Context, names ...string) (map[string]string, error) {
	for _, n := range names {
		if err := checkName(n); err != nil {
			return nil, err
		}
	}
	tool := e.Printenv
	if tool == "" {
		tool = "fw_printenv"
	}
	if len(names) == 0 {
		return map[string]string{}, nil
	}
	out, err := e.run(ctx, tool, names...)
	var terr *toolError
	if errors.As(err, &terr) {
		// Both fw_printenv implementations report a missing variable
		// with this line; U-Boot's also exits 1. Anything else fails.
		for _, line := range strings.Split(strings.TrimRight(terr.stderr, "\n"), "\n") {
			n, ok := strings.CutPrefix(line, `## Error: "`)
			n, ok2 := strings.CutSuffix(n, `" not defined`)
			if !ok || !ok2 || !slices.Contains(names, n) {
				return nil, err
			}
		}
	} else if err != nil {
		return nil, err
	}
	vars := make(map[string]string, len(names))
	if len(out) == 0 {
		return vars, nil
	}
	if out[len(out)-1] != '\n' {
		return nil, fmt.Errorf("%w: %s output does not end with a newline", ErrBadState, tool)
	}
	for i, line := range strings.Split(string(out[:len(out)-1]), "\n") {
		name, value, ok := strings.Cut(line, "=")
		if !ok || !slices.Contains(names, name) {
			return nil, fmt.Errorf("%w: %s output line %d is not name=value for a variable asked for", ErrBadState, tool, i+1)
		}
		if _, dup := vars[name]; dup {
			return nil, fmt.Errorf("%w: %s printed %s twice", ErrBadState, tool, name)
		}
		vars[name] = value
	}
	return vars, nil
}

// Set implements [EnvStore] with `fw_setenv -s script`: the tools apply
// a script's variables in one write of the environment, so the change is
// atomic. Names may not hold '=' or white space, values not a line break,
// nor start with white space (the script format would lose it).
func (e FWEnv) Set(ctx context.Context, vars map[string]string) error {
	var script bytes.Buffer
	for _, n := range slices.Sorted(maps.Keys(vars)) {
		if err := checkName(n); err != nil {
			return err
		}
		v := vars[n]
		if strings.ContainsAny(v, "\n\r\x00") || strings.TrimLeft(v, " \t") != v {
			return fmt.Errorf("slot: value of %s cannot be written with fw_setenv -s", n)
		}
		script.WriteString(n)
		if v != "" {
			script.WriteString(" " + v)
		}
		script.WriteByte('\n')
	}
	if script.Len() == 0 {
		return nil
	}
	tool := e.Setenv
	if tool == "" {
		tool = "fw_setenv"
	}
	f, err := os.CreateTemp("", "d2c-fw_setenv-*") // mode 0600
	if err != nil {
		return fmt.Errorf("slot: fw_setenv script: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(script.Bytes())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("slot: fw_setenv script: %w", err)
	}
	_, err = e.run(ctx, tool, "-s", f.Name())
	return err
}

// checkName refuses names that the tools' formats cannot carry.
func checkName(n string) error {
	if n == "" || len(n) > fwNameMax || strings.ContainsAny(n, "= \t\r\n\x00") || strings.HasPrefix(n, "-") {
		return fmt.Errorf("slot: bad environment variable name %q", n)
	}
	return nil
}

// capped is a buffer that keeps at most max bytes. Past it, it fails the
// write (stopping the tool) or, quiet, drops the rest. It has no ReadFrom,
// so that io.Copy goes through Write.
type capped struct {
	buf   bytes.Buffer
	max   int
	over  bool
	quiet bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); len(p) > room {
		c.over = true
		c.buf.Write(p[:max(room, 0)])
		if c.quiet {
			return len(p), nil
		}
		return 0, errors.New("output too long")
	}
	return c.buf.Write(p)
}
