// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/internal/doccheck"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

// TestDocCommands checks every "d2c ..." command that README.md and
// docs/*.md name, in their code blocks and inline code: it is one of the
// CLI's commands (or a group of them, such as "d2c update root"), and
// every flag it gives is one of that command's flags. "d2c ca
// init|revoke" names two commands; placeholders (FILE, <command>, ...)
// are left alone.
func TestDocCommands(t *testing.T) {
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	docs = append([]string{"../../README.md"}, docs...)
	if len(docs) < 5 {
		t.Fatalf("found only %v: the documents moved?", docs)
	}
	cli := newCommandTable()
	checked := 0
	for _, path := range docs {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(path, "../../")
		for _, inv := range docInvocations(string(b)) {
			checked++
			for _, problem := range cli.check(inv) {
				t.Errorf("%s:%d: %q: %s", name, inv.line, "d2c "+strings.Join(inv.args, " "), problem)
			}
		}
	}
	if checked < 50 {
		t.Errorf("only %d d2c commands found in the documents: the extraction broke?", checked)
	}
}

// TestREADMENamesEveryCommand checks that README.md's list of commands
// is complete: it names every command, or the group holding it ("d2c
// update keys" for "update keys gen").
func TestREADMENamesEveryCommand(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var named []string
	for _, inv := range docInvocations(string(readme)) {
		words, _ := commandWords(inv)
		for _, path := range alternatives(words) {
			named = append(named, strings.Join(path, " "))
		}
	}
	for _, c := range commands() {
		if !slices.ContainsFunc(named, func(n string) bool { return n == c.path || strings.HasPrefix(c.path, n+" ") }) {
			t.Errorf("README.md does not name d2c %s (nor its group)", c.path)
		}
	}
}

// TestDocCommandsRefuse checks that the checker refuses what it should:
// an unknown command, an unknown flag, an argument where d2c takes only
// flags, a flag of one command given to another.
func TestDocCommandsRefuse(t *testing.T) {
	md := "Run `d2c ca init --ca ca` and `d2c ca sign`.\n\n" +
		"```sh\n$ d2c update verify --repo r \\\n    --roots x.json\nd2c tail --db sqlite:f.db extra\n" +
		"sudo -E d2c update root init|rotate --old-key k\n```\n"
	var got []string
	cli := newCommandTable()
	for _, inv := range docInvocations(md) {
		for _, p := range cli.check(inv) {
			got = append(got, fmt.Sprintf("%d: %s", inv.line, p))
		}
	}
	want := []string{
		`1: unknown command "ca sign"`,
		`4: --roots is not a flag of "update verify"`,
		`6: unexpected argument "extra" (d2c takes only flags)`,
		`7: --old-key is not a flag of "update root init"`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems found:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// invocation is one d2c command named in a document: its arguments
// after "d2c", and the line where it starts. A strict one is a command
// to run (a line of a shell block, inline code that starts with it): any
// argument that is not a flag is a mistake. Any other (in the output of
// a command, a diagram, a comment) ends at the first word that is
// neither a command word nor a flag.
type invocation struct {
	line   int
	args   []string
	strict bool
}

// groups are the first words of the CLI's commands: after "d2c"
// outside a command line, they tell a command from prose.
func groups() []string {
	g := []string{"help"}
	for _, c := range commands() {
		if w := strings.Fields(c.path)[0]; !slices.Contains(g, w) {
			g = append(g, w)
		}
	}
	return g
}

// shellLangs are the languages of the code blocks whose lines are
// commands.
var shellLangs = []string{"sh", "bash", "shell", "console"}

// docInvocations returns the d2c commands a Markdown document names in
// its code blocks (Go, JSON and SQL aside) and its inline code.
func docInvocations(md string) []invocation {
	known := groups()
	var invs []invocation
	for _, b := range doccheck.CodeBlocks(md) {
		if slices.Contains([]string{"go", "json", "sql"}, b.Lang) {
			continue
		}
		lines := strings.Split(b.Text, "\n")
		for i := 0; i < len(lines); i++ {
			start, line := b.Line+i, lines[i]
			for strings.HasSuffix(line, "\\") && i+1 < len(lines) { // a continued command
				i++
				line = strings.TrimSuffix(line, "\\") + " " + lines[i]
			}
			invs = append(invs, lineInvocations(line, start, slices.Contains(shellLangs, b.Lang), known)...)
		}
	}
	for _, s := range doccheck.CodeSpans(md) {
		invs = append(invs, lineInvocations(s.Text, s.Line, true, known)...)
	}
	slices.SortStableFunc(invs, func(a, b invocation) int { return a.line - b.line })
	return invs
}

// d2cWord matches the d2c program as a word: d2c, a path to it
// (/usr/local/bin/d2c, ./cmd/d2c), or its path in an assignment
// (ExecStart=/usr/local/bin/d2c).
var d2cWord = regexp.MustCompile(`(^|[\s(/=|;&$` + "`" + `])d2c(\s|$)`)

// lineInvocations returns the d2c commands of one line of shell, output
// or inline code. "d2c" starts a command where a command starts (the
// start of the line, after a prompt, sudo, variable assignments, a pipe,
// a list operator or "$("); elsewhere only when a command group follows
// it ("d2c is", "d2c's" are prose). Commands are strict at a command
// position of a command line (shell is true).
func lineInvocations(line string, lineNo int, shell bool, known []string) []invocation {
	var invs []invocation
	for _, m := range d2cWord.FindAllStringIndex(line, -1) {
		before := line[:m[0]+strings.Index(line[m[0]:], "d2c")]
		rest := line[m[1]:]
		if i := strings.IndexByte(rest, '`'); i >= 0 { // the end of code in output, or of "`d2c ...`"
			rest = rest[:i]
		}
		args := shellWords(rest)
		if i := slices.IndexFunc(args, isShellOperator); i >= 0 {
			args = args[:i]
		}
		if len(args) == 0 || isPlaceholder(args[0]) {
			continue
		}
		strict := shell && commandPosition(before)
		if !strict && !slices.Contains(known, strings.Split(args[0], "|")[0]) {
			continue
		}
		invs = append(invs, invocation{line: lineNo, args: args, strict: strict})
	}
	return invs
}

// isShellOperator reports whether a word ends a command: a redirection,
// a pipe, a list operator.
func isShellOperator(w string) bool {
	return slices.Contains([]string{"&", "|", "||", "&&", ";"}, w) || redirection.MatchString(w)
}

var redirection = regexp.MustCompile(`^[0-9]*[<>]`)

// assignment matches a shell variable assignment before a command.
var assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// commandPosition reports whether a command starts after before, the
// text of a line up to a word "d2c".
func commandPosition(before string) bool {
	if strings.HasSuffix(before, "/") { // a path: its start decides
		before = before[:strings.LastIndexAny(before, " \t")+1]
	}
	words := strings.Fields(before)
	for len(words) > 0 {
		last := words[len(words)-1]
		switch {
		case slices.Contains([]string{"$", "sudo", "exec", "time", "nohup", "env", "-E"}, last),
			assignment.MatchString(last):
			words = words[:len(words)-1]
		default:
			return slices.Contains([]string{"|", "||", "&&", ";"}, last) ||
				strings.HasSuffix(last, "$(") || strings.HasSuffix(last, ";")
		}
	}
	return true
}

// isPlaceholder reports whether a word of a document stands for
// something: <command>, [flags], FILE, ..., and the like.
func isPlaceholder(w string) bool {
	return strings.HasPrefix(w, "<") || strings.HasPrefix(w, "[") || strings.HasPrefix(w, "{") ||
		strings.HasPrefix(w, "$") || w == "..." || w == "…" ||
		w == strings.ToUpper(w) && strings.ToUpper(w) != strings.ToLower(w)
}

// commandTable is the CLI's commands, for checking documents.
type commandTable struct {
	byPath map[string]*command
	cmds   []*command
}

func newCommandTable() *commandTable {
	t := &commandTable{byPath: map[string]*command{}, cmds: commands()}
	for _, c := range t.cmds {
		t.byPath[c.path] = c
	}
	return t
}

// check returns what is wrong with a d2c command a document names
// (nil if nothing): each alternative of a word such as init|rotate is
// checked.
func (t *commandTable) check(inv invocation) []string {
	words, args := commandWords(inv)
	if len(words) > 0 && words[0] == "help" { // d2c help [COMMAND | environment]
		if len(words) == 1 && len(args) == 0 || slices.Equal(words, []string{"help", "environment"}) && len(args) == 0 {
			return nil
		}
		return t.check(invocation{args: append(slices.Concat(words[1:], args), "--help"), strict: inv.strict})
	}
	var problems []string
	for _, path := range alternatives(words) {
		problems = append(problems, t.checkOne(path, args, inv.strict)...)
	}
	return problems
}

// commandWords splits the arguments of inv into the words of the command
// (before its flags) and the rest.
func commandWords(inv invocation) (words, rest []string) {
	rest = inv.args
	for i, a := range inv.args {
		if strings.HasPrefix(a, "-") {
			break
		}
		if !inv.strict {
			w := strings.TrimRight(a, ",.;)")
			if !commandWord.MatchString(w) {
				break
			}
			if w != a { // the end of a phrase: "d2c broker config, ..."
				return append(words, w), nil
			}
		}
		words, rest = append(words, a), inv.args[i+1:]
	}
	return words, rest
}

// commandWord matches a word of a command outside a command line: ca,
// init|revoke.
var commandWord = regexp.MustCompile(`^[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*$`)

// alternatives expands the words before the flags into the commands
// they name: "ca", "init|revoke" gives "ca init" and "ca revoke".
func alternatives(words []string) [][]string {
	paths := [][]string{nil}
	for _, w := range words {
		var next [][]string
		for _, p := range paths {
			for alt := range strings.SplitSeq(w, "|") {
				next = append(next, append(slices.Clone(p), alt))
			}
		}
		paths = next
	}
	return paths
}

// checkOne checks one command: its words, then the flags after them.
func (t *commandTable) checkOne(words, flags []string, strict bool) []string {
	n := len(words) // the command is words[:n], the longest that is one
	for n > 0 && t.byPath[strings.Join(words[:n], " ")] == nil {
		n--
	}
	c := t.byPath[strings.Join(words[:n], " ")]
	if c == nil {
		// A group ("update root") named alone, or with a placeholder
		// ("ca COMMAND").
		k := len(words)
		for k > 0 && isPlaceholder(words[k-1]) {
			k--
		}
		switch {
		case k > 0 && len(commandsUnder(t.cmds, words[:k])) > 0 && (len(flags) == 0 || !strict && !strings.HasPrefix(flags[0], "-")):
			return nil
		case !strict:
			return nil // prose, such as "d2c cloud store benchmark:"
		}
		return []string{fmt.Sprintf("unknown command %q", strings.Join(words, " "))}
	}
	args := flags
	if strict { // words after the command are arguments, which d2c refuses
		args = append(slices.Clone(words[n:]), flags...)
	}
	fs := flag.NewFlagSet(c.path, flag.ContinueOnError)
	c.flags(fs)
	var problems []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, ok := strings.CutPrefix(a, "-")
		if !ok || a == "-" {
			if !strict {
				break // the end of the command
			}
			if !isPlaceholder(a) {
				problems = append(problems, fmt.Sprintf("unexpected argument %q (d2c takes only flags)", a))
			}
			continue
		}
		name = strings.TrimPrefix(name, "-")
		name, _, hasValue := strings.Cut(name, "=")
		if name == "h" || name == "help" {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			problems = append(problems, fmt.Sprintf("--%s is not a flag of %q", name, c.path))
			if !hasValue && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				i++ // its value, most likely
			}
			continue
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !hasValue && !(ok && b.IsBoolFlag()) {
			i++ // its value
		}
	}
	return problems
}

// TestTailDecryptHint checks what tail says of a message it cannot
// decrypt: to give --decrypt-key only when it was not given.
func TestTailDecryptHint(t *testing.T) {
	noKey := fmt.Errorf("%w: encrypted envelope, and this verifier has no decryption key", wire.ErrDecrypt)
	wrongKey := fmt.Errorf("%w: go-jose/go-jose: error in cryptographic primitive", wire.ErrDecrypt)
	unknownSession := fmt.Errorf("%w: %w", wire.ErrDecrypt, transport.ErrUnknownSessionKey)
	for _, c := range []struct {
		err        error
		decrypting bool
		want       string
	}{
		{noKey, false, "give its private key with --decrypt-key"},
		{wrongKey, true, "it does not decrypt with --decrypt-key: encrypted to another cloud key"},
		{unknownSession, true, "under a session key tail has not received"},
	} {
		h := refusalHint(c.err, c.decrypting)
		if !strings.Contains(h, c.want) || c.decrypting && strings.Contains(h, "give") {
			t.Errorf("refusalHint(%v, decrypting %v) = %q; want %q", c.err, c.decrypting, h, c.want)
		}
	}
}
