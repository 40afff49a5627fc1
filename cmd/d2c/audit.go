// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/audit"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

// auditCommands are "d2c audit verify" and "d2c audit show".
func auditCommands() []*command {
	return []*command{auditVerifyCommand(), auditShowCommand()}
}

func auditVerifyCommand() *command {
	return &command{
		path:    "audit verify",
		summary: "check a device's audit log: its hash chain, and the heads it signed",
		usage:   "--log DIR [--head FILE ... --cert FILE] [--json]",
		details: `
Walks the audit log in DIR (a copy of the device's log directory) and checks
that it is one unbroken chain: every record intact, sequence numbers
consecutive, each record holding the hash of the one before it, every segment
opened by its checkpoint. Prints a summary, or exactly what is wrong: record N
modified, record N missing, record N out of order, and exits with status 1.

With --head (repeatable) and --cert it also checks heads the device signed
and published to the cloud (compact JWS files, as the cloud stored them):
each must verify against the device certificate in --cert, and name a record
that is in the log with the same hash. A log that ends before a signed head
was truncated; a record that differs from its head was rewritten. --cert is
trusted as given: use the certificate the fleet registered for the device.

The chain alone cannot show that records were cut off the end or that the
whole log was rewritten by someone with root on the device: only the signed
heads can. Nothing in DIR is modified; a torn last record (a power cut during
an append that never returned) is reported and ignored.

With --json, a log that verifies is one object: "log" (DIR), "records",
"segments", "first" and "last" (sequence numbers), "first_time" and
"last_time" (RFC 3339, null for an empty log), "head" (hex SHA-256 of the last
record), "from_genesis" (false if older records were compacted away),
"torn_bytes", and "signed_heads": a list of {"device", "seq", "time",
"checked"} ("checked" is false for a head older than the records kept). A log
that fails prints nothing on stdout: the fault is on stderr, with exit status 1.`,
		example: `d2c audit verify --log ./sensor-0042/audit
d2c audit verify --log ./sensor-0042/audit --head sensor-0042.head.jws --cert sensor-0042.crt
d2c audit verify --log ./sensor-0042/audit --json`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("log", "", "audit log directory (required)")
			var heads stringList
			fl.Var(&heads, "head", "a signed head (compact JWS file) of the device; repeatable; needs --cert")
			certFile := fl.String("cert", "", "the device certificate (PEM, leaf first) the signed heads are checked against")
			asJSON := fl.Bool("json", false, "print one JSON object (fields in the details below)")
			return func(ctx context.Context, s streams) error {
				if *dir == "" {
					return usageErrorf("--log is required")
				}
				if (len(heads) > 0) != (*certFile != "") {
					return usageErrorf("--head and --cert go together")
				}
				signed, err := readHeads(heads, *certFile)
				if err != nil {
					return err
				}
				rep, err := audit.VerifyAgainstHead(*dir, signed...)
				if err != nil {
					return withHint(err, auditHint(err))
				}
				if *asJSON {
					return writeJSON(s.stdout, auditReportJSON(*dir, rep, signed))
				}
				printAuditReport(s.stdout, *dir, rep, signed)
				return nil
			}
		},
	}
}

// readHeads reads and verifies signed head files against the certificate.
func readHeads(files []string, certFile string) ([]audit.SignedHead, error) {
	if len(files) == 0 {
		return nil, nil
	}
	b, err := atomicfile.ReadFile(certFile, limits.PEMFile)
	if err != nil {
		return nil, err
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	var heads []audit.SignedHead
	for _, f := range files {
		tok, err := atomicfile.ReadFile(f, limits.AuditHeadToken+2)
		if err != nil {
			return nil, err
		}
		h, err := audit.VerifyHead([]byte(strings.TrimSpace(string(tok))), certs[0])
		if err != nil {
			return nil, withHint(fmt.Errorf("signed head %s: %w", f, err), auditHint(err))
		}
		heads = append(heads, h)
	}
	return heads, nil
}

// auditHint says what to do about an audit failure.
func auditHint(err error) string {
	switch {
	case errors.Is(err, audit.ErrTruncated):
		return "records the device had vouched for are gone: the log was cut or replaced after the head was signed; " +
			"keep a read-only copy of the directory as evidence and treat the device as compromised"
	case errors.Is(err, audit.ErrTampered):
		return "the log was changed after it was written: keep a read-only copy of the directory as evidence and " +
			"investigate the device; it can record again only into a new log directory"
	case errors.Is(err, audit.ErrSignature):
		return "the head does not verify against --cert: check that --cert is this device's registered certificate; " +
			"if it is, the head was forged or altered"
	case errors.Is(err, audit.ErrWrongDevice):
		return "the head is another device's: check --head and --cert"
	case errors.Is(err, audit.ErrMalformed), errors.Is(err, audit.ErrTooLarge):
		return "the input is not a d2c audit log or signed head, or it is damaged: check --log and --head"
	}
	return ""
}

func printAuditReport(w io.Writer, dir string, rep audit.Report, heads []audit.SignedHead) {
	if rep.Records == 0 {
		fmt.Fprintf(w, "audit log %s: empty\n", dir)
		return
	}
	fmt.Fprintf(w, "audit log %s: chain intact\n", dir)
	from := "from the log's first record"
	if !rep.FromGenesis {
		from = fmt.Sprintf("records before %d compacted away", rep.First)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "records:\t%d (%d to %d) in %d segment%s, %s\n", rep.Records, rep.First, rep.Last, rep.Segments, plural(rep.Segments), from)
	fmt.Fprintf(tw, "first:\trecord %d at %s\n", rep.First, rep.FirstTime.Format(time.RFC3339))
	fmt.Fprintf(tw, "last:\trecord %d at %s\n", rep.Last, rep.LastTime.Format(time.RFC3339))
	fmt.Fprintf(tw, "head:\t%s\n", hex.EncodeToString(rep.Head[:]))
	for _, h := range heads {
		state := "in the log"
		if h.Seq < rep.First {
			state = "older than the records kept: not checked"
		}
		fmt.Fprintf(tw, "signed head:\trecord %d of %s, signed at %s: %s\n", h.Seq, h.Device, h.Time.Format(time.RFC3339), state)
	}
	if rep.TornBytes > 0 {
		fmt.Fprintf(tw, "torn tail:\t%d bytes ignored (an append cut short by a power failure, never acknowledged)\n", rep.TornBytes)
	}
	tw.Flush()
	if len(heads) == 0 {
		fmt.Fprintln(w, "no signed head given: truncation or a rewrite of the whole log would go unnoticed (--head, --cert)")
	}
}

// auditReport is "audit verify --json"; its field names are stable.
type auditReport struct {
	Log         string            `json:"log"`
	Records     int               `json:"records"`
	Segments    int               `json:"segments"`
	First       uint64            `json:"first"`
	Last        uint64            `json:"last"`
	FirstTime   *string           `json:"first_time"`
	LastTime    *string           `json:"last_time"`
	Head        string            `json:"head"`
	FromGenesis bool              `json:"from_genesis"`
	TornBytes   int64             `json:"torn_bytes"`
	SignedHeads []auditSignedHead `json:"signed_heads"`
}

type auditSignedHead struct {
	Device  string `json:"device"`
	Seq     uint64 `json:"seq"`
	Time    string `json:"time"`
	Checked bool   `json:"checked"`
}

func auditReportJSON(dir string, rep audit.Report, heads []audit.SignedHead) auditReport {
	r := auditReport{Log: dir, Records: rep.Records, Segments: rep.Segments, First: rep.First, Last: rep.Last,
		Head: hex.EncodeToString(rep.Head[:]), FromGenesis: rep.FromGenesis, TornBytes: rep.TornBytes,
		SignedHeads: []auditSignedHead{}}
	if rep.Records > 0 {
		ft, lt := rep.FirstTime.UTC().Format(time.RFC3339Nano), rep.LastTime.UTC().Format(time.RFC3339Nano)
		r.FirstTime, r.LastTime = &ft, &lt
	}
	for _, h := range heads {
		r.SignedHeads = append(r.SignedHeads, auditSignedHead{Device: h.Device, Seq: h.Seq,
			Time: h.Time.UTC().Format(time.RFC3339Nano), Checked: h.Seq >= rep.First})
	}
	return r
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func auditShowCommand() *command {
	return &command{
		path:    "audit show",
		summary: "list the records of a device's audit log",
		usage:   "--log DIR [--kind KIND] [--json]",
		details: `
Prints the records of the audit log in DIR, oldest first: sequence number,
time (the device's clock), kind and detail. --kind keeps one kind ("consent")
or a family ("update" keeps update.install, update.confirm, ...).

The records are checked as they are read, as "audit verify" does: if the chain
is broken, the records before the fault are listed, then the fault, with exit
status 1.

With --json, one object {"records": [...]}, each record {"seq", "time" (RFC
3339, UTC, milliseconds), "kind", "detail" (an object of strings, {} when
none)}; on a broken chain, the records before the fault, and the fault on
stderr with exit status 1.`,
		example: `d2c audit show --log ./sensor-0042/audit --kind update
d2c audit show --log ./sensor-0042/audit --json`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("log", "", "audit log directory (required)")
			kind := fl.String("kind", "", "only records of this kind, or of this family (the part before a '.')")
			asJSON := fl.Bool("json", false, "print one JSON object (fields in the details below)")
			return func(ctx context.Context, s streams) error {
				if *dir == "" {
					return usageErrorf("--log is required")
				}
				recs, _, err := audit.ReadDir(*dir)
				recs = slices.DeleteFunc(recs, func(r audit.Record) bool {
					k := string(r.Kind)
					return *kind != "" && k != *kind && !strings.HasPrefix(k, *kind+".")
				})
				if *asJSON {
					out := struct {
						Records []auditRecord `json:"records"`
					}{Records: []auditRecord{}}
					for _, r := range recs {
						d := r.Detail
						if d == nil {
							d = audit.Detail{}
						}
						out.Records = append(out.Records, auditRecord{Seq: r.Seq, Time: r.Time.UTC().Format(time.RFC3339Nano),
							Kind: string(r.Kind), Detail: d})
					}
					if jerr := writeJSON(s.stdout, out); jerr != nil {
						return jerr
					}
				} else {
					tw := tabwriter.NewWriter(s.stdout, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tDETAIL")
					for _, r := range recs {
						fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", r.Seq, r.Time.Format(time.RFC3339), r.Kind, formatDetail(r.Detail))
					}
					tw.Flush()
				}
				if err != nil {
					return withHint(err, auditHint(err))
				}
				return nil
			}
		},
	}
}

// auditRecord is a record of "audit show --json"; its field names are
// stable.
type auditRecord struct {
	Seq    uint64            `json:"seq"`
	Time   string            `json:"time"`
	Kind   string            `json:"kind"`
	Detail map[string]string `json:"detail"`
}

// formatDetail prints a detail as key=value pairs sorted by key, quoting
// values that hold spaces, quotes or characters that are not printable.
func formatDetail(d audit.Detail) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		v := d[k]
		if v == "" || strings.ContainsAny(v, " \t\"'=\\") || strconv.Quote(v) != `"`+v+`"` {
			v = strconv.Quote(v)
		}
		b.WriteString(k + "=" + v)
	}
	return b.String()
}
