// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package tpm

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// DefaultDevice is the TPM device used when [Config] names none: the
// kernel's TPM 2.0 resource manager.
const DefaultDevice = "/dev/tpmrm0"

// maxLabel bounds the length of a key label, which names a file.
const maxLabel = 128

// ErrClosed is returned by a [Keystore], and by its keys, after
// [Keystore.Close].
var ErrClosed = errors.New("tpm: keystore closed")

// Config says which TPM a [Keystore] uses and where it keeps key files.
// The zero value of each field is its documented default; Dir is
// required.
type Config struct {
	// Device is the TPM character device. Default [DefaultDevice]
	// (/dev/tpmrm0), the kernel's resource manager, which lets several
	// processes share the TPM. Exclusive with Addr.
	Device string
	// Addr is the host:port of a TPM simulator's command socket (swtpm
	// socket --server type=tcp), already started (swtpm --flags
	// not-need-init,startup-clear). For tests only: the connection is
	// plain TCP. Default "": use Device.
	Addr string
	// Dir holds the key files, one <label>.key per key. Required. It is
	// created with mode 0700 if missing; a directory that group or others
	// can access is refused.
	Dir string
}

// Validate reports a configuration that [Open] would refuse.
func (c Config) Validate() error {
	if c.Dir == "" {
		return errors.New("tpm: Config.Dir is required")
	}
	if c.Device != "" && c.Addr != "" {
		return errors.New("tpm: Config.Device and Config.Addr are exclusive")
	}
	return nil
}

// Keystore is an [identity.Keystore] whose keys live in a TPM 2.0. Open it
// with [Open]; it is safe for concurrent use, and so are its keys.
type Keystore struct {
	dir string

	mu     sync.Mutex // serializes TPM commands and guards the fields below
	tpm    transport.TPMCloser
	srk    tpm2.NamedHandle
	closed bool
	// The key that signed last stays loaded (see "Handles" in the package
	// documentation).
	loaded      *keyBlob
	loadedLabel string
	loadedObj   tpm2.NamedHandle
	// epochs change when a label's key is created or deleted; a key
	// obtained before refuses to sign.
	epochs    map[string]uint64
	nextEpoch uint64
}

var _ identity.Keystore = (*Keystore)(nil)

// Open connects to the TPM, creates the storage root key (see "Key
// hierarchy" in the package documentation) and returns the keystore. Close
// it to flush the TPM's handles and close the device.
func Open(cfg Config) (*Keystore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := atomicfile.MkdirPrivate(nil, cfg.Dir); err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	st, err := os.Stat(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("tpm: key directory %s has mode %04o (want 0700: chmod 700 %s)", cfg.Dir, st.Mode().Perm(), cfg.Dir)
	}
	// Temporary files left by a crash mid-write are never keys.
	if tmps, _ := filepath.Glob(filepath.Join(cfg.Dir, ".*.tmp-*")); len(tmps) > 0 {
		for _, t := range tmps {
			_ = os.Remove(t)
		}
	}
	var t transport.TPMCloser
	if cfg.Addr != "" {
		t, err = dialStream(cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("tpm: simulator %s: %w", cfg.Addr, err)
		}
	} else {
		dev := cfg.Device
		if dev == "" {
			dev = DefaultDevice
		}
		t, err = openDevice(dev)
		if err != nil {
			return nil, fmt.Errorf("tpm: open %s: %w", dev, err)
		}
	}
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(t)
	if err != nil {
		_ = t.Close()
		return nil, fmt.Errorf("tpm: create the storage root key: %w", err)
	}
	return &Keystore{
		dir:    cfg.Dir,
		tpm:    t,
		srk:    tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name},
		epochs: map[string]uint64{},
	}, nil
}

// Close flushes the keystore's handles from the TPM and closes the
// connection. Keys obtained from it fail with [ErrClosed] afterwards;
// their files stay. Closing twice is a no-op.
func (ks *Keystore) Close() error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.closed {
		return nil
	}
	ks.closed = true
	ks.flushLoadedLocked()
	_, _ = tpm2.FlushContext{FlushHandle: ks.srk.Handle}.Execute(ks.tpm)
	if err := ks.tpm.Close(); err != nil {
		return fmt.Errorf("tpm: close: %w", err)
	}
	return nil
}

// keyTemplate is the public area of a device key: ECDSA P-256 with
// SHA-256, bound to this TPM and its parent, generated inside the TPM,
// usable with its (empty) authorization value, for signing only.
var keyTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
		KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

// Create generates a new ECDSA P-256 key in the TPM under label, saves it
// to <label>.key in the keystore directory (replacing any key of that
// label, whose keys then refuse to sign), and returns it. Key types other
// than [identity.ECDSAP256] fail with [identity.ErrUnsupportedKey].
func (ks *Keystore) Create(ctx context.Context, label string, kt identity.KeyType) (crypto.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if kt != identity.ECDSAP256 {
		return nil, fmt.Errorf("tpm: %w: %v (TPM keys are ECDSA P-256 only)", identity.ErrUnsupportedKey, kt)
	}
	path, err := ks.path(label)
	if err != nil {
		return nil, err
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.closed {
		return nil, ErrClosed
	}
	rsp, err := tpm2.Create{
		ParentHandle: ks.srkAuth(),
		InPublic:     tpm2.New2B(keyTemplate),
	}.Execute(ks.tpm)
	if err != nil {
		return nil, fmt.Errorf("tpm: create key %q: %w", label, err)
	}
	blob := &keyBlob{public: rsp.OutPublic, private: rsp.OutPrivate}
	pub, err := checkPublic(blob)
	if err != nil {
		return nil, fmt.Errorf("tpm: create key %q: %w", label, err)
	}
	data, err := marshalKeyFile(blob)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(nil, path, data); err != nil {
		return nil, fmt.Errorf("tpm: save key %q: %w", label, err)
	}
	if ks.loadedLabel == label {
		ks.flushLoadedLocked()
	}
	return &key{ks: ks, label: label, epoch: ks.bumpLocked(label), blob: blob, pub: pub}, nil
}

// Open loads the key saved under label into the TPM, which proves that the
// key file belongs to this TPM, and returns it. A missing key fails with
// an error wrapping [fs.ErrNotExist].
func (ks *Keystore) Open(ctx context.Context, label string) (crypto.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path, err := ks.path(label)
	if err != nil {
		return nil, err
	}
	data, err := atomicfile.ReadFile(path, maxKeyFile)
	if err != nil {
		return nil, fmt.Errorf("tpm: key %q: %w", label, err)
	}
	blob, err := parseKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("tpm: key %q: %w", label, err)
	}
	pub, err := checkPublic(blob)
	if err != nil {
		return nil, fmt.Errorf("tpm: key %q: %w", label, err)
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.closed {
		return nil, ErrClosed
	}
	if _, err := ks.loadLocked(blob, label); err != nil {
		return nil, fmt.Errorf("tpm: load key %q: %w", label, err)
	}
	return &key{ks: ks, label: label, epoch: ks.epochs[label], blob: blob, pub: pub}, nil
}

// Delete destroys the key under label: it flushes the key from the TPM if
// it is loaded and removes its file (the only copy of its wrapped private
// area). Keys obtained before refuse to sign. A missing key is not an
// error, and a closed keystore can still delete.
func (ks *Keystore) Delete(ctx context.Context, label string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	path, err := ks.path(label)
	if err != nil {
		return err
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if !ks.closed && ks.loadedLabel == label {
		ks.flushLoadedLocked()
	}
	ks.bumpLocked(label)
	// The blob is encrypted by this TPM's storage key, which the TPM
	// derives again at every start: a copy recovered from freed blocks
	// would load on this TPM. Overwrite it first; on flash that may keep
	// old copies, clear the owner hierarchy (TPM2_Clear) when the device
	// leaves its owner.
	if err := atomicfile.Scrub(path); err != nil {
		return fmt.Errorf("tpm: delete key %q: %w", label, err)
	}
	if err := atomicfile.Remove(nil, path); err != nil {
		return fmt.Errorf("tpm: delete key %q: %w", label, err)
	}
	return nil
}

// path returns the file of label, refusing labels that are not plain file
// names.
func (ks *Keystore) path(label string) (string, error) {
	if label == "" || len(label) > maxLabel || label[0] == '.' {
		return "", fmt.Errorf("tpm: invalid key label %q", label)
	}
	for _, c := range label {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "", fmt.Errorf("tpm: invalid key label %q: use letters, digits, '-', '_' and '.'", label)
		}
	}
	return filepath.Join(ks.dir, label+".key"), nil
}

// srkAuth is the SRK as a parent, authorized with its empty password.
func (ks *Keystore) srkAuth() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: ks.srk.Handle, Name: ks.srk.Name, Auth: tpm2.PasswordAuth(nil)}
}

func (ks *Keystore) bumpLocked(label string) uint64 {
	ks.nextEpoch++
	ks.epochs[label] = ks.nextEpoch
	return ks.nextEpoch
}

// loadLocked makes blob the loaded key, flushing the one loaded before.
func (ks *Keystore) loadLocked(blob *keyBlob, label string) (tpm2.NamedHandle, error) {
	if ks.loaded == blob {
		return ks.loadedObj, nil
	}
	ks.flushLoadedLocked()
	rsp, err := tpm2.Load{
		ParentHandle: ks.srkAuth(),
		InPrivate:    blob.private,
		InPublic:     blob.public,
	}.Execute(ks.tpm)
	if err != nil {
		return tpm2.NamedHandle{}, err
	}
	ks.loaded, ks.loadedLabel = blob, label
	ks.loadedObj = tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	return ks.loadedObj, nil
}

// flushLoadedLocked flushes the loaded key, if any. A TPM that fails to
// flush has lost the handle anyway (it restarted or stopped answering).
func (ks *Keystore) flushLoadedLocked() {
	if ks.loaded == nil {
		return
	}
	_, _ = tpm2.FlushContext{FlushHandle: ks.loadedObj.Handle}.Execute(ks.tpm)
	ks.loaded, ks.loadedLabel, ks.loadedObj = nil, "", tpm2.NamedHandle{}
}
