// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/d2c-iot/d2c/transport/internal/textutil"
	"github.com/d2c-iot/d2c/transport/wire"
	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// CloudConfig configures the cloud half's broker connection ([DialCloud]).
type CloudConfig struct {
	// Broker is the broker's host:port. Required. TLS 1.3, mutual.
	Broker string
	// ServerName overrides the name checked in the broker certificate.
	ServerName string
	// ClientID names this process's MQTT session. Default: the service
	// certificate's CN.
	ClientID string
	// Certificate is the service's client certificate (CN "svc:<name>",
	// from identity.CA.IssueService) with its chain and key. Required.
	Certificate tls.Certificate
	// Roots are the fleet trust anchors the broker certificate must chain
	// to. Required.
	Roots *x509.CertPool
	// Verifier checks every message received. Required to receive.
	Verifier *Verifier
	// Group, if set, subscribes through the MQTT v5 shared subscription
	// $share/<Group>/..., so that several verifier processes split the
	// fleet's messages between them; they must then share their replay
	// state and session keys (VerifierConfig.Replay and SessionKeys: a
	// cloud/store database).
	//
	// The name must be unguessable, at least 16 characters (say 128
	// random bits in base64url): a broker such as mosquitto 2.0 grants any
	// client's SUBSCRIBE and checks its read rights only when delivering,
	// so a device that knows the name can join the group, and the share
	// of messages the broker hands it is dropped after the publisher's
	// PUBACK: lost. Treat it as a secret of the cloud's configuration.
	Group string
	// OnRecord receives each verified, fresh telemetry record.
	OnRecord func(ctx context.Context, r Record)
	// OnRefused is told of each refused message (forgeries, replays...);
	// duplicates are dropped silently (and counted in Verifier.Stats).
	OnRefused func(topic string, err error)
	// Logger receives connection events. Default: none.
	Logger *slog.Logger
}

// minGroupLen is the shortest shared-subscription group name accepted.
const minGroupLen = 16

// Cloud is a cloud service's connection to the broker: it receives and
// verifies telemetry, and sends signed commands.
type Cloud struct {
	cfg    CloudConfig
	cm     *autopaho.ConnectionManager
	cancel context.CancelFunc

	retry  reconnectBackoff
	in     chan paho.PublishReceived // received, waiting for verification
	budget chan struct{}             // a token per cloudBudgetUnit of payload received and not yet acknowledged
	done   chan struct{}             // closed when the verification loop ends

	subscribed     chan struct{} // closed at the first SUBACK
	subscribedOnce sync.Once
	conns          atomic.Uint64 // connections made: a subscription retry ends when its connection is replaced
	lastConnectErr atomic.Pointer[error]
}

// DialCloud connects a cloud service to the broker in the background.
func DialCloud(ctx context.Context, cfg CloudConfig) (*Cloud, error) {
	if cfg.Broker == "" || cfg.Roots == nil || len(cfg.Certificate.Certificate) == 0 {
		return nil, errors.New("transport: CloudConfig needs Broker, Roots and Certificate")
	}
	host, _, err := net.SplitHostPort(cfg.Broker)
	if err != nil {
		return nil, fmt.Errorf("transport: broker address %q: %w", cfg.Broker, err)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	leaf, err := x509.ParseCertificate(cfg.Certificate.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("transport: service certificate: %w", err)
	}
	if cfg.ClientID == "" {
		cfg.ClientID = leaf.Subject.CommonName
	}
	if cfg.Group != "" && (len(cfg.Group) < minGroupLen || strings.ContainsAny(cfg.Group, "/+#\x00")) {
		return nil, fmt.Errorf("%w: shared-subscription group %q: want an unguessable name of at least %d characters without / + # (a device that guesses it can make the broker drop a share of the fleet's messages)",
			ErrInsecureGroup, textutil.Clip(cfg.Group), minGroupLen)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cert := cfg.Certificate
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: cfg.Roots, ServerName: cfg.ServerName,
		Certificates: []tls.Certificate{cert}}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &Cloud{cfg: cfg, cancel: cancel, subscribed: make(chan struct{}), in: make(chan paho.PublishReceived, cloudReceiveMaximum),
		budget: make(chan struct{}, cloudBudget/cloudBudgetUnit), done: make(chan struct{})}
	c.retry.min, c.retry.max = 500*time.Millisecond, 30*time.Second
	var filters []string
	if cfg.Verifier != nil {
		filters = []string{wire.AllTelemetry, wire.AllKeys, wire.AllCommandResults}
		if cfg.Group != "" {
			for i, f := range filters {
				filters[i] = "$share/" + cfg.Group + "/" + f
			}
		}
	}
	acfg := autopaho.ClientConfig{
		ServerUrls:            []*url.URL{{Scheme: "tls", Host: cfg.Broker}},
		TlsCfg:                tlsCfg,
		KeepAlive:             30,
		SessionExpiryInterval: 3600,
		ReconnectBackoff:      c.retry.delay,
		ConnectPacketBuilder:  advertiseBounds(cloudReceiveMaximum),
		AttemptConnection: func(ctx context.Context, ac autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, ac.ConnectTimeout) // autopaho does not bound it
			defer cancel()
			return dialTLS(ctx, u.Host, tlsCfg)
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, ack *paho.Connack) {
			c.retry.connected()
			log.Info("cloud connected", "broker", cfg.Broker, "session_present", ack.SessionPresent)
			if len(filters) == 0 {
				return
			}
			conn := c.conns.Add(1)
			go func() {
				var subs []paho.SubscribeOptions
				for _, f := range filters {
					subs = append(subs, paho.SubscribeOptions{Topic: f, QoS: 1})
				}
				// A busy broker may not answer in time: ask again on the
				// same connection (with the persistent session it may
				// deliver meanwhile), until it answers or the connection
				// is replaced (the next one subscribes itself).
				var sa *paho.Suback
				for attempt := 1; ; attempt++ {
					var err error
					sa, err = cm.Subscribe(runCtx, &paho.Subscribe{Subscriptions: subs})
					if err == nil || sa != nil {
						break
					}
					log.Warn("cloud subscribe: no answer; trying again", "err", err, "attempt", attempt)
					sleepCtx(runCtx, c.retry.after(attempt))
					if runCtx.Err() != nil || c.conns.Load() != conn {
						return
					}
				}
				// With a SUBACK (even one refusing a filter, which paho
				// also returns as an error) the broker has answered.
				defer c.subscribedOnce.Do(func() { close(c.subscribed) })
				for i, r := range sa.Reasons {
					if r >= 0x80 {
						log.Error("broker refused the cloud subscription", "filter", filters[i], "reason", r)
					}
				}
			}()
		},
		OnConnectError: func(err error) {
			err = classifyDialError(err)
			c.lastConnectErr.Store(&err)
			log.Warn("cloud connect failed", "err", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID: cfg.ClientID,
			// Messages are acknowledged once verified and accepted (a
			// shared replay state commits them first), never before: a
			// verifier killed in between gets them again from the broker.
			EnableManualAcknowledgment: true,
			SendAcksInterval:           ackInterval,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) {
					// Wait for room in the byte budget: a broker that
					// ignores the Receive Maximum (or floods QoS 0) is
					// slowed down to the verifier's pace, its bytes held
					// in the socket, not in memory.
					if !c.take(runCtx, len(pr.Packet.Payload)) {
						return true, nil
					}
					select {
					case c.in <- pr:
					case <-runCtx.Done():
					}
					return true, nil
				},
			},
			OnClientError: func(err error) {
				if errors.Is(err, ErrPacketTooLarge) || errors.Is(err, ErrBrokerProtocol) {
					log.Error("the broker broke the protocol; dropped the connection", "err", err)
					return
				}
				log.Warn("cloud connection error", "err", err)
			},
		},
	}
	cm, err := autopaho.NewConnection(runCtx, acfg)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("transport: %w", err)
	}
	c.cm = cm
	go c.verifyLoop(runCtx, log)
	return c, nil
}

// parkedSweepInterval is how often a cloud service verifies the envelopes
// parked until their session key arrived ([EnvelopeParking]), besides
// after each key delivery it accepts.
const parkedSweepInterval = time.Second

// verifyParked verifies parked envelopes whose key has arrived, handing
// their records to OnRecord.
func (c *Cloud) verifyParked(ctx context.Context, log *slog.Logger) {
	if c.cfg.Verifier == nil {
		return
	}
	for {
		recs, err := c.cfg.Verifier.VerifyParked(ctx, cloudReceiveMaximum)
		if err != nil {
			log.Error("parked envelopes", "err", err)
		}
		for _, r := range recs {
			if c.cfg.OnRecord != nil {
				c.cfg.OnRecord(ctx, r)
			}
		}
		if err != nil || len(recs) < cloudReceiveMaximum {
			return
		}
	}
}

// ackInterval is how often paho sends the acknowledgements of verified
// messages; closeDrain bounds how long Close waits for the batches under
// way.
const (
	ackInterval = 5 * time.Millisecond
	closeDrain  = 2 * time.Second
)

// cloudReceiveMaximum is how many unacknowledged messages the cloud takes
// from the broker at once (advertised in CONNECT): the most one
// verification batch holds. paho queues that many inbound packets, so it
// also bounds the memory a broker can fill (32 of at most
// limits.MQTTPacket).
const cloudReceiveMaximum = 32

// cloudBudget bounds the payload bytes received and not yet verified and
// acknowledged (including QoS 0, which the Receive Maximum does not
// bound), counted in units of cloudBudgetUnit (a message takes at least
// one).
const (
	cloudBudget     = 2 << 20
	cloudBudgetUnit = 16 << 10
)

// units is how many budget units a payload of n bytes takes.
func units(n int) int { return 1 + n/cloudBudgetUnit }

// take reserves the budget of an n-byte payload, reporting false if ctx
// ended first.
func (c *Cloud) take(ctx context.Context, n int) bool {
	for range units(n) {
		select {
		case c.budget <- struct{}{}:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// give returns the budget of an n-byte payload.
func (c *Cloud) give(n int) {
	for range units(n) {
		<-c.budget
	}
}

// verifyLoop verifies received messages in batches, in two stages that
// overlap: one goroutine takes what has arrived (up to
// cloudReceiveMaximum in flight) and checks its cryptography (keys kept,
// envelopes parked), while the other decides the freshness of the batch
// before in one [ReplayState.Accept] (one transaction with a shared
// store), hands the fresh records to OnRecord, and only then acknowledges
// the batch, in the order it arrived. When the replay state is
// unavailable it retries with backoff, holding the acknowledgements, so
// nothing the broker delivered is lost.
func (c *Cloud) verifyLoop(ctx context.Context, log *slog.Logger) {
	defer close(c.done)
	opened := make(chan *cloudBatch) // unbuffered: one batch opens while one commits
	go func() {
		defer close(opened)
		for {
			b := c.collect(ctx)
			if b == nil {
				return
			}
			c.open(ctx, b)
			select {
			case opened <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	sweep := time.NewTicker(parkedSweepInterval)
	defer sweep.Stop()
	for {
		select {
		case b, ok := <-opened:
			if !ok {
				return
			}
			if !c.decide(ctx, log, b) {
				for range opened { // let the opener end
				}
				return // ctx ended: unacknowledged, the broker sends them again
			}
		case <-sweep.C:
			c.verifyParked(ctx, log)
		case <-ctx.Done():
			for range opened {
			}
			return
		}
	}
}

// cloudBatch is what one verification batch received and what became of
// it.
type cloudBatch struct {
	received []paho.PublishReceived
	keys     bool          // it holds key deliveries
	verified []int         // indexes into received of what the verifier checks
	opened   *openedBatch  // their first stage's results
	refused  map[int]error // refused before verification (retained)
}

// collect waits for a message and takes what else has arrived, up to
// cloudReceiveMaximum; nil when ctx ends.
func (c *Cloud) collect(ctx context.Context) *cloudBatch {
	b := &cloudBatch{}
	select {
	case pr := <-c.in:
		b.received = append(b.received, pr)
	case <-ctx.Done():
		return nil
	}
	for len(b.received) < cloudReceiveMaximum {
		select {
		case pr := <-c.in:
			b.received = append(b.received, pr)
		default:
			return b
		}
	}
	return b
}

// open runs the first stage: a retained message is refused (d2c never
// publishes one: the broker is replaying an old one to a new
// subscription); the rest have their cryptography checked.
func (c *Cloud) open(ctx context.Context, b *cloudBatch) {
	if c.cfg.Verifier == nil {
		return
	}
	var msgs []Inbound
	for i, pr := range b.received {
		p := pr.Packet
		b.keys = b.keys || isKeyTopic(p.Topic)
		if p.Retain {
			if b.refused == nil {
				b.refused = map[int]error{}
			}
			b.refused[i] = fmt.Errorf("%w: a retained message (d2c never publishes one)", wire.ErrReplay)
			continue
		}
		b.verified = append(b.verified, i)
		msgs = append(msgs, Inbound{Topic: p.Topic, Payload: p.Payload})
	}
	b.opened = c.cfg.Verifier.openBatch(ctx, msgs)
}

// decide runs the second stage until every message is decided, then
// reports each outcome, acknowledges the batch and returns its budget;
// false if ctx ended first.
func (c *Cloud) decide(ctx context.Context, log *slog.Logger, b *cloudBatch) bool {
	if o := b.opened; o != nil {
		for attempt := 1; ; attempt++ {
			if attempt > 1 {
				c.cfg.Verifier.reopenBatch(ctx, o)
			}
			c.cfg.Verifier.acceptBatch(ctx, o)
			if len(o.pending) == 0 && len(o.unopen) == 0 {
				break
			}
			log.Error("verifier state unavailable; messages held unacknowledged", "messages", len(o.pending)+len(o.unopen), "attempt", attempt)
			sleepCtx(ctx, c.retry.after(attempt))
			if ctx.Err() != nil {
				return false
			}
		}
		for j := range b.verified {
			err := o.errs[j]
			switch {
			case errors.Is(err, wire.ErrDuplicate), errors.Is(err, ErrParked):
			case err != nil:
				if c.cfg.OnRefused != nil {
					c.cfg.OnRefused(o.msgs[j].Topic, err)
				}
			case o.recs[j].Device != "" && c.cfg.OnRecord != nil:
				c.cfg.OnRecord(ctx, o.recs[j])
			}
		}
	}
	for i, err := range b.refused {
		if c.cfg.OnRefused != nil {
			c.cfg.OnRefused(b.received[i].Packet.Topic, err)
		}
	}
	if b.keys {
		// Envelopes that other verifiers parked waiting for these keys.
		c.verifyParked(ctx, log)
	}
	for _, pr := range b.received {
		if pr.Packet.QoS > 0 {
			if err := pr.Client.Ack(pr.Packet); err != nil {
				log.Debug("ack after the connection dropped; the broker sends the message again", "err", err)
			}
		}
		c.give(len(pr.Packet.Payload))
	}
	return true
}

// AwaitConnection waits until the service is connected and, with a
// Verifier, until the broker has answered its first subscription, so that
// telemetry published after it returns reaches the service.
//
// If ctx ends first, the error wraps ctx's error and the last failed
// connection attempt's, as [Client.AwaitConnection]'s does.
func (c *Cloud) AwaitConnection(ctx context.Context) error {
	if err := c.cm.AwaitConnection(ctx); err != nil {
		var last error
		if p := c.lastConnectErr.Load(); p != nil {
			last = *p
		}
		return notConnected(c.cfg.Broker, ctx.Err(), err, last)
	}
	if c.cfg.Verifier == nil {
		return nil
	}
	select {
	case <-c.subscribed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("transport: connected to %s, but the broker has not answered the subscription: %w", c.cfg.Broker, ctx.Err())
	}
}

// SendCommand publishes a signed command envelope (from
// [CommandSigner.Sign]) to device at QoS 1 and waits for the PUBACK.
func (c *Cloud) SendCommand(ctx context.Context, device string, envelope []byte) error {
	resp, err := c.cm.Publish(ctx, &paho.Publish{QoS: 1, Topic: wire.CommandTopic(device), Payload: envelope,
		Properties: &paho.PublishProperties{ContentType: wire.ContentType}})
	if err != nil {
		return fmt.Errorf("transport: send command: %w", err)
	}
	if resp != nil && resp.ReasonCode >= 0x80 {
		return fmt.Errorf("%w: PUBACK reason 0x%02x", ErrRefusedByBroker, resp.ReasonCode)
	}
	return nil
}

// Close waits (up to 2 s, within ctx) for the messages received to be
// decided and acknowledged, then disconnects.
func (c *Cloud) Close(ctx context.Context) error {
	// Let the batches under way be decided and their acknowledgements go
	// out (paho sends them every few milliseconds), so that the broker
	// does not deliver them again to the next session (where they would
	// only be duplicates).
	for deadline := time.Now().Add(closeDrain); len(c.budget) > 0 && time.Now().Before(deadline) && ctx.Err() == nil; {
		time.Sleep(time.Millisecond)
	}
	sleepCtx(ctx, 4*ackInterval)
	err := c.cm.Disconnect(ctx)
	c.cancel()
	<-c.cm.Done()
	<-c.done
	return err
}
