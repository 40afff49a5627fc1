// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
	"github.com/d2c-iot/d2c/transport"
)

// Fleet simulation sizes: fleetDevices devices with mutual TLS on one
// mosquitto, fleetMessages messages each.
const (
	fleetDevices  = 1000
	fleetMessages = 5
	fleetWorkers  = 16 // bound on concurrent enrollments, dials and publishes
	// File descriptors per device in this process: its TLS connection and
	// its outbox's lock, segment and acks files, with room to spare.
	fleetFDsPerDevice = 6
)

// parallel runs fn(0) ... fn(n-1) on at most workers goroutines and
// returns the first error (the indexes not yet started are then skipped).
func parallel(n, workers int, fn func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// TestFleetSimulation runs a fleet of 1000 devices, each enrolled over EST
// and connected with its own certificate to one mosquitto, publishing 5
// messages each. The broker is restarted mid-stream (SIGTERM, with
// persistence: an orderly restart; a broker killed outright loses the
// messages it had acknowledged but not yet forwarded, which only an
// end-to-end acknowledgement from the cloud could cover — see
// docs/threat-model.md); the devices reconnect with jittered backoff. Every
// message must reach the cloud verifier's application exactly once.
func TestFleetSimulation(t *testing.T) {
	start := time.Now()
	if lim, err := testpeer.FileLimit(0); err != nil {
		t.Fatalf("file limit: %v", err)
	} else if need := uint64(fleetDevices*fleetFDsPerDevice + 500); lim < need {
		t.Fatalf("this process may open %d files, the fleet simulation needs about %d: raise the hard limit (ulimit -Hn, LimitNOFILE=) and run again", lim, need)
	}
	f := newE2EFleet(t)
	// The generated configuration queues up to 500,000 messages (256 MiB)
	// for a lagging verifier (mosquitto's default of 1000 dropped hundreds
	// per run after acknowledging them). Persistence saves the verifier's
	// session and its queue across the orderly restart below.
	broker := f.startMosquittoWith(mosquittoOptions{Listener: []string{"max_connections -1"}, Persistence: true})
	if lim, err := testpeer.FileLimit(broker.PID()); err != nil {
		t.Fatalf("mosquitto file limit: %v", err)
	} else if lim < fleetDevices+100 {
		t.Fatalf("mosquitto may open %d files, it needs more than %d for the fleet's connections", lim, fleetDevices+100)
	}

	// Enrollment over EST, bounded in parallel.
	ids := make([]string, fleetDevices)
	stores := make([]*identity.Store, fleetDevices)
	for i := range ids {
		ids[i] = fmt.Sprintf("fleet-%04d", i)
	}
	ectx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	phase := time.Now()
	if err := parallel(fleetDevices, fleetWorkers, func(i int) (err error) {
		stores[i], err = f.enrollErr(ectx, ids[i])
		return err
	}); err != nil {
		t.Fatalf("enrollment: %v", err)
	}
	enrollTime := time.Since(phase)
	t.Logf("enrolled %d devices over EST in %v (%v each, %d in parallel)", fleetDevices, enrollTime.Round(time.Millisecond),
		(enrollTime / fleetDevices).Round(time.Microsecond), fleetWorkers)

	col := newCollector()
	v := f.verifier()
	f.dialCloud(broker.Addr, col, v)

	// Connect the fleet.
	phase = time.Now()
	devs := make([]*transport.Client, fleetDevices)
	t.Cleanup(func() {
		_ = parallel(fleetDevices, fleetWorkers, func(i int) error {
			if devs[i] != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				devs[i].Close(ctx)
			}
			return nil
		})
	})
	if err := parallel(fleetDevices, fleetWorkers, func(i int) (err error) {
		devs[i], err = transport.Dial(t.Context(), transport.ClientConfig{Broker: broker.Addr, Store: stores[i],
			RetryMin: 100 * time.Millisecond, RetryMax: 2 * time.Second})
		return err
	}); err != nil {
		t.Fatalf("dial: %v", err)
	}
	connected := func() int {
		n := 0
		for _, d := range devs {
			if d.Stats().Connects >= 1 {
				n++
			}
		}
		return n
	}
	if !waitFor(30*time.Second, func() bool { return connected() == fleetDevices }) {
		t.Fatalf("%d of %d devices connected within 30 s\n%s", connected(), fleetDevices, tail(broker.Output(), 20))
	}
	connectTime := time.Since(phase)
	t.Logf("%d devices connected in %v", fleetDevices, connectTime.Round(time.Millisecond))

	// Rounds 0 and 1 with the broker up; kill; round 2 with the broker
	// down; restart; rounds 3 and 4 while the fleet reconnects.
	publishRound := func(k int) {
		t.Helper()
		p := time.Now()
		if err := parallel(fleetDevices, fleetWorkers, func(i int) error {
			return devs[i].Publish(t.Context(), "temp", transport.Reading{Time: time.Now(), Body: fmt.Appendf(nil, "%s/%d", ids[i], k)})
		}); err != nil {
			t.Fatalf("publish round %d: %v", k, err)
		}
		t.Logf("round %d: %d messages stored in %v; the cloud has %d", k, fleetDevices, time.Since(p).Round(time.Millisecond), col.count())
	}
	var reconnectAll time.Duration
	beforeKill := make([]uint64, fleetDevices)  // connections
	ackedAtKill := make([]uint64, fleetDevices) // PUBACKs received before the broker died
	var killedAt time.Time
	for k := range fleetMessages {
		switch k {
		case 2:
			failedBefore := make([]uint64, fleetDevices)
			for i, d := range devs {
				st := d.Stats()
				beforeKill[i], failedBefore[i] = st.Connects, st.ConnectFailures
			}
			broker.Stop() // an orderly restart: mosquitto saves sessions and queues
			killedAt = time.Now()
			// Once a device has failed to reconnect, it has read everything
			// the dead broker sent it, the last PUBACKs included.
			if !waitFor(10*time.Second, func() bool {
				for i, d := range devs {
					if d.Stats().ConnectFailures <= failedBefore[i] {
						return false
					}
				}
				return true
			}) {
				t.Errorf("not every device noticed within 10 s that the broker died")
			}
			time.Sleep(100 * time.Millisecond)
			var acked uint64
			for i, d := range devs {
				ackedAtKill[i] = d.Stats().Acked
				acked += ackedAtKill[i]
			}
			t.Logf("broker stopped: it had acknowledged %d messages, the cloud had received %d", acked, col.count())
		case 3:
			time.Sleep(500 * time.Millisecond) // down long enough for the backoffs to grow
			broker.Restart(t)
			restarted := time.Now()
			t.Logf("broker restarted after %v down", restarted.Sub(killedAt).Round(time.Millisecond))
			reconnected := 0
			ok := waitFor(30*time.Second, func() bool {
				reconnected = 0
				for i, d := range devs {
					if d.Stats().Connects > beforeKill[i] {
						reconnected++
					}
				}
				return reconnected == fleetDevices
			})
			reconnectAll = time.Since(restarted)
			if !ok {
				t.Errorf("%d of %d devices reconnected within 30 s of the restart", reconnected, fleetDevices)
			}
			t.Logf("%d devices reconnected within %v of the restart", reconnected, reconnectAll.Round(time.Millisecond))
		}
		publishRound(k)
	}

	// Delivery.
	total := fleetDevices * fleetMessages
	drained := func() int {
		n := 0
		for _, d := range devs {
			if d.Stats().QueueDepth == 0 {
				n++
			}
		}
		return n
	}
	phase = time.Now()
	if !waitFor(30*time.Second, func() bool { return drained() == fleetDevices }) {
		t.Errorf("after 30 s, %d of %d outboxes drained", drained(), fleetDevices)
	}
	// Then until the cloud has everything, or has received nothing more
	// for 2 s.
	last, lastChange := col.count(), time.Now()
	waitFor(30*time.Second, func() bool {
		if n := col.count(); n != last {
			last, lastChange = n, time.Now()
		}
		return last >= total || time.Since(lastChange) > 2*time.Second
	})
	deliveryTime := time.Since(phase)
	t.Logf("delivery ended %v after the last round", deliveryTime.Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond) // let any redelivery arrive

	// A lost message whose PUBACK reached the device before the broker
	// died (messages go out in order, PUBACKs come back in order, so
	// message k was acknowledged if the device had k+1 PUBACKs) was lost
	// by the broker: mosquitto keeps what it has acknowledged and not yet
	// delivered in memory only. Any other loss is the SDK's.
	got := col.bodies()
	var lostAtBroker, lostOther []string
	dup := 0
	for i := range fleetDevices {
		for k := range fleetMessages {
			body := fmt.Sprintf("%s/%d", ids[i], k)
			switch n := got[body]; {
			case n == 0 && ackedAtKill[i] >= uint64(k+1):
				lostAtBroker = append(lostAtBroker, body)
			case n == 0:
				lostOther = append(lostOther, body)
			case n > 1:
				dup++
			}
		}
	}
	lost := len(lostAtBroker) + len(lostOther)
	var st transport.ClientStats
	for _, d := range devs {
		s := d.Stats()
		st.Sent += s.Sent
		st.Acked += s.Acked
		st.Retried += s.Retried
		st.Refused += s.Refused
		st.Connects += s.Connects
		st.ConnectFailures += s.ConnectFailures
		st.QueueDepth += s.QueueDepth
	}
	vs := v.Stats()
	t.Logf("devices: sent %d, acked %d, retried %d, refused %d, connects %d, connect failures %d, still queued %d",
		st.Sent, st.Acked, st.Retried, st.Refused, st.Connects, st.ConnectFailures, st.QueueDepth)
	t.Logf("verifier: %+v; refusals %d", vs, len(col.refusals()))
	if len(lostAtBroker) > 0 {
		t.Errorf("%d messages lost (%v), e.g. %v: the broker had acknowledged each (PUBACK) before it stopped, and did not keep them across the restart",
			len(lostAtBroker), byRound(lostAtBroker), lostAtBroker[:min(5, len(lostAtBroker))])
	}
	if len(lostOther) > 0 {
		t.Errorf("%d messages lost (%v), e.g. %v: not acknowledged before the broker stopped", len(lostOther), byRound(lostOther), lostOther[:min(5, len(lostOther))])
	}
	if lost > 0 {
		if l := grepLines(broker.Output(), "dropped", 10); l != "" {
			t.Logf("mosquitto dropped messages:\n%s", l)
		}
	}
	if dup > 0 {
		t.Errorf("%d messages reached the application more than once", dup)
	}
	if r := col.refusals(); len(r) > 0 {
		t.Errorf("the verifier refused %d messages, e.g. %v", len(r), r[0])
	}
	t.Logf("FLEET SUMMARY: devices %d, messages %d, received %d, lost %d (%d acknowledged by the broker before it stopped), duplicates dropped by the verifier %d, all reconnected %v after the restart; enrollment %v, connection %v, delivery after the last round %v, total %v",
		fleetDevices, total, len(got), lost, len(lostAtBroker), vs.Duplicates, reconnectAll.Round(time.Millisecond), enrollTime.Round(time.Millisecond),
		connectTime.Round(time.Millisecond), deliveryTime.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// byRound counts lost messages ("<device>/<round>") by round.
func byRound(bodies []string) map[string]int {
	m := map[string]int{}
	for _, b := range bodies {
		m["round "+b[strings.LastIndexByte(b, '/')+1:]]++
	}
	return m
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// grepLines returns up to n lines of s that contain sub.
func grepLines(s, sub string, n int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
			if len(out) == n {
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
