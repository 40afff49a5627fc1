// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/fxamacker/cbor/v2"
)

// result is what a run measured and found; -json prints it as is.
type result struct {
	Command    string `json:"command"`
	Machine    string `json:"machine"`
	Mosquitto  string `json:"mosquitto"`
	PostgreSQL string `json:"postgresql"`
	StateDir   string `json:"state_dir"`
	LoadStart  string `json:"load_start"`
	LoadEnd    string `json:"load_end"`

	Devices       int     `json:"devices"`
	Procs         int     `json:"simulator_processes"`
	Readings      int     `json:"readings_per_device"`
	RateOffered   float64 `json:"readings_per_second_offered"`
	PeriodSeconds float64 `json:"period_seconds"`
	Encrypted     bool    `json:"encrypted"`
	BodyBytes     int     `json:"body_bytes"`

	Enrolled       int     `json:"enrolled"`
	EnrollErrors   int     `json:"enroll_errors"`
	EnrollSeconds  float64 `json:"enroll_seconds"`
	Connected      int     `json:"connected"`
	ConnectSeconds float64 `json:"connect_seconds"`

	BrokerRestarted          bool    `json:"broker_restarted"`
	BrokerRestartAtPublished int     `json:"broker_restart_at_published"`
	BrokerDownSeconds        float64 `json:"broker_down_seconds"`
	Reconnected              int     `json:"reconnected"`
	ReconnectSeconds         float64 `json:"reconnect_seconds"`
	ReplicaKilled            bool    `json:"replica_killed"`
	ReplicaRestarted         bool    `json:"replica_restarted"`
	ReplicaKillAtPublished   int     `json:"replica_kill_at_published"`
	ReplicaDownSeconds       float64 `json:"replica_down_seconds"`
	ReplicaStartFailures     int     `json:"replica_start_failures"` // processes that exited before they were ready, started again
	Midstream                bool    `json:"midstream"`              // both happened before the last reading was stored by its device

	Published     int      `json:"published"`
	Expected      int      `json:"expected"`
	InStore       int      `json:"in_store"`
	Lost          int      `json:"lost"`
	Duplicates    int      `json:"duplicates"`
	Unexpected    int      `json:"unexpected"`
	Examples      []string `json:"examples,omitempty"`
	Drained       int      `json:"drained"`
	Queued        int      `json:"queued"`
	DeviceRefused uint64   `json:"device_refused"`

	SteadyReadingsPerSecond float64 `json:"steady_readings_per_second"`
	SteadyWindowSeconds     float64 `json:"steady_window_seconds"`
	StreamReadingsPerSecond float64 `json:"stream_readings_per_second"`
	StreamSeconds           float64 `json:"stream_seconds"`
	CatchUpSeconds          float64 `json:"catch_up_seconds"`

	VerifierAccepted   float64 `json:"verifier_accepted"`
	VerifierDuplicates float64 `json:"verifier_duplicates"`
	VerifierRefused    float64 `json:"verifier_refused"`
	VerifierParked     float64 `json:"verifier_parked"`

	Usage         []roleUsage  `json:"usage"`
	Store         []tableUsage `json:"store"`
	DatabaseBytes int64        `json:"database_bytes"`

	WallSeconds float64  `json:"wall_seconds"`
	Failures    []string `json:"failures"`
}

// roleUsage is the CPU time and memory of one role over the run.
type roleUsage struct {
	Role      string `json:"role"`
	Processes int    `json:"processes"`
	// CPU seconds in each phase; Total is everything up to the end of the
	// catch-up, setup included.
	EnrollCPU  float64 `json:"enroll_cpu_seconds"`
	ConnectCPU float64 `json:"connect_cpu_seconds"`
	StreamCPU  float64 `json:"stream_cpu_seconds"`
	TotalCPU   float64 `json:"total_cpu_seconds"`
	// PeakRSS is the sum, over the processes running side by side, of
	// each one's peak resident set (the largest of a slot's
	// incarnations); 0: not measured.
	PeakRSS int64 `json:"peak_rss_bytes"`
}

// tableUsage is one table of the store at the end of the run.
type tableUsage struct {
	Table string `json:"table"`
	Rows  int64  `json:"rows"`
	Bytes int64  `json:"bytes"` // pg_total_relation_size
}

func usageTable(f *fleet, c0, c1, c2, c3 cpuSample) []roleUsage {
	_, brokerPeak := f.brokerRole.usage()
	_, servicePeak := f.serviceRole.usage()
	_, simPeak := f.simRole.usage()
	row := func(name string, procs int, get func(cpuSample) float64, peak int64) roleUsage {
		return roleUsage{Role: name, Processes: procs, EnrollCPU: get(c1) - get(c0), ConnectCPU: get(c2) - get(c1),
			StreamCPU: get(c3) - get(c2), TotalCPU: get(c3), PeakRSS: peak}
	}
	return []roleUsage{
		row("broker (mosquitto)", f.brokerRole.processes(), func(c cpuSample) float64 { return c.broker }, brokerPeak),
		row(fmt.Sprintf("service (%d replicas)", len(f.replicas)), f.serviceRole.processes(), func(c cpuSample) float64 { return c.service }, servicePeak),
		row("PostgreSQL", 0, func(c cpuSample) float64 { return c.postgres }, 0),
		row("device simulators", f.simRole.processes(), func(c cpuSample) float64 { return c.sims }, simPeak),
	}
}

// judge lists what the run failed to show.
func (r *result) judge() {
	fail := func(format string, args ...any) { r.Failures = append(r.Failures, fmt.Sprintf(format, args...)) }
	if r.Enrolled != r.Devices {
		fail("%d of %d devices enrolled", r.Enrolled, r.Devices)
	}
	if r.Connected != r.Devices {
		fail("%d of %d devices connected", r.Connected, r.Devices)
	}
	if !r.BrokerRestarted {
		fail("the broker was not restarted")
	} else if r.Reconnected != r.Devices {
		fail("%d of %d devices reconnected after the broker restart", r.Reconnected, r.Devices)
	}
	if !r.ReplicaKilled || !r.ReplicaRestarted {
		fail("the replica was not killed and restarted")
	}
	if (r.BrokerRestarted || r.ReplicaKilled) && !r.Midstream {
		fail("the restarts did not both happen mid-stream (at %d and %d of %d readings): the stream is too short for them, give more -readings or a lower -rate",
			r.BrokerRestartAtPublished, r.ReplicaKillAtPublished, r.Devices*r.Readings)
	}
	if r.Expected == 0 {
		fail("the records table was not checked")
	}
	if r.Lost > 0 {
		fail("%d readings lost", r.Lost)
	}
	if r.Duplicates > 0 {
		fail("%d readings accepted twice", r.Duplicates)
	}
	if r.Unexpected > 0 {
		fail("%d unexpected records", r.Unexpected)
	}
	if r.Expected > 0 && r.Drained != r.Devices {
		fail("%d of %d outboxes drained (%d messages still queued)", r.Drained, r.Devices, r.Queued)
	}
	if r.DeviceRefused > 0 {
		fail("the broker refused %d messages", r.DeviceRefused)
	}
	if r.VerifierRefused > 0 {
		fail("the verifiers refused %.0f messages", r.VerifierRefused)
	}
}

// decodeReadings decodes a records row's readings (the store's
// deterministic CBOR array of [time_ms, body]) and returns the bodies.
func decodeReadings(b []byte) ([][]byte, error) {
	var rows []struct {
		_    struct{} `cbor:",toarray"`
		Time int64
		Body []byte
	}
	if err := cbor.Unmarshal(b, &rows); err != nil {
		return nil, err
	}
	out := make([][]byte, len(rows))
	for i, r := range rows {
		out[i] = r.Body
	}
	return out, nil
}

func printJSON(w io.Writer, r *result) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(r)
}

func printTables(w io.Writer, r *result) {
	enc := "signed only"
	if r.Encrypted {
		enc = "session-key encrypted"
	}
	fmt.Fprintf(w, "d2c fleet benchmark: %s\n", r.Machine)
	fmt.Fprintf(w, "command: %s\n", r.Command)
	fmt.Fprintf(w, "fleet: %d devices in %d simulator processes, %d readings each (%d-byte bodies, %s), one every %.2f s: %.0f readings/s offered\n",
		r.Devices, r.Procs, r.Readings, r.BodyBytes, enc, r.PeriodSeconds, r.RateOffered)
	fmt.Fprintf(w, "peers: mosquitto %s (config from d2c broker config, persistence); PostgreSQL %s; 2 replicas of d2c cloud serve (registrar, verifier, crl)\n",
		r.Mosquitto, r.PostgreSQL)
	fmt.Fprintf(w, "device state: %s\n", r.StateDir)
	fmt.Fprintf(w, "load average: %s at start, %s at end; run time %.1f s\n\n", r.LoadStart, r.LoadEnd, r.WallSeconds)

	perSec := func(n int, s float64) string {
		if s <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f/s", float64(n)/s)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tdevices\ttime\trate\t")
	fmt.Fprintf(tw, "enroll (own P-256 key, one-time token, EST through 2 replicas)\t%d\t%.1f s\t%s\t\n", r.Enrolled, r.EnrollSeconds, perSec(r.Enrolled, r.EnrollSeconds))
	fmt.Fprintf(tw, "connect (mutual TLS 1.3 to mosquitto)\t%d\t%.1f s\t%s\t\n", r.Connected, r.ConnectSeconds, perSec(r.Connected, r.ConnectSeconds))
	fmt.Fprintf(tw, "reconnect after the broker restart (from its accepting again)\t%d\t%.1f s\t%s\t\n", r.Reconnected, r.ReconnectSeconds, perSec(r.Reconnected, r.ReconnectSeconds))
	tw.Flush()
	fmt.Fprintf(w, "broker stopped (SIGTERM) after %d readings, accepting again %.1f s later; replica-2 killed (SIGKILL) after %d readings, ready again %.1f s later; both mid-stream: %v\n",
		r.BrokerRestartAtPublished, r.BrokerDownSeconds, r.ReplicaKillAtPublished, r.ReplicaDownSeconds, r.Midstream)
	if r.ReplicaStartFailures > 0 {
		fmt.Fprintf(w, "replica processes that exited before they were ready (verifier not connected and subscribed within 30 s), started again: %d\n", r.ReplicaStartFailures)
	}
	fmt.Fprintln(w)

	fmt.Fprintf(w, "readings: %d published, %d expected in the store, %d there; lost %d, accepted twice %d, unexpected %d; %d of %d outboxes drained\n",
		r.Published, r.Expected, r.InStore, r.Lost, r.Duplicates, r.Unexpected, r.Drained, r.Devices)
	for _, e := range r.Examples {
		fmt.Fprintf(w, "  %s\n", e)
	}
	fmt.Fprintf(w, "verified readings/s: %.0f steady (%.1f s before the broker restart; %.0f offered), %.0f over the whole stream (restarts included, %.1f s)\n",
		r.SteadyReadingsPerSecond, r.SteadyWindowSeconds, r.RateOffered, r.StreamReadingsPerSecond, r.StreamSeconds+r.CatchUpSeconds)
	fmt.Fprintf(w, "catch-up: the store held every reading %.1f s after the last was stored by its device\n", r.CatchUpSeconds)
	fmt.Fprintf(w, "verifiers (metrics, at least: a killed process as of its last scrape, one that never became ready not at all): %.0f records accepted, %.0f duplicates dropped, %.0f refused, %.0f parked\n\n",
		r.VerifierAccepted, r.VerifierDuplicates, r.VerifierRefused, r.VerifierParked)

	n := float64(r.Devices)
	readings := float64(max(1, r.Published))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "CPU and memory\tprocs\tenroll s\tconnect s\tstream s\ttotal s\t|\tms/device\tµs/reading\t|\tpeak RSS MiB\tKiB/device\t")
	for _, u := range r.Usage {
		procs, rss, perDev := "-", "-", "-"
		if u.Processes > 0 {
			procs = fmt.Sprint(u.Processes)
		}
		if u.PeakRSS > 0 {
			rss = fmt.Sprintf("%.0f", float64(u.PeakRSS)/(1<<20))
			perDev = fmt.Sprintf("%.1f", float64(u.PeakRSS)/1024/n)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t|\t%.2f\t%.0f\t|\t%s\t%s\t\n", u.Role, procs, u.EnrollCPU, u.ConnectCPU, u.StreamCPU, u.TotalCPU,
			u.TotalCPU*1000/n, u.StreamCPU*1e6/readings, rss, perDev)
	}
	tw.Flush()
	fmt.Fprintln(w, "CPU seconds in each phase (stream: from the first reading to the last in the store, restarts included); total: up to then,")
	fmt.Fprintln(w, "setup included. ms/device = total / devices; µs/reading = stream / readings. Peak RSS: summed over the processes running")
	fmt.Fprintln(w, "side by side, each the largest of its incarnations (the restarted broker, the killed replica); PostgreSQL's not measured.")
	fmt.Fprintln(w)

	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "store (PostgreSQL)\trows\trows/device\tbytes\tbytes/device\t")
	var rows, bytes int64
	for _, t := range r.Store {
		rows += t.Rows
		bytes += t.Bytes
		if t.Rows == 0 && t.Bytes <= 32<<10 {
			continue // an empty table: its indexes' first pages
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%d\t%.0f\t\n", t.Table, t.Rows, float64(t.Rows)/n, t.Bytes, float64(t.Bytes)/n)
	}
	fmt.Fprintf(tw, "all tables\t%d\t%.2f\t%d\t%.0f\t\n", rows, float64(rows)/n, bytes, float64(bytes)/n)
	fmt.Fprintf(tw, "database\t\t\t%d\t%.0f\t\n", r.DatabaseBytes, float64(r.DatabaseBytes)/n)
	tw.Flush()
	fmt.Fprintln(w, "bytes: pg_total_relation_size (table, indexes, TOAST; dead tuples included, as on disk at the end); empty tables left out.")
	if len(r.Failures) > 0 {
		fmt.Fprintf(w, "\nFAILED: %s\n", strings.Join(r.Failures, "; "))
	}
}
