// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package doccheck_test

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/internal/doccheck"
)

var rewrite = flag.Bool("update", false, "rewrite README.md's Go snippets from readme_test.go")

const (
	readmePath  = "../../README.md"
	snippetFile = "readme_test.go"
	// notInREADME ends the part of a snippet function that README.md shows.
	notInREADME = "// Not in README.md"
)

// TestREADMESnippets checks that every Go snippet of README.md is the
// body of its function in readme_test.go, which the compiler checks: a
// snippet that no longer compiles fails the build of this test, one
// edited in README.md alone fails here. With -update it rewrites the
// snippets of README.md from the functions instead.
func TestREADMESnippets(t *testing.T) {
	readme, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []doccheck.Block
	for _, b := range doccheck.CodeBlocks(string(readme)) {
		if b.Lang == "go" {
			blocks = append(blocks, b)
		}
	}
	bodies, err := snippetBodies(snippetFile)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range readmeSnippets {
		name := runtime.FuncForPC(reflect.ValueOf(f).Pointer()).Name()
		names = append(names, name[strings.LastIndex(name, ".")+1:])
	}
	if len(blocks) != len(names) {
		t.Fatalf("README.md has %d Go snippets, %s lists %d functions (readmeSnippets): "+
			"each README snippet is the body of a function there, in order", len(blocks), snippetFile, len(names))
	}
	lines := strings.Split(string(readme), "\n")
	changed := false
	// From the last block, so that replacing one leaves the line
	// numbers of the blocks before it.
	for i := len(blocks) - 1; i >= 0; i-- {
		b, name := blocks[i], names[i]
		want, ok := bodies[name]
		if !ok {
			t.Errorf("%s: no function %s with a %q line", snippetFile, name, notInREADME)
			continue
		}
		if b.Text == want {
			continue
		}
		if *rewrite {
			first := b.Line - 1
			lines = slices.Replace(lines, first, first+strings.Count(b.Text, "\n"),
				strings.Split(strings.TrimSuffix(want, "\n"), "\n")...)
			changed = true
			continue
		}
		t.Errorf("README.md:%d: the Go snippet differs from the body of %s in %s; edit the function "+
			"(the compiler checks it) and run go test ./internal/doccheck -run TestREADMESnippets -update\n%s",
			b.Line, name, snippetFile, lineDiff(b.Text, want))
	}
	if changed {
		if err := os.WriteFile(readmePath, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("README.md: Go snippets rewritten from " + snippetFile)
	}
}

// snippetBodies returns, by function name, what README.md shows of each
// function of the file that has a notInREADME line: its body up to that
// line, one tab of indentation less.
func snippetBodies(path string) (map[string]string, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, src, parser.ParseComments)
	if err != nil {
		return nil, err
	}
	bodies := map[string]string{}
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Body == nil {
			continue
		}
		start, end := fset.Position(fn.Body.Lbrace).Offset+1, fset.Position(fn.Body.Rbrace).Offset
		body := string(src[start:end])
		cut := strings.Index(body, "\t"+notInREADME)
		if cut < 0 {
			continue
		}
		lines := strings.Split(strings.TrimPrefix(body[:cut], "\n"), "\n")
		for i, l := range lines {
			lines[i] = strings.TrimPrefix(l, "\t")
		}
		bodies[fn.Name.Name] = strings.Join(lines, "\n")
	}
	return bodies, nil
}

// lineDiff shows the lines of got and want that differ.
func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			fmt.Fprintf(&b, "  line %d:\n    README: %q\n    Go:     %q\n", i+1, gl, wl)
		}
	}
	return b.String()
}

func TestCodeBlocks(t *testing.T) {
	md := "# T\n\n```go\nx := 1\n\ty := 2\n```\n\ntext `code` and\n\n  ~~~~\n  a\n  ```\n  b\n  ~~~~\n\n```sh\nd2c help\n"
	got := doccheck.CodeBlocks(md)
	want := []doccheck.Block{
		{Lang: "go", Line: 4, Text: "x := 1\n\ty := 2\n"},
		{Lang: "", Line: 11, Text: "a\n```\nb\n"},
		{Lang: "sh", Line: 17, Text: "d2c help\n\n"}, // left open: to the end
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("CodeBlocks:\n got %+v\nwant %+v", got, want)
	}
}

func TestCodeSpans(t *testing.T) {
	md := "one `a` two ``b ` c``\nthree `d2c ca\ninit` `` `x` ``\n\n```\n`not a span`\n```\nfour ` unclosed\n\n`e`"
	got := doccheck.CodeSpans(md)
	want := []doccheck.Span{
		{Line: 1, Text: "a"}, {Line: 1, Text: "b ` c"}, {Line: 2, Text: "d2c ca init"},
		{Line: 3, Text: "`x`"}, {Line: 10, Text: "e"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("CodeSpans:\n got %+v\nwant %+v", got, want)
	}
}
