// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/d2c-iot/d2c/identity/audit"
)

// A device records security events; anyone holding the directory can
// check the chain, and a record modified afterwards is named.
func Example() {
	dir, err := os.MkdirTemp("", "audit-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	log, err := audit.Open(audit.Config{Dir: dir})
	if err != nil {
		panic(err)
	}
	_, _ = log.Append(ctx, audit.KindConsent, audit.Detail{"stream": "location", "granted": "false"})
	_ = log.UpdateResult(ctx, "confirmed", 7, 6, "")
	_ = log.Close()

	rep, err := audit.Verify(dir)
	fmt.Printf("%d records, %d to %d, error %v\n", rep.Records, rep.First, rep.Last, err)

	// Someone edits record 2 in place.
	seg := filepath.Join(dir, "seg-0000000000000001.log")
	b, _ := os.ReadFile(seg)
	_ = os.WriteFile(seg, []byte(strings.Replace(string(b), "false", "true!", 1)), 0o600)
	_, err = audit.Verify(dir)
	fmt.Println(err)
	// Output:
	// 3 records, 1 to 3, error <nil>
	// audit: log tampered: record 2 modified (checksum mismatch)
}

// The cloud holds heads the device signed: a log cut before one of them
// is caught.
func ExampleVerifyAgainstHead() {
	dir, err := os.MkdirTemp("", "audit-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	log, err := audit.Open(audit.Config{Dir: dir})
	if err != nil {
		panic(err)
	}
	_ = log.Decommission(ctx, "returned to vendor")
	seq, hash := log.Head()
	// In the field, the cloud gets this from audit.VerifyHead on what
	// log.SignHead signed and a HeadReporter published.
	head := audit.SignedHead{Device: "sensor-1", Seq: seq, Hash: hash}
	_ = log.Close()

	// An attacker with root cuts the last record.
	seg := filepath.Join(dir, "seg-0000000000000001.log")
	b, _ := os.ReadFile(seg)
	_ = os.WriteFile(seg, b[:len(b)-20], 0o600)

	rep, err := audit.Verify(dir)
	fmt.Printf("alone: %d record, torn tail of %d bytes, error %v\n", rep.Records, rep.TornBytes, err)
	_, err = audit.VerifyAgainstHead(dir, head)
	fmt.Println("against the head:", err)
	// Output:
	// alone: 1 record, torn tail of 78 bytes, error <nil>
	// against the head: audit: log truncated: the log ends at record 1, before the signed head at record 2
}
