//go:build cgo

package main

// withCgo: identity/pkcs11 can load a module in this build.
const withCgo = true
