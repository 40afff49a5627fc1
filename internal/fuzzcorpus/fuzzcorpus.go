// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package fuzzcorpus checks, in tests, that every fuzz target of a package
// has a committed seed corpus of well-formed files: a seed glob that matches
// nothing would otherwise pass silently.
package fuzzcorpus

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Check finds the FuzzX functions in the *_test.go files of dir and fails t
// if one has no file under testdata/fuzz/FuzzX, or a file there is not a
// `go test fuzz v1` file with one value per fuzzed argument.
func Check(t testing.TB, dir string) {
	t.Helper()
	found := targets(t, dir)
	if len(found) == 0 {
		t.Fatal("no fuzz targets found")
	}
	names := make([]string, 0, len(found))
	for name := range found {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		arity := found[name]
		files, err := filepath.Glob(filepath.Join(dir, "testdata", "fuzz", name, "*"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Errorf("%s: no seed corpus in testdata/fuzz/%s", name, name)
			continue
		}
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			if lines[0] != "go test fuzz v1" || len(lines)-1 != arity {
				t.Errorf("%s: want a `go test fuzz v1` header and %d values, got %d lines", file, arity, len(lines))
			}
		}
	}
}

// targets returns the FuzzX functions of the package in dir and the
// number of fuzzed arguments of each.
func targets(t testing.TB, dir string) map[string]int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	targets := map[string]int{}
	for _, file := range files {
		af, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !strings.HasPrefix(fn.Name.Name, "Fuzz") || fn.Type.Params.NumFields() != 1 {
				continue
			}
			arity := -1
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok || sel.Sel.Name != "Fuzz" || len(call.Args) != 1 {
					return true
				}
				if lit, ok := call.Args[0].(*ast.FuncLit); ok {
					arity = lit.Type.Params.NumFields() - 1 // minus *testing.T
				}
				return false
			})
			if arity < 1 {
				t.Errorf("%s: no f.Fuzz(func(t *testing.T, ...)) call found", fn.Name.Name)
				continue
			}
			targets[fn.Name.Name] = arity
		}
	}
	return targets
}
