// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

var testSalt = [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}

// TestRolloutBucketVector pins the bucket function: the cloud and every
// device must compute the same (docs/update-format.md gives this vector).
func TestRolloutBucketVector(t *testing.T) {
	if got := RolloutBucket(testSalt, "gw-12"); got != rolloutVector {
		t.Fatalf(`RolloutBucket(00..0f, "gw-12") = %d, want %d`, got, rolloutVector)
	}
	if RolloutBucket(testSalt, "gw-13") == RolloutBucket(testSalt, "gw-12") &&
		RolloutBucket(testSalt, "gw-14") == RolloutBucket(testSalt, "gw-12") {
		t.Fatal("buckets do not depend on the device ID")
	}
	other := testSalt
	other[0] = 0xff
	same := 0
	for i := range 100 {
		id := fmt.Sprintf("dev-%d", i)
		if RolloutBucket(other, id) == RolloutBucket(testSalt, id) {
			same++
		}
	}
	if same > 5 {
		t.Fatalf("%d of 100 devices keep their bucket under another salt", same)
	}
}

// rolloutVector is RolloutBucket(00 01 .. 0f, "gw-12"), computed apart:
// python3 -c "import hashlib; h = hashlib.sha256(b'd2c rollout bucket v1\\x00' + bytes(range(16)) + b'gw-12').digest(); print(int.from_bytes(h[:8], 'big') % 10000)"
const rolloutVector = 5439

// TestRolloutShare: a share of n basis points offers the release to about
// n/10,000 of the fleet, and a wider share keeps every device the narrower
// one had (phases only add devices).
func TestRolloutShare(t *testing.T) {
	const devices = 20_000
	for _, share := range []int{100, 1000, 2500, 5000} {
		narrow, wide := &Rollout{Salt: testSalt, Share: share}, &Rollout{Salt: testSalt, Share: share * 2}
		n := 0
		for i := range devices {
			id := fmt.Sprintf("sensor-%06d", i)
			in := narrow.Eligible(id, nil)
			if in {
				n++
			}
			if in && !wide.Eligible(id, nil) {
				t.Fatalf("%s is in the %d cohort but not in the %d one", id, share, share*2)
			}
		}
		want := devices * share / RolloutAll
		if d := n - want; d*d > want*want/100+400 { // within 10% (or 20 devices)
			t.Errorf("share %d: %d of %d devices, want about %d", share, n, devices, want)
		}
	}
}

func TestRolloutEligible(t *testing.T) {
	in, out := "", ""
	for i := 0; in == "" || out == ""; i++ {
		id := fmt.Sprintf("d-%d", i)
		if RolloutBucket(testSalt, id) < 5000 {
			in = id
		} else {
			out = id
		}
	}
	for _, tc := range []struct {
		r      *Rollout
		id     string
		groups []string
		want   bool
	}{
		{nil, out, nil, true},
		{&Rollout{Salt: testSalt, Share: RolloutAll}, out, nil, true},
		{&Rollout{Salt: testSalt, Share: 5000}, in, nil, true},
		{&Rollout{Salt: testSalt, Share: 5000}, out, nil, false},
		{&Rollout{Salt: testSalt, Share: 5000}, "", nil, false},
		{&Rollout{Salt: testSalt, Share: 0, Groups: []string{"beta", "lab"}}, out, []string{"lab"}, true},
		{&Rollout{Salt: testSalt, Share: 0, Groups: []string{"beta", "lab"}}, in, []string{"field"}, false},
		{&Rollout{Salt: testSalt}, in, nil, false},
	} {
		if got := tc.r.Eligible(tc.id, tc.groups); got != tc.want {
			t.Errorf("%+v.Eligible(%q, %v) = %v, want %v", tc.r, tc.id, tc.groups, got, tc.want)
		}
	}
	if !(&Rollout{}).Halted() || (&Rollout{Groups: []string{"a"}}).Halted() || (*Rollout)(nil).Halted() {
		t.Error("Halted")
	}
}

// TestTimestampRollout: the rule round-trips through a signed timestamp,
// a device gets a copy it cannot change the trusted one through, and every
// malformed form is refused by the device (strict decoding).
func TestTimestampRollout(t *testing.T) {
	r := newTkRepo(t)
	ts, err := NewTimestamp(2, tkTime.Add(tkTSTTL), r.releaseBytes)
	r.ok(err)
	ts.Rollout = &Rollout{Salt: testSalt, Share: 2500, Groups: []string{"beta", "lab"}}
	b := r.must(ts.Sign(r.timestampSigners...))
	if !bytes.Contains(payloadOf(t, b), []byte(`"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":2500,"groups":["beta","lab"]}`)) {
		t.Fatalf("payload %s", payloadOf(t, b))
	}
	dev := r.trusted(Floors{})
	got, err := dev.UpdateTimestamp(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Rollout == nil || got.Rollout.Share != 2500 || got.Rollout.Salt != testSalt || strings.Join(got.Rollout.Groups, ",") != "beta,lab" {
		t.Fatalf("rollout %+v", got.Rollout)
	}
	got.Rollout.Groups[0] = "zzz"
	if dev.Timestamp().Rollout.Groups[0] != "beta" {
		t.Fatal("the returned rule aliases the trusted one")
	}

	valid := string(payloadOf(t, b))
	rule := `"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":2500,"groups":["beta","lab"]}`
	for name, repl := range map[string]string{
		"share above all":     `"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":10001,"groups":["beta","lab"]}`,
		"negative share":      `"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":-1,"groups":["beta","lab"]}`,
		"fractional share":    `"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":25.5,"groups":["beta","lab"]}`,
		"short salt":          `"rollout":{"salt":"0001020304050607","share":2500,"groups":["beta","lab"]}`,
		"uppercase salt":      `"rollout":{"salt":"000102030405060708090A0B0C0D0E0F","share":2500,"groups":["beta","lab"]}`,
		"groups out of order": `"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":2500,"groups":["lab","beta"]}`,
		"group twice":         `"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":2500,"groups":["beta","beta"]}`,
		"empty groups":        `"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":2500,"groups":[]}`,
		"null groups":         `"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":2500,"groups":null}`,
		"bad group name":      `"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":2500,"groups":["../x"]}`,
		"no share":            `"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","groups":["beta","lab"]}`,
		"unknown member":      `"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":2500,"groups":["beta","lab"],"devices":["x"]}`,
		"null rule":           `"rollout":null`,
		"duplicate rule":      rule + `,"rollout":{"salt":"000102030405060708090a0b0c0d0e0f","share":10000}`,
	} {
		payload := strings.Replace(valid, rule, repl, 1)
		if payload == valid {
			t.Fatalf("%s: no change", name)
		}
		bad := signRaw(t, RoleTimestamp, []byte(payload), r.timestampSigners...)
		if _, err := r.trusted(Floors{}).UpdateTimestamp(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	groups := make([]string, MaxRolloutGroups+1)
	for i := range groups {
		groups[i] = fmt.Sprintf("g%02d", i)
	}
	ts.Rollout = &Rollout{Salt: testSalt, Share: 1, Groups: groups}
	if _, err := ts.Sign(r.timestampSigners...); !errors.Is(err, ErrMalformed) {
		t.Errorf("signing %d groups: %v, want ErrMalformed", len(groups), err)
	}
}
