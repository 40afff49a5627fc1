// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package narrate prints the numbered, indented story the example programs
// tell as they run.
package narrate

import (
	"fmt"
	"io"
)

// Narrator prints numbered steps (Step) and their details (Say).
type Narrator struct {
	w    io.Writer
	step int
}

// New returns a Narrator writing to w.
func New(w io.Writer) *Narrator { return &Narrator{w: w} }

// Step prints the next numbered step.
func (n *Narrator) Step(format string, a ...any) {
	n.step++
	fmt.Fprintf(n.w, "\n[%d] %s\n", n.step, fmt.Sprintf(format, a...))
}

// Say prints a detail of the current step, indented.
func (n *Narrator) Say(format string, a ...any) { fmt.Fprintf(n.w, "    "+format+"\n", a...) }
