// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build mips || mipsle || mips64 || ppc64

package store

// sqliteBuilt reports whether this build has the SQLite backend: modernc's
// pure-Go SQLite does not build for this GOARCH, so only PostgreSQL is
// available (the cloud store runs on servers; devices never open it).
const sqliteBuilt = false

// sqliteBusy reports false: there is no SQLite in this build.
func sqliteBusy(error) bool { return false }
