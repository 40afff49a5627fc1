-- SPDX-License-Identifier: Apache-2.0
-- Copyright 2026 The d2c Authors

-- The records of one stream in device sequence order: the devices' update
-- reports (stream "update"), which the campaign controller reads every few
-- seconds and d2c fleet affected reads, are a few rows among all the
-- fleet's telemetry, found without scanning it.
CREATE INDEX records_by_stream ON records (stream, device, boot, seq);
