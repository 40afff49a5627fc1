// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package broker

import (
	"errors"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Broker policy. The broker is the first line of defence, never the last:
// the cloud verifies every envelope's signature whatever the broker lets
// through. Its job is to keep a device from speaking or listening for
// another one:
//
//   - every client authenticates with a client certificate of the fleet, and
//     the certificate's CN is its username: a device ID, or "svc:<name>" for
//     a cloud service;
//   - a device publishes only under d2c/v1/dev/{its ID}/up/# and subscribes
//     only under d2c/v1/dev/{its ID}/down/#;
//   - a service has exactly the rights its [ServiceRights] list;
//   - the client ID is the username too, so that no client can take over
//     another identity's session (MQTT hands a session to whoever connects
//     with its client ID). One connection per certificate: run each service
//     instance with its own certificate and name (which also lets one
//     instance be revoked alone), and give them the same rights.
//
// [MosquittoConfig] writes this policy for mosquitto 2.x; [Authorize] is the
// same policy as a pure function, for the hooks of other brokers
// (transport/mochihook for mochi-mqtt).

// DefaultMaxPacketSize is the largest MQTT packet, in bytes, a generated
// broker configuration (and the embedded broker, transport/devbroker)
// accepts from a client when none is given, and the largest it may be set
// to: the largest packet a d2c client reads (limits.MQTTPacket, 320 KiB),
// less 1 KiB for the properties a broker adds when it forwards a message
// (message expiry, subscription identifiers). So every message the broker
// accepts can be delivered to every d2c reader. A larger limit would let
// one device publish messages that no d2c reader accepts: mosquitto 2.0.11
// drops each one without giving back its slot in the reader's Receive
// Maximum, so after that many of them the reader (the verifier) receives
// nothing more; mochi keeps each one for a day, counted against its
// bounds. It is still above the largest message a d2c client sends (an
// outbox record holds at most 256 KiB of topic and payload): a broker
// limit below a client's message would disconnect that client on every
// retry.
const DefaultMaxPacketSize = limits.MQTTPacket - 1<<10

// Defaults of the queue and memory bounds of [MosquittoConfig]. They are
// sized for a fleet of about 8,000 devices that each send one envelope a
// minute (about 130 messages and 55 KB a second, at 417 bytes for a signed
// 150-byte reading): a verifier away for up to an hour, as long as the
// broker keeps its session (transport.DialCloud asks for 3600 s), gets its
// whole backlog. A larger fleet, a higher rate or a longer outage to ride
// out needs larger values: MaxQueuedBytes = bytes per second of the fleet
// times the outage, MaxQueuedMessages likewise, and MemoryLimit at least
// twice MaxQueuedBytes per cloud service that keeps a session.
const (
	// DefaultMaxQueuedMessages bounds the QoS 1 messages queued for one
	// client: 480,000 messages is an hour of the fleet above.
	DefaultMaxQueuedMessages = 500_000
	// DefaultMaxQueuedBytes bounds the payload bytes queued for one
	// client: an hour of the fleet above is about 200 MB.
	DefaultMaxQueuedBytes = 256 << 20
	// DefaultMemoryLimit bounds the memory the broker allocates, all
	// clients together: four times DefaultMaxQueuedBytes, so that one full
	// queue, its payload and mosquitto's bookkeeping, stays well inside it
	// (mosquitto 2.0.11 measured: about 400 bytes a queued message besides
	// its payload, so 500,000 envelopes of 417 bytes take about 400 MB).
	DefaultMemoryLimit = 1 << 30
)

// mqttMaxTopicLen is the longest topic or topic filter MQTT can carry (a UTF-8
// string with a 16-bit length).
const mqttMaxTopicLen = 65535

// ServiceRights names a cloud service and the topic filters it may read
// (subscribe to, and receive on) and write (publish on). The service
// authenticates with a certificate whose CN is "svc:" + Name
// ([identity.CA.IssueService]).
//
// Filters may use the MQTT wildcards '+' and '#' and must lie in the topic
// scheme's namespace: no leading '$' (so no $SYS, and no $share, which
// [Authorize] strips from subscriptions before it judges the filter), no
// spaces or control characters, no '%' (mosquitto patterns are not
// supported). For example a telemetry verifier reads [wire.AllUp], and a command
// sender writes wire.TopicPrefix + "+/down/cmd".
type ServiceRights struct {
	// Name is the service's name without the "svc:" prefix, in the device
	// ID format ([identity.ValidateDeviceID]).
	Name string
	// Read lists the filters the service may subscribe to and receive on.
	Read []string
	// Write lists the filters of the topics the service may publish on.
	Write []string
}

// Validate checks the service name and its filters.
func (s ServiceRights) Validate() error {
	if err := identity.ValidateDeviceID(s.Name); err != nil {
		return fmt.Errorf("transport: service name: %w", err)
	}
	for _, list := range []struct {
		what    string
		filters []string
	}{{"read", s.Read}, {"write", s.Write}} {
		for _, f := range list.filters {
			if err := validateRightsFilter(f); err != nil {
				return fmt.Errorf("transport: service %s %s filter %q: %w", s.Name, list.what, textutil.Clip(f), err)
			}
		}
	}
	return nil
}

// validateRightsFilter checks a filter of [ServiceRights]: a valid MQTT
// filter that can be written on one ACL file line and means the same to
// mosquitto and to [Authorize].
func validateRightsFilter(f string) error {
	if err := checkFilterSyntax(f); err != nil {
		return err
	}
	if strings.HasPrefix(f, "$") {
		return errors.New("filters starting with '$' are not allowed")
	}
	if strings.ContainsRune(f, '%') {
		return errors.New("'%' is not allowed (no mosquitto patterns)")
	}
	if i := strings.IndexFunc(f, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }); i >= 0 {
		return fmt.Errorf("space or control character at byte %d", i)
	}
	return nil
}

// validateServices checks every service and that no name is used twice.
func validateServices(services []ServiceRights) error {
	seen := make(map[string]bool, len(services))
	for _, s := range services {
		if err := s.Validate(); err != nil {
			return err
		}
		if seen[s.Name] {
			return fmt.Errorf("transport: service %s listed twice", s.Name)
		}
		seen[s.Name] = true
	}
	return nil
}

// MosquittoConfig describes a mosquitto 2.x broker for a d2c fleet: one MQTT
// listener over TLS 1.3 that requires a fleet client certificate, takes the
// certificate's CN as username and client ID, and enforces the topic ACL of
// [MosquittoConfig.ACL]. There is never a plaintext listener.
//
// [MosquittoConfig.Conf] writes mosquitto.conf and [MosquittoConfig.ACL]
// the ACL file it names; write both, and the certificates, then start
// mosquitto -c <conf>. Paths must be absolute (mosquitto resolves relative
// ones against its working directory). When started as root, mosquitto
// switches to the user "mosquitto" before it reads these files, so they
// must be readable by that user (or the configuration must say "user").
type MosquittoConfig struct {
	// Listen is the listener's address, "host:port", such as
	// "127.0.0.1:8883" or "[::1]:8883"; "0.0.0.0:8883" listens on every
	// IPv4 interface. Required: there is no default host.
	Listen string
	// CAFile holds the PEM certificates client certificates must chain to:
	// the fleet root, and the issuing CA too when CRLFile is set (the CRL is
	// signed by the issuing CA). Required.
	CAFile string
	// CertFile holds the broker's PEM certificate chain, leaf first
	// (identity.CA.IssueServer, then the issuing CA). Required.
	CertFile string
	// KeyFile holds the broker's PEM private key. Required.
	KeyFile string
	// CRLFile holds the fleet's PEM CRL ("X509 CRL", from identity.CA.CRL).
	// Optional but recommended: without it a revoked device keeps
	// connecting until its certificate expires. mosquitto refuses every
	// client once the CRL's nextUpdate has passed, so publish a new one in
	// time.
	CRLFile string
	// ACLFile is where the ACL file ([MosquittoConfig.ACL]) is written; the
	// configuration names it in acl_file. Required.
	ACLFile string
	// Services are the cloud services and their rights. Default none: the
	// broker then only carries devices' messages to no one.
	Services []ServiceRights
	// PersistenceDir, if set, makes mosquitto save sessions, subscriptions
	// and queued QoS 1 messages there (persistence true), so that a broker
	// restart does not lose what a disconnected subscriber has not yet
	// received. Default: no persistence.
	PersistenceDir string
	// MaxPacketSize bounds the MQTT packets the broker accepts from
	// clients, in bytes; larger ones disconnect the client. 1024 to
	// [DefaultMaxPacketSize], which is the default.
	MaxPacketSize int
	// MaxQueuedMessages and MaxQueuedBytes bound what the broker holds for
	// one client that is away or reads slowly (a verifier restarting, a
	// device offline with its session): QoS 1 messages, and their payload
	// bytes. Past either bound mosquitto drops further messages for that
	// client, after it has acknowledged them to their publishers: they are
	// lost to that client (mosquitto logs "Outgoing messages are being
	// dropped" and counts them in $SYS/broker/publish/messages/dropped).
	// Size them for the longest outage of a cloud service to ride out.
	// Defaults [DefaultMaxQueuedMessages] and [DefaultMaxQueuedBytes]
	// (about an hour of 8,000 devices sending one envelope a minute).
	MaxQueuedMessages int
	MaxQueuedBytes    int
	// MemoryLimit bounds the memory mosquitto allocates, in bytes, all
	// clients together (TLS buffers, allocated by OpenSSL, come on top:
	// some tens of KiB a connection). A publish the broker has no memory
	// left to store disconnects its publisher before PUBACK, so the
	// message stays in the device's outbox and is sent again: reaching it
	// loses nothing, but stalls the fleet until a queue drains. It is a
	// last resort, not the queue bound (at it mosquitto may also fail to
	// allocate the packets that would drain a queue): it must be at least
	// twice MaxQueuedBytes, so that one client's full queue never reaches
	// it, and below the machine's free memory, so that the kernel never
	// kills the broker with every queued message. Default
	// [DefaultMemoryLimit].
	MemoryLimit int64
}

// Validate checks that the required fields are set and that every value
// can be written into the configuration unambiguously.
func (c MosquittoConfig) Validate() error {
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("transport: mosquitto Listen %q: %v", textutil.Clip(c.Listen), err)
	}
	if host == "" || strings.ContainsFunc(host, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return fmt.Errorf("transport: mosquitto Listen %q: want an explicit host, such as 127.0.0.1", textutil.Clip(c.Listen))
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("transport: mosquitto Listen %q: port must be 1 to 65535", textutil.Clip(c.Listen))
	}
	for _, f := range []struct {
		name, path string
		required   bool
	}{
		{"CAFile", c.CAFile, true},
		{"CertFile", c.CertFile, true},
		{"KeyFile", c.KeyFile, true},
		{"ACLFile", c.ACLFile, true},
		{"CRLFile", c.CRLFile, false},
		{"PersistenceDir", c.PersistenceDir, false},
	} {
		if f.path == "" {
			if f.required {
				return fmt.Errorf("transport: mosquitto %s is required", f.name)
			}
			continue
		}
		if err := checkConfPath(f.path); err != nil {
			return fmt.Errorf("transport: mosquitto %s %q: %v", f.name, textutil.Clip(f.path), err)
		}
	}
	if c.MaxPacketSize != 0 && (c.MaxPacketSize < 1024 || c.MaxPacketSize > DefaultMaxPacketSize) {
		return fmt.Errorf("transport: mosquitto MaxPacketSize %d: want 1024 to %d bytes (what d2c clients read, less what a broker adds), or 0 for the default", c.MaxPacketSize, DefaultMaxPacketSize)
	}
	if c.MaxQueuedMessages < 0 || c.MaxQueuedMessages > math.MaxInt32 {
		return fmt.Errorf("transport: mosquitto MaxQueuedMessages %d: want 1 to %d, or 0 for the default", c.MaxQueuedMessages, math.MaxInt32)
	}
	l := c.limits()
	// mosquitto reads max_queued_bytes and max_inflight_bytes as C ints.
	if c.MaxQueuedBytes < 0 || c.MaxQueuedBytes > math.MaxInt32 || c.MaxQueuedBytes != 0 && c.MaxQueuedBytes < l.maxPacket {
		return fmt.Errorf("transport: mosquitto MaxQueuedBytes %d: want MaxPacketSize (%d) to %d bytes, or 0 for the default", c.MaxQueuedBytes, l.maxPacket, math.MaxInt32)
	}
	if c.MemoryLimit < 0 || c.MemoryLimit != 0 && c.MemoryLimit < 2*int64(l.queuedBytes) {
		return fmt.Errorf("transport: mosquitto MemoryLimit %d: want at least twice MaxQueuedBytes (%d bytes), or 0 for the default", c.MemoryLimit, 2*int64(l.queuedBytes))
	}
	if c.MemoryLimit == 0 && l.memory < 2*int64(l.queuedBytes) {
		return fmt.Errorf("transport: mosquitto MaxQueuedBytes %d needs a MemoryLimit of at least %d bytes (the default is %d)", l.queuedBytes, 2*int64(l.queuedBytes), DefaultMemoryLimit)
	}
	return validateServices(c.Services)
}

// mosquittoLimits are the bounds a configuration writes, defaults applied.
type mosquittoLimits struct {
	maxPacket, queuedMessages, queuedBytes int
	memory                                 int64
}

func (c MosquittoConfig) limits() mosquittoLimits {
	l := mosquittoLimits{c.MaxPacketSize, c.MaxQueuedMessages, c.MaxQueuedBytes, c.MemoryLimit}
	if l.maxPacket == 0 {
		l.maxPacket = DefaultMaxPacketSize
	}
	if l.queuedMessages == 0 {
		l.queuedMessages = DefaultMaxQueuedMessages
	}
	if l.queuedBytes == 0 {
		l.queuedBytes = DefaultMaxQueuedBytes
	}
	if l.memory == 0 {
		l.memory = DefaultMemoryLimit
	}
	return l
}

// checkConfPath accepts an absolute path that fits on a configuration line
// as one value.
func checkConfPath(p string) error {
	switch {
	case !filepath.IsAbs(p):
		return errors.New("must be an absolute path")
	case !utf8.ValidString(p) || strings.ContainsFunc(p, unicode.IsControl):
		return errors.New("control character or invalid UTF-8")
	case strings.TrimSpace(p) != p:
		return errors.New("leading or trailing space")
	}
	return nil
}

// Conf returns the text of mosquitto.conf, every line commented. It
// returns an error if [MosquittoConfig.Validate] does.
func (c MosquittoConfig) Conf() (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	host, port, _ := net.SplitHostPort(c.Listen)
	l := c.limits()
	var b strings.Builder
	line := func(comment, directive string) {
		if comment != "" {
			b.WriteString("# " + strings.ReplaceAll(comment, "\n", "\n# ") + "\n")
		}
		b.WriteString(directive + "\n")
	}
	b.WriteString("# mosquitto.conf for a d2c fleet, generated by broker.MosquittoConfig.Conf\n" +
		"# (mosquitto 2.x). Regenerate it rather than edit it.\n" +
		"#\n" +
		"# Only global options come before the listener line: a listener option\n" +
		"# there would configure mosquitto's default listener, which mosquitto then\n" +
		"# opens on port 1883 of every interface, without TLS.\n\n")
	line("Security options are global, set once for the single listener below.", "per_listener_settings false")
	line("No anonymous clients: every client presents a fleet certificate.", "allow_anonymous false")
	line("Devices confined to their own topics, services to their listed rights.", "acl_file "+c.ACLFile)
	line("Send each packet without waiting to coalesce (Nagle): a mutual-TLS connect\n"+
		"takes about 4.5 ms with it, 43 ms without.", "set_tcp_nodelay true")
	b.WriteString("\n# Limits. One device, or one slow or absent reader, must not be able to make\n" +
		"# the broker grow without bound: every other device would stop being served.\n#\n")
	line("d2c never publishes retained messages. A retained message is kept until\n"+
		"replaced and sent to every new subscriber: one device could fill the broker's\n"+
		"memory with them in its own subtree (80 of 900 KiB took it from 10 to 83 MB)\n"+
		"and have them replayed to every verifier that connects. A retained PUBLISH\n"+
		"ends the connection (DISCONNECT 0x9A, retain not supported); a CONNECT with\n"+
		"a retained will is refused (CONNACK 0x9A).", "retain_available false")
	line("Refuse MQTT packets larger than this many bytes (DISCONNECT 0x95). At most\n"+
		"what d2c clients read (320 KiB, the Maximum Packet Size in their CONNECT),\n"+
		"less 1 KiB for the properties the broker adds when it forwards: a message no\n"+
		"reader could take would be dropped without giving back its slot in the\n"+
		"reader's Receive Maximum, and enough of them would silence the verifier. Above\n"+
		"the largest message a d2c client sends (256 KiB of topic and payload).", "max_packet_size "+strconv.Itoa(l.maxPacket))
	line("Queue at most this many QoS 1 messages, and this many payload bytes, for one\n"+
		"client that is away or reads slowly (a verifier restarting, a device offline\n"+
		"with its session). The defaults hold about an hour of 8,000 devices sending\n"+
		"one 417-byte envelope a minute (480,000 messages, 200 MB): a verifier away\n"+
		"for up to its session expiry (1 h) gets its whole backlog. The count also\n"+
		"bounds mosquitto's bookkeeping (about 400 bytes a message) for tiny messages.\n"+
		"The trade-off: past either bound mosquitto drops further messages for that\n"+
		"client after it has acknowledged them to the devices, which then forget them.\n"+
		"They are lost to that client: it logs \"Outgoing messages are being dropped\"\n"+
		"and counts them in $SYS/broker/publish/messages/dropped. Size both for the\n"+
		"fleet's rate times the longest outage to ride out, and memory_limit with them.", "max_queued_messages "+strconv.Itoa(l.queuedMessages))
	line("", "max_queued_bytes "+strconv.Itoa(l.queuedBytes))
	line("Messages in flight to one client (sent, not yet acknowledged; at most 20, the\n"+
		"max_inflight_messages default) hold at most this many payload bytes beyond\n"+
		"max_queued_bytes: one largest packet, so one message always fits and a client\n"+
		"holds at most max_queued_bytes plus this.", "max_inflight_bytes "+strconv.Itoa(l.maxPacket))
	line("All the memory mosquitto allocates, all clients together (OpenSSL's TLS\n"+
		"buffers come on top, some tens of KiB a connection). At this bound a publish\n"+
		"the broker cannot store disconnects its publisher before PUBACK: the message\n"+
		"stays in the device's outbox and is sent again later, so nothing is lost, but\n"+
		"publishers stall until memory is freed. A last resort, not the queue bound:\n"+
		"at it mosquitto may also fail to allocate the packets that would drain a\n"+
		"queue. So at least twice max_queued_bytes, that one client's full queue never\n"+
		"reaches it; and below the machine's free memory, so that the kernel never\n"+
		"kills the broker and every message it holds.", "memory_limit "+strconv.FormatInt(l.memory, 10))
	if c.PersistenceDir != "" {
		line("Keep sessions and queued messages across broker restarts.", "persistence true")
		line("", "persistence_location "+strings.TrimSuffix(c.PersistenceDir, "/")+"/")
	}
	b.WriteString("\n")
	line("The only listener: MQTT over TLS. There is no plaintext listener.\nEvery option from here on configures it.", "listener "+port+" "+host)
	line("d2c publishes and subscribes at QoS 1 only. QoS 2 would make the broker hold\n"+
		"each incoming message until its publisher's PUBREL, which a device could\n"+
		"withhold. A QoS 2 PUBLISH ends the connection; a QoS 2 subscription is\n"+
		"granted at QoS 1.", "max_qos 1")
	line("TLS 1.3 only.", "tls_version tlsv1.3")
	line("Roots (and issuing CA) client certificates must chain to.", "cafile "+c.CAFile)
	line("The broker's certificate chain and key.", "certfile "+c.CertFile)
	line("", "keyfile "+c.KeyFile)
	if c.CRLFile != "" {
		line("Revoked client certificates are refused during the TLS handshake.", "crlfile "+c.CRLFile)
	}
	line("A client without a valid fleet certificate fails the TLS handshake.", "require_certificate true")
	line("The certificate's CN is the username the ACL matches (%u).", "use_identity_as_username true")
	line("The client ID is the username (the certificate CN): no client can take over\n"+
		"another identity's session. One connection per certificate.", "use_username_as_clientid true")
	return b.String(), nil
}

// ACL returns the text of the ACL file, every line commented. It returns
// an error if [MosquittoConfig.Validate] does.
func (c MosquittoConfig) ACL() (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString(`# mosquitto ACL for a d2c fleet, generated by broker.MosquittoConfig.ACL.
# The username is the client certificate's CN (use_identity_as_username):
# a device ID, or svc:<name> for a cloud service. Anything not granted here
# is refused: a denied publish is answered with PUBACK reason 135 (not
# authorized) and dropped; a denied subscription is granted but never
# delivers.

# Every device publishes under its own ID only (telemetry, session keys,
# command results).
pattern write ` + wire.TopicPrefix + `%u/up/#
# Every device receives under its own ID only (commands).
pattern read ` + wire.TopicPrefix + `%u/down/#
`)
	for _, s := range c.Services {
		fmt.Fprintf(&b, "\n# Cloud service %s: certificate CN %s%s.\nuser %s%s\n", s.Name, identity.ServicePrefix, s.Name, identity.ServicePrefix, s.Name)
		for _, f := range s.Read {
			fmt.Fprintf(&b, "# %s may subscribe to and receive:\ntopic read %s\n", s.Name, f)
		}
		for _, f := range s.Write {
			fmt.Fprintf(&b, "# %s may publish on:\ntopic write %s\n", s.Name, f)
		}
	}
	return b.String(), nil
}

// Access is what a client asks to do with a topic or a topic filter.
type Access int

const (
	// AccessRead is subscribing to a topic filter, or receiving a message
	// on a topic.
	AccessRead Access = 1 << iota
	// AccessWrite is publishing on a topic.
	AccessWrite
)

// sharePrefix begins an MQTT v5 shared subscription, $share/<group>/<filter>.
const sharePrefix = "$share/"

// Authorize reports whether the client whose certificate CN is username
// may have access to topicOrFilter, under the policy of the generated
// mosquitto ACL: a device reads only under d2c/v1/dev/{its ID}/down/# and
// writes only under d2c/v1/dev/{its ID}/up/#; a service "svc:<name>" has
// the rights of the entry of services with that Name; any other username
// has none.
//
// For reading, topicOrFilter may be a subscription filter with wildcards;
// it is allowed only if every topic it can match is allowed (a device's
// "d2c/v1/dev/+/down/#", "#" or "+/#" are refused). A shared subscription
// "$share/<group>/<filter>" is judged on <filter>. Topics and filters
// beginning with '$' ($SYS...), containing NUL or invalid UTF-8, or not
// valid MQTT are refused; so is writing to a topic with wildcards, and any
// access other than exactly [AccessRead], [AccessWrite] or both.
//
// Authorize may be stricter than mosquitto, never looser: mosquitto grants
// a forbidden subscription and then delivers nothing on it.
func Authorize(username, topicOrFilter string, access Access, services []ServiceRights) bool {
	if access == 0 || access&^(AccessRead|AccessWrite) != 0 {
		return false
	}
	f := topicOrFilter
	if access&AccessRead != 0 && strings.HasPrefix(f, sharePrefix) {
		group, rest, ok := strings.Cut(f[len(sharePrefix):], "/")
		if !ok || group == "" || strings.ContainsAny(group, "+#") {
			return false
		}
		f = rest
	}
	if checkFilterSyntax(f) != nil || strings.HasPrefix(f, "$") {
		return false
	}
	if access&AccessWrite != 0 && strings.ContainsAny(f, "+#") {
		return false
	}
	var read, write []string
	if identity.ValidateDeviceID(username) == nil {
		read = []string{wire.TopicPrefix + username + "/down/#"}
		write = []string{wire.TopicPrefix + username + "/up/#"}
	} else if name, ok := strings.CutPrefix(username, identity.ServicePrefix); ok && identity.ValidateDeviceID(name) == nil {
		for _, s := range services {
			if s.Name == name {
				read, write = s.Read, s.Write
				break
			}
		}
	} else {
		return false
	}
	if access&AccessRead != 0 && !anyCovers(read, f) {
		return false
	}
	if access&AccessWrite != 0 && !anyCovers(write, f) {
		return false
	}
	return true
}

// anyCovers reports whether one of grants covers f.
func anyCovers(grants []string, f string) bool {
	for _, g := range grants {
		if validateRightsFilter(g) == nil && covers(g, f) {
			return true
		}
	}
	return false
}

// covers reports whether every topic the filter f matches is matched by
// the filter grant. Both are syntactically valid filters (see
// checkFilterSyntax) not beginning with '$'. It compares level by level:
// a '#' in grant covers whatever remains of f, including nothing (MQTT's
// "a/#" matches "a"); a '+' in grant covers one level of f, literal or '+';
// a literal covers only itself. A '#' in f is covered only by a '#'.
func covers(grant, f string) bool {
	for {
		g, gRest, gMore := strings.Cut(grant, "/")
		if g == "#" {
			return true
		}
		l, fRest, fMore := strings.Cut(f, "/")
		switch {
		case l == "#":
			return false
		case g == "+":
		case l == "+" || l != g:
			return false
		}
		switch {
		case !gMore && !fMore:
			return true
		case !fMore:
			// f ends here; grant goes deeper: covered only by a final "/#".
			return gRest == "#"
		case !gMore:
			return false
		}
		grant, f = gRest, fRest
	}
}

// checkFilterSyntax checks an MQTT topic filter (a topic name is a filter
// without wildcards): 1 to 65535 bytes of UTF-8 without NUL, '#' only as the
// whole last level, '+' only as a whole level (MQTT v5 sections 1.5.4 and
// 4.7.1).
func checkFilterSyntax(f string) error {
	switch {
	case f == "":
		return errors.New("empty")
	case len(f) > mqttMaxTopicLen:
		return fmt.Errorf("longer than %d bytes", mqttMaxTopicLen)
	case !utf8.ValidString(f):
		return errors.New("invalid UTF-8")
	case strings.IndexByte(f, 0) >= 0:
		return errors.New("NUL character")
	}
	for rest, more := f, true; more; {
		var level string
		level, rest, more = strings.Cut(rest, "/")
		if level == "#" && more {
			return errors.New("'#' not last")
		}
		if len(level) > 1 && strings.ContainsAny(level, "+#") {
			return errors.New("wildcard inside a level")
		}
	}
	return nil
}

// ServiceName returns the certificate CN of a cloud service, "svc:<name>"
// (see identity.CA.IssueService).
func ServiceName(name string) string { return identity.ServicePrefix + name }
