// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package security

import (
	"container/list"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/transport/wire"
)

// Threshold bounds one security counter of one device within a window.
type Threshold struct {
	// Max is the most events a device may report within Window without
	// an alert; the event that takes the count above Max raises one.
	// Zero: any event raises an alert.
	Max uint64
	// Window is the length of the windows events are counted in. A window
	// opens at the first event reported after the previous one closed, and
	// lasts Window by the monitor's clock. Default 1 h.
	Window time.Duration
}

// DefaultAlertWindow is the default of [Threshold.Window].
const DefaultAlertWindow = time.Hour

// DefaultMaxDevices is the default of [Monitor.MaxDevices].
const DefaultMaxDevices = 100_000

// Alert reports a device whose security counter went above its threshold.
type Alert struct {
	Device    string
	Counter   string
	Count     uint64 // events within the window, above Threshold.Max
	Threshold Threshold
	// WindowStart is when the window opened, Time when the report that
	// crossed the threshold was observed (monitor clock).
	WindowStart, Time time.Time
	// Boot and Seq identify that report.
	Boot, Seq uint64
}

// Monitor raises alerts on the security reports devices send on
// [wire.SecurityStream]. Feed it every verified record of that stream with
// [Monitor.Observe]: when the events of a counter named in
// Thresholds, summed over a window, exceed its Max, OnAlert is called,
// once per device, counter and window.
//
// Windows are kept by the monitor's clock, not the devices' (which lie):
// reports a device queued while offline count in the window in which they
// arrive. State is per device and only for counters with a threshold;
// at most MaxDevices devices are tracked, the least recently reporting
// forgotten first. It is safe for concurrent use; set the fields before
// first use.
type Monitor struct {
	// Thresholds maps counter names (MetricAuthFailures... or an
	// application kind given to Client.RecordSecurityEvent) to their
	// threshold. Counters without one raise no alert.
	Thresholds map[string]Threshold
	// OnAlert receives each alert, outside the monitor's lock. Default:
	// alerts are only counted ([Monitor.Alerts]).
	OnAlert func(Alert)
	// MaxDevices bounds the devices tracked. Default
	// DefaultMaxDevices (100 000).
	MaxDevices int
	// Now is the monitor's clock. Default time.Now.
	Now func() time.Time

	mu      sync.Mutex
	devices map[string]*list.Element // of *monitoredDevice
	lru     list.List                // most recent first
	alerts  uint64
}

type monitoredDevice struct {
	id       string
	counters map[string]*alertWindow
}

type alertWindow struct {
	start   time.Time
	count   uint64
	alerted bool
}

// Observe decodes the security report of a verified record of
// [wire.SecurityStream], applies it to the device's windows, raises the alerts
// it causes and returns it.
func (m *Monitor) Observe(r wire.Record) (Report, error) {
	rep, err := ParseReport(r)
	if err != nil {
		return rep, err
	}
	now := time.Now
	if m.Now != nil {
		now = m.Now
	}
	t := now()
	var alerts []Alert
	m.mu.Lock()
	var d *monitoredDevice
	for name, n := range rep.Counts {
		th, ok := m.Thresholds[name]
		if !ok || n == 0 {
			continue
		}
		if th.Window <= 0 {
			th.Window = DefaultAlertWindow
		}
		if d == nil {
			d = m.device(rep.Device)
		}
		w := d.counters[name]
		if w == nil || t.Sub(w.start) >= th.Window || t.Before(w.start) {
			w = &alertWindow{start: t}
			d.counters[name] = w
		}
		w.count += min(n, ^uint64(0)-w.count)
		if w.count > th.Max && !w.alerted {
			w.alerted = true
			m.alerts++
			alerts = append(alerts, Alert{Device: rep.Device, Counter: name, Count: w.count, Threshold: th,
				WindowStart: w.start, Time: t, Boot: rep.Boot, Seq: rep.Seq})
		}
	}
	m.mu.Unlock()
	if m.OnAlert != nil {
		for _, a := range alerts {
			m.OnAlert(a)
		}
	}
	return rep, nil
}

// Alerts returns the number of alerts raised so far.
func (m *Monitor) Alerts() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.alerts
}

// Len returns the number of devices tracked.
func (m *Monitor) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.devices)
}

// Forget drops the state of device.
func (m *Monitor) Forget(device string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.devices[device]; e != nil {
		m.lru.Remove(e)
		delete(m.devices, device)
	}
}

// device returns the state of id, most recently used from now, creating
// it (and forgetting the least recently used beyond MaxDevices).
func (m *Monitor) device(id string) *monitoredDevice {
	if e := m.devices[id]; e != nil {
		m.lru.MoveToFront(e)
		return e.Value.(*monitoredDevice)
	}
	if m.devices == nil {
		m.devices = map[string]*list.Element{}
	}
	limit := m.MaxDevices
	if limit <= 0 {
		limit = DefaultMaxDevices
	}
	for len(m.devices) >= limit {
		old := m.lru.Back()
		m.lru.Remove(old)
		delete(m.devices, old.Value.(*monitoredDevice).id)
	}
	d := &monitoredDevice{id: id, counters: map[string]*alertWindow{}}
	m.devices[id] = m.lru.PushFront(d)
	return d
}
