// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package store_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/d2c-iot/d2c/cloud/store"
)

// A campaign offers release 8 to 1% of the gateways for 30 minutes,
// then 10% for 2 hours, then every gateway; it aborts once 20 devices
// have finished and 5% of them failed. The cloud service's update role
// advances it and signs its rule into the timestamp; an operator may
// pause, resume or abort it (d2c rollout).
func ExampleStore_StartCampaign() {
	dir, err := os.MkdirTemp("", "d2c-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	st, err := store.Open(ctx, store.Config{URL: "sqlite:" + filepath.Join(dir, "fleet.db")})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()

	c, err := st.StartCampaign(ctx, store.CampaignPlan{HardwareClass: "gw-arm64", Release: 8, AbortAt: 500, MinFinished: 20,
		Phases: []store.CampaignPhase{
			{Share: 100, Groups: []string{"beta"}, Delay: 30 * time.Minute},
			{Share: 1000, Groups: []string{"beta"}, Delay: 2 * time.Hour},
			{Share: 10_000},
		}})
	if err != nil {
		log.Fatal(err)
	}
	r := c.Rollout()
	fmt.Printf("campaign %d, %s: %s of the devices and groups %v\n", c.ID, c.State, store.FormatBasisPoints(r.Share), r.Groups)

	// What the devices reported so far decides the next step: with no
	// device reporting yet, the phase does not advance, however long.
	p, err := st.CampaignProgress(ctx, c)
	if err != nil {
		log.Fatal(err)
	}
	action, _ := c.Decide(p, c.PhaseStarted.Add(31*time.Minute))
	fmt.Println("after 31 minutes with no report, advance:", action == store.CampaignAdvance)

	c, err = st.AbortCampaign(ctx, c, "crash reports from the field")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("campaign %d, %s: halted %v\n", c.ID, c.State, c.Rollout().Halted())
	// Output:
	// campaign 1, running: 1% of the devices and groups [beta]
	// after 31 minutes with no report, advance: false
	// campaign 1, aborted: halted true
}
