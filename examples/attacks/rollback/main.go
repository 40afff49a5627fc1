// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command rollback plays a compromised update mirror that offers a device
// an older release, validly signed by the vendor (say one with a known
// vulnerability), to install over the newer one. The update agent refuses
// it as a rollback.
//
//	go run ./examples/attacks/rollback
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/update"
)

func main() { lab.Main(run) }

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("rollback", "an older, validly signed release is offered")

	dir, err := os.MkdirTemp("", "d2c-attack-rollback-")
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
	n.Lab("release repository on %s; a gateway with A/B slots trusting the vendor's root v1", repo.URL)

	// The vendor ships v1, then v2 (which fixes a vulnerability in v1).
	for _, v := range []uint64{1, 2} {
		if err := repo.Publish(v, 24*time.Hour); err != nil {
			return err
		}
		if err := dev.InstallAndConfirm(ctx); err != nil {
			return err
		}
	}
	st := dev.Agent.Status()
	n.Lab("the vendor released v1 then v2; the gateway installed, booted and confirmed each: it runs v%d from slot %s",
		st.Installed.Version, st.Installed.Slot)

	if err := repo.Publish(1, 24*time.Hour); err != nil {
		return err
	}
	n.Attacker("the mirror serves release v1 again: genuine metadata signed by the vendor's release key, named by a\n" +
		"fresh timestamp signed with the online timestamp key (which the attacker stole)")
	installed, err := dev.Agent.Update(ctx)
	if installed {
		return lab.Succeeded("the gateway installed v1 over v2")
	}
	if !errors.Is(err, update.ErrRollback) {
		return fmt.Errorf("not refused as a rollback: %v", err)
	}
	n.D2C("the agent refused: %v", err)
	if r, ok := dev.LastReport(); ok {
		n.D2C("and reported it (AgentConfig.Report; updatelink.TelemetryReporter signs it to the cloud): %s %q", r.Event, r.Reason)
	}
	after := dev.Agent.Status()
	if after.Installed.Version != 2 || after.Phase != update.PhaseIdle || after.RebootNeeded {
		return lab.Succeeded("the device state changed: %+v", after)
	}
	n.D2C("the gateway still runs v%d from slot %s, nothing pending", after.Installed.Version, after.Installed.Slot)
	n.Why("a signature proves who made a release, not that it is the one to install now. The device keeps floors\n" +
		"that only rise: the versions of the newest timestamp and release metadata it verified, and the version and\n" +
		"security counter of the release it confirmed. A timestamp naming a release below the floor is refused, and\n" +
		"so is a release older than the confirmed one.")

	n.Stopped("the older release was refused; the gateway stays on v2")
	return nil
}
