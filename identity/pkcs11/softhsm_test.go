//go:build cgo

package pkcs11_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/d2c-iot/d2c/identity/pkcs11"
	"github.com/d2c-iot/d2c/internal/testpeer"
)

// The tests run against softhsm2, the software PKCS#11 token packaged by
// Debian. softhsm2 reads SOFTHSM2_CONF once, when the module is
// initialized, and crypto11 initializes a module once per process (until
// its last user closes it), so the whole package shares one softhsm2
// configuration: a token directory under a temporary directory made by
// the first test that needs it (not t.TempDir, which ends with that test)
// and removed by TestMain. The token testToken is initialized there
// before the module is first loaded; TestTokenKilled adds its own tokens
// (newToken) and deletes them.
const (
	testToken = "d2c-test"
	soPIN     = "so-pin-4711"
	userPIN   = "user-pin-0815"
)

// moduleCandidates are where Debian and others install the softhsm2
// PKCS#11 library (package libsofthsm2).
var moduleCandidates = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/arm-linux-gnueabihf/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

var softhsm struct {
	once     sync.Once
	err      error
	dir      string // removed by TestMain
	module   string
	tokenDir string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if softhsm.dir != "" {
		_ = os.RemoveAll(softhsm.dir)
	}
	os.Exit(code)
}

// token returns the configuration of the token labelled label in the
// package's softhsm2, setting softhsm2 up on first use. A missing
// softhsm2 fails the test, never skips it.
func token(t testing.TB, label string) pkcs11.Config {
	t.Helper()
	util := testpeer.Require(t, "softhsm2-util")
	softhsm.once.Do(func() { softhsm.err = setupSoftHSM(util) })
	if softhsm.err != nil {
		t.Fatalf("softhsm2: %v", softhsm.err)
	}
	return pkcs11.Config{Module: softhsm.module, TokenLabel: label, PIN: userPIN}
}

func setupSoftHSM(util string) error {
	for _, m := range moduleCandidates {
		if _, err := os.Stat(m); err == nil {
			softhsm.module = m
			break
		}
	}
	if softhsm.module == "" {
		return fmt.Errorf("libsofthsm2.so not found in %v: install the Debian package libsofthsm2 (apt-get install softhsm2)", moduleCandidates)
	}
	dir, err := os.MkdirTemp("", "d2c-softhsm-")
	if err != nil {
		return err
	}
	softhsm.dir = dir
	softhsm.tokenDir = filepath.Join(dir, "tokens")
	if err := os.Mkdir(softhsm.tokenDir, 0o700); err != nil {
		return err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", softhsm.tokenDir)), 0o600); err != nil {
		return err
	}
	// Before the module is loaded: it reads the variable at C_Initialize.
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return err
	}
	out, err := exec.Command(util, "--init-token", "--free", "--label", testToken, "--so-pin", soPIN, "--pin", userPIN).CombinedOutput()
	if err != nil {
		return fmt.Errorf("softhsm2-util --init-token --label %s: %v: %s", testToken, err, out)
	}
	return nil
}

// openKeystore opens the token labelled label and closes it when the test
// ends.
func openKeystore(t testing.TB, label string) *pkcs11.Keystore {
	t.Helper()
	ks, err := pkcs11.Open(token(t, label))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ks.Close(); err != nil {
			t.Error(err)
		}
	})
	return ks
}
