// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// versionInfo is what "d2c version" prints; its JSON field names are
// stable.
type versionInfo struct {
	Version  string `json:"version"`            // module version, "(devel)" when unknown
	Revision string `json:"revision,omitempty"` // VCS revision the binary was built from
	Time     string `json:"time,omitempty"`     // the revision's commit time, RFC 3339
	Modified bool   `json:"modified"`           // built from a work tree with changes
	Go       string `json:"go"`                 // the Go version that built it
	OS       string `json:"os"`
	Arch     string `json:"arch"`
}

// readVersion reads the build information the Go toolchain stamped into
// the binary: the module version when built with "go install
// module@version", the VCS revision when built in a repository.
func readVersion() versionInfo {
	v := versionInfo{Version: "(devel)", Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if mv := bi.Main.Version; mv != "" {
		v.Version = mv
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func versionCommand() *command {
	return &command{
		path:    "version",
		summary: "print d2c's version, the revision it was built from, and its platform",
		usage:   "[--json]",
		details: `
Prints the module version ("(devel)" when built from a work tree rather than
installed at a version), the VCS revision and its time, whether the work tree
had changes, the Go version and the platform. "d2c --version" is the same.

With --json, one object: {"version", "revision", "time", "modified", "go",
"os", "arch"}; revision and time are left out when unknown.`,
		example: `d2c version
d2c version --json`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			asJSON := fl.Bool("json", false, "print one JSON object")
			return func(ctx context.Context, s streams) error {
				v := readVersion()
				if *asJSON {
					return writeJSON(s.stdout, v)
				}
				printVersion(s.stdout, v)
				return nil
			}
		},
	}
}

func printVersion(w io.Writer, v versionInfo) {
	fmt.Fprintf(w, "d2c %s\n", v.Version)
	if v.Revision != "" {
		mod := ""
		if v.Modified {
			mod = " (modified)"
		}
		fmt.Fprintf(w, "revision: %s%s\n", v.Revision, mod)
	}
	if v.Time != "" {
		fmt.Fprintf(w, "time:     %s\n", v.Time)
	}
	fmt.Fprintf(w, "go:       %s %s/%s\n", v.Go, v.OS, v.Arch)
}

// writeJSON writes v as indented JSON and a newline: the form of every
// --json output.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
