// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package pkcs11

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/identity"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "device", PIN: "1234"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"zero":            func(c *Config) { *c = Config{} },
		"no module":       func(c *Config) { c.Module = "" },
		"relative module": func(c *Config) { c.Module = "libsofthsm2.so" },
		"no token":        func(c *Config) { c.TokenLabel = "" },
		"long token":      func(c *Config) { c.TokenLabel = strings.Repeat("t", 33) },
		"no PIN":          func(c *Config) { c.PIN = "" },
		"PIN and file":    func(c *Config) { c.PINFile = "/etc/pin" },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "1234") {
			t.Errorf("%s: error shows the PIN: %v", name, err)
		}
	}
}

// TestConfigRedactsPIN: printing a Config, in any verb, never shows the PIN.
func TestConfigRedactsPIN(t *testing.T) {
	c := Config{Module: "/m.so", TokenLabel: "device", PIN: "s3cret-pin"}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		for _, v := range []any{c, &c} {
			if s := fmt.Sprintf(verb, v); strings.Contains(s, "s3cret") || !strings.Contains(s, "device") {
				t.Errorf("%s: %s", verb, s)
			}
		}
	}
}

func TestPINFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct{ content, want string }{
		{"1234", "1234"}, {"1234\n", "1234"}, {"1234\r\n", "1234"}, {" 12 34 \n", " 12 34 "},
	} {
		c := Config{PINFile: write("pin", tc.content, 0o600)}
		if got, err := c.pin(); err != nil || got != tc.want {
			t.Errorf("PIN file %q: %q, %v; want %q", tc.content, got, err, tc.want)
		}
	}
	if _, err := (Config{PINFile: write("open", "1234", 0o644)}).pin(); !errors.Is(err, identity.ErrKeyPermissions) {
		t.Errorf("PIN file readable by others: %v, want ErrKeyPermissions", err)
	}
	if _, err := (Config{PINFile: write("big", strings.Repeat("1", maxPINFile+1), 0o600)}).pin(); !errors.Is(err, identity.ErrTooLarge) {
		t.Errorf("large PIN file: %v, want ErrTooLarge", err)
	}
	if _, err := (Config{PINFile: write("empty", "\n", 0o600)}).pin(); err == nil {
		t.Error("empty PIN file accepted")
	}
	if _, err := (Config{PINFile: filepath.Join(dir, "missing")}).pin(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing PIN file: %v", err)
	}
	if _, err := (Config{PINFile: dir}).pin(); err == nil {
		t.Error("a directory as PIN file accepted")
	}
}
