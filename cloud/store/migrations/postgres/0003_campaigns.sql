-- SPDX-License-Identifier: Apache-2.0
-- Copyright 2026 The d2c Authors

-- Rollout campaigns (docs/update-format.md, "Campaigns"): a release
-- offered to the fleet of one hardware class phase by phase. The service's
-- update role advances or aborts the active campaign from the signed
-- update reports in records, and signs its cohort rule into the
-- repository's timestamp. Every change is a compare-and-set on revision,
-- so replicas never apply one twice.
CREATE TABLE campaigns (
	id               BIGSERIAL PRIMARY KEY,
	hardware_class   TEXT NOT NULL,
	release_version  BIGINT NOT NULL,            -- the release version offered
	salt             BYTEA NOT NULL,             -- 16 random bytes: the devices' order (update.RolloutBucket)
	phases           TEXT NOT NULL,              -- JSON array of {"share", "groups", "delay_ms"}
	abort_at         BIGINT NOT NULL,            -- basis points of failures among finished devices
	min_finished     BIGINT NOT NULL,            -- finished devices before the threshold applies
	state            TEXT NOT NULL CHECK (state IN ('running', 'paused', 'aborted', 'completed')),
	phase            BIGINT NOT NULL,            -- index of the current phase
	phase_started_ms BIGINT NOT NULL,            -- when it started (moved on by a pause's length)
	paused_ms        BIGINT,                     -- when the pause began
	reason           TEXT NOT NULL DEFAULT '',   -- why it was paused or aborted
	revision         BIGINT NOT NULL,            -- 1, then one more at every change
	created_ms       BIGINT NOT NULL,
	updated_ms       BIGINT NOT NULL
);
-- One active campaign per hardware class (a repository serves one).
CREATE UNIQUE INDEX campaigns_active ON campaigns (hardware_class) WHERE state IN ('running', 'paused');
CREATE INDEX campaigns_by_class ON campaigns (hardware_class, id);
