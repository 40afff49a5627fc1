// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command fleet measures a whole d2c fleet at scale on one machine, end
// to end, with the real programs (issue 13, "a fleet at scale"):
// thousands of devices, each with its own key, enroll through the cloud
// service, connect to mosquitto with mutual TLS and publish readings;
// mid-stream the broker is restarted and one service replica is killed
// with SIGKILL and started again; every device must come back, with no
// reading lost and none accepted twice.
//
// # What runs
//
//   - PostgreSQL 15, a throwaway cluster on 127.0.0.1 (internal/pgpeer):
//     the fleet's cloud store.
//   - The d2c binary, built from this module (or -d2c): "d2c ca init",
//     "ca server-cert", "ca service-cert" and "ca crl" make the fleet CA and
//     the certificates; "d2c broker config" writes mosquitto's
//     configuration and per-device ACL (with persistence, so that an
//     orderly restart keeps sessions and queued messages).
//   - mosquitto, on a free port of 127.0.0.1, its CRL the one the service
//     publishes.
//   - Two replicas of "d2c cloud serve", separate processes on the one
//     store, each with the registrar, verifier (one shared-subscription
//     group, each replica with its own service certificate) and CRL roles.
//   - Device simulators: this program started again (-procs processes, at
//     most 2,500 devices each, since a device costs about 6 file
//     descriptors and a process may open 20,000). Each device generates
//     its own P-256 key and enrolls over EST through one of the replicas
//     (alternately) with a one-time token the orchestrator issued, then
//     dials mosquitto with its certificate (transport.Dial, the SDK's
//     reconnect backoff unless -retry-min and -retry-max) and publishes
//     -readings readings of 150 bytes, one every devices/-rate seconds,
//     the devices spread evenly over that period: the fleet offers -rate
//     readings per second. Envelopes are session-key encrypted unless
//     -encrypt=false, and the replicas then require encryption. Each
//     device's identity store and outbox live under -state (tmpfs at
//     /dev/shm by default: a real device has its own flash; ten thousand
//     devices' fsyncs on one shared disk would measure that disk).
//
// # The run
//
//  1. Enrollment of every device, timed (8 at a time per simulator).
//  2. Connection of every device, timed: 16 devices of each simulator
//     connecting at a time, as a fleet powering up; ten thousand
//     handshakes in the same second would overflow the broker's accept
//     queue and measure only the backoff.
//  3. The stream. Once 35% of the readings are stored by the devices
//     (and at least two periods have passed), mosquitto is stopped
//     (SIGTERM, as an orderly restart) and started again on the same port
//     after -broker-down; every device reconnects at once, paced only by
//     its backoff, and the time until the last one is back is measured
//     from the moment the new broker accepts connections. Once 65% of the
//     readings are stored (and every device is back, unless 90% are
//     stored), replica 2 is killed (SIGKILL) and started again
//     after -replica-down with the same configuration (the same client ID:
//     its broker session holds what it had not acknowledged). A replica
//     process that exits before it is ready (cloud.Run gives its verifier
//     30 s to connect, which a broker busy with a reconnecting fleet may
//     not grant) is started again 2 s later, as its systemd unit would
//     (Restart=on-failure); such failures are counted and printed.
//  4. The catch-up: until every device's outbox is empty with every
//     message acknowledged, and the records table holds every reading.
//  5. The check, from PostgreSQL: every (device, boot, seq) expected is
//     in the records table exactly once, holding the reading the device
//     published under it, and nothing else is there.
//
// # What it reports
//
// Time to enroll the fleet, time to connect it, time for all devices to
// reconnect after the broker restart; verified readings per second in the
// steady state (records landing in the store between one period after the
// stream's start and the broker restart) beside the rate offered, and over
// the whole stream, restarts included (below the offered rate, the
// steady figure is what the machine verified at most, the rest waiting at
// the broker and in the outboxes until the catch-up; other work on the
// machine lowers it: the load averages are printed); readings lost,
// accepted twice, or unexpected; CPU time per device (per phase, and per
// reading during the stream) and peak resident memory per device of the
// broker (both of its processes), of the service (its replicas, every
// process of the killed one included), of PostgreSQL and of the
// simulators; rows and bytes per device of each table of the store
// (pg_total_relation_size: table, indexes and TOAST, dead tuples
// included, as on disk). With -json the same figures are printed as one
// JSON object (bench/fleet's test reads it).
//
// Everything listens on 127.0.0.1. Every child is killed when the program
// exits, the PostgreSQL cluster is stopped, and the temporary directories
// are removed (-keep leaves them, for a post-mortem); on Linux also when
// the program is killed: its children die with it (PR_SET_PDEATHSIG), and
// a janitor process stops the cluster and removes the directories.
// -timeout bounds the whole run. The exit status is 1 if the fleet lost,
// duplicated or failed to bring back anything.
//
// mosquitto 2.x (Debian package mosquitto) and PostgreSQL's server
// programs (Debian package postgresql) must be installed; run as root,
// the cluster runs as the postgres user. Run it from the module with:
//
//	go run ./bench/fleet -devices 10000 [-readings 10] [-rate 1000] [-procs 4] [-json]
//
// The 10,000-device run takes several minutes on 2 cores.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const (
	stream   = "temp"
	bodySize = 150 // bytes of one reading's body
	// maxPerProc bounds the devices of one simulator process: about 6
	// file descriptors each, 20,000 per process at most.
	maxPerProc = 2500
	fdsPerDev  = 6
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == simFlag {
		os.Exit(runSimulator(os.Args[2]))
	}
	if len(os.Args) == 2 && os.Args[1] == janitorFlag {
		os.Exit(runJanitor())
	}
	var cfg config
	flag.IntVar(&cfg.devices, "devices", 10000, "devices in the fleet, each with its own key and certificate")
	flag.IntVar(&cfg.readings, "readings", 10, "readings each device publishes (at least 5: the restarts happen mid-stream)")
	flag.Float64Var(&cfg.rate, "rate", 1000, "readings per second the whole fleet offers (each device publishes every devices/rate seconds)")
	flag.IntVar(&cfg.procs, "procs", 0, "simulator processes (0: enough for 2,500 devices each, at least 2)")
	flag.BoolVar(&cfg.encrypt, "encrypt", true, "session-key encrypted envelopes (the replicas then require encryption); false: signed only")
	flag.BoolVar(&cfg.json, "json", false, "print the results as one JSON object instead of tables")
	flag.DurationVar(&cfg.timeout, "timeout", 30*time.Minute, "bound on the whole run")
	flag.StringVar(&cfg.d2c, "d2c", "", "d2c binary to run (default: built from this module with go build)")
	flag.StringVar(&cfg.state, "state", "", "directory for the devices' identity stores and outboxes (default: a temporary directory on /dev/shm if it is tmpfs, else in $TMPDIR)")
	flag.DurationVar(&cfg.retryMin, "retry-min", 0, "devices' reconnect backoff, first step (0: the SDK's default, 1s)")
	flag.DurationVar(&cfg.retryMax, "retry-max", 0, "devices' reconnect backoff, largest step (0: the SDK's default, 2m)")
	flag.DurationVar(&cfg.brokerDown, "broker-down", time.Second, "how long the broker stays down in its restart")
	flag.DurationVar(&cfg.replicaDown, "replica-down", 2*time.Second, "how long the killed replica stays down")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the work directories (logs, configuration, store data are removed otherwise)")
	flag.Parse()
	if flag.NArg() > 0 {
		usage("unexpected arguments %q", flag.Args())
	}
	if err := cfg.check(); err != nil {
		usage("%v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	res, err := runFleet(ctx, cfg, os.Stderr)
	cancel()
	stop()
	if res != nil {
		res.Command = commandLine()
		if cfg.json {
			printJSON(os.Stdout, res)
		} else {
			printTables(os.Stdout, res)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/fleet:", err)
		os.Exit(1)
	}
	if len(res.Failures) > 0 {
		fmt.Fprintln(os.Stderr, "bench/fleet: FAILED:", strings.Join(res.Failures, "; "))
		os.Exit(1)
	}
}

func usage(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench/fleet: "+format+"\n", args...)
	flag.Usage()
	os.Exit(2)
}

// config is the run's parameters, from the flags.
type config struct {
	devices, readings, procs int
	rate                     float64
	encrypt, json, keep      bool
	timeout                  time.Duration
	d2c, state               string
	brokerDown, replicaDown  time.Duration
	retryMin, retryMax       time.Duration
}

func (c *config) check() error {
	switch {
	case c.devices < 2 || c.devices > 100_000:
		return fmt.Errorf("-devices %d: want 2 to 100000", c.devices)
	case c.readings < 5 || c.readings > 10_000:
		return fmt.Errorf("-readings %d: want 5 to 10000", c.readings)
	case c.rate <= 0 || c.rate > 100_000:
		return fmt.Errorf("-rate %g: want a positive rate up to 100000 readings/s", c.rate)
	case c.procs < 0 || c.procs > c.devices:
		return fmt.Errorf("-procs %d: want 0 to -devices", c.procs)
	case c.timeout <= 0:
		return fmt.Errorf("-timeout %v: want a positive duration", c.timeout)
	case c.brokerDown < 0 || c.brokerDown > time.Minute || c.replicaDown < 0 || c.replicaDown > time.Minute:
		return fmt.Errorf("-broker-down and -replica-down: want 0 to 1m")
	case c.retryMin < 0 || c.retryMax < 0 || c.retryMax != 0 && c.retryMax < c.retryMin:
		return fmt.Errorf("-retry-min %v, -retry-max %v: want 0 (the default) or positive, the first not above the second", c.retryMin, c.retryMax)
	}
	if c.procs == 0 {
		c.procs = max(2, (c.devices+maxPerProc-1)/maxPerProc)
	}
	if per := (c.devices + c.procs - 1) / c.procs; per > maxPerProc {
		return fmt.Errorf("-procs %d puts %d devices in a simulator: at most %d (about %d file descriptors each, %d per process at most); use -procs %d or more",
			c.procs, per, maxPerProc, fdsPerDev, 20000, (c.devices+maxPerProc-1)/maxPerProc)
	}
	return nil
}

// period is the time between two readings of one device.
func (c *config) period() time.Duration {
	return time.Duration(float64(c.devices) / c.rate * float64(time.Second))
}

// commandLine is the command with every flag's value, set or default.
func commandLine() string {
	args := []string{"go run ./bench/fleet"}
	flag.VisitAll(func(f *flag.Flag) {
		if (f.Name == "d2c" || f.Name == "state") && f.Value.String() == "" {
			return
		}
		args = append(args, "-"+f.Name+"="+f.Value.String())
	})
	return strings.Join(args, " ")
}

// progress writes the run's progress lines, with the time since start.
type progress struct {
	w     io.Writer
	start time.Time
}

func (p *progress) printf(format string, args ...any) {
	fmt.Fprintf(p.w, "%7.1fs  %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}
