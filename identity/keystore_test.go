// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// memKeystore is a Keystore in memory, standing in for a token: it counts
// the live keys and can be made to fail.
type memKeystore struct {
	mu         sync.Mutex
	keys       map[string]crypto.Signer
	fail       error
	failDelete error
}

func (m *memKeystore) Create(_ context.Context, label string, kt KeyType) (crypto.Signer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	k, err := GenerateKey(kt)
	if err != nil {
		return nil, err
	}
	m.keys[label] = k
	return k, nil
}

func (m *memKeystore) Open(_ context.Context, label string) (crypto.Signer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	k, ok := m.keys[label]
	if !ok {
		return nil, fmt.Errorf("no key %q", label)
	}
	return k, nil
}

func (m *memKeystore) Delete(_ context.Context, label string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failDelete != nil {
		return m.failDelete
	}
	delete(m.keys, label)
	return nil
}

// TestStoreKeystore: with a Keystore the store keeps only labels on disk;
// renewal makes a new hardware key and destroys the old one; a failing
// keystore is an error wrapping ErrKeystore, never a fallback to a file
// key, and leaves the current identity in place.
func TestStoreKeystore(t *testing.T) {
	f := newFleet(t, nil)
	ks := &memKeystore{keys: map[string]crypto.Signer{}}
	dir := filepath.Join(t.TempDir(), "device")
	s, err := OpenStore(dir, StoreConfig{Time: f.clock.Now, Keys: ks, KeyLabelPrefix: "test"})
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Enroll(t.Context(), f.client(), EnrollRequest{DeviceID: "hw-1", Auth: EnrollAuth{Token: f.token("hw-1")}})
	if err != nil {
		t.Fatal(err)
	}
	if ks.keys["test-00000001"] != id.Key {
		t.Fatalf("the identity's key is not the keystore's: %v", ks.keys)
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "key-*.pem")); len(matches) != 0 {
		t.Fatalf("a key file was written: %v", matches)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "key-00000001.ref")); err != nil || string(b) != "test-00000001\n" {
		t.Fatalf("key reference %q, %v", b, err)
	}
	// Reopened, the identity comes from the keystore.
	s2, err := OpenStore(dir, StoreConfig{Time: f.clock.Now, Keys: ks, KeyLabelPrefix: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if cur, err := s2.Current(); err != nil || cur.Key != id.Key {
		t.Fatalf("Current: %v", err)
	}
	// A store opened without the keystore refuses, rather than look empty
	// (which would invite an enrollment with a software key).
	if s3, err := OpenStore(dir, StoreConfig{Time: f.clock.Now}); err != nil {
		t.Fatal(err)
	} else if _, err := s3.Current(); !errors.Is(err, ErrKeystore) {
		t.Fatalf("file-key store over a keystore store: %v, want ErrKeystore", err)
	}
	// Renewal: a new hardware key, the old one destroyed.
	id2, err := s2.Renew(t.Context(), f.client(), RenewOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ks.keys) != 1 || ks.keys["test-00000002"] != id2.Key {
		t.Fatalf("after renewal the keystore holds %v", ks.keys)
	}
	// The keystore fails: renewal fails, nothing falls back to software,
	// the current identity stays.
	ks.fail = errors.New("token removed")
	_, err = s2.Renew(t.Context(), f.client(), RenewOptions{})
	if !errors.Is(err, ErrKeystore) {
		t.Fatalf("renewal with a failing keystore: %v, want ErrKeystore", err)
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "key-*.pem")); len(matches) != 0 {
		t.Fatalf("a software key appeared: %v", matches)
	}
	if _, err := s2.Current(); !errors.Is(err, ErrKeystore) {
		t.Fatalf("Current with the token gone: %v, want ErrKeystore", err)
	}
	ks.fail = nil
	if cur, err := s2.Current(); err != nil || cur.Generation != 2 {
		t.Fatalf("Current after the token is back: %+v, %v", cur, err)
	}
}

// TestStoreDestroy: Destroy erases keys inside the keystore (crypto-erase:
// the token destroys them), scrubs file keys, and removes the store.
func TestStoreDestroy(t *testing.T) {
	f := newFleet(t, nil)
	for _, hw := range []bool{false, true} {
		ks := &memKeystore{keys: map[string]crypto.Signer{}}
		cfg := StoreConfig{Time: f.clock.Now}
		if hw {
			cfg.Keys = ks
		}
		dir := filepath.Join(t.TempDir(), "device")
		s, err := OpenStore(dir, cfg)
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("gone-%v", hw)
		if _, err := s.Enroll(t.Context(), f.client(), EnrollRequest{DeviceID: id, Auth: EnrollAuth{Token: f.token(id)}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Renew(t.Context(), f.client(), RenewOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := s.Destroy(t.Context()); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("hardware %v: store directory after Destroy: %v", hw, err)
		}
		if len(ks.keys) != 0 {
			t.Fatalf("hardware %v: keys left in the keystore: %v", hw, ks.keys)
		}
	}
}

// TestStoreKeystoreLabels: stores sharing one token name their keys apart
// (a random prefix kept in each store), and a keystore that fails to
// delete keeps the reference for a retry of Destroy.
func TestStoreKeystoreLabels(t *testing.T) {
	f := newFleet(t, nil)
	ks := &memKeystore{keys: map[string]crypto.Signer{}}
	var stores []*Store
	for i := range 2 {
		s, err := OpenStore(filepath.Join(t.TempDir(), "device"), StoreConfig{Time: f.clock.Now, Keys: ks})
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("shared-%d", i)
		if _, err := s.Enroll(t.Context(), f.client(), EnrollRequest{DeviceID: id, Auth: EnrollAuth{Token: f.token(id)}}); err != nil {
			t.Fatal(err)
		}
		stores = append(stores, s)
	}
	if len(ks.keys) != 2 {
		t.Fatalf("two stores on one token hold %d keys: %v", len(ks.keys), ks.keys)
	}
	// Destroy with the token failing: the reference stays; then it works.
	ks.failDelete = errors.New("token busy")
	if err := stores[0].Destroy(t.Context()); !errors.Is(err, ErrKeystore) {
		t.Fatalf("Destroy with a failing delete: %v, want ErrKeystore", err)
	}
	if m, _ := filepath.Glob(filepath.Join(stores[0].Dir(), "key-*.ref")); len(m) != 1 {
		t.Fatalf("references after a failed Destroy: %v", m)
	}
	ks.failDelete = nil
	if err := stores[0].Destroy(t.Context()); err != nil {
		t.Fatal(err)
	}
	if len(ks.keys) != 1 {
		t.Fatalf("after Destroy the token holds %v", ks.keys)
	}
}
