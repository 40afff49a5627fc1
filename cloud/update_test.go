// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package cloud_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/cloud"
	"github.com/d2c-iot/d2c/update"
)

// TestServiceUpdateRole: the service serves an update repository over
// HTTPS and keeps its timestamp fresh: a device pinned at the first root
// accepts what it fetches, and later fetches a newer timestamp, re-signed
// by the service before the first expired.
func TestServiceUpdateRole(t *testing.T) {
	f := newFleet(t)
	r := newTestRepo(t, filepath.Join(f.dir, "repo"))
	rel := r.release(t, 2)
	r.Write(t, "secret.key", []byte("not to be served"))
	rootBytes := r.Root

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	addrs, ran := f.run(ctx, cloud.Config{Update: &cloud.UpdateRole{Dir: r.Dir, Listen: "127.0.0.1:0", Certificate: f.serverCert,
		TimestampKeys: []crypto.Signer{r.TimestampKey}, TimestampValidity: 4 * time.Second}})
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.roots}}}
	fetch := func(name string) (int, []byte) {
		t.Helper()
		resp, err := client.Get("https://" + addrs.Update.String() + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	check := func() uint64 {
		t.Helper()
		tr, err := update.NewTrusted(rootBytes, update.Floors{}, time.Now(), repoHardware)
		if err != nil {
			t.Fatal(err)
		}
		code, b := fetch("timestamp.json")
		if code != http.StatusOK {
			t.Fatalf("timestamp.json: %d %s", code, b)
		}
		ts, err := tr.UpdateTimestamp(b)
		if err != nil {
			t.Fatalf("the timestamp the service signed: %v", err)
		}
		if _, b = fetch("2.release.json"); !bytes.Equal(b, rel) {
			t.Fatal("2.release.json differs")
		}
		if _, err := tr.UpdateRelease(b); err != nil {
			t.Fatal(err)
		}
		return ts.Version
	}
	// The first timestamp is signed as the role starts.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if code, _ := fetch("timestamp.json"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no timestamp signed")
		}
	}
	first := check()
	if code, _ := fetch("secret.key"); code != http.StatusNotFound {
		t.Errorf("a *.key file served: %d", code)
	}
	deadline := time.Now().Add(15 * time.Second)
	for check() == first {
		if time.Now().After(deadline) {
			t.Fatal("the timestamp was not re-signed")
		}
		time.Sleep(200 * time.Millisecond)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}
