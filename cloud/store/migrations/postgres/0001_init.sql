-- SPDX-License-Identifier: Apache-2.0
-- Copyright 2026 The d2c Authors

-- d2c cloud store, schema version 1 (PostgreSQL). Never edit a released
-- migration: add the next one. Times are Unix milliseconds.

-- Every device the fleet has enrolled.
CREATE TABLE devices (
	id           TEXT PRIMARY KEY,
	created_ms   BIGINT NOT NULL,
	forgotten_ms BIGINT
);

-- Every certificate the registrar issued. A renewal supersedes the
-- certificate that authenticated it; a revocation revokes.
CREATE TABLE certificates (
	serial        TEXT PRIMARY KEY,            -- lowercase hex, no leading zeros
	device        TEXT NOT NULL REFERENCES devices (id),
	issued_ms     BIGINT NOT NULL,
	not_before_ms BIGINT NOT NULL,
	not_after_ms  BIGINT NOT NULL,
	der           BYTEA NOT NULL,              -- the certificate
	chain         BYTEA NOT NULL,              -- its issuing chain, DER certificates one after the other
	status        TEXT NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'superseded', 'revoked')),
	superseded_by TEXT REFERENCES certificates (serial),
	superseded_ms BIGINT,
	renewed_from  TEXT REFERENCES certificates (serial), -- the certificate whose renewal issued this one
	revoked_ms    BIGINT,
	reason        INTEGER                      -- RFC 5280 5.3.1 CRLReason
);
CREATE INDEX certificates_by_device ON certificates (device, issued_ms);
CREATE INDEX certificates_revoked ON certificates (status, not_after_ms);

-- Enrollment tokens already used (single use), kept until they expire.
CREATE TABLE used_tokens (
	jti        TEXT PRIMARY KEY,
	device     TEXT NOT NULL,
	expires_ms BIGINT NOT NULL,
	used_ms    BIGINT NOT NULL
);
CREATE INDEX used_tokens_by_expiry ON used_tokens (expires_ms);

-- The CRL numbers issued (RFC 5280 5.2.3): strictly increasing.
CREATE TABLE crls (
	number         BIGINT PRIMARY KEY,
	this_update_ms BIGINT NOT NULL,
	next_update_ms BIGINT NOT NULL
);

-- Replay windows: per device and boot, the highest seq accepted and a
-- 256-bit bitmap of the seqs below it (bit i: top-i seen).
CREATE TABLE replay (
	device TEXT NOT NULL,
	boot   BIGINT NOT NULL,
	top    BIGINT NOT NULL,
	bits   BYTEA NOT NULL,
	PRIMARY KEY (device, boot)
);

-- Session-key deliveries as received: still encrypted to the cloud key.
CREATE TABLE session_keys (
	device      TEXT NOT NULL,
	key_id      TEXT NOT NULL,
	boot        BIGINT NOT NULL,
	created_ms  BIGINT NOT NULL,
	delivery    BYTEA NOT NULL,
	received_ms BIGINT NOT NULL,
	PRIMARY KEY (device, key_id)
);
CREATE INDEX session_keys_by_order ON session_keys (device, boot, created_ms);

-- Envelopes parked until their session key arrives: a device's key
-- delivery and its first envelopes may reach different verifiers of a
-- shared subscription. Bounded per device; verified again once the
-- delivery is kept, then deleted.
CREATE TABLE parked (
	id          BIGSERIAL PRIMARY KEY,
	device      TEXT NOT NULL,
	key_id      TEXT NOT NULL,
	topic       TEXT NOT NULL,
	payload     BYTEA NOT NULL,
	received_ms BIGINT NOT NULL
);
CREATE INDEX parked_by_key ON parked (device, key_id);

-- Command IDs reserved, per device: each above every earlier one (the
-- device refuses an ID not above the last it ran).
CREATE TABLE commands (
	device      TEXT NOT NULL,
	id          BIGINT NOT NULL,
	name        TEXT NOT NULL,
	reserved_ms BIGINT NOT NULL,
	PRIMARY KEY (device, id)
);

-- The consent ledger: every consent event accepted (a record of the
-- reserved stream d2c.consent), placed by its (boot, seq) in the device's
-- sequence. Kept as the ledger needs them: for each stream, the latest
-- withdrawal and the grants after it.
CREATE TABLE consent (
	device  TEXT NOT NULL,
	stream  TEXT NOT NULL,
	boot    BIGINT NOT NULL,
	seq     BIGINT NOT NULL,
	granted BOOLEAN NOT NULL,
	purpose TEXT NOT NULL,
	change  BIGINT NOT NULL,
	time_ms BIGINT NOT NULL,
	PRIMARY KEY (device, stream, boot, seq)
);

-- Attestation nonces: single use, bound to a device; consumed = deleted.
CREATE TABLE attestation_nonces (
	nonce      TEXT PRIMARY KEY,
	device     TEXT NOT NULL,
	issued_ms  BIGINT NOT NULL,
	expires_ms BIGINT NOT NULL
);
CREATE INDEX attestation_nonces_by_device ON attestation_nonces (device, issued_ms);
CREATE INDEX attestation_nonces_by_expiry ON attestation_nonces (expires_ms);

-- Verified telemetry records accepted for the application (the durable
-- sink): inserted in the same transaction that marks their (device, boot,
-- seq) seen, so a record is accepted exactly once and never lost by a
-- verifier that dies after accepting it.
CREATE TABLE records (
	id          BIGSERIAL PRIMARY KEY,
	device      TEXT NOT NULL,
	stream      TEXT NOT NULL,
	boot        BIGINT NOT NULL,
	seq         BIGINT NOT NULL,
	time_ms     BIGINT NOT NULL,
	received_ms BIGINT NOT NULL,
	readings    BYTEA NOT NULL,               -- deterministic CBOR array of [time_ms, body]
	UNIQUE (device, boot, seq)
);
