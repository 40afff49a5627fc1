// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/identity/pkcs11"
	"github.com/d2c-iot/d2c/identity/tpm"
	"github.com/d2c-iot/d2c/internal/hwpeer"
)

// keys is the device's keystore as the program chose it: nil Keys for
// key files (the store's default), else a hardware keystore wrapped to
// count its signatures.
type keys struct {
	Kind  string             // "file", "pkcs11" or "tpm"
	Where string             // where the keys live, for the narration
	Keys  *countingKeystore  // nil for file keys
	close func() error       // closes the keystore and anything started for it
	check func(string) error // checks a label's key the way Open does, for the narration
}

// openKeys opens the keystore o asks for. Hardware keys are generated in
// and used by the hardware; the store keeps only their labels.
func openKeys(o options, dir string) (*keys, error) {
	switch o.keys {
	case "file":
		return &keys{Kind: "file", Where: "PKCS#8 files (mode 0600) in the device's store directory: software, readable by anyone who can read that directory",
			close: func() error { return nil }}, nil
	case "pkcs11":
		return openPKCS11(o)
	case "tpm":
		return openTPM(o, dir)
	}
	return nil, fmt.Errorf("--keys %q: want file, pkcs11 or tpm", o.keys)
}

func openPKCS11(o options) (*keys, error) {
	cfg := pkcs11.Config{Module: o.module, TokenLabel: o.token, PINFile: o.pinFile}
	where := fmt.Sprintf("PKCS#11 token %q through %s", o.token, o.module)
	stop := func() {}
	if o.module == "" {
		if o.token != "" || o.pinFile != "" {
			return nil, errors.New("--pkcs11-token and --pkcs11-pin-file need --pkcs11-module")
		}
		// No token given: a throwaway softhsm2 token, for the demo.
		hsm, stopHSM, err := hwpeer.StartSoftHSM()
		if err != nil {
			return nil, fmt.Errorf("no --pkcs11-module given, and no softhsm2 for a throwaway token: %w", err)
		}
		tok, err := hsm.InitToken("d2c-hardware-demo")
		if err != nil {
			stopHSM()
			return nil, err
		}
		cfg = pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN}
		where = fmt.Sprintf("PKCS#11 token %q, a throwaway softhsm2 token in %s (software, for the demo; give --pkcs11-module, --pkcs11-token and --pkcs11-pin-file for a real one)", tok.Label, hsm.Dir)
		stop = stopHSM
	}
	ks, err := pkcs11.Open(cfg)
	if err != nil {
		stop()
		return nil, err
	}
	ck := &countingKeystore{Keystore: ks}
	return &keys{Kind: "pkcs11", Where: where, Keys: ck,
		close: func() error { err := ks.Close(); stop(); return err },
		check: func(label string) error { _, err := ks.Open(context.Background(), label); return err }}, nil
}

func openTPM(o options, dir string) (*keys, error) {
	cfg := tpm.Config{Device: o.tpmDevice, Dir: filepath.Join(dir, "tpm-keys")}
	where := "the TPM 2.0 at " + o.tpmDevice
	if o.tpmSim != "" {
		cfg.Device = ""
		cfg.Addr = o.tpmSim
		where = "the TPM 2.0 simulator at " + o.tpmSim + " (swtpm: software, for development)"
	}
	ks, err := tpm.Open(cfg)
	if err != nil {
		if o.tpmSim == "" {
			return nil, fmt.Errorf("%w (no TPM here? try --keys pkcs11, which makes a throwaway softhsm2 token)", err)
		}
		return nil, err
	}
	return &keys{Kind: "tpm", Where: where + "; each key's public part and its private part encrypted by the TPM's storage root key are kept in " + cfg.Dir + ", loadable by this TPM only",
		Keys:  &countingKeystore{Keystore: ks},
		close: ks.Close,
		check: func(label string) error { _, err := ks.Open(context.Background(), label); return err }}, nil
}

// countingKeystore counts the signatures made by its keys, so that the
// narration can say how many were made inside the hardware, and makes
// every signing failure an [identity.ErrKeystore]: identity/pkcs11's keys
// wrap it already, while identity/tpm's return the TPM's error as is (the
// store wraps it only for its own calls), and the device must be able to
// tell a hardware failure from the outside of the Sign call too.
type countingKeystore struct {
	identity.Keystore
	signatures atomic.Int64
}

func (k *countingKeystore) Create(ctx context.Context, label string, kt identity.KeyType) (crypto.Signer, error) {
	s, err := k.Keystore.Create(ctx, label, kt)
	if err != nil {
		return nil, err
	}
	return &countingSigner{Signer: s, ks: k}, nil
}

func (k *countingKeystore) Open(ctx context.Context, label string) (crypto.Signer, error) {
	s, err := k.Keystore.Open(ctx, label)
	if err != nil {
		return nil, err
	}
	return &countingSigner{Signer: s, ks: k}, nil
}

type countingSigner struct {
	crypto.Signer
	ks *countingKeystore
}

func (s *countingSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := s.Signer.Sign(rand, digest, opts)
	if err != nil {
		if !errors.Is(err, identity.ErrKeystore) {
			err = fmt.Errorf("%w: %w", identity.ErrKeystore, err)
		}
		return nil, err
	}
	s.ks.signatures.Add(1)
	return sig, nil
}

// listDir returns the names in dir, for the narration.
func listDir(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name()+"/")
		} else {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
