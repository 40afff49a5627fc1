// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command retained-flood plays an attacker who owns one device and tries to
// exhaust the broker without breaking a single ACL rule: it publishes
// retained messages, 80 of 900 KiB, on topics of its own subtree. A broker
// that keeps retained messages stores them all (a mosquitto with the old
// configuration grew from 10 to 83 MB) and hands them to every cloud
// service that subscribes, again at every reconnect. d2c never publishes
// retained messages, and the brokers it configures refuse them: the
// connection ends with DISCONNECT 0x9A (retain not supported) and nothing
// is stored. An honest meter keeps being served throughout.
//
//	go run ./examples/attacks/retained-flood
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/wire"
)

const (
	floodCount = 80
	floodSize  = 300 << 10
)

func main() { lab.Main(run) }

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("retained-flood", "one device fills the broker with retained messages")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	cloud, err := f.StartCloud(ctx, false)
	if err != nil {
		return err
	}
	storeR, err := f.Enroll(ctx, "meter-r")
	if err != nil {
		return err
	}
	storeH, err := f.Enroll(ctx, "meter-h")
	if err != nil {
		return err
	}
	honest, err := f.Connect(ctx, storeH, lab.DeviceOptions{})
	if err != nil {
		return err
	}
	n.Lab("fleet on 127.0.0.1: CA, registrar, broker %s, cloud verifier; meters meter-r and meter-h enrolled", f.Broker.Addr())
	n.Lab("the attacker owns meter-r: its key and its certificate, valid members of the fleet")

	n.Section("1. meter-r publishes %d retained messages of %d KiB in its own subtree", floodCount, floodSize>>10)
	idR, err := storeR.Current()
	if err != nil {
		return err
	}
	tlsR := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.Roots, ServerName: "127.0.0.1", Certificates: []tls.Certificate{idR.TLSCertificate()}}
	payload := bytes.Repeat([]byte{'R'}, floodSize)
	answers := map[string]int{}
	var first string
	start := time.Now()
	for i := range floodCount {
		// The ACL lets meter-r write here: the topic is its own.
		topic := wire.TelemetryTopic("meter-r", fmt.Sprintf("dump-%02d", i))
		answer, err := lab.RawPublish(ctx, f.Broker.Addr(), tlsR, "meter-r",
			&packets.Publish{Topic: topic, QoS: 1, PacketID: 1, Retain: true, Payload: payload})
		if err != nil {
			return err
		}
		if first == "" {
			first = answer
		}
		answers[answer]++
		// The honest meter publishes while the flood goes on.
		if i%10 == 0 {
			if err := honest.Client.Publish(ctx, "energy", transport.Reading{Time: time.Now(), Body: fmt.Appendf(nil, `{"kwh":%d}`, i)}); err != nil {
				return err
			}
		}
	}
	n.Attacker("sent %d retained PUBLISH packets of %d KiB (%.0f MiB) on d2c/v1/dev/meter-r/up/tele/dump-NN, reconnecting\n"+
		"after each one, in %v, with a raw MQTT client that ignores the broker's \"retain not supported\"",
		floodCount, floodSize>>10, float64(floodCount*floodSize)/(1<<20), time.Since(start).Round(time.Millisecond))
	if answers["PUBACK reason 0x00"] > 0 {
		return lab.Succeeded("the broker accepted %d of %d retained messages (answers: %v)", answers["PUBACK reason 0x00"], floodCount, answers)
	}
	if answers[first] != floodCount || !strings.HasPrefix(first, "DISCONNECT reason 0x9a") {
		return fmt.Errorf("the broker answered %v, want DISCONNECT reason 0x9a every time", answers)
	}
	n.D2C("every one was answered %s (retain not supported): the connection ended, the message was\n"+
		"neither stored nor delivered", first)
	n.Why("d2c never publishes retained messages, so its brokers refuse them: the embedded broker announces\n" +
		"Retain Available 0 in CONNACK and transport/mochihook disconnects a client that sends one anyway;\n" +
		"the mosquitto configuration says retain_available false. A retained message would stay in the\n" +
		"broker's memory until replaced, and go to every subscriber that comes.")

	n.Section("2. a cloud service subscribes afterwards")
	insider, err := f.Insider(ctx)
	if err != nil {
		return err
	}
	if err := insider.Subscribe(ctx, wire.AllUp); err != nil {
		return err
	}
	if err := honest.Client.Publish(ctx, "energy", transport.Reading{Time: time.Now(), Body: []byte(`{"kwh":99}`)}); err != nil {
		return err
	}
	msg, err := insider.Next(ctx, "")
	if err != nil {
		return err
	}
	if strings.Contains(msg.Topic, "/meter-r/") {
		return lab.Succeeded("a new subscriber received meter-r's retained message on %s", msg.Topic)
	}
	if rest := insider.Drain(200 * time.Millisecond); len(rest) > 0 {
		return lab.Succeeded("a new subscriber received %d more messages, first on %s", len(rest), rest[0].Topic)
	}
	n.Lab("a service subscribed to %s after the flood", wire.AllUp)
	n.D2C("the first message it received was meter-h's fresh reading on %s; nothing of meter-r's", msg.Topic)
	accepted := 0
	for accepted < floodCount/10+1 {
		if _, err := cloud.Record(ctx); err != nil {
			return fmt.Errorf("after %d readings of meter-h: %w", accepted, err)
		}
		accepted++
	}
	n.D2C("the verifier accepted all %d readings meter-h sent during and after the flood", accepted)
	n.Why("nothing retained means nothing replayed: a verifier that restarts sees only what devices send now.")

	n.Section("3. and a production broker?")
	conf, err := broker.MosquittoConfig{Listen: "0.0.0.0:8883", CAFile: "/etc/d2c/ca.pem", CertFile: "/etc/d2c/broker.pem",
		KeyFile: "/etc/d2c/broker.key", ACLFile: "/etc/d2c/acl"}.Conf()
	if err != nil {
		return err
	}
	var limits []string
	for _, line := range strings.Split(conf, "\n") {
		key, _, _ := strings.Cut(line, " ")
		switch key {
		case "retain_available", "max_packet_size", "max_queued_messages", "max_queued_bytes", "max_inflight_bytes", "memory_limit", "max_qos":
			limits = append(limits, line)
		}
	}
	if !strings.Contains(conf, "\nretain_available false\n") {
		return lab.Succeeded("the generated mosquitto.conf keeps retained messages")
	}
	n.D2C("broker.MosquittoConfig bounds the broker, each line explained in the file:\n%s", strings.Join(limits, "\n"))
	n.Why("the broker is shared by the whole fleet: one device, or one reader that is slow or away, must not be\n" +
		"able to make it grow without bound. Past max_queued_bytes a client's queue drops new messages; at\n" +
		"memory_limit the broker refuses publishes, which d2c devices keep in their outbox and send later.")

	n.Stopped("meter-r's retained flood was refused message by message; nothing was stored, and meter-h was served throughout")
	return nil
}
