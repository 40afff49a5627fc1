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
	"sync"
	"time"

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
	// fleet's messages between them. Replay state is per process: route a
	// device to one process, or share the state (see docs/protocol.md).
	Group string
	// OnRecord receives each verified, fresh telemetry record.
	OnRecord func(ctx context.Context, r Record)
	// OnRefused is told of each refused message (forgeries, replays...);
	// duplicates are dropped silently (and counted in Verifier.Stats).
	OnRefused func(topic string, err error)
	// Logger receives connection events. Default: none.
	Logger *slog.Logger
}

// Cloud is a cloud service's connection to the broker: it receives and
// verifies telemetry, and sends signed commands.
type Cloud struct {
	cfg    CloudConfig
	cm     *autopaho.ConnectionManager
	cancel context.CancelFunc

	retry reconnectBackoff

	subscribed     chan struct{} // closed at the first SUBACK
	subscribedOnce sync.Once
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
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cert := cfg.Certificate
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: cfg.Roots, ServerName: cfg.ServerName,
		Certificates: []tls.Certificate{cert}}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &Cloud{cfg: cfg, cancel: cancel, subscribed: make(chan struct{})}
	c.retry.min, c.retry.max = 500*time.Millisecond, 30*time.Second
	var filters []string
	if cfg.Verifier != nil {
		filters = []string{AllTelemetry, AllKeys}
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
		ConnectPacketBuilder:  advertiseMaxPacket,
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
			go func() {
				var subs []paho.SubscribeOptions
				for _, f := range filters {
					subs = append(subs, paho.SubscribeOptions{Topic: f, QoS: 1})
				}
				sa, err := cm.Subscribe(runCtx, &paho.Subscribe{Subscriptions: subs})
				if err != nil && sa == nil {
					log.Warn("cloud subscribe", "err", err)
					return
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
		OnConnectError: func(err error) { log.Warn("cloud connect failed", "err", classifyDialError(err)) },
		ClientConfig: paho.ClientConfig{
			ClientID: cfg.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) { c.onPublish(runCtx, pr.Packet); return true, nil },
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
	return c, nil
}

// onPublish verifies a message from the broker. A retained message is
// refused before verification: d2c never publishes one, so the broker is
// replaying an old message to a new subscription.
func (c *Cloud) onPublish(ctx context.Context, p *paho.Publish) {
	if c.cfg.Verifier == nil {
		return
	}
	if p.Retain {
		if c.cfg.OnRefused != nil {
			c.cfg.OnRefused(p.Topic, fmt.Errorf("%w: a retained message (d2c never publishes one)", ErrReplay))
		}
		return
	}
	rec, err := c.cfg.Verifier.Verify(ctx, p.Topic, p.Payload)
	switch {
	case errors.Is(err, ErrDuplicate):
	case err != nil:
		if c.cfg.OnRefused != nil {
			c.cfg.OnRefused(p.Topic, err)
		}
	case rec.Device != "" && c.cfg.OnRecord != nil:
		c.cfg.OnRecord(ctx, rec)
	}
}

// AwaitConnection waits until the service is connected and, with a
// Verifier, until the broker has answered its first subscription, so that
// telemetry published after it returns reaches the service.
func (c *Cloud) AwaitConnection(ctx context.Context) error {
	if err := c.cm.AwaitConnection(ctx); err != nil {
		return err
	}
	if c.cfg.Verifier == nil {
		return nil
	}
	select {
	case <-c.subscribed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SendCommand publishes a signed command envelope (from
// [CommandSigner.Sign]) to device at QoS 1 and waits for the PUBACK.
func (c *Cloud) SendCommand(ctx context.Context, device string, envelope []byte) error {
	resp, err := c.cm.Publish(ctx, &paho.Publish{QoS: 1, Topic: CommandTopic(device), Payload: envelope,
		Properties: &paho.PublishProperties{ContentType: ContentType}})
	if err != nil {
		return fmt.Errorf("transport: send command: %w", err)
	}
	if resp != nil && resp.ReasonCode >= 0x80 {
		return fmt.Errorf("%w: PUBACK reason 0x%02x", ErrRefusedByBroker, resp.ReasonCode)
	}
	return nil
}

// Close disconnects.
func (c *Cloud) Close(ctx context.Context) error {
	err := c.cm.Disconnect(ctx)
	c.cancel()
	<-c.cm.Done()
	return err
}
