// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package doccheck reads the code of Markdown documents, for the tests
// that keep the documentation true: [CodeBlocks] returns the fenced code
// blocks of a document and [CodeSpans] its inline code, each with the
// line where it starts, so that a test can name the line it refuses.
//
// Its own tests keep every Go snippet of README.md identical to a
// function that the Go compiler checks (readme_test.go); the d2c CLI's
// tests check every "d2c ..." command the documents name against the
// CLI's commands and flags (cmd/d2c/docs_test.go).
//
// It reads the Markdown that this repository writes, not all of
// CommonMark: fences of three or more backquotes or tildes, indented or
// not; inline code between runs of backquotes of equal length, within a
// paragraph.
package doccheck

import "strings"

// A Block is a fenced code block.
type Block struct {
	// Lang is the first word of the info string: "go", "sh", or "".
	Lang string
	// Line is the line number of the block's first line of code (the
	// line after the opening fence), from 1.
	Line int
	// Text is the block's code, each line ending in a newline, without
	// the indentation of the fence.
	Text string
}

// A Span is a piece of inline code.
type Span struct {
	// Line is the line number where the span starts, from 1.
	Line int
	// Text is the span's code, a line break read as a space.
	Text string
}

// CodeBlocks returns the fenced code blocks of a Markdown document, in
// order. A block left open runs to the end of the document.
func CodeBlocks(md string) []Block {
	var blocks []Block
	lines := strings.Split(md, "\n")
	for i := 0; i < len(lines); i++ {
		indent, fence, info, ok := openingFence(lines[i])
		if !ok {
			continue
		}
		b := Block{Lang: firstWord(info), Line: i + 2}
		var text strings.Builder
		for i++; i < len(lines) && !isClosingFence(lines[i], fence); i++ {
			text.WriteString(strings.TrimPrefix(lines[i], indent))
			text.WriteByte('\n')
		}
		b.Text = text.String()
		blocks = append(blocks, b)
	}
	return blocks
}

// CodeSpans returns the inline code of a Markdown document, outside its
// fenced code blocks, in order.
func CodeSpans(md string) []Span {
	var spans []Span
	lines := strings.Split(md, "\n")
	var para []string // the lines of the current paragraph
	start := 0        // the line number of para[0]
	flush := func() {
		spans = append(spans, paragraphSpans(para, start)...)
		para = para[:0]
	}
	for i := 0; i < len(lines); i++ {
		if _, fence, _, ok := openingFence(lines[i]); ok {
			flush()
			for i++; i < len(lines) && !isClosingFence(lines[i], fence); i++ {
			}
			continue
		}
		if strings.TrimSpace(lines[i]) == "" {
			flush()
			continue
		}
		if len(para) == 0 {
			start = i + 1
		}
		para = append(para, lines[i])
	}
	flush()
	return spans
}

// paragraphSpans returns the code spans of one paragraph whose first
// line is line number start.
func paragraphSpans(lines []string, start int) []Span {
	text := strings.Join(lines, "\n")
	var spans []Span
	for i := 0; i < len(text); {
		if text[i] != '`' {
			i++
			continue
		}
		n := runLength(text, i)
		open := i + n
		end := -1 // the closing run: as long as the opening one
		for j := open; j < len(text); {
			if text[j] != '`' {
				j++
				continue
			}
			m := runLength(text, j)
			if m == n {
				end = j
				break
			}
			j += m
		}
		if end < 0 { // a literal run of backquotes
			i = open
			continue
		}
		code := strings.ReplaceAll(text[open:end], "\n", " ")
		if len(code) > 2 && code[0] == ' ' && code[len(code)-1] == ' ' && strings.Trim(code, " ") != "" {
			code = code[1 : len(code)-1] // `` `x` `` shows `x`
		}
		spans = append(spans, Span{Line: start + strings.Count(text[:i], "\n"), Text: code})
		i = end + n
	}
	return spans
}

// runLength returns the length of the run of backquotes at s[i].
func runLength(s string, i int) int {
	n := 0
	for i+n < len(s) && s[i+n] == '`' {
		n++
	}
	return n
}

// openingFence reports whether line opens a fenced code block, and
// returns its indentation, its fence and its info string.
func openingFence(line string) (indent, fence, info string, ok bool) {
	rest := strings.TrimLeft(line, " ")
	indent = line[:len(line)-len(rest)]
	for _, c := range []string{"`", "~"} {
		n := len(rest) - len(strings.TrimLeft(rest, c))
		if n >= 3 {
			info = strings.TrimSpace(rest[n:])
			if c == "`" && strings.Contains(info, "`") {
				return "", "", "", false // inline code, not a fence
			}
			return indent, rest[:n], info, true
		}
	}
	return "", "", "", false
}

// isClosingFence reports whether line closes a block opened by fence: a
// run of the same character at least as long, alone on its line.
func isClosingFence(line, fence string) bool {
	rest := strings.TrimSpace(line)
	return len(rest) >= len(fence) && strings.Trim(rest, fence[:1]) == ""
}

func firstWord(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return ""
}
