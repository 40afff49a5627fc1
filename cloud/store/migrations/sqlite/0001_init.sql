-- SPDX-License-Identifier: Apache-2.0
-- Copyright 2026 The d2c Authors

-- d2c cloud store, schema version 1 (SQLite; STRICT tables). Never edit a released
-- migration: add the next one. Times are Unix milliseconds.

-- Every device the fleet has enrolled.
CREATE TABLE devices (
	id           TEXT PRIMARY KEY,
	created_ms   INTEGER NOT NULL,
	forgotten_ms INTEGER
) STRICT;

-- Every certificate the registrar issued. A renewal supersedes the
-- certificate that authenticated it; a revocation revokes.
CREATE TABLE certificates (
	serial        TEXT PRIMARY KEY,            -- lowercase hex, no leading zeros
	device        TEXT NOT NULL REFERENCES devices (id),
	issued_ms     INTEGER NOT NULL,
	not_before_ms INTEGER NOT NULL,
	not_after_ms  INTEGER NOT NULL,
	der           BLOB NOT NULL,              -- the certificate
	chain         BLOB NOT NULL,              -- its issuing chain, DER certificates one after the other
	status        TEXT NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'superseded', 'revoked')),
	superseded_by TEXT REFERENCES certificates (serial),
	superseded_ms INTEGER,
	renewed_from  TEXT REFERENCES certificates (serial), -- the certificate whose renewal issued this one
	revoked_ms    INTEGER,
	reason        INTEGER                      -- RFC 5280 5.3.1 CRLReason
) STRICT;
CREATE INDEX certificates_by_device ON certificates (device, issued_ms);
CREATE INDEX certificates_revoked ON certificates (status, not_after_ms);

-- Enrollment tokens already used (single use), kept until they expire.
CREATE TABLE used_tokens (
	jti        TEXT PRIMARY KEY,
	device     TEXT NOT NULL,
	expires_ms INTEGER NOT NULL,
	used_ms    INTEGER NOT NULL
) STRICT;
CREATE INDEX used_tokens_by_expiry ON used_tokens (expires_ms);

-- The CRL numbers issued (RFC 5280 5.2.3): strictly increasing.
CREATE TABLE crls (
	number         INTEGER PRIMARY KEY,
	this_update_ms INTEGER NOT NULL,
	next_update_ms INTEGER NOT NULL
) STRICT;

-- Replay windows: per device and boot, the highest seq accepted and a
-- 256-bit bitmap of the seqs below it (bit i: top-i seen).
CREATE TABLE replay (
	device TEXT NOT NULL,
	boot   INTEGER NOT NULL,
	top    INTEGER NOT NULL,
	bits   BLOB NOT NULL,
	PRIMARY KEY (device, boot)
) STRICT;

-- Session-key deliveries as received: still encrypted to the cloud key.
CREATE TABLE session_keys (
	device      TEXT NOT NULL,
	key_id      TEXT NOT NULL,
	boot        INTEGER NOT NULL,
	created_ms  INTEGER NOT NULL,
	delivery    BLOB NOT NULL,
	received_ms INTEGER NOT NULL,
	PRIMARY KEY (device, key_id)
) STRICT;
CREATE INDEX session_keys_by_order ON session_keys (device, boot, created_ms);

-- Envelopes parked until their session key arrives: a device's key
-- delivery and its first envelopes may reach different verifiers of a
-- shared subscription. Bounded per device; verified again once the
-- delivery is kept, then deleted.
CREATE TABLE parked (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	device      TEXT NOT NULL,
	key_id      TEXT NOT NULL,
	topic       TEXT NOT NULL,
	payload     BLOB NOT NULL,
	received_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX parked_by_key ON parked (device, key_id);

-- Command IDs reserved, per device: each above every earlier one (the
-- device refuses an ID not above the last it ran).
CREATE TABLE commands (
	device      TEXT NOT NULL,
	id          INTEGER NOT NULL,
	name        TEXT NOT NULL,
	reserved_ms INTEGER NOT NULL,
	PRIMARY KEY (device, id)
) STRICT;

-- The consent ledger: every consent event accepted (a record of the
-- reserved stream d2c.consent), placed by its (boot, seq) in the device's
-- sequence. Kept as the ledger needs them: for each stream, the latest
-- withdrawal and the grants after it.
CREATE TABLE consent (
	device  TEXT NOT NULL,
	stream  TEXT NOT NULL,
	boot    INTEGER NOT NULL,
	seq     INTEGER NOT NULL,
	granted INTEGER NOT NULL,
	purpose TEXT NOT NULL,
	change  INTEGER NOT NULL,
	time_ms INTEGER NOT NULL,
	PRIMARY KEY (device, stream, boot, seq)
) STRICT;

-- Attestation nonces: single use, bound to a device; consumed = deleted.
CREATE TABLE attestation_nonces (
	nonce      TEXT PRIMARY KEY,
	device     TEXT NOT NULL,
	issued_ms  INTEGER NOT NULL,
	expires_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX attestation_nonces_by_device ON attestation_nonces (device, issued_ms);
CREATE INDEX attestation_nonces_by_expiry ON attestation_nonces (expires_ms);

-- Verified telemetry records accepted for the application (the durable
-- sink): inserted in the same transaction that marks their (device, boot,
-- seq) seen, so a record is accepted exactly once and never lost by a
-- verifier that dies after accepting it.
CREATE TABLE records (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	device      TEXT NOT NULL,
	stream      TEXT NOT NULL,
	boot        INTEGER NOT NULL,
	seq         INTEGER NOT NULL,
	time_ms     INTEGER NOT NULL,
	received_ms INTEGER NOT NULL,
	readings    BLOB NOT NULL,               -- deterministic CBOR array of [time_ms, body]
	UNIQUE (device, boot, seq)
) STRICT;
