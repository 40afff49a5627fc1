// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package slot holds the A/B slots an update is installed into.
//
// A device has two slots, "a" and "b". It runs from one (the booted slot)
// while an update is written into the other; [Slots.Switch] then makes the
// other slot boot next, usually on trial: if the new software never calls
// [Slots.Confirm] after its health check, the device falls back to the slot
// it came from. The update agent drives every implementation the same way:
//
//	booted, _ := s.Booted(ctx)
//	img, _ := s.Open(ctx, slot.Other(booted)) // resumes a partial write
//	// ... download into img (it keeps what an interrupted attempt wrote),
//	// img.Sync(), img.Close(), verify s.Read(ctx, slot.Other(booted)) ...
//	s.Switch(ctx, slot.Other(booted), true)
//	// ... restart or reboot; the new software checks its health, then:
//	s.Confirm(ctx)
//
// # Implementations
//
// [DirSlots] keeps the slots as directories switched by an atomic symbolic
// link rename: application-level updates, examples and tests. "Booting" is
// the application (re)starting from the image the link names.
//
// [UBoot] drives a U-Boot environment (boot_part, upgrade_available,
// bootcount, bootlimit) through an [EnvStore], by default [FWEnv], which
// runs fw_printenv and fw_setenv; the slot images are block devices.
//
// # Crash safety
//
// A power cut at any instant leaves the next boot on a complete image: an
// image is written only while it is neither the booted slot nor the next
// one ([ErrActiveSlot]), and switching is a single atomic step (a rename, or
// one fw_setenv script). Open keeps what an interrupted write left, so a
// download resumes where it stopped.
package slot

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// The two slot names.
const (
	A = "a"
	B = "b"
)

var (
	// ErrUnknownSlot is returned for a slot name other than "a" or "b".
	ErrUnknownSlot = errors.New("slot: unknown slot (want \"a\" or \"b\")")

	// ErrActiveSlot is returned by Open for the booted slot or the slot
	// that boots next: writing either could leave the device nothing
	// complete to boot.
	ErrActiveSlot = errors.New("slot: slot is booted or boots next")

	// ErrSwitchPending is returned by Confirm when another slot than the
	// booted one boots next: confirming then would vouch for software that
	// never ran.
	ErrSwitchPending = errors.New("slot: a switch to the other slot is pending")

	// ErrBootLimit is returned by [UBoot.Confirm] when the bootloader has
	// counted more trial boots than its limit: it has already fallen back,
	// or will, and the trial slot must not be marked good.
	ErrBootLimit = errors.New("slot: boot count over the boot limit: the bootloader fell back")

	// ErrBadState is returned when the persisted slot state (the current
	// link, the bootloader environment) cannot be decoded.
	ErrBadState = errors.New("slot: bad slot state")
)

// Slots is a pair of A/B slots and the record of which boots next.
// Implementations are [DirSlots] and [UBoot]; they are not safe for
// concurrent use, the update agent being their only writer.
type Slots interface {
	// Booted returns the slot the running system started from ("a" or
	// "b").
	Booted(ctx context.Context) (string, error)
	// Next returns the slot that boots next and whether it boots on
	// trial: an upgrade is pending and the system falls back to the other
	// slot unless the software confirms it.
	Next(ctx context.Context) (slot string, trial bool, err error)
	// Open opens slot's image for writing, keeping what an interrupted
	// attempt already wrote (resume). It refuses the booted slot and the
	// slot that boots next with [ErrActiveSlot].
	Open(ctx context.Context, slot string) (Image, error)
	// Read opens slot's image for reading, to check its hash before
	// switching. A block device reads past the image: read at most the
	// image's length.
	Read(ctx context.Context, slot string) (io.ReadCloser, error)
	// Switch makes slot boot next; with trial, it boots on trial.
	Switch(ctx context.Context, slot string, trial bool) error
	// Confirm marks the booted slot good: no more fallback. It fails with
	// [ErrSwitchPending] when another slot boots next.
	Confirm(ctx context.Context) error
}

// Image is a slot's image opened for writing. Writes append after the
// Offset bytes already there. An Image is not safe for concurrent use.
type Image interface {
	io.Writer
	// Offset returns how many bytes the image holds: what earlier
	// attempts wrote plus what this one wrote.
	Offset() int64
	// Existing reads the first Offset bytes, to re-hash them before
	// resuming.
	Existing() io.Reader
	// Reset empties the image durably: the next write starts at 0.
	Reset() error
	// Sync makes the bytes written so far durable.
	Sync() error
	// Close releases the image without syncing it.
	Close() error
}

// Other returns the slot that is not slot: "b" for "a", "a" for "b", and ""
// for anything else.
func Other(slot string) string {
	switch slot {
	case A:
		return B
	case B:
		return A
	}
	return ""
}

// check refuses slot names other than "a" and "b".
func check(slot string) error {
	if slot != A && slot != B {
		return fmt.Errorf("%w: %q", ErrUnknownSlot, slot)
	}
	return nil
}
