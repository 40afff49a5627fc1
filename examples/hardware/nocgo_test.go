//go:build !cgo

package main

// withCgo: identity/pkcs11 cannot load a module in this build (it fails
// with an error saying so).
const withCgo = false
