// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update_test

import (
	"fmt"

	"github.com/d2c-iot/d2c/update"
)

// ExampleRollout shows the cohort rule of a campaign's phases: a device
// evaluates it on its own ID (and its groups), the cloud the same way to
// know which phase reached which device.
func ExampleRollout() {
	salt := [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	fmt.Println("bucket of gw-12:", update.RolloutBucket(salt, "gw-12"))
	for _, phase := range []*update.Rollout{
		{Salt: salt, Share: 0, Groups: []string{"beta"}},    // the beta testers first
		{Salt: salt, Share: 1000, Groups: []string{"beta"}}, // then 10% of the fleet
		{Salt: salt, Share: 6000, Groups: []string{"beta"}}, // 60%
		{Salt: salt}, // halted
	} {
		fmt.Printf("share %5d: gw-12 %-5v beta tester %v\n", phase.Share,
			phase.Eligible("gw-12", nil), phase.Eligible("lab-3", []string{"beta"}))
	}
	// Output:
	// bucket of gw-12: 5439
	// share     0: gw-12 false beta tester true
	// share  1000: gw-12 false beta tester true
	// share  6000: gw-12 true  beta tester true
	// share     0: gw-12 false beta tester false
}
