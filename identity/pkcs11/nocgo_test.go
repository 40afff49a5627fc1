//go:build !cgo

package pkcs11_test

import (
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/identity/pkcs11"
)

// TestOpenWithoutCgo: a program built without cgo gets a clear error.
func TestOpenWithoutCgo(t *testing.T) {
	_, err := pkcs11.Open(pkcs11.Config{Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "device", PIN: "1234"})
	if err == nil || !strings.Contains(err.Error(), "built without cgo: PKCS#11 needs cgo") {
		t.Fatalf("Open without cgo: %v", err)
	}
}
