// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

//go:build !cgo

package main

// withCgo: identity/pkcs11 cannot load a module in this build (it fails
// with an error saying so).
const withCgo = false
