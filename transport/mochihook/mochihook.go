// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package mochihook enforces d2c's broker policy in a mochi-mqtt v2 server
// (github.com/mochi-mqtt/server/v2): the same rules as the mosquitto
// configuration of [broker.MosquittoConfig], as a mochi hook.
//
// # Authentication
//
// A client is authenticated by its TLS client certificate alone, never by
// an MQTT username or password (both are ignored). The hook accepts a
// client only if its connection is a *tls.Conn whose handshake verified a
// client certificate chain: the listener must be a TLS listener with
// ClientAuth tls.RequireAndVerifyClientCert and ClientCAs holding the fleet
// root (transport/devbroker sets one up). The certificate's single CN must
// be a device ID or "svc:<name>" of a configured service; it becomes the
// client's username and its client ID, like mosquitto's
// use_identity_as_username and use_username_as_clientid, so that no client
// can take over another identity's session. If a
// [identity.RevocationChecker] is configured, a revoked certificate (or a
// failing check) is refused too. A refused client gets CONNACK reason 0x86
// (bad user name or password): mochi chooses that code.
//
// A will message is part of the CONNECT packet and mochi publishes it
// without an ACL check, so the hook refuses a connection whose will topic
// the client could not publish on, or whose will is marked retained.
//
// # Retained messages
//
// d2c never publishes retained messages, and a retained message is kept by
// the broker and sent to every new subscriber: one device could fill the
// broker's memory with them and have them replayed to every verifier. The
// hook refuses every retained PUBLISH by ending the connection with
// DISCONNECT reason 0x9A (retain not supported), as mosquitto does with
// retain_available false (MQTT v5 section 3.3.1.3); an MQTT 3.1.1 client is
// disconnected without a reason. Set the server's
// Capabilities.RetainAvailable to 0 as well, so that CONNACK tells clients,
// mochi stores nothing, and a retained will is refused (CONNACK 0x9A).
//
// # Authorization
//
// Every publish, subscription and delivery is checked with
// [broker.Authorize]. mochi answers a denied QoS 1 publish with PUBACK
// reason 0x87 (not authorized) for MQTT v5 clients and drops it; a QoS 0
// one is dropped silently; an MQTT 3.1.1 client is disconnected. A denied
// subscription gets SUBACK reason 0x87 (0x80 for MQTT 3.1.1).
//
// mochi allows an action if any hook allows it: install this hook as the
// only hook that provides OnConnectAuthenticate and OnACLCheck (never
// together with mochi's auth.AllowHook or auth.Hook). Clients should not use
// topic aliases: mochi checks a publish's topic before resolving its alias,
// so a publish by alias alone is refused; set the server's
// Capabilities.TopicAliasMaximum to 0.
package mochihook

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/broker"
)

// Config configures a [Hook]. The zero value admits devices only.
type Config struct {
	// Services are the cloud services and their rights. A certificate
	// "svc:<name>" whose name is not listed is refused. Default none.
	Services []broker.ServiceRights
	// Revocation, if set, is asked about every client certificate when
	// the client connects; an error refuses the client. Default: no
	// revocation check beyond what the TLS listener does.
	Revocation identity.RevocationChecker
}

// Hook is a mochi hook that authenticates clients by certificate and
// checks every access with [broker.Authorize]. Create it with [New].
type Hook struct {
	mqtt.HookBase
	services   []broker.ServiceRights
	names      map[string]bool
	revocation identity.RevocationChecker
}

var _ mqtt.Hook = (*Hook)(nil)

// New returns a hook enforcing cfg. It checks every service's rights
// ([broker.ServiceRights.Validate]) and refuses duplicate names.
func New(cfg Config) (*Hook, error) {
	h := &Hook{names: make(map[string]bool, len(cfg.Services)), revocation: cfg.Revocation}
	for _, s := range cfg.Services {
		if err := s.Validate(); err != nil {
			return nil, fmt.Errorf("mochihook: %w", err)
		}
		if h.names[s.Name] {
			return nil, fmt.Errorf("mochihook: service %s listed twice", s.Name)
		}
		h.names[s.Name] = true
		h.services = append(h.services, broker.ServiceRights{Name: s.Name, Read: slices.Clone(s.Read), Write: slices.Clone(s.Write)})
	}
	return h, nil
}

// ID names the hook in mochi's log.
func (h *Hook) ID() string { return "d2c-certificate-acl" }

// Provides reports the events the hook handles: OnConnectAuthenticate,
// OnACLCheck and OnPublish.
func (h *Hook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck || b == mqtt.OnPublish
}

// OnConnectAuthenticate accepts the client if its verified TLS client
// certificate names a device or a configured service, is not revoked, and
// its will (if any) is on a topic it may publish on. It then sets the
// client's username and client ID to the certificate's CN.
func (h *Hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	name, err := h.authenticate(cl, pk)
	if err != nil {
		if h.Log != nil {
			h.Log.Warn("d2c: client refused", "remote", cl.Net.Remote, "error", err)
		}
		return false
	}
	cl.Properties.Username = []byte(name)
	if cl.ID != name {
		if cl.Properties.Props.AssignedClientID != "" {
			// The client sent no client ID; tell it the one it has.
			cl.Properties.Props.AssignedClientID = name
		}
		cl.ID = name
	}
	return true
}

// oidCommonName is the X.520 commonName attribute type.
var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// errNoVerifiedCert is returned when a client has no certificate that
// the TLS layer verified.
var errNoVerifiedCert = errors.New("no verified TLS client certificate (the listener must use tls.RequireAndVerifyClientCert)")

func (h *Hook) authenticate(cl *mqtt.Client, pk packets.Packet) (string, error) {
	name, leaf, err := h.verifiedIdentity(cl)
	if err != nil {
		return "", err
	}
	if h.revocation != nil {
		if err := h.revocation.CheckRevoked(leaf); err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
	}
	if pk.Connect.WillFlag && !broker.Authorize(name, pk.Connect.WillTopic, broker.AccessWrite, h.services) {
		return "", fmt.Errorf("%s: will topic %q not authorized", name, clip(pk.Connect.WillTopic))
	}
	if pk.Connect.WillFlag && pk.Connect.WillRetain {
		return "", fmt.Errorf("%s: retained will on %q", name, clip(pk.Connect.WillTopic))
	}
	return name, nil
}

// verifiedIdentity returns the name of the client's verified TLS client
// certificate and the certificate.
func (h *Hook) verifiedIdentity(cl *mqtt.Client) (string, *x509.Certificate, error) {
	conn, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return "", nil, errNoVerifiedCert
	}
	st := conn.ConnectionState()
	if !st.HandshakeComplete || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return "", nil, errNoVerifiedCert
	}
	leaf := st.VerifiedChains[0][0]
	name, err := h.identityOf(leaf)
	if err != nil {
		return "", nil, err
	}
	return name, leaf, nil
}

// identityOf returns the certificate's CN if it names a device or a
// configured service. A subject with several CNs is refused: Go takes the
// last, OpenSSL (mosquitto) the first.
func (h *Hook) identityOf(cert *x509.Certificate) (string, error) {
	n := 0
	for _, a := range cert.Subject.Names {
		if a.Type.Equal(oidCommonName) {
			n++
		}
	}
	if n != 1 {
		return "", fmt.Errorf("certificate subject has %d common names, want 1", n)
	}
	cn := cert.Subject.CommonName
	if identity.ValidateDeviceID(cn) == nil {
		return cn, nil
	}
	if svc, ok := strings.CutPrefix(cn, identity.ServicePrefix); ok && identity.ValidateDeviceID(svc) == nil {
		if !h.names[svc] {
			return "", fmt.Errorf("certificate CN %q: service %s not configured", clip(cn), svc)
		}
		return cn, nil
	}
	return "", fmt.Errorf("certificate CN %q is neither a device ID nor %s<name>", clip(cn), identity.ServicePrefix)
}

// OnACLCheck allows the access if [broker.Authorize] does for the name
// in the client's verified certificate. The name is read from the TLS
// connection at every check, never from the client's username, so that a
// client admitted by another hook has no rights here. write is a publish;
// otherwise topic is a subscription filter or the topic of a message to
// deliver.
func (h *Hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	name, _, err := h.verifiedIdentity(cl)
	if err != nil {
		return false
	}
	access := broker.AccessRead
	if write {
		access = broker.AccessWrite
	}
	return broker.Authorize(name, topic, access, h.services)
}

// OnPublish refuses a retained PUBLISH: it ends the client's connection
// with DISCONNECT reason 0x9A (retain not supported) and drops the
// message, which is neither retained nor delivered. Other publishes pass
// unchanged.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !pk.FixedHeader.Retain {
		return pk, nil
	}
	if h.Log != nil {
		h.Log.Warn("d2c: retained publish refused, client disconnected", "client", cl.ID, "topic", clip(pk.TopicName), "bytes", len(pk.Payload))
	}
	if !cl.Net.Inline {
		if cl.Properties.ProtocolVersion == 5 {
			_ = cl.WritePacket(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
				ReasonCode:  packets.ErrRetainNotSupported.Code,
				Properties:  packets.Properties{ReasonString: packets.ErrRetainNotSupported.Reason},
			})
		}
		cl.Stop(packets.ErrRetainNotSupported)
	}
	return pk, packets.ErrRejectPacket
}

// clip shortens client-supplied text before it goes into a log.
func clip(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
