// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/transport/outbox"
)

// freeAddr returns a loopback address nothing listens on (yet).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestClientFlush: with the broker down, Flush waits, and a deadline ends
// it with an error that wraps context.DeadlineExceeded, counts the
// messages left and says why the client is not connected; once a broker
// listens, Flush returns when the broker has acknowledged every message
// stored before it.
func TestClientFlush(t *testing.T) {
	f := newE2EFleet(t)
	store := f.enroll("flush-1")
	addr := freeAddr(t)
	dev := dialDevice(t, transport.ClientConfig{Broker: addr, Store: store,
		RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond, SecurityReportInterval: -1})
	want := publishN(t, dev, "f", 0, 5)
	if !waitFor(5*time.Second, func() bool { return dev.LastConnectError() != nil }) {
		t.Fatal("no connection attempt failed with the broker down")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	err := dev.Flush(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, syscall.ECONNREFUSED) ||
		!strings.Contains(err.Error(), "5 messages not yet acknowledged") {
		t.Fatalf("Flush with the broker down = %v; want DeadlineExceeded, the count and ECONNREFUSED", err)
	}
	t.Logf("Flush with the broker down: %v", err)

	done := make(chan error, 1)
	go func() { done <- dev.Flush(t.Context()) }()
	select {
	case err := <-done:
		t.Fatalf("Flush returned %v with the broker down", err)
	case <-time.After(200 * time.Millisecond):
	}

	b, err := devbroker.Start(t.Context(), devbroker.Config{Addr: addr, Certificate: serverCert(t, f.ca),
		ClientRoots: f.roots, Services: services})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	col := newCollector()
	f.dialCloud(addr, col, f.verifier())
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Flush after the broker came up: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Flush did not return after the broker came up: %+v", dev.Stats())
	}
	if st := dev.Stats(); st.QueueDepth != 0 || st.Acked < 5 {
		t.Fatalf("after Flush: %+v", st)
	}
	col.wait(t, 5, 5*time.Second)
	checkExactlyOnce(t, col, want, nil)

	if err := dev.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := dev.Flush(t.Context()); !errors.Is(err, outbox.ErrClosed) {
		t.Fatalf("Flush after Close = %v, want ErrOutboxClosed", err)
	}
}

// TestAwaitConnectionSaysWhy: a broker whose certificate does not name the
// ServerName the device expects is never connected to; AwaitConnection's
// error wraps the deadline and the certificate error, and its text names
// both, for the device and for a cloud service.
func TestAwaitConnectionSaysWhy(t *testing.T) {
	f := newE2EFleet(t) // the broker's certificate names 127.0.0.1
	const name = "broker.example.com"
	check := func(t *testing.T, err error) {
		t.Helper()
		var host x509.HostnameError
		if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &host) {
			t.Fatalf("AwaitConnection = %v; want DeadlineExceeded and an x509.HostnameError", err)
		}
		for _, s := range []string{"not connected to " + f.broker.Addr(), "context deadline exceeded",
			"last failed attempt", host.Error(), "wanted to match " + name} {
			if !strings.Contains(err.Error(), s) {
				t.Fatalf("AwaitConnection = %q; want it to say %q", err, s)
			}
		}
		t.Logf("AwaitConnection: %v", err)
	}

	t.Run("device", func(t *testing.T) {
		dev := dialDevice(t, transport.ClientConfig{Broker: f.broker.Addr(), ServerName: name, Store: f.enroll("why-1"),
			RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond, SecurityReportInterval: -1})
		if !waitFor(5*time.Second, func() bool { return dev.LastConnectError() != nil }) {
			t.Fatal("no connection attempt failed")
		}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		check(t, dev.AwaitConnection(ctx))
	})
	t.Run("cloud", func(t *testing.T) {
		c, err := transport.DialCloud(t.Context(), transport.CloudConfig{Broker: f.broker.Addr(), ServerName: name,
			Certificate: f.serviceCert("verifier"), Roots: f.roots, Verifier: f.verifier()})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		check(t, c.AwaitConnection(ctx))
	})
}
