// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package hwpeer

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

// SoftHSMModules are where Debian and others install the softhsm2 PKCS#11
// library (package libsofthsm2), searched in order.
var SoftHSMModules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/arm-linux-gnueabihf/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// SoftHSM is a softhsm2 installation of its own: a temporary directory
// holding a softhsm2.conf and the token directory it names. [StartSoftHSM]
// points SOFTHSM2_CONF at it.
//
// softhsm2 reads SOFTHSM2_CONF, and lists the tokens in its token
// directory, when the module is initialized (C_Initialize), which a
// process does once until it finalizes the module (crypto11, under
// identity/pkcs11, finalizes it when its last Keystore closes). So a
// process has one SoftHSM, and a token made by [SoftHSM.InitToken] while
// the module is loaded in this process becomes visible only after the
// module is next loaded.
type SoftHSM struct {
	// Module is the absolute path of libsofthsm2.so.
	Module string
	// Dir is the temporary directory: softhsm2.conf and tokens/.
	Dir string

	util     string
	tokenDir string
	mu       sync.Mutex // serializes InitToken
	prevConf *string    // SOFTHSM2_CONF before Start, nil if unset
	stop     sync.Once
}

// SoftHSMToken is an initialized softhsm2 token.
type SoftHSMToken struct {
	// Module is the absolute path of libsofthsm2.so.
	Module string
	// Label is the token label (CKA_LABEL of the token, at most 32 bytes).
	Label string
	// PIN is the user PIN, random.
	PIN string
	// Dir is the token's storage directory, inside the SoftHSM's token
	// directory: removing it destroys the token.
	Dir string
}

// FindSoftHSMModule returns the first of [SoftHSMModules] that exists.
func FindSoftHSMModule() (string, error) {
	for _, m := range SoftHSMModules {
		if _, err := os.Stat(m); err == nil {
			return m, nil
		}
	}
	return "", fmt.Errorf("hwpeer: libsofthsm2.so not found in %v: %s", SoftHSMModules, installHint("libsofthsm2.so"))
}

// StartSoftHSM makes a softhsm2 configuration in a new temporary
// directory and sets SOFTHSM2_CONF to it for this process (and the
// processes it starts). Call it before the module is first loaded, and
// once per process. stop removes the directory, with every token in it,
// and restores SOFTHSM2_CONF; close the keystores on its tokens first.
func StartSoftHSM() (s *SoftHSM, stop func(), err error) {
	util, err := LookTool("softhsm2-util")
	if err != nil {
		return nil, nil, err
	}
	module, err := FindSoftHSMModule()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "d2c-softhsm-")
	if err != nil {
		return nil, nil, fmt.Errorf("hwpeer: softhsm2: %w", err)
	}
	s = &SoftHSM{Module: module, Dir: dir, util: util, tokenDir: filepath.Join(dir, "tokens")}
	if err := os.Mkdir(s.tokenDir, 0o700); err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("hwpeer: softhsm2: %w", err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", s.tokenDir)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("hwpeer: softhsm2: %w", err)
	}
	if prev, ok := os.LookupEnv("SOFTHSM2_CONF"); ok {
		s.prevConf = &prev
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("hwpeer: softhsm2: %w", err)
	}
	return s, s.remove, nil
}

func (s *SoftHSM) remove() {
	s.stop.Do(func() {
		if s.prevConf != nil {
			_ = os.Setenv("SOFTHSM2_CONF", *s.prevConf)
		} else {
			_ = os.Unsetenv("SOFTHSM2_CONF")
		}
		_ = os.RemoveAll(s.Dir)
	})
}

// InitToken initializes a token labelled label (softhsm2-util
// --init-token --free) with random user and security officer PINs. The
// module, if this process has it loaded, sees the token only after it is
// next initialized (see [SoftHSM]).
func (s *SoftHSM) InitToken(label string) (SoftHSMToken, error) {
	if label == "" || len(label) > 32 {
		return SoftHSMToken{}, fmt.Errorf("hwpeer: softhsm2 token label %q: want 1 to 32 bytes", label)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	before, err := os.ReadDir(s.tokenDir)
	if err != nil {
		return SoftHSMToken{}, fmt.Errorf("hwpeer: softhsm2: %w", err)
	}
	pin, soPIN := randomPIN(), randomPIN()
	cmd := exec.Command(s.util, "--init-token", "--free", "--label", label, "--so-pin", soPIN, "--pin", pin)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+filepath.Join(s.Dir, "softhsm2.conf"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return SoftHSMToken{}, fmt.Errorf("hwpeer: softhsm2-util --init-token --label %s: %v: %s", label, err, out)
	}
	after, err := os.ReadDir(s.tokenDir)
	if err != nil {
		return SoftHSMToken{}, fmt.Errorf("hwpeer: softhsm2: %w", err)
	}
	known := map[string]bool{}
	for _, e := range before {
		known[e.Name()] = true
	}
	for _, e := range after {
		if !known[e.Name()] {
			return SoftHSMToken{Module: s.Module, Label: label, PIN: pin, Dir: filepath.Join(s.tokenDir, e.Name())}, nil
		}
	}
	return SoftHSMToken{}, errors.New("hwpeer: softhsm2-util made no token directory in " + s.tokenDir)
}

// randomPIN returns 16 random hexadecimal digits (softhsm2 takes 4 to
// 255 bytes).
func randomPIN() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return fmt.Sprintf("%x", b)
}
