// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command tampered-image plays a mirror (or a network attacker) that
// changes one byte of a signed firmware image on its way to the device. The
// update agent refuses the image by its SHA-256, clears the slot it wrote
// it into, and the running slot is never touched.
//
//	go run ./examples/attacks/tampered-image
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
)

func main() { lab.Main(run) }

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("tampered-image", "one byte of a signed firmware image is changed")

	dir, err := os.MkdirTemp("", "d2c-attack-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	repo, err := lab.NewRepo()
	if err != nil {
		return err
	}
	defer repo.Close()
	dev, err := lab.NewUpdateDevice(ctx, filepath.Join(dir, "device"), repo, nil)
	if err != nil {
		return err
	}
	defer dev.Close()
	n.Lab("release repository on %s; a gateway running factory firmware v0 from slot a, slot b empty", repo.URL)

	if err := repo.Publish(1, 24*time.Hour); err != nil {
		return err
	}
	repo.TamperImage(1)
	n.Attacker("the vendor signed release v1 (length and SHA-256 of its %d-byte image); the mirror flipped one bit\n"+
		"in the middle of the image it serves", len(lab.Firmware(1)))

	installed, err := dev.Agent.Update(ctx)
	if installed {
		return lab.Succeeded("the gateway installed the tampered image")
	}
	if !errors.Is(err, update.ErrDigest) {
		return fmt.Errorf("not refused by its digest: %v", err)
	}
	n.D2C("the agent refused: %v", err)
	if r, ok := dev.LastReport(); ok {
		n.D2C("and reported it (AgentConfig.Report): %s", r.Event)
	}

	st := dev.Agent.Status()
	next, trial, err := dev.Slots.Next(ctx)
	if err != nil {
		return err
	}
	running, err := dev.SlotImage(ctx, slot.A)
	if err != nil {
		return err
	}
	other, err := dev.SlotImage(ctx, slot.B)
	if err != nil {
		return err
	}
	if st.Installed.Version != 0 || st.Phase != update.PhaseIdle || next != slot.A || trial || !bytes.Equal(running, lab.Firmware(0)) {
		return lab.Succeeded("the device state changed: %+v, next boot %s (trial %v)", st, next, trial)
	}
	if len(other) != 0 {
		return fmt.Errorf("slot b still holds %d bytes of the refused image", len(other))
	}
	n.D2C("slot b, where the download went, was cleared (%d bytes); slot a still holds factory v0, byte for byte;\n"+
		"the next boot is slot %s, not on trial; phase %s", len(other), next, st.Phase)
	n.Why("the signed release names each image's exact length and SHA-256. The agent hashes the image as it\n" +
		"downloads (and refuses a byte past the signed length), and hashes the slot again before switching to it.\n" +
		"Images are only ever written into the slot that neither runs nor boots next, so a refused or\n" +
		"interrupted download cannot harm the running software.")

	n.Stopped("the tampered image never became bootable; the gateway runs v0 as before")
	return nil
}
