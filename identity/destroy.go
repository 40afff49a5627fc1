// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// Destroy erases the device's identity, for decommissioning or a forget
// request: every generation's key and certificate, the fleet anchors, the
// trusted-time floor, then the store directory itself. After Destroy the
// store is unusable; the device can only enroll again with a new token.
//
// Keys in a [Keystore] are destroyed inside the hardware (PKCS#11
// C_DestroyObject); for a TPM the key blob is scrubbed and removed, but
// the TPM could load a copy recovered from the medium, so a device that
// changes owner should also have its TPM owner hierarchy cleared
// (TPM2_Clear), which no software key store can do on its behalf. A key file is first overwritten with zeros and
// fsynced, then removed: on a plain disk that erases it; on flash with
// wear levelling or a copy-on-write file system an old copy may survive
// on the medium, which only full-disk encryption or a hardware keystore
// answers (see docs/threat-model.md).
//
// Destroy continues past errors so that as much as possible is erased, and
// returns them joined.
func (s *Store) Destroy(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	all, _, err := s.generations()
	if err != nil {
		return err
	}
	var errs []error
	keyFailed := false
	for _, g := range all {
		// removeKey scrubs a key file, or destroys the hardware key and
		// only then its reference.
		if err := s.removeKey(ctx, g); err != nil {
			errs = append(errs, err)
			keyFailed = true
		}
		errs = append(errs, removeIfExists(s.certPath(g)))
	}
	if keyFailed {
		// Keep the references of the keys the keystore did not destroy,
		// so that Destroy can be run again: without them nobody could
		// find those keys any more.
		return fmt.Errorf("identity: destroy %s: run it again: %w", s.dir, errors.Join(errs...))
	}
	// Whatever else the directory holds (anchors, the time floor, the
	// transport state when it lives inside the store) goes too.
	errs = append(errs, atomicfile.ScrubTree(s.dir))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("identity: destroy %s: %w", s.dir, err)
	}
	return nil
}

func removeIfExists(path string) error {
	err := os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
