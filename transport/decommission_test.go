// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpeer"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/decommission"
	"github.com/d2c-iot/d2c/transport/wire"
)

// keyMaterial returns byte strings that would betray the device's private
// key if found on disk: its PKCS#8 encoding and the raw private scalar or
// seed. PEM blocks are decoded before comparing.
func keyMaterial(t *testing.T, key crypto.Signer) [][]byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	out := [][]byte{der}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		b, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	case ed25519.PrivateKey:
		out = append(out, k.Seed())
	}
	return out
}

// TestDecommission: the cloud sends the signed decommission command; the
// device tells the cloud, then erases its keys, certificates, queues and
// state; the cloud revokes it and forgets its replay state. Nothing that
// could be the key remains anywhere under the device's directory, and the
// device can no longer connect.
func TestDecommission(t *testing.T) {
	f := newE2EFleet(t)
	store := f.enroll("retired-1")
	cur, err := store.Current()
	if err != nil {
		t.Fatal(err)
	}
	secrets := keyMaterial(t, cur.Key)
	oldCert := cur.TLSCertificate()
	col := newCollector()
	v := f.verifier()
	f.cloud(col, v, "verifier")
	commander := f.cloud(newCollector(), nil, "commander")
	time.Sleep(200 * time.Millisecond)

	done := make(chan error, 1)
	var dev *transport.Client
	dev, err = transport.Dial(t.Context(), transport.ClientConfig{Broker: f.broker.Addr(), Store: store,
		CommandKeys: []crypto.PublicKey{f.cmdKey.Public()},
		OnCommand: func(ctx context.Context, c transport.Command) {
			if c.Name == decommission.Command {
				go func() {
					done <- dev.Decommission(context.Background(), store, decommission.Options{Notify: true})
				}()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := dev.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dev.Publish(ctx, "temp", transport.Reading{Time: time.Now(), Body: []byte("21.5")}); err != nil {
		t.Fatal(err)
	}
	col.wait(t, 1, 10*time.Second)

	env, err := (&transport.CommandSigner{Key: f.cmdKey, TTL: time.Minute}).Sign(transport.Command{Device: "retired-1", Name: decommission.Command})
	if err != nil {
		t.Fatal(err)
	}
	if err := commander.SendCommand(ctx, "retired-1", env); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Decommission: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the device did not decommission")
	}
	// The cloud heard the last words, signed with the key now gone.
	col.wait(t, 2, 10*time.Second)
	col.mu.Lock()
	last := col.recs[len(col.recs)-1]
	col.mu.Unlock()
	if last.Stream != decommission.LifecycleStream || !bytes.Contains(last.Readings[0].Body, []byte("decommissioned")) {
		t.Fatalf("last record %s %s, want the decommissioned event", last.Stream, last.Readings[0].Body)
	}

	// Nothing of the identity or the transport state is left, and no file
	// anywhere in the test's tree (CA, registrar, device) holds the key.
	if _, err := os.Stat(store.Dir()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("store directory still there: %v", err)
	}
	err = filepath.WalkDir(f.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		blobs := [][]byte{b}
		for rest := b; ; {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			blobs = append(blobs, blk.Bytes)
		}
		for _, blob := range blobs {
			for _, s := range secrets {
				if bytes.Contains(blob, s) {
					t.Errorf("%s still holds the device's key", p)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The cloud forgets it and revokes it.
	if err := decommission.Forget(ctx, "retired-1", f.certs, f.ca, v); err != nil {
		t.Fatal(err)
	}
	if _, err := f.certs.DeviceCertificates(ctx, "retired-1"); !errors.Is(err, wire.ErrUnknownDevice) {
		t.Fatalf("registry after decommission.Forget: %v", err)
	}
	if err := f.ca.CheckRevoked(oldCert.Leaf); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("certificate after decommission.Forget: %v, want revoked", err)
	}
	// A copy of the old credential (taken before the wipe) no longer
	// connects: the broker checks revocation.
	if err := mqttConnect(ctx, f, oldCert); err == nil {
		t.Fatal("a revoked device connected to the broker")
	}
}

// mqttConnect dials the fleet's broker with cert and sends a CONNECT; it
// returns nil only if the broker accepts (CONNACK reason 0).
func mqttConnect(ctx context.Context, f *e2eFleet, cert tls.Certificate) error {
	d := tls.Dialer{Config: &tls.Config{RootCAs: f.roots, ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}}
	c, err := d.DialContext(ctx, "tcp", f.broker.Addr())
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	reason, err := testpeer.MQTTConnect(c, "retired-1")
	if err != nil {
		return err
	}
	if reason != 0 {
		return fmt.Errorf("CONNACK reason %#x", reason)
	}
	return nil
}
