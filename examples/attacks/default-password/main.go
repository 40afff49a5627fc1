// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command default-password plays the oldest IoT attack (Mirai's): log in
// to the broker with a default user name and password. d2c has no password
// path: the broker requires a fleet client certificate in the TLS
// handshake, and no plaintext MQTT listener exists to try a password on.
//
//	go run ./examples/attacks/default-password
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"strings"
	"syscall"

	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/transport/broker"
)

func main() { lab.Main(run) }

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("default-password", "log in to the broker as admin/admin")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	n.Lab("fleet broker on %s (the embedded broker, transport/devbroker)", f.Broker.Addr())

	n.Section("1. MQTT over TLS, user name and password, no client certificate")
	n.Attacker("opened a TLS connection to %s without a client certificate, to send CONNECT admin/admin", f.Broker.Addr())
	err = lab.CheckTLS(ctx, f.Broker.Addr(), &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: f.Roots, ServerName: "127.0.0.1"})
	if err == nil {
		// The handshake passed: try the password.
		m, err := lab.DialMQTT(ctx, f.Broker.Addr(), &tls.Config{RootCAs: f.Roots, ServerName: "127.0.0.1"}, "attacker", "admin", "admin")
		if err == nil {
			m.Close()
			return lab.Succeeded("the broker accepted admin/admin")
		}
		return lab.Succeeded("the broker accepted a TLS connection without a client certificate (CONNECT: %v)", err)
	}
	n.D2C("the broker ended the handshake: %v", err)
	n.Why("the listener requires a client certificate that chains to the fleet root (tls.RequireAndVerifyClientCert);\n" +
		"no CONNECT packet, and so no user name or password, is ever read from a client without one. Even with a\n" +
		"certificate the broker ignores user name and password: the identity is the certificate's CN.")

	n.Section("2. MQTT over plain TCP to the broker's port")
	n.Attacker("sent CONNECT admin/admin in clear to %s", f.Broker.Addr())
	_, err = lab.DialMQTT(ctx, f.Broker.Addr(), nil, "attacker", "admin", "admin")
	if err == nil {
		return lab.Succeeded("the broker accepted a plaintext CONNECT")
	}
	n.D2C("no CONNACK, the connection was closed: %v", err)
	n.Why("the port speaks TLS only: the broker read the CONNECT bytes as a malformed TLS ClientHello and hung up.")

	n.Section("3. MQTT over plain TCP to the standard plaintext port")
	n.Attacker("sent CONNECT admin/admin to 127.0.0.1:1883, MQTT's plaintext port")
	m, err := lab.DialMQTT(ctx, "127.0.0.1:1883", nil, "attacker", "admin", "admin")
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		n.D2C("connection refused: nothing listens there (%v)", err)
	case err == nil:
		m.Close()
		n.D2C("a broker on this machine accepted admin/admin on 1883: not the lab's, which has no plaintext listener")
	default:
		n.D2C("something else on this machine listens on 1883 (%v): not part of the lab", err)
	}
	n.Why("the embedded broker opens one listener, TLS 1.3 with client certificates, on the address it is given.")

	n.Section("4. and a production broker?")
	conf, err := broker.MosquittoConfig{Listen: "0.0.0.0:8883", CAFile: "/etc/d2c/ca.pem", CertFile: "/etc/d2c/broker.pem",
		KeyFile: "/etc/d2c/broker.key", ACLFile: "/etc/d2c/acl"}.Conf()
	if err != nil {
		return err
	}
	var settings []string
	listeners := 0
	for _, line := range strings.Split(conf, "\n") {
		key, _, _ := strings.Cut(line, " ")
		switch key {
		case "listener":
			listeners++
			settings = append(settings, line)
		case "allow_anonymous", "tls_version", "require_certificate", "use_identity_as_username":
			settings = append(settings, line)
		case "password_file":
			return lab.Succeeded("the generated mosquitto.conf has a password file")
		}
	}
	if listeners != 1 || !strings.Contains(conf, "require_certificate true") || !strings.Contains(conf, "allow_anonymous false") {
		return lab.Succeeded("the generated mosquitto.conf allows a connection without a fleet certificate")
	}
	n.D2C("broker.MosquittoConfig generates one listener and no password file:\n%s", strings.Join(settings, "\n"))

	n.Stopped("there was no password to guess: every way in needs a certificate from the fleet CA")
	return nil
}
