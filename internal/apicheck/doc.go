// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package apicheck holds tests over the module's exported API, run by
// `go test ./internal/apicheck`:
//
//   - TestNoForeignTypesInAPI fails if an exported identifier of a
//     non-internal package mentions, in its signature, a type from an
//     internal package or from a module other than d2c and the standard
//     library (STYLE 7: upgrading paho, go-jose or cbor must never break a
//     user; an internal type in a signature is one a user cannot name).
//   - TestAPICounts keeps the exported-identifier count of each package in
//     docs/architecture.md current; `go test ./internal/apicheck -run
//     TestAPICounts -update` rewrites the table.
//
// The package has no code outside its tests.
package apicheck
