// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package apicheck

import (
	"bytes"
	"flag"
	"fmt"
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the exported-identifier table in docs/architecture.md")

const (
	countBegin = "<!-- apicount:begin (go test ./internal/apicheck -run TestAPICounts -update) -->"
	countEnd   = "<!-- apicount:end -->"
)

// apiCount is what go/doc shows of one package.
type apiCount struct {
	path                                string
	consts, vars, funcs, types, methods int
	fields                              int
}

// total counts the package-level names and the methods: the identifiers a
// user can call or name. Struct fields are shown apart.
func (c apiCount) total() int { return c.consts + c.vars + c.funcs + c.types + c.methods }

// countAPI counts the exported identifiers of a package from its sources,
// the files `go list` builds on this platform, as go/doc presents them.
func countAPI(t *testing.T, p *listed) apiCount {
	t.Helper()
	fset := token.NewFileSet()
	var files []*ast.File
	for _, name := range append(append([]string(nil), p.GoFiles...), p.CgoFiles...) {
		f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	d, err := doc.NewFromFiles(fset, files, p.ImportPath)
	if err != nil {
		t.Fatal(err)
	}
	c := apiCount{path: strings.TrimPrefix(p.ImportPath, modulePath+"/")}
	values := func(vs []*doc.Value) (n int) {
		for _, v := range vs {
			n += len(v.Names)
		}
		return n
	}
	c.consts, c.vars, c.funcs = values(d.Consts), values(d.Vars), len(d.Funcs)
	for _, ty := range d.Types {
		c.types++
		c.consts += values(ty.Consts)
		c.vars += values(ty.Vars)
		c.funcs += len(ty.Funcs)
		c.methods += len(ty.Methods)
		for _, spec := range ty.Decl.Specs {
			ts, ok := spec.(*ast.TypeSpec)
			if !ok || ts.Name.Name != ty.Name {
				continue
			}
			switch u := ts.Type.(type) {
			case *ast.StructType:
				c.fields += exportedFields(u.Fields)
			case *ast.InterfaceType:
				c.methods += exportedFields(u.Methods)
			}
		}
	}
	return c
}

// exportedFields counts the exported names of a field list (go/doc has
// already removed the unexported ones); an embedded field counts by its
// type's name.
func exportedFields(fl *ast.FieldList) (n int) {
	for _, f := range fl.List {
		if len(f.Names) == 0 {
			n++
			continue
		}
		for _, name := range f.Names {
			if name.IsExported() {
				n++
			}
		}
	}
	return n
}

func countTable(cs []apiCount) string {
	var b bytes.Buffer
	b.WriteString("| package | consts | vars | funcs | types | methods | identifiers | struct fields |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|\n")
	var sum apiCount
	for _, c := range cs {
		fmt.Fprintf(&b, "| `%s` | %d | %d | %d | %d | %d | %d | %d |\n",
			c.path, c.consts, c.vars, c.funcs, c.types, c.methods, c.total(), c.fields)
		sum.consts += c.consts
		sum.vars += c.vars
		sum.funcs += c.funcs
		sum.types += c.types
		sum.methods += c.methods
		sum.fields += c.fields
	}
	fmt.Fprintf(&b, "| all | %d | %d | %d | %d | %d | %d | %d |\n",
		sum.consts, sum.vars, sum.funcs, sum.types, sum.methods, sum.total(), sum.fields)
	return b.String()
}

// TestAPICounts fails if the table of exported identifiers in
// docs/architecture.md is not the one the sources give; -update rewrites it.
func TestAPICounts(t *testing.T) {
	var cs []apiCount
	for _, p := range publicPackages(t) {
		cs = append(cs, countAPI(t, p))
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].path < cs[j].path })
	table := countTable(cs)

	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(root, "docs", "architecture.md")
	doc, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	before, rest, ok1 := strings.Cut(string(doc), countBegin+"\n")
	_, after, ok2 := strings.Cut(rest, countEnd)
	if !ok1 || !ok2 {
		t.Fatalf("%s: no %q … %q markers", name, countBegin, countEnd)
	}
	want := before + countBegin + "\n" + table + countEnd + after
	if want == string(doc) {
		return
	}
	if *update {
		if err := os.WriteFile(name, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote the table in %s", name)
		return
	}
	t.Errorf("the exported-identifier table in docs/architecture.md is out of date; run\n\tgo test ./internal/apicheck -run TestAPICounts -update\nit should read:\n%s", table)
}
