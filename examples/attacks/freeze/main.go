// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command freeze plays a mirror that freezes a device on stale metadata:
// it keeps serving an expired timestamp, so that the device never learns of
// newer releases (security fixes). The update agent refuses expired
// metadata, also on a device whose clock reads 1970, thanks to the trusted
// time floor it learnt from its certificate.
//
//	go run ./examples/attacks/freeze
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/update"
)

func main() { lab.Main(run) }

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("freeze", "stale update metadata is served to keep a device on old software")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	repo, err := lab.NewRepo()
	if err != nil {
		return err
	}
	defer repo.Close()
	n.Lab("release repository on %s; gateways with A/B slots trusting the vendor's root v1", repo.URL)

	// The timestamp naming v1 expired an hour ago; the vendor has released
	// newer versions since, which the mirror does not serve.
	if err := repo.Publish(1, -time.Hour); err != nil {
		return err
	}
	n.Attacker("the mirror hides the newer releases and keeps serving the metadata of v1, whose timestamp\n" +
		"(validly signed) expired an hour ago")

	n.Section("1. a gateway with a working clock")
	gw1, err := lab.NewUpdateDevice(ctx, filepath.Join(f.Dir, "gw-1"), repo, nil)
	if err != nil {
		return err
	}
	defer gw1.Close()
	if err := expectExpired(ctx, n, gw1); err != nil {
		return err
	}
	n.Why("every timestamp carries a short expiry (hours to a day), and the vendor re-signs it on a schedule: a\n" +
		"device that stops receiving fresh ones notices within that time, instead of believing it is up to date.")

	n.Section("2. a gateway whose clock reads 1970")
	store, err := f.Enroll(ctx, "gw-2")
	if err != nil {
		return err
	}
	id, err := store.Current()
	if err != nil {
		return err
	}
	// The gateway restarts without a real-time clock (or the attacker
	// spoofed its NTP): its wall clock reads 1970.
	epoch := time.Unix(0, 0).UTC()
	store, err = identity.OpenStore(store.Dir(), identity.StoreConfig{Time: func() time.Time { return epoch }})
	if err != nil {
		return err
	}
	clock := store.Clock()
	n.Lab("gw-2 enrolled earlier (certificate valid from %s); now its wall clock reads %s",
		id.Certificate().NotBefore.UTC().Format(time.RFC3339), epoch.Format(time.RFC3339))
	n.Attacker("at 1970 the expired timestamp looks valid for another %d years", time.Now().Year()-1970)
	gw2, err := lab.NewUpdateDevice(ctx, filepath.Join(f.Dir, "gw-2-update"), repo, clock)
	if err != nil {
		return err
	}
	defer gw2.Close()
	if err := expectExpired(ctx, n, gw2); err != nil {
		return err
	}
	n.Why("the agent reads time from the store's identity.TrustedClock: the later of the wall clock and a\n"+
		"persisted floor that only rises, learnt from what the device verified (here its certificate's start,\n"+
		"%s). Expiry is checked against that trusted time: a clock set back cannot revive stale metadata.",
		clock.Floor().UTC().Format(time.RFC3339))

	n.Stopped("both gateways refused the stale metadata instead of believing they were up to date")
	return nil
}

// expectExpired runs an update that must be refused as stale.
func expectExpired(ctx context.Context, n *lab.Narrator, dev *lab.UpdateDevice) error {
	installed, err := dev.Agent.Update(ctx)
	if installed || err == nil {
		return lab.Succeeded("the gateway accepted the stale metadata (installed: %v)", installed)
	}
	if !errors.Is(err, update.ErrExpired) {
		return fmt.Errorf("not refused as expired: %v", err)
	}
	n.D2C("the agent refused: %v", err)
	if r, ok := dev.LastReport(); ok {
		n.D2C("and reported it (AgentConfig.Report): %s", r.Event)
	}
	return nil
}
