// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build !mips && !mipsle && !mips64 && !ppc64

package store

import _ "modernc.org/sqlite" // registers "sqlite"

// sqliteBuilt reports whether this build has the SQLite backend: modernc's
// pure-Go SQLite does not build for every GOARCH.
const sqliteBuilt = true
