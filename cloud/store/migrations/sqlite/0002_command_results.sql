-- SPDX-License-Identifier: Apache-2.0
-- Copyright 2026 The d2c Authors

-- Commands sent through the service's command API and the results the
-- devices reported (signed records of the reserved stream d2c.cmdres,
-- applied in the transaction that accepts them).
ALTER TABLE commands ADD COLUMN client TEXT NOT NULL DEFAULT '';        -- who asked (service name)
ALTER TABLE commands ADD COLUMN body BLOB;                               -- the command's body
ALTER TABLE commands ADD COLUMN expires_ms INTEGER NOT NULL DEFAULT 0;   -- the signed expiry
ALTER TABLE commands ADD COLUMN sent_ms INTEGER;                         -- when the broker took it
ALTER TABLE commands ADD COLUMN result_ms INTEGER;                       -- when the device finished
ALTER TABLE commands ADD COLUMN result_failed INTEGER;                   -- 1: the device reported failure
ALTER TABLE commands ADD COLUMN result_output BLOB;

-- When the device's last fresh record was accepted: the fleet's devices
-- connected, as the cloud sees them (d2c_devices_connected).
ALTER TABLE replay ADD COLUMN seen_ms INTEGER NOT NULL DEFAULT 0;
