-- SPDX-License-Identifier: Apache-2.0
-- Copyright 2026 The d2c Authors

-- Rollout campaigns (docs/update-format.md, "Campaigns"): a release
-- offered to the fleet of one hardware class phase by phase. The service's
-- update role advances or aborts the active campaign from the signed
-- update reports in records, and signs its cohort rule into the
-- repository's timestamp. Every change is a compare-and-set on revision,
-- so replicas never apply one twice.
CREATE TABLE campaigns (
	id               INTEGER PRIMARY KEY AUTOINCREMENT,
	hardware_class   TEXT NOT NULL,
	release_version  INTEGER NOT NULL,            -- the release version offered
	salt             BLOB NOT NULL,               -- 16 random bytes: the devices' order (update.RolloutBucket)
	phases           TEXT NOT NULL,               -- JSON array of {"share", "groups", "delay_ms"}
	abort_at         INTEGER NOT NULL,            -- basis points of failures among finished devices
	min_finished     INTEGER NOT NULL,            -- finished devices before the threshold applies
	state            TEXT NOT NULL CHECK (state IN ('running', 'paused', 'aborted', 'completed')),
	phase            INTEGER NOT NULL,            -- index of the current phase
	phase_started_ms INTEGER NOT NULL,            -- when it started (moved on by a pause's length)
	paused_ms        INTEGER,                     -- when the pause began
	reason           TEXT NOT NULL DEFAULT '',    -- why it was paused or aborted
	revision         INTEGER NOT NULL,            -- 1, then one more at every change
	created_ms       INTEGER NOT NULL,
	updated_ms       INTEGER NOT NULL
) STRICT;
-- One active campaign per hardware class (a repository serves one).
CREATE UNIQUE INDEX campaigns_active ON campaigns (hardware_class) WHERE state IN ('running', 'paused');
CREATE INDEX campaigns_by_class ON campaigns (hardware_class, id);
