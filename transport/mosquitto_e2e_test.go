// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testbroker"
	"github.com/d2c-iot/d2c/internal/testpeer"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
)

// startMosquitto runs a real mosquitto with the configuration and ACL that
// transport generates for the fleet, on a free 127.0.0.1 port.
func (f *e2eFleet) startMosquitto() *testpeer.Broker {
	f.t.Helper()
	return f.startMosquittoWith(mosquittoOptions{})
}

// mosquittoOptions adds lines to the generated mosquitto configuration.
type mosquittoOptions struct {
	// Global lines go before the listener: global options such as
	// max_inflight_messages, max_queued_messages or log_type.
	Global []string
	// Listener lines go after it: options of the listener, such as
	// max_connections.
	Listener []string
	// Persistence turns on mosquitto's persistence in a temporary directory.
	Persistence bool
}

// startMosquittoWith is startMosquitto with extra configuration lines.
func (f *e2eFleet) startMosquittoWith(o mosquittoOptions) *testpeer.Broker {
	f.t.Helper()
	var mc broker.MosquittoConfig
	if o.Persistence {
		mc.PersistenceDir = filepath.Join(f.t.TempDir(), "persist")
		if err := os.Mkdir(mc.PersistenceDir, 0o700); err != nil {
			f.t.Fatal(err)
		}
	}
	conf := mosquittoConf(f.t, f.ca, serverCert(f.t, f.ca), services, mc)
	if len(o.Global) > 0 {
		conf = strings.Replace(conf, "\nlistener {{port}} 127.0.0.1\n",
			"\n# added by the test\n"+strings.Join(o.Global, "\n")+"\n\nlistener {{port}} 127.0.0.1\n", 1)
	}
	if len(o.Listener) > 0 {
		conf += "# added by the test\n" + strings.Join(o.Listener, "\n") + "\n"
	}
	return testpeer.Mosquitto(f.t, conf)
}

// mosquittoConf writes the files of a mosquitto serving ca's fleet with
// server's certificate (its chain with the issuing CA, its key, the CA's
// CRL, the ACL for services) into a temporary directory, fills them into
// mc, and returns the configuration mc generates, its listener on
// testpeer's free-port placeholder.
func mosquittoConf(t *testing.T, ca *identity.CA, server tls.Certificate, services []broker.ServiceRights, mc broker.MosquittoConfig) string {
	t.Helper()
	return testbroker.Conf(t, ca, server, services, mc)
}

// TestEndToEndMosquittoBrokerRestart publishes through a real mosquitto,
// kills the broker mid-stream and restarts it: every message stored by the
// device reaches the cloud exactly once.
func TestEndToEndMosquittoBrokerRestart(t *testing.T) {
	f := newE2EFleet(t)
	broker := f.startMosquitto()
	store := f.enroll("sensor-m")
	col := newCollector()
	v := f.verifier()
	cloud, err := transport.DialCloud(t.Context(), transport.CloudConfig{Broker: broker.Addr, Certificate: f.serviceCert("verifier"),
		Roots: f.roots, Verifier: v, OnRecord: col.onRecord, OnRefused: col.onRefused})
	if err != nil {
		t.Fatal(err)
	}
	defer cloud.Close(context.Background())
	dev, err := transport.Dial(t.Context(), transport.ClientConfig{Broker: broker.Addr, Store: store,
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close(context.Background())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := dev.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cloud.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)

	const n = 300
	for i := range n {
		if i == n/3 {
			broker.Kill()
		}
		if i == 2*n/3 {
			broker.Restart(t)
		}
		if err := dev.Publish(t.Context(), "temp", transport.Reading{Time: time.Now(), Body: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	col.wait(t, n, 30*time.Second)
	time.Sleep(300 * time.Millisecond) // let any redelivery arrive
	col.mu.Lock()
	defer col.mu.Unlock()
	seen := map[string]int{}
	for _, r := range col.recs {
		seen[string(r.Readings[0].Body)]++
	}
	for i := range n {
		if c := seen[fmt.Sprint(i)]; c != 1 {
			t.Fatalf("reading %d delivered to the application %d times", i, c)
		}
	}
	if len(col.refused) != 0 {
		t.Fatalf("refusals: %v", col.refused)
	}
	t.Logf("device %+v; verifier %+v", dev.Stats(), v.Stats())
}
