// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build !mips && !mipsle && !mips64 && !ppc64

package store

import (
	"errors"

	msqlite "modernc.org/sqlite" // registers "sqlite"
)

// sqliteBuilt reports whether this build has the SQLite backend: modernc's
// pure-Go SQLite does not build for every GOARCH.
const sqliteBuilt = true

// sqliteBusy reports whether err is SQLite's SQLITE_BUSY. Opening a
// connection switches the file to WAL, and SQLite returns SQLITE_BUSY to
// that switch without calling the busy handler while another connection
// is doing the same, so replicas opening one file together see it.
func sqliteBusy(err error) bool {
	var e *msqlite.Error
	return errors.As(err, &e) && e.Code()&0xff == 5
}
