// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package lab

import (
	"crypto"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/d2c-iot/d2c/identity"
)

// StartRegistryRegistrar starts a second EST registrar of the fleet, on a
// new 127.0.0.1 port, that records every certificate it issues in reg and
// decides renewals and revocation with it (identity.RegistrarConfig.Registry;
// cloud/store implements it over the fleet's database). Its tokens are
// consumed by reg: the fleet's Tokens ledger counts none of them. It
// returns the client a device uses with it; Close stops it.
func (f *Fleet) StartRegistryRegistrar(reg identity.Registry) (identity.ESTClient, error) {
	r, err := identity.NewRegistrar(identity.RegistrarConfig{CA: f.CA,
		TokenKeys: []crypto.PublicKey{f.tokenKey.Public()}, Registry: reg})
	if err != nil {
		return identity.ESTClient{}, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return identity.ESTClient{}, err
	}
	srv := &http.Server{Handler: r, ReadHeaderTimeout: Timeout, TLSConfig: r.TLSConfig(f.regCert)}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	f.onClose(func() { srv.Close() })
	return identity.ESTClient{URL: "https://" + ln.Addr().String(), BootstrapFingerprint: f.fingerprint}, nil
}

// CopyStore copies a device's identity store (keys and certificates) to a
// new directory under the fleet directory, as a device restored from a
// backup, or a thief who copied its storage, would hold it, and opens the
// copy. The copy keeps the store's modes: directories 0700, files 0600.
func (f *Fleet) CopyStore(s *identity.Store, name string) (*identity.Store, error) {
	dst := filepath.Join(f.Dir, "machines", name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return nil, err
	}
	if err := os.CopyFS(dst, os.DirFS(s.Dir())); err != nil {
		return nil, err
	}
	// CopyFS makes directories 0755 and files 0644; a key store is private.
	err := filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.Chmod(p, 0o700)
		}
		return os.Chmod(p, 0o600)
	})
	if err != nil {
		return nil, err
	}
	return identity.OpenStore(dst, identity.StoreConfig{})
}
