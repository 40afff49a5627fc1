// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/wire"
)

// SessionKeys keeps the session-key deliveries a verifier accepted, as
// received (a JWE still encrypted to the cloud key, so that what is kept
// never holds a plaintext key), for every verifier that shares it: a
// verifier restarted, or started after the device delivered its key, opens
// the envelopes of that key. A process-local store is the default; a
// database shared by the verifiers (github.com/d2c-iot/d2c/cloud/store)
// serves several processes.
//
// Deliveries are ordered by the (boot, created) the device signed in them.
// A store keeps a bounded number per device, the newest; when the bound is
// reached, a delivery not newer than every one kept is refused as a
// replay, so a replayed old delivery never displaces the keys in use.
type SessionKeys interface {
	// PutKeyDelivery keeps a verified delivery of device's key keyID,
	// signed with (boot, created). Keeping one already kept does nothing.
	// A delivery too old to keep gives an error wrapping [wire.ErrReplay].
	PutKeyDelivery(ctx context.Context, d KeyDelivery) error
	// KeyDelivery returns the delivery of device's key keyID as received,
	// or an error wrapping [ErrUnknownSessionKey].
	KeyDelivery(ctx context.Context, device, keyID string) ([]byte, error)
}

// KeyDelivery is one verified session-key delivery, as kept.
type KeyDelivery struct {
	Device  string
	KeyID   string
	Boot    uint64
	Created time.Time // millisecond precision, as signed
	// Envelope is the delivery as received: the JWE to the cloud key.
	Envelope []byte
}

// keptKeyDeliveries is how many deliveries per device the in-memory
// SessionKeys keeps: the current key, the previous one (envelopes still in
// flight) and slack for deliveries arriving out of order.
const keptKeyDeliveries = 4

// memoryKeys is the default SessionKeys, in memory.
type memoryKeys struct {
	mu sync.Mutex
	m  map[string][]KeyDelivery // device -> newest last
}

func newMemoryKeys() *memoryKeys { return &memoryKeys{m: map[string][]KeyDelivery{}} }

// keyOrder orders deliveries by their signed (boot, created).
func keyOrder(a, b KeyDelivery) int {
	switch {
	case a.Boot != b.Boot:
		return cmpUint(a.Boot, b.Boot)
	case !a.Created.Equal(b.Created):
		return a.Created.Compare(b.Created)
	}
	return 0
}

func cmpUint(a, b uint64) int {
	if a < b {
		return -1
	}
	return 1
}

func (k *memoryKeys) PutKeyDelivery(_ context.Context, d KeyDelivery) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	ds := k.m[d.Device]
	for _, x := range ds {
		if x.KeyID == d.KeyID {
			return nil
		}
	}
	if len(ds) >= keptKeyDeliveries && keyOrder(d, ds[0]) <= 0 {
		return fmt.Errorf("%w: key delivery %q of %s (boot %d) is older than the %d kept", wire.ErrReplay, textutil.Clip(d.KeyID), d.Device, d.Boot, len(ds))
	}
	ds = append(ds, d)
	slices.SortStableFunc(ds, keyOrder)
	if len(ds) > keptKeyDeliveries {
		ds = ds[len(ds)-keptKeyDeliveries:]
	}
	k.m[d.Device] = ds
	return nil
}

func (k *memoryKeys) KeyDelivery(_ context.Context, device, keyID string) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, x := range k.m[device] {
		if x.KeyID == keyID {
			return x.Envelope, nil
		}
	}
	return nil, fmt.Errorf("%w: %q for %s", ErrUnknownSessionKey, textutil.Clip(keyID), device)
}

func (k *memoryKeys) forget(device string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.m, device)
}
