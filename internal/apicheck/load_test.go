// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package apicheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/importer"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

const modulePath = "github.com/d2c-iot/d2c"

// listed is what `go list -json` says of one package.
type listed struct {
	Dir        string
	ImportPath string
	Name       string
	Export     string
	GoFiles    []string
	CgoFiles   []string
	Deps       []string
	Standard   bool
	Module     *struct{ Path string }
}

var (
	listOnce sync.Once
	listPkgs map[string]*listed
	listErr  error
)

// goList runs `go list -export -deps -json` over the module once per test
// binary: the export data of each package holds its complete API with types.
func goList(t *testing.T) map[string]*listed {
	t.Helper()
	listOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			listErr = err
			return
		}
		cmd := exec.Command("go", "list", "-e", "-export", "-deps", "-json", modulePath+"/...")
		cmd.Dir = root
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			listErr = errors.New("go list: " + err.Error() + ": " + stderr.String())
			return
		}
		listPkgs = make(map[string]*listed)
		dec := json.NewDecoder(bytes.NewReader(out))
		for {
			p := new(listed)
			if err := dec.Decode(p); err == io.EOF {
				break
			} else if err != nil {
				listErr = err
				return
			}
			listPkgs[p.ImportPath] = p
		}
	})
	if listErr != nil {
		t.Fatal(listErr)
	}
	return listPkgs
}

// moduleRoot is the directory of the module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not in a module")
	}
	return filepath.Dir(gomod), nil
}

// publicPackages are the module's importable packages a user may name: not
// under internal/, not commands, not examples or benchmarks.
func publicPackages(t *testing.T) []*listed {
	t.Helper()
	var ps []*listed
	for _, p := range goList(t) {
		if p.Module == nil || p.Module.Path != modulePath || p.Name == "main" || isInternal(p.ImportPath) {
			continue
		}
		rel := strings.TrimPrefix(p.ImportPath, modulePath+"/")
		if strings.HasPrefix(rel, "examples/") || strings.HasPrefix(rel, "bench/") || strings.HasPrefix(rel, "cmd/") {
			continue
		}
		ps = append(ps, p)
	}
	return ps
}

func isInternal(path string) bool {
	return strings.HasSuffix(path, "/internal") || strings.Contains(path, "/internal/") || strings.HasPrefix(path, "internal/")
}

// loadTypes reads the package's API from its export data.
func loadTypes(t *testing.T, p *listed) *types.Package {
	t.Helper()
	all := goList(t)
	lookup := func(path string) (io.ReadCloser, error) {
		q, ok := all[path]
		if !ok || q.Export == "" {
			return nil, errors.New("no export data for " + path)
		}
		return os.Open(q.Export)
	}
	pkg, err := importer.ForCompiler(token.NewFileSet(), "gc", lookup).Import(p.ImportPath)
	if err != nil {
		t.Fatalf("%s: %v", p.ImportPath, err)
	}
	return pkg
}
