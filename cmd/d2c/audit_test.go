// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/audit"
	"github.com/d2c-iot/d2c/internal/testpki"
)

// TestAuditCommands runs "audit verify" and "audit show" through
// runCommand (they are not in the command table yet): an intact log, one
// checked against a signed head, a record modified, a log truncated
// before its signed head, a forged head, and the listing.
func TestAuditCommands(t *testing.T) {
	tmp := t.TempDir()
	ca, err := identity.InitCA(filepath.Join(tmp, "ca"), identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	dev := testpki.Device(t, ca, "sensor-1")
	other := testpki.Device(t, ca, "sensor-2")
	certFile := filepath.Join(tmp, "sensor-1.crt")
	if err := os.WriteFile(certFile, identity.EncodeCertificatesPEM(dev.Leaf), 0o644); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(tmp, "audit")
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	log, err := audit.Open(audit.Config{Dir: dir, Now: func() time.Time { now = now.Add(time.Second); return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(log.Enrollment(ctx, dev.Leaf))
	must(log.UpdateResult(ctx, "installed", 7, 6, ""))
	must(log.UpdateResult(ctx, "refused", 5, 7, "rollback: release 5 below the floor 7"))
	must(log.ConsentChange(ctx, "location", false))
	headFile := filepath.Join(tmp, "head.jws")
	tok, err := log.SignHead(dev.PrivateKey.(crypto.Signer), "sensor-1")
	must(err)
	must(os.WriteFile(headFile, append(tok, '\n'), 0o644))
	forged, err := log.SignHead(other.PrivateKey.(crypto.Signer), "sensor-1")
	must(err)
	forgedFile := filepath.Join(tmp, "forged.jws")
	must(os.WriteFile(forgedFile, forged, 0o644))
	must(log.Close())

	d2c := func(cmd *command, wantCode int, args ...string) (stdout, stderr string) {
		t.Helper()
		var o, e bytes.Buffer
		if code := runCommand(context.Background(), cmd, args, streams{stdout: &o, stderr: &e}); code != wantCode {
			t.Fatalf("d2c %s %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", cmd.path, strings.Join(args, " "), code, wantCode, &o, &e)
		}
		return o.String(), e.String()
	}
	match := func(what, out, re string) {
		t.Helper()
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("%s does not match %q:\n%s", what, re, out)
		}
	}
	verify, show := auditVerifyCommand(), auditShowCommand()

	stdout, _ := d2c(verify, exitOK, "--log", dir)
	match("verify", stdout, `(?m)^audit log .*: chain intact$`)
	match("verify", stdout, `(?m)^records: +5 \(1 to 5\) in 1 segment, from the log's first record$`)
	match("verify", stdout, `(?m)^last: +record 5 at 2026-11-01T12:00:05Z$`)
	match("verify", stdout, `(?m)^no signed head given`)

	stdout, _ = d2c(verify, exitOK, "--log", dir, "--head", headFile, "--cert", certFile)
	match("verify with a head", stdout, `(?m)^signed head: +record 5 of sensor-1, signed at 2026-11-01T12:00:06Z: in the log$`)

	_, stderr := d2c(verify, exitError, "--log", dir, "--head", forgedFile, "--cert", certFile)
	match("forged head", stderr, `audit: head signature invalid: signed by another key`)
	match("forged head", stderr, `(?m)^hint: the head does not verify against --cert`)

	// --json: the documented fields.
	stdout, _ = d2c(verify, exitOK, "--log", dir, "--head", headFile, "--cert", certFile, "--json")
	var rep auditReport
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	must(dec.Decode(&rep))
	if rep.Log != dir || rep.Records != 5 || rep.First != 1 || rep.Last != 5 || !rep.FromGenesis || len(rep.Head) != 64 ||
		rep.LastTime == nil || *rep.LastTime != "2026-11-01T12:00:05Z" || len(rep.SignedHeads) != 1 ||
		rep.SignedHeads[0] != (auditSignedHead{Device: "sensor-1", Seq: 5, Time: "2026-11-01T12:00:06Z", Checked: true}) {
		t.Errorf("audit verify --json: %+v\n%s", rep, stdout)
	}
	stdout, _ = d2c(show, exitOK, "--log", dir, "--kind", "update", "--json")
	var shown struct {
		Records []map[string]any `json:"records"`
	}
	must(json.Unmarshal([]byte(stdout), &shown))
	if len(shown.Records) != 2 || shown.Records[1]["seq"] != 4.0 || shown.Records[1]["kind"] != "update.refused" ||
		shown.Records[1]["time"] != "2026-11-01T12:00:04Z" ||
		shown.Records[1]["detail"].(map[string]any)["reason"] != "rollback: release 5 below the floor 7" {
		t.Errorf("audit show --json:\n%s", stdout)
	}

	d2c(verify, exitUsage, "--log", dir, "--head", headFile)
	d2c(verify, exitUsage)

	stdout, _ = d2c(show, exitOK, "--log", dir)
	match("show", stdout, `(?m)^SEQ +TIME +KIND +DETAIL$`)
	match("show", stdout, `(?m)^2 +2026-11-01T12:00:02Z +enrollment +device=sensor-1 key=\S+ not_after=\S+ serial=[0-9a-f]+$`)
	match("show", stdout, `(?m)^4 +\S+ +update.refused +event=refused from=7 reason="rollback: release 5 below the floor 7" version=5$`)
	stdout, _ = d2c(show, exitOK, "--log", dir, "--kind", "update")
	if n := strings.Count(stdout, "\n"); n != 3 || strings.Contains(stdout, "consent") {
		t.Errorf("show --kind update: %d lines\n%s", n, stdout)
	}

	// Record 3 modified in place.
	tampered := filepath.Join(tmp, "tampered")
	copyAuditDir(t, dir, tampered)
	seg := filepath.Join(tampered, "seg-0000000000000001.log")
	b, err := os.ReadFile(seg)
	must(err)
	must(os.WriteFile(seg, bytes.Replace(b, []byte("installed"), []byte("INSTALLED"), 1), 0o600))
	_, stderr = d2c(verify, exitError, "--log", tampered)
	match("tampered", stderr, `(?m)^d2c: audit verify: audit: log tampered: record 3 modified \(checksum mismatch\)$`)
	match("tampered", stderr, `(?m)^hint: the log was changed after it was written`)
	stdout, stderr = d2c(show, exitError, "--log", tampered)
	match("show tampered", stdout, `(?m)^2 +\S+ +enrollment`)
	if strings.Contains(stdout, "update.refused") {
		t.Errorf("show lists records after the fault:\n%s", stdout)
	}
	match("show tampered", stderr, `record 3 modified`)

	// The last record cut off: the chain alone holds, the signed head does not.
	truncated := filepath.Join(tmp, "truncated")
	copyAuditDir(t, dir, truncated)
	seg = filepath.Join(truncated, "seg-0000000000000001.log")
	b, err = os.ReadFile(seg)
	must(err)
	i := bytes.LastIndex(b, []byte("consent"))
	must(os.WriteFile(seg, b[:i-5], 0o600))
	stdout, _ = d2c(verify, exitOK, "--log", truncated)
	match("truncated alone", stdout, `(?m)^torn tail: +\d+ bytes ignored`)
	_, stderr = d2c(verify, exitError, "--log", truncated, "--head", headFile, "--cert", certFile)
	match("truncated", stderr, `audit: log truncated: the log ends at record 4, before the signed head at record 5`)
	match("truncated", stderr, `(?m)^hint: records the device had vouched for are gone`)
}

func copyAuditDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	es, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAuditHelp checks, before the commands are in the table, what
// TestEveryCommandHasHelp and TestExamplesAreValid check of every command.
func TestAuditHelp(t *testing.T) {
	for _, c := range auditCommands() {
		var o, e bytes.Buffer
		if code := runCommand(t.Context(), c, []string{"--help"}, streams{stdout: &o, stderr: &e}); code != exitOK || e.Len() != 0 {
			t.Errorf("d2c %s --help: exit %d, stderr %q", c.path, code, e.String())
		}
		for _, want := range []string{c.summary, "Usage:\n  d2c " + c.path, "Example:\n  d2c ", "Flags:"} {
			if !strings.Contains(o.String(), want) {
				t.Errorf("d2c %s --help lacks %q", c.path, want)
			}
		}
		fs := flag.NewFlagSet(c.path, flag.ContinueOnError)
		c.flags(fs)
		for _, line := range exampleCommands(c.example) {
			args := shellWords(line)
			if len(args) < 3 || strings.Join(args[1:3], " ") != c.path {
				t.Errorf("%s: example %q is not this command", c.path, line)
				continue
			}
			for _, a := range args[3:] {
				if name, ok := strings.CutPrefix(a, "--"); ok && fs.Lookup(name) == nil {
					t.Errorf("%s: example %q gives --%s, which it does not define", c.path, line, name)
				}
			}
		}
	}
}
