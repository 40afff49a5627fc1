// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package audit is the device's tamper-evident audit log: an append-only
// chain of security events (enrollment, renewal, attestation, update
// install / confirm / revert / refusal, refused commands and messages,
// consent changes, decommissioning), each record holding the SHA-256 of
// the one before it, and signed heads that the device publishes so that
// the cloud can tell later whether the log was cut or rewritten.
//
// # Using it
//
// On the device:
//
//	log, err := audit.Open(audit.Config{Dir: filepath.Join(store.Dir(), "audit"), Now: store.Clock().Now})
//	...
//	seq, err := log.Append(ctx, audit.KindConsent, audit.Detail{"stream": "location", "granted": "false"})
//	// or a typed helper: log.Renewal(ctx, id.Certificate()), log.UpdateResult(ctx, ...)
//
//	rep, _ := audit.NewHeadReporter(log, audit.HeadReporterConfig{
//		Signer: id.Key, DeviceID: id.DeviceID,
//		Publish: func(ctx context.Context, stream string, body []byte) error {
//			return client.Publish(ctx, stream, transport.Reading{Time: time.Now(), Body: body})
//		},
//	})
//	go rep.Run(ctx)
//
// Other packages do not import this one (identity/audit imports identity;
// transport and update import identity): the application wires them. The
// update agent's outcomes:
//
//	agentCfg.Report = func(ctx context.Context, r update.Result) {
//		_ = log.UpdateResult(ctx, r.Event, r.Version, r.From, r.Reason)
//		telemetryReport(ctx, r) // updatelink.TelemetryReporter, if also wanted
//	}
//
// Refusals seen by the transport client: [Log.MessageRefused] shows the
// OnRefused function.
//
// In the cloud, for each signed head received on the "audit.head" stream:
//
//	h, err := audit.VerifyHead(body, registeredCert) // after checking the certificate's chain
//	err = audit.CheckNextHead(lastHead[h.Device], h)  // not older, no fork
//	lastHead[h.Device] = h
//
// and, when a log is uploaded ([Log.Export]) or inspected (d2c audit
// verify --log DIR --head FILE --cert FILE): [VerifyStream] or
// [VerifyAgainstHead] with the heads kept.
//
// # Format
//
// A log is a directory (mode 0700) of segment files (mode 0600)
// named seg-<sequence number of their first record, 16 hex digits>.log,
// and a lock file. A segment starts with the 8-byte magic "d2caud1\n"
// followed by frames:
//
//	[4-byte big-endian length n][4-byte big-endian CRC-32C of the payload][n-byte payload]
//
// with 0 < n <= limits.AuditRecord (4 KiB). A payload is one record, the
// RFC 8949 core deterministic CBOR encoding of the map
//
//	{1: seq (uint), 2: time (int, Unix ms), 3: kind (text), 4: detail ({text: text}, omitted when empty), 5: prev (32-byte bstr)}
//
// decoded strictly (internal/cborx: no duplicate keys, indefinite lengths,
// tags or unknown keys) and refused unless re-encoding gives the same
// bytes, so that a record has one spelling and one hash.
//
// # Chain
//
// Record 1 has prev = 32 zero bytes; record n+1 has prev = SHA-256 of the
// payload of record n. The head of the log is the sequence number and
// hash of its last record. Every segment starts with a record of kind
// [KindCheckpoint]: the first segment with record 1 (the genesis, written
// by [Open] on an empty directory), each later one with the record that
// follows the previous segment's last, carrying that segment's head in its
// sequence number and prev hash. A checkpoint appears nowhere else.
//
// # Durability
//
// [Log.Append] writes its frame and fsyncs the segment before it returns.
// A power cut during an append leaves at most an incomplete last frame
// (the input ends inside it, its checksum fails at the very end of the
// file, or the file ends in zero bytes): [Open] drops it (that append
// never returned) and keeps every intact record. A rotation creates the
// next segment with its checkpoint and fsyncs the file and the directory
// before the first record goes into it; then, while the segments exceed
// Config.MaxBytes, it deletes the oldest, one at a time, each deletion
// durable before the next, so that the segments kept are always a suffix
// of the chain. The crash tests cut the power at every file-system
// operation of an append and of a rotation.
//
// # What it detects, and what it cannot
//
// [Verify] reports, as a [*ChainError] naming the record, a record
// modified (checksum mismatch, or its hash not the next record's prev), a
// record removed (a gap in sequence numbers), records reordered or
// duplicated, a segment removed from the middle or emptied, and a log
// that does not begin at a checkpoint. With the heads the cloud holds
// ([VerifyAgainstHead], [CheckLog]), it also reports a log cut before a
// signed head ([ErrTruncated]) and a signed record that was rewritten.
//
// It cannot stop an attacker with root on the device from rewriting the
// records appended since the last head the cloud received, or from
// dropping them: a hash chain on the device is only as strong as the
// heads that left it. [HeadReporter] publishes a head shortly after each
// append (HeadReporterConfig.Delay) and every Interval, which bounds that
// window. Records older than the oldest segment kept are forgotten by
// design (Config.MaxBytes); their removal is indistinguishable from
// compaction. See docs/audit.md.
//
// # Compatibility
//
// The segment format and the signed head ([HeadType]) are versioned by
// their magic and typ: a change that older readers cannot read gets a new
// one. The Go API follows the module's version.
package audit
