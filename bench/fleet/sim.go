// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
)

// simFlag, as the first argument, runs the program as a device simulator
// (not a flag users pass: the orchestrator does).
const simFlag = "-fleet-simulator"

// simConfig is a simulator's configuration, a file the orchestrator
// writes (mode 0600: it holds enrollment tokens).
type simConfig struct {
	Index       int      `json:"index"`
	Devices     []string `json:"devices"`
	First       int      `json:"first"`        // fleet-wide index of Devices[0], for spreading the publish times
	FleetSize   int      `json:"fleet_size"`   // devices in the whole fleet
	Tokens      []string `json:"tokens"`       // one per device
	Registrars  []string `json:"registrars"`   // EST base URLs; device i enrolls through Registrars[(First+i) % len]
	Fingerprint string   `json:"fingerprint"`  // SHA-256 of the fleet root, hex
	Broker      string   `json:"broker"`       // host:port of mosquitto
	CloudPub    string   `json:"cloud_pub"`    // the cloud's public key (PEM), "": signed only
	StateDir    string   `json:"state_dir"`    // each device's identity store and outbox in StateDir/<id>
	Readings    int      `json:"readings"`     // per device
	PeriodNS    int64    `json:"period_ns"`    // between two readings of a device
	BodySize    int      `json:"body_size"`    // bytes of each reading's body
	Workers     int      `json:"workers"`      // concurrent enrollments
	DialWorkers int      `json:"dial_workers"` // devices connecting at once in the first connection
	RetryMinNS  int64    `json:"retry_min_ns"` // reconnect backoff
	RetryMaxNS  int64    `json:"retry_max_ns"`
}

// simCommand is a line the orchestrator writes to a simulator's stdin.
type simCommand struct {
	Seq     int    `json:"seq"`
	Op      string `json:"op"`                 // enroll, dial, publish, mark, close
	StartNS int64  `json:"start_ns,omitempty"` // publish: when the stream starts (Unix ns)
}

// simStatus is a line a simulator writes to stdout: its devices' state,
// whenever it changes (at most every 100 ms) and every second.
type simStatus struct {
	Index      int    `json:"index"`
	Ack        int    `json:"ack"` // Seq of the last command carried out
	Devices    int    `json:"devices"`
	Enrolled   int    `json:"enrolled"`
	Connected  int    `json:"connected"`   // connected at least once
	Marked     bool   `json:"marked"`      // a "mark" was taken
	Reconnect  int    `json:"reconnected"` // connected again since the mark
	AllBackNS  int64  `json:"all_back_ns"` // when the last device reconnected after the mark (Unix ns), 0 until then
	Published  int    `json:"published"`   // readings stored in the outboxes
	Done       int    `json:"done"`        // devices that have published every reading
	Drained    int    `json:"drained"`     // of those, outbox empty and every message acknowledged
	Stored     uint64 `json:"stored"`      // messages stored in the outboxes, key deliveries included
	Acked      uint64 `json:"acked"`
	Refused    uint64 `json:"refused"`
	Queued     int    `json:"queued"`
	Connects   uint64 `json:"connects"`
	ConnFails  uint64 `json:"connect_failures"`
	LastPubNS  int64  `json:"last_pub_ns"` // when the last reading was stored (Unix ns)
	EnrollErrs int    `json:"enroll_errors"`
	Err        string `json:"err,omitempty"`
}

// simDevice is one simulated device.
type simDevice struct {
	id     string
	store  *identity.Store
	client *transport.Client
	mark   uint64 // Connects at the last mark
	pub    atomic.Int64
}

type simulator struct {
	cfg     simConfig
	devs    []*simDevice
	cloud   *transport.Encryption
	mu      sync.Mutex
	status  simStatus
	failed  atomic.Pointer[string]
	lastPub atomic.Int64
}

// runSimulator plays the devices of the configuration file path,
// following the commands on stdin, until "close" or the end of stdin.
func runSimulator(path string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := simulate(ctx, path); err != nil {
		fmt.Fprintln(os.Stderr, "simulator:", err)
		return 1
	}
	return 0
}

func simulate(ctx context.Context, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg simConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(cfg.Tokens) != len(cfg.Devices) || len(cfg.Registrars) == 0 || cfg.Readings < 1 || cfg.PeriodNS <= 0 {
		return fmt.Errorf("%s: incomplete configuration", path)
	}
	s := &simulator{cfg: cfg}
	s.status.Index, s.status.Devices = cfg.Index, len(cfg.Devices)
	for _, id := range cfg.Devices {
		s.devs = append(s.devs, &simDevice{id: id})
	}
	if cfg.CloudPub != "" {
		pub, err := identity.ReadPublicKeyFile(cfg.CloudPub)
		if err != nil {
			return err
		}
		s.cloud = &transport.Encryption{CloudKey: pub}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := json.NewEncoder(os.Stdout)
	var outMu sync.Mutex
	report := func() {
		st := s.snapshot()
		outMu.Lock()
		_ = out.Encode(st)
		outMu.Unlock()
	}
	go func() {
		var last simStatus
		lastSent := time.Now()
		for tick := time.NewTicker(100 * time.Millisecond); ; {
			select {
			case <-ctx.Done():
				tick.Stop()
				return
			case <-tick.C:
			}
			st := s.snapshot()
			if st != last || time.Since(lastSent) >= time.Second {
				outMu.Lock()
				_ = out.Encode(st)
				outMu.Unlock()
				last, lastSent = st, time.Now()
			}
		}
	}()

	cmds := bufio.NewScanner(os.Stdin)
	for cmds.Scan() {
		var c simCommand
		if err := json.Unmarshal(cmds.Bytes(), &c); err != nil {
			return fmt.Errorf("command %q: %w", cmds.Text(), err)
		}
		switch c.Op {
		case "enroll":
			go func() { s.fail(s.enroll(ctx)) }()
		case "dial":
			go func() { s.fail(s.dial(ctx)) }()
		case "publish":
			for i, d := range s.devs {
				go func() { s.fail(s.publish(ctx, i, d, time.Unix(0, c.StartNS))) }()
			}
		case "mark":
			s.mu.Lock()
			for _, d := range s.devs {
				if d.client != nil {
					d.mark = d.client.Stats().Connects
				}
			}
			s.status.Marked, s.status.AllBackNS = true, 0
			s.mu.Unlock()
		case "close":
			s.close()
			s.mu.Lock()
			s.status.Ack = c.Seq
			s.mu.Unlock()
			report()
			return nil
		default:
			return fmt.Errorf("unknown command %q", c.Op)
		}
		s.mu.Lock()
		s.status.Ack = c.Seq
		s.mu.Unlock()
		report()
	}
	// The orchestrator is gone: stop at once.
	return errors.New("end of commands without close")
}

// fail records the first error; the orchestrator sees it in the status.
func (s *simulator) fail(err error) {
	if err != nil && !errors.Is(err, context.Canceled) {
		msg := err.Error()
		s.failed.CompareAndSwap(nil, &msg)
	}
}

// snapshot adds up the devices' state.
func (s *simulator) snapshot() simStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Connected, st.Reconnect, st.Published, st.Done, st.Drained = 0, 0, 0, 0, 0
	st.Stored, st.Acked, st.Refused, st.Queued, st.Connects, st.ConnFails = 0, 0, 0, 0, 0, 0
	for _, d := range s.devs {
		pub := int(d.pub.Load())
		st.Published += pub
		if d.client == nil {
			continue
		}
		cs := d.client.Stats()
		if cs.Connects >= 1 {
			st.Connected++
		}
		if st.Marked && cs.Connects > d.mark {
			st.Reconnect++
		}
		st.Stored += cs.Stored
		st.Acked += cs.Acked
		st.Refused += cs.Refused
		st.Queued += cs.QueueDepth
		st.Connects += cs.Connects
		st.ConnFails += cs.ConnectFailures
		if pub == s.cfg.Readings {
			st.Done++
			if cs.QueueDepth == 0 && cs.Stored == cs.Acked {
				st.Drained++
			}
		}
	}
	if st.Marked && st.Reconnect == len(s.devs) && s.status.AllBackNS == 0 {
		s.status.AllBackNS = time.Now().UnixNano()
		st.AllBackNS = s.status.AllBackNS
	}
	st.LastPubNS = s.lastPub.Load()
	if p := s.failed.Load(); p != nil {
		st.Err = *p
	}
	return st
}

// enroll enrolls every device through the registrars, Workers at a time:
// a key generated on the device, the fleet root pinned by its
// fingerprint, a one-time token.
func (s *simulator) enroll(ctx context.Context) error {
	fp, err := hex.DecodeString(strings.TrimSpace(s.cfg.Fingerprint))
	if err != nil {
		return fmt.Errorf("fingerprint: %w", err)
	}
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		first atomic.Pointer[error]
	)
	for range max(1, s.cfg.Workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(s.devs) || ctx.Err() != nil {
					return
				}
				d := s.devs[i]
				err := func() error {
					st, err := identity.OpenStore(filepath.Join(s.cfg.StateDir, d.id), identity.StoreConfig{})
					if err != nil {
						return err
					}
					est := identity.ESTClient{URL: s.cfg.Registrars[(s.cfg.First+i)%len(s.cfg.Registrars)], BootstrapFingerprint: fp}
					if _, err := st.Enroll(ctx, est, identity.EnrollRequest{DeviceID: d.id, Auth: identity.EnrollAuth{Token: s.cfg.Tokens[i]}}); err != nil {
						return err
					}
					s.mu.Lock()
					d.store = st
					s.status.Enrolled++
					s.mu.Unlock()
					return nil
				}()
				if err != nil {
					s.mu.Lock()
					s.status.EnrollErrs++
					s.mu.Unlock()
					first.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	wg.Wait()
	if p := first.Load(); p != nil {
		return *p
	}
	return nil
}

// dial starts every device's client, DialWorkers devices connecting at
// once: a fleet powering up, not ten thousand handshakes in the same
// second. A device that has not connected within a minute goes on trying
// in the background (with its backoff) while the next one starts.
func (s *simulator) dial(ctx context.Context) error {
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		first atomic.Pointer[error]
	)
	for range max(1, s.cfg.DialWorkers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(s.devs) || ctx.Err() != nil || first.Load() != nil {
					return
				}
				d := s.devs[i]
				if d.store == nil {
					err := fmt.Errorf("%s: not enrolled", d.id)
					first.CompareAndSwap(nil, &err)
					return
				}
				c, err := transport.Dial(ctx, transport.ClientConfig{Broker: s.cfg.Broker, Store: d.store, Encryption: s.cloud,
					RetryMin: time.Duration(s.cfg.RetryMinNS), RetryMax: time.Duration(s.cfg.RetryMaxNS), SecurityReportInterval: -1})
				if err != nil {
					err = fmt.Errorf("%s: %w", d.id, err)
					first.CompareAndSwap(nil, &err)
					return
				}
				s.mu.Lock()
				d.client = c
				s.mu.Unlock()
				actx, cancel := context.WithTimeout(ctx, time.Minute)
				_ = c.AwaitConnection(actx)
				cancel()
			}
		}()
	}
	wg.Wait()
	if p := first.Load(); p != nil {
		return *p
	}
	return nil
}

// publish stores the device's readings, one every period, the fleet's
// devices spread evenly over the period. Reading k's body starts with
// "<id>/<k> " and is padded to BodySize bytes.
func (s *simulator) publish(ctx context.Context, i int, d *simDevice, start time.Time) error {
	period := time.Duration(s.cfg.PeriodNS)
	offset := time.Duration(int64(period) * int64(s.cfg.First+i) / int64(max(1, s.cfg.FleetSize)))
	for k := range s.cfg.Readings {
		if wait := time.Until(start.Add(offset + time.Duration(k)*period)); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		if err := d.client.Publish(ctx, stream, transport.Reading{Time: time.Now(), Body: readingBody(d.id, k, s.cfg.BodySize)}); err != nil {
			return fmt.Errorf("%s: publish %d: %w", d.id, k, err)
		}
		d.pub.Add(1)
		s.lastPub.Store(time.Now().UnixNano())
	}
	return nil
}

// readingBody is the body of device id's reading k.
func readingBody(id string, k, size int) []byte {
	b := fmt.Appendf(nil, "%s/%d ", id, k)
	for len(b) < size {
		b = append(b, byte('a'+len(b)%26))
	}
	return b
}

// close closes every client (what is not acknowledged stays in its
// outbox), 64 at a time.
func (s *simulator) close() {
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, d := range s.devs {
		if d.client == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = d.client.Close(ctx)
		}()
	}
	wg.Wait()
}
