// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// TestAgentRolloutCohort: a timestamp's cohort rule offers the release
// exactly to the devices whose bucket is below the share and to the named
// groups; the others verify everything, keep the floors, and report the
// release withheld. Widening the rule offers it to more devices; halting
// it stops every device that had not installed it, while those that did
// stay on it.
func TestAgentRolloutCohort(t *testing.T) {
	ctx := t.Context()
	repo := newAgentRepo(t)
	salt := [16]byte{7, 7, 7}
	repo.rollout = &Rollout{Salt: salt, Share: 3000, Groups: []string{"beta"}}
	repo.publish(1, 1, image(1, 20_000))

	type device struct {
		id     string
		groups []string
		dev    *agentDevice
	}
	var devices []device
	for i := range 12 {
		id := fmt.Sprintf("gw-%02d", i)
		var groups []string
		if i == 11 {
			groups = []string{"beta"}
		}
		d := newAgentDevice(t, repo, func(c *AgentConfig) { c.Device, c.Groups = id, groups })
		devices = append(devices, device{id, groups, d})
	}
	wantIn := func(share int, d device) bool {
		return RolloutBucket(salt, d.id) < share || len(d.groups) > 0 && share > 0
	}
	installed := map[string]bool{}
	check := func(share int) {
		t.Helper()
		for _, d := range devices {
			if installed[d.id] {
				continue
			}
			o, err := d.dev.agent.Check(ctx)
			if err != nil {
				t.Fatalf("%s: Check: %v", d.id, err)
			}
			if got, want := o != nil, wantIn(share, d); got != want {
				t.Fatalf("%s (bucket %d, groups %v) at share %d: offered %v, want %v", d.id, RolloutBucket(salt, d.id), d.groups, share, got, want)
			}
			st := d.dev.agent.Status()
			if o == nil {
				if st.Withheld != 1 {
					t.Fatalf("%s: Status.Withheld %d, want 1", d.id, st.Withheld)
				}
				if d.dev.agent.st.Floors.ReleaseVersion != 1 {
					t.Fatalf("%s: a withheld release must still raise the floors: %+v", d.id, d.dev.agent.st.Floors)
				}
				continue
			}
			if st.Withheld != 0 {
				t.Fatalf("%s: offered but Status.Withheld %d", d.id, st.Withheld)
			}
			if err := d.dev.agent.Install(ctx, o); err != nil {
				t.Fatalf("%s: Install: %v", d.id, err)
			}
			installed[d.id] = true
		}
	}
	check(3000)
	first := len(installed)
	if first == 0 || first == len(devices) {
		t.Fatalf("%d of %d devices in the 30%% cohort: pick another salt", first, len(devices))
	}
	if !installed["gw-11"] {
		t.Fatal("the beta group was not offered the release")
	}

	// The next phase widens the rule: more devices, all the earlier ones.
	repo.rollout = &Rollout{Salt: salt, Share: 7000, Groups: []string{"beta"}}
	repo.stamp()
	check(7000)
	if len(installed) <= first {
		t.Fatalf("widening to 70%% added no device (%d)", len(installed))
	}

	// Halted: nobody else starts; the devices that installed keep it.
	repo.rollout = &Rollout{Salt: salt}
	repo.stamp()
	before := len(installed)
	check(0)
	if len(installed) != before {
		t.Fatal("a halted rule offered the release")
	}
	for _, d := range devices {
		if st := d.dev.agent.Status(); installed[d.id] && st.Pending != 1 {
			t.Errorf("%s: installed before the halt, now %+v", d.id, st)
		}
	}
}

// TestAgentRolloutAttacks: whoever serves the metadata without the online
// timestamp key cannot widen a campaign: an edited rule breaks the
// signature, a rule signed by another key is refused, and a wider
// timestamp from before a halt is a rollback to a device that saw the halt.
func TestAgentRolloutAttacks(t *testing.T) {
	ctx := t.Context()
	repo := newAgentRepo(t)
	salt := [16]byte{1}
	// A device outside the 10% cohort.
	id := ""
	for i := 0; id == ""; i++ {
		if c := fmt.Sprintf("dev-%d", i); RolloutBucket(salt, c) >= 1000 {
			id = c
		}
	}
	dev := newAgentDevice(t, repo, func(c *AgentConfig) { c.Device = id })
	repo.rollout = &Rollout{Salt: salt, Share: 1000}
	repo.publish(1, 1, image(1, 20_000))
	wide := bytes.Clone(repo.tstamp) // 10%, version 1
	if o, err := dev.agent.Check(ctx); err != nil || o != nil {
		t.Fatalf("outside the cohort: %+v, %v", o, err)
	}

	// The CDN edits the share to 100%, keeping the signature.
	repo.mu.Lock()
	payload := payloadOf(t, repo.tstamp)
	edited := bytes.Replace(payload, []byte(`"share":1000`), []byte(`"share":10000`), 1)
	if bytes.Equal(edited, payload) {
		repo.mu.Unlock()
		t.Fatalf("no share in %s", payload)
	}
	repo.tstamp = withPayload(t, repo.tstamp, edited)
	repo.mu.Unlock()
	if o, err := dev.agent.Check(ctx); !errors.Is(err, ErrBadSignature) || o != nil {
		t.Fatalf("widened without the key: %+v, %v, want ErrBadSignature", o, err)
	}
	if r := dev.lastReport(); r.Event != "refused" {
		t.Errorf("report %+v, want refused", r)
	}

	// Or signs the wider rule with a key of another role (the release key).
	ts, err := NewTimestamp(5, repo.now.Add(repo.expiresTimestamps), repo.release)
	if err != nil {
		t.Fatal(err)
	}
	ts.Rollout = &Rollout{Salt: salt, Share: RolloutAll}
	forged, err := ts.Sign(repo.relKey)
	if err != nil {
		t.Fatal(err)
	}
	repo.mu.Lock()
	repo.tstamp = forged
	repo.mu.Unlock()
	if o, err := dev.agent.Check(ctx); !errors.Is(err, ErrUnknownKey) || o != nil {
		t.Fatalf("widened with the release key: %+v, %v, want ErrUnknownKey", o, err)
	}

	// The campaign halts (timestamp version 2); the CDN then serves the
	// wider timestamp of version 1 again.
	repo.rollout = &Rollout{Salt: salt}
	repo.stamp()
	if o, err := dev.agent.Check(ctx); err != nil || o != nil || dev.agent.Status().Withheld != 1 {
		t.Fatalf("halted: %+v, %v", o, err)
	}
	repo.mu.Lock()
	repo.tstamp = wide
	repo.mu.Unlock()
	if o, err := dev.agent.Check(ctx); !errors.Is(err, ErrRollback) || o != nil {
		t.Fatalf("the pre-halt timestamp again: %+v, %v, want ErrRollback", o, err)
	}
	if st := dev.agent.Status(); st.Phase != PhaseIdle || st.Installed.Version != 0 {
		t.Fatalf("after the attacks: %+v", st)
	}
}

// TestAgentStaleOfferAfterHalt: an offer kept from a check before a
// campaign halted does not install after a later check saw the halt
// (from the adversarial review: the agent used to keep the older offer).
func TestAgentStaleOfferAfterHalt(t *testing.T) {
	ctx := t.Context()
	repo := newAgentRepo(t)
	salt := [16]byte{7}
	id := ""
	for i := 0; id == ""; i++ {
		if c := fmt.Sprintf("dev-%d", i); RolloutBucket(salt, c) < 1000 {
			id = c
		}
	}
	dev := newAgentDevice(t, repo, func(c *AgentConfig) { c.Device = id })
	repo.rollout = &Rollout{Salt: salt, Share: 1000}
	repo.publish(1, 1, image(1, 20_000))
	o, err := dev.agent.Check(ctx)
	if err != nil || o == nil {
		t.Fatalf("in the cohort: %+v, %v", o, err)
	}
	repo.rollout = &Rollout{Salt: salt} // the campaign halts
	repo.stamp()
	if o2, err := dev.agent.Check(ctx); err != nil || o2 != nil || dev.agent.Status().Withheld != 1 {
		t.Fatalf("after the halt: %+v, %v, %+v", o2, err, dev.agent.Status())
	}
	if err := dev.agent.Install(ctx, o); err == nil {
		t.Fatalf("the offer from before the halt installed: %+v", dev.agent.Status())
	}
	if st := dev.agent.Status(); st.Phase != PhaseIdle || st.Pending != 0 {
		t.Fatalf("after the refused install: %+v", st)
	}
}
