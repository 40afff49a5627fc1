// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package decommission takes a device out of the fleet for good (ETSI EN
// 303 645 provision 5.11, "make it easy for users to delete user data").
//
// The cloud sends the signed [Command]; the device runs
// transport.Client.Decommission, which tells the cloud on
// [LifecycleStream], then erases its transport state and its identity.
// [Forget] is the cloud half: it revokes every certificate of the device,
// removes them from the registry and drops the verifier's state for it.
package decommission
