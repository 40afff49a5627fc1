// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package tpm

import (
	"errors"

	"github.com/google/go-tpm/tpm2/transport"
)

// openDevice is not implemented on Windows, whose TPM is reached through
// TBS rather than a device file.
func openDevice(string) (transport.TPMCloser, error) {
	return nil, errors.New("TPM devices are not supported on Windows")
}
