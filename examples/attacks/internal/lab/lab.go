// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package lab is the shared bench of the attack programs in examples/attacks:
// a whole d2c fleet on 127.0.0.1 in a temporary directory, built only from
// d2c's public API, the attacker's tools, and a narrator.
//
// The fleet ([NewFleet]) has a fleet CA, an EST registrar with one-time
// tokens, an embedded MQTT v5 broker with mutual TLS and the d2c ACL
// (transport/devbroker), a cloud verifier ([Fleet.StartCloud]), a command
// sender, and devices that enroll and connect ([Fleet.Enroll],
// [Fleet.Connect]); a second registrar can record into the fleet's
// registry ([Fleet.StartRegistryRegistrar]). The update bench ([NewRepo],
// [NewUpdateDevice]) has a signed release repository and a device with A/B
// slots and an update agent.
//
// The attacker's tools are a raw MQTT client ([DialMQTT]), an insider with
// broker-level rights ([Fleet.Insider]: it reads and writes every d2c topic,
// which is what a compromised broker can do), a certificate from a CA of the
// attacker's own ([SelfMadeCertificate]), a copy of a device's identity
// store with its keys ([Fleet.CopyStore]), and helpers that look inside
// JOSE envelopes ([Peek], [EditPayload]).
//
// The [Narrator] prints what happens as "attacker:", "d2c:" and "why:"
// lines, so that a run reads as a short story.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ErrAttackSucceeded marks a run in which the attack got through: the
// program then exits with status 1.
var ErrAttackSucceeded = errors.New("ATTACK SUCCEEDED")

// Succeeded returns an error wrapping [ErrAttackSucceeded].
func Succeeded(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrAttackSucceeded, fmt.Sprintf(format, a...))
}

// Main runs an attack program: exit status 0 when the attack was stopped,
// 1 when it got through, 2 when the lab itself failed.
func Main(run func(ctx context.Context, out io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Stdout)
	stop()
	if err == nil {
		return
	}
	name := filepath.Base(os.Args[0])
	if errors.Is(err, ErrAttackSucceeded) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "%s: lab failure: %v\n", name, err)
	os.Exit(2)
}

// Timeout bounds every wait of the lab (a message to arrive, a client to
// connect): long enough for a loaded machine, short enough to fail fast.
const Timeout = 10 * time.Second

// Narrator prints a run as labelled lines.
type Narrator struct {
	w     io.Writer
	start time.Time
}

// NewNarrator returns a narrator writing to w.
func NewNarrator(w io.Writer) *Narrator { return &Narrator{w: w, start: time.Now()} }

// Title prints the program's name and what it tries.
func (n *Narrator) Title(name, attack string) {
	fmt.Fprintf(n.w, "%s: %s\n", name, attack)
}

// Section starts a part of the run.
func (n *Narrator) Section(format string, a ...any) {
	fmt.Fprintf(n.w, "\n-- %s\n", fmt.Sprintf(format, a...))
}

// Lab says what the bench set up.
func (n *Narrator) Lab(format string, a ...any) { n.say("lab:", format, a...) }

// Attacker says what the attacker did.
func (n *Narrator) Attacker(format string, a ...any) { n.say("attacker:", format, a...) }

// D2C says what d2c did: the refusal and the error it produced.
func (n *Narrator) D2C(format string, a ...any) { n.say("d2c:", format, a...) }

// Why says which defence caught the attack, and why it works.
func (n *Narrator) Why(format string, a ...any) { n.say("why:", format, a...) }

// Stopped prints the verdict of a run in which every attempt was refused.
func (n *Narrator) Stopped(format string, a ...any) {
	fmt.Fprintf(n.w, "\nSTOPPED: %s (%s)\n", fmt.Sprintf(format, a...), time.Since(n.start).Round(time.Millisecond))
}

// say prints text under a label, continuation lines indented.
func (n *Narrator) say(label, format string, a ...any) {
	text := fmt.Sprintf(format, a...)
	for i, line := range strings.Split(text, "\n") {
		if i > 0 {
			label = ""
		}
		fmt.Fprintf(n.w, "%-10s%s\n", label, line)
	}
}
