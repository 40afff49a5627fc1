// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command rogue-broker plays an attacker who runs the broker a device
// connects to: it announces a 256 MiB packet in 8 bytes after every
// CONNACK, then sends unsigned and foreign-signed commands on the device's
// real command topic. The device allocates nothing of the announced size,
// reconnects with a growing, jittered backoff, runs none of the commands,
// and loses none of its readings.
//
//	go run ./examples/attacks/rogue-broker
package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/roguebroker"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

func main() { lab.Main(run) }

// connections is how many connections the device makes to the attacking
// broker before the attacker changes tactics.
const connections = 6

// The device's reconnection backoff, scaled down for the lab (the
// defaults are 1 s and 2 min).
const (
	retryMin = 100 * time.Millisecond
	retryMax = 2 * time.Second
)

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("rogue-broker", "a broker that attacks the devices connected to it")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	store, err := f.Enroll(ctx, "meter-1")
	if err != nil {
		return err
	}
	forged, err := forgedCommands("meter-1")
	if err != nil {
		return err
	}
	rogue, err := startRogue(f, forged)
	if err != nil {
		return err
	}
	defer rogue.Close()
	n.Lab("fleet on 127.0.0.1: CA, registrar; smart meter meter-1 enrolled and trusting the fleet's command key")
	n.Lab("the attacker runs the broker %s: a compromised broker keeps its fleet server certificate,\n"+
		"completes mutual TLS and checks meter-1's certificate like any broker of the fleet", rogue.Addr())

	// The device connects at once: what the process allocates from here
	// on includes the attack.
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ran := make(chan transport.Command, 8)
	refused := make(chan transport.Refusal, 8)
	dev, err := transport.Dial(ctx, transport.ClientConfig{Broker: rogue.Addr(), Store: store,
		CommandKeys: []crypto.PublicKey{f.CommandKey.Public()},
		OnCommand:   func(_ context.Context, c transport.Command) { ran <- c },
		OnRefused:   func(r transport.Refusal) { refused <- r },
		RetryMin:    retryMin, RetryMax: retryMax})
	if err != nil {
		return err
	}
	defer dev.Close(context.Background())
	for i := range 5 {
		if err := dev.Publish(ctx, "energy", transport.Reading{Time: time.Now(), Body: fmt.Appendf(nil, `{"kWh":%d}`, 1200+i)}); err != nil {
			return err
		}
	}
	n.Lab("meter-1 stored 5 readings (Publish returned: they are durably in its outbox)")

	// 1. The 8-byte 256 MiB packet.
	n.Section("1. a 256 MiB packet announced in 8 bytes, after every CONNACK")
	n.Attacker("after each CONNACK sends % x: a PUBLISH whose remaining length is 268,435,455 bytes", roguebroker.HugeLengthBytes)
	cs := waitConnects(ctx, rogue, connections)
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	if allocated > 64<<20 {
		return lab.Succeeded("the process allocated %d MiB during the attack", allocated>>20)
	}
	connErr := dev.LastConnectError()
	if !errors.Is(connErr, transport.ErrPacketTooLarge) {
		return lab.Succeeded("meter-1 did not refuse the packet: last connection error %v", connErr)
	}
	if len(cs) < connections {
		return fmt.Errorf("%d connections to the rogue broker in %v, want %d", len(cs), lab.Timeout, connections)
	}
	n.D2C("meter-1 dropped each connection at the length, before reading any body:\n%v", connErr)
	n.D2C("%d connections in %v; the whole process allocated %.1f MiB meanwhile (the packet would cost 256 MiB at each)",
		len(cs), cs[len(cs)-1].Time.Sub(cs[0].Time).Round(time.Millisecond), float64(allocated)/(1<<20))
	var gaps, ceilings []string
	for i := 1; i < len(cs); i++ {
		gaps = append(gaps, cs[i].Time.Sub(cs[i-1].Time).Round(time.Millisecond).String())
		ceilings = append(ceilings, min(retryMin<<(i-1), retryMax).String())
	}
	n.D2C("reconnection gaps: %s\n(each a random wait below %s, plus the handshake: exponential backoff, full jitter)",
		strings.Join(gaps, " "), strings.Join(ceilings, ", "))
	st := dev.Stats()
	if st.Acked != 0 || st.QueueDepth != 5 {
		return fmt.Errorf("during the attack: %+v", st)
	}
	n.D2C("ProtocolErrors %d; the 5 readings are still in the outbox (QueueDepth %d): a reading leaves it only on a PUBACK",
		st.ProtocolErrors, st.QueueDepth)
	n.Why("meter-1 advertises a Maximum Packet Size (limits.MQTTPacket, 320 KiB) in CONNECT, and its connection\n" +
		"hands paho no packet header over it, so nothing of the announced size is ever allocated\n" +
		"(transport.ErrPacketTooLarge). A connection that ends at once counts as a failed attempt, so a\n" +
		"broker that breaks every connection is retried less and less often, never in a loop.")

	// 2. Unsigned commands on the real command topic.
	n.Section("2. unsigned and foreign-signed commands on meter-1's command topic")
	rogue.SetBehaviour(roguebroker.Commands)
	rogue.DropConnections()
	n.Attacker("now answers like a correct broker (CONNACK, SUBACK, PUBACK), and once meter-1 subscribes publishes\n"+
		"on %s: \"cut-supply\" with \"alg\":\"none\" and no signature, then signed by its own key", wire.CommandTopic("meter-1"))
	for range forged {
		select {
		case c := <-ran:
			return lab.Succeeded("meter-1 ran the injected command %s %s", c.Name, c.Body)
		case r := <-refused:
			n.D2C("meter-1 refused it (ClientConfig.OnRefused): %v", r.Err)
		case <-time.After(lab.Timeout):
			return errors.New("meter-1 neither ran nor refused the injected commands")
		}
	}
	n.Why("the device runs only commands signed by a key it was configured with (chosen by kid, never\n" +
		"taken from the message), for itself, unexpired, with an ID above the last it ran: whatever the\n" +
		"broker sends, and on whatever topic.")

	if !waitFor(lab.Timeout, func() bool { return dev.Stats().QueueDepth == 0 }) {
		return lab.Succeeded("meter-1's readings never left its outbox: %+v", dev.Stats())
	}
	st = dev.Stats()
	if st.CommandsRun != 0 {
		return lab.Succeeded("meter-1 ran %d commands", st.CommandsRun)
	}
	n.D2C("the 5 readings went out once a broker acknowledged them (Acked %d): signed envelopes, which\n"+
		"a broker can store or drop but not alter without the cloud's verifier refusing them", st.Acked)
	n.Stopped("meter-1 allocated nothing of the 256 MiB, backed off, ran no injected command and lost no reading")
	return nil
}

// startRogue starts the attacker's broker with a server certificate from
// the fleet CA, verifying client certificates against the fleet root, its
// first behaviour the 8-byte attack. forged are the commands it sends in
// section 2.
func startRogue(f *lab.Fleet, forged [][]byte) (*roguebroker.Server, error) {
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return nil, err
	}
	cert, err := f.CA.IssueServer(key.Public(), "127.0.0.1")
	if err != nil {
		return nil, err
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(f.CA.Root())
	return roguebroker.Start(roguebroker.Config{Behaviour: roguebroker.HugeLength, Payloads: forged,
		TLS: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw, f.CA.Issuing().Raw}, PrivateKey: key}},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs}})
}

// forgedCommands are what the attacker can make without the fleet's
// command key: a command with its signature stripped ("alg":"none"), and
// one signed by a key of its own.
func forgedCommands(device string) ([][]byte, error) {
	key, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return nil, err
	}
	own, err := (&transport.CommandSigner{Key: key}).Sign(transport.Command{Device: device, Name: "cut-supply"})
	if err != nil {
		return nil, err
	}
	unsigned, err := lab.StripSignature(own)
	if err != nil {
		return nil, err
	}
	return [][]byte{unsigned, own}, nil
}

// waitConnects waits (at most lab.Timeout) until the rogue broker has
// read n CONNECTs, and returns the first n, or all it read.
func waitConnects(ctx context.Context, s *roguebroker.Server, n int) []roguebroker.Connect {
	waitFor(lab.Timeout, func() bool { return ctx.Err() != nil || len(s.Connects()) >= n })
	cs := s.Connects()
	return cs[:min(n, len(cs))]
}

// waitFor polls cond until it holds or within passes.
func waitFor(within time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}
