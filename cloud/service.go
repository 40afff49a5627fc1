// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package cloud runs the cloud half of d2c as one service on the fleet's
// cloud store (cloud/store): the EST registrar, the telemetry verifier
// (joined to a shared subscription), the command API for the application,
// and CRL publication for the broker, with health endpoints and Prometheus
// metrics. Each role runs when its
// configuration is given, so one binary runs them together on one machine
// or apart on many, all sharing one PostgreSQL store.
//
// Run returns when its context ends, after a graceful shutdown: the
// registrar finishes the requests under way, the verifier decides and
// acknowledges the messages it received, the CRL publisher stops between
// two writes.
package cloud

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/consent"
	"github.com/d2c-iot/d2c/transport/wire"
)

// Config configures [Run]. Store is required; each role runs when its
// field is set, at least one of them.
type Config struct {
	// Store is the fleet's cloud store. Required.
	Store *store.Store
	// CA is the fleet CA: required by the registrar and CRL roles.
	CA *identity.CA
	// Registrar, if set, serves EST over TLS 1.3.
	Registrar *RegistrarRole
	// Verifier, if set, verifies the fleet's telemetry into the store's
	// records table.
	Verifier *VerifierRole
	// Commands, if set, serves the command API. It needs Verifier (it
	// publishes on its connection) and CA (its clients' certificates
	// chain to the fleet root).
	Commands *CommandRole
	// CRL, if set, writes the fleet's CRL for the broker periodically.
	CRL *CRLRole
	// Update, if set, serves the update repository, keeps its timestamp
	// fresh, and runs the store's rollout campaigns (signing each one's
	// cohort rule into the timestamp).
	Update *UpdateRole
	// Ops is the address of the operations endpoint: /healthz, /readyz and
	// /metrics (Prometheus, from a registry of the service's own), plain
	// HTTP: keep it on a private interface. Default: none.
	Ops string
	// Logger receives the service's events. Default: none.
	Logger *slog.Logger
	// Ready, if set, is called once every role is listening or connected,
	// with the addresses the service listens on.
	Ready func(Addrs)
}

// RegistrarRole configures the EST registrar.
type RegistrarRole struct {
	// Listen is the TCP address, host:port (port 0: a free one).
	Listen string
	// Certificate is the registrar's TLS server certificate, chaining to
	// the fleet root. Required.
	Certificate tls.Certificate
	// TokenKeys verify enrollment tokens. Required.
	TokenKeys []crypto.PublicKey
	// RenewExpiredWithin: see identity.RegistrarConfig. Default 0.
	RenewExpiredWithin time.Duration
}

// VerifierRole configures the telemetry verifier.
type VerifierRole struct {
	// Broker is the broker's host:port; ServerName the name in its
	// certificate (default: the host).
	Broker, ServerName string
	// Certificate is the service's client certificate (CN svc:<name>).
	Certificate tls.Certificate
	// Roots are the fleet anchors (the broker's certificate and the
	// devices' chain to them).
	Roots *x509.CertPool
	// DecryptionKey opens encrypted envelopes. Nil: they are refused.
	DecryptionKey *ecdsa.PrivateKey
	// Group is the shared-subscription group (unguessable, 16 characters
	// or more) when several verifiers share the fleet; "" for one.
	Group string
	// RequireEncryption refuses envelopes that are only signed.
	RequireEncryption bool
	// OnRecord, if set, is also given each record accepted (they are in
	// the store's records table in any case).
	OnRecord func(context.Context, transport.Record)
}

// CRLRole configures CRL publication.
type CRLRole struct {
	// Out is the file the broker reads as its CRL (PEM), written
	// atomically. Required.
	Out string
	// Every is how often a fresh CRL is written. Default 1 hour (a CRL is
	// valid for 7 days).
	Every time.Duration
}

// Addrs are the addresses the service listens on.
type Addrs struct {
	Registrar, Commands, Update, Ops net.Addr
}

// Run runs the configured roles until ctx ends, then shuts them down
// gracefully. It returns the first role's failure, if any.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Store == nil {
		return errors.New("cloud: Config.Store is required")
	}
	if cfg.Registrar == nil && cfg.Verifier == nil && cfg.CRL == nil && cfg.Commands == nil && cfg.Update == nil {
		return errors.New("cloud: no role configured (Registrar, Verifier, Commands, CRL, Update)")
	}
	if (cfg.Registrar != nil || cfg.CRL != nil || cfg.Commands != nil) && cfg.CA == nil {
		return errors.New("cloud: the registrar, command and CRL roles need Config.CA")
	}
	if cfg.Commands != nil && cfg.Verifier == nil {
		return errors.New("cloud: the command role needs the verifier role (it publishes on its connection)")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	s := &service{cfg: cfg, log: log, m: newMetrics(reg)}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
		addrs Addrs
	)
	fail := func(role string, err error) {
		if err == nil {
			return
		}
		errMu.Lock()
		if first == nil {
			first = fmt.Errorf("cloud: %s: %w", role, err)
		}
		errMu.Unlock()
		cancel()
	}
	start := func(role string, run func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail(role, run(ctx))
		}()
	}

	if r := cfg.Registrar; r != nil {
		srv, ln, err := s.registrar(r)
		if err != nil {
			return err
		}
		addrs.Registrar = ln.Addr()
		start("registrar", func(ctx context.Context) error { return serve(ctx, srv, ln, true) })
	}
	if v := cfg.Verifier; v != nil {
		c, err := s.verifier(ctx, v)
		if err != nil {
			return err
		}
		s.cloud.Store(c)
		start("verifier", func(ctx context.Context) error {
			<-ctx.Done()
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer ccancel()
			return c.Close(cctx)
		})
		actx, acancel := context.WithTimeout(ctx, 30*time.Second)
		err = c.AwaitConnection(actx)
		acancel()
		if err != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("cloud: verifier: %w", err) // names the broker and why it was not reached
		}
		s.verifierUp.Store(true)
	}
	if r := cfg.Commands; r != nil {
		srv, ln, err := s.commandServer(r, s.cloud.Load)
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		addrs.Commands = ln.Addr()
		start("commands", func(ctx context.Context) error { return serve(ctx, srv, ln, true) })
	}
	if u := cfg.Update; u != nil {
		serveRepo, refresh, campaigns, addr, err := s.updateRole(u)
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		if serveRepo != nil {
			addrs.Update = addr
			start("update", serveRepo)
		}
		if refresh != nil {
			start("update timestamp", refresh)
		}
		start("update campaigns", campaigns)
	}
	reg.MustRegister(&fleetCollector{store: cfg.Store, log: log})
	if c := cfg.CRL; c != nil {
		if err := s.publishCRL(ctx, c); err != nil {
			cancel()
			wg.Wait()
			return err
		}
		start("crl", func(ctx context.Context) error { return s.crlLoop(ctx, c) })
	}
	if cfg.Ops != "" {
		ln, err := net.Listen("tcp", cfg.Ops)
		if err != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("cloud: ops: %w", err)
		}
		addrs.Ops = ln.Addr()
		srv := &http.Server{Handler: s.opsHandler(reg), ReadHeaderTimeout: 10 * time.Second}
		start("ops", func(ctx context.Context) error { return serve(ctx, srv, ln, false) })
	}
	log.Info("cloud service running", "registrar", addrString(addrs.Registrar), "verifier", cfg.Verifier != nil,
		"commands", addrString(addrs.Commands), "crl", cfg.CRL != nil, "update", addrString(addrs.Update), "ops", addrString(addrs.Ops))
	if cfg.Ready != nil {
		cfg.Ready(addrs)
	}
	wg.Wait()
	log.Info("cloud service stopped")
	return first
}

// service is one running service.
type service struct {
	cfg        Config
	log        *slog.Logger
	m          *metrics
	verifierUp atomic.Bool
	cloud      atomic.Pointer[transport.Cloud]
}

// serve serves srv on ln until ctx ends, then shuts it down gracefully.
func serve(ctx context.Context, srv *http.Server, ln net.Listener, tls bool) error {
	done := make(chan error, 1)
	go func() {
		if tls {
			done <- srv.ServeTLS(ln, "", "")
		} else {
			done <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

// registrar builds the EST registrar over the store, counting what it
// records.
func (s *service) registrar(r *RegistrarRole) (*http.Server, net.Listener, error) {
	rg, err := identity.NewRegistrar(identity.RegistrarConfig{
		CA: s.cfg.CA, TokenKeys: r.TokenKeys, Registry: countingRegistry{s.cfg.Store, s.m},
		RenewExpiredWithin: r.RenewExpiredWithin, Logger: s.log.With("role", "registrar"),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("cloud: registrar: %w", err)
	}
	ln, err := net.Listen("tcp", r.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("cloud: registrar: %w", err)
	}
	srv := &http.Server{
		Handler: rg, TLSConfig: rg.TLSConfig(r.Certificate),
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
		IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
		ErrorLog: slogLogger(s.log),
	}
	return srv, ln, nil
}

// slogLogger adapts l for http.Server's error log, at level warning.
func slogLogger(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelWarn)
}

// countingRegistry counts the enrollments and renewals the registry
// records.
type countingRegistry struct {
	*store.Store
	m *metrics
}

func (c countingRegistry) Enrolled(ctx context.Context, device, tokenID string, tokenExpiry time.Time, chain []*x509.Certificate) error {
	err := c.Store.Enrolled(ctx, device, tokenID, tokenExpiry, chain)
	if err == nil {
		c.m.enrollments.Inc()
	}
	return err
}

func (c countingRegistry) Renewed(ctx context.Context, prev *x509.Certificate, chain []*x509.Certificate) error {
	err := c.Store.Renewed(ctx, prev, chain)
	if err == nil {
		c.m.renewals.Inc()
	}
	return err
}

// verifier connects the verifier to the broker on the store.
func (s *service) verifier(ctx context.Context, v *VerifierRole) (*transport.Cloud, error) {
	st := s.cfg.Store
	ver, err := transport.NewVerifier(transport.VerifierConfig{
		Certificates: st, Policy: identity.DeviceCertPolicy{Roots: v.Roots, Revocations: st},
		DecryptionKey: v.DecryptionKey, RequireEncryption: v.RequireEncryption,
		Replay: timedReplay{st, s.m}, SessionKeys: st, Logger: s.log.With("role", "verifier"),
	})
	if err != nil {
		return nil, fmt.Errorf("cloud: verifier: %w", err)
	}
	s.m.watchVerifier(ver)
	c, err := transport.DialCloud(ctx, transport.CloudConfig{
		Broker: v.Broker, ServerName: v.ServerName, Certificate: v.Certificate, Roots: v.Roots,
		Verifier: ver, Group: v.Group, Logger: s.log.With("role", "verifier"),
		OnRecord: func(ctx context.Context, r transport.Record) {
			switch r.Stream {
			case wire.CommandResultStream:
				s.m.commandResults.Inc()
			default:
				s.m.readings.Add(float64(len(r.Readings)))
			}
			if v.OnRecord != nil {
				v.OnRecord(ctx, r)
			}
		},
		OnRefused: func(topic string, err error) { s.m.refused.WithLabelValues(refusalReason(err)).Inc() },
	})
	if err != nil {
		return nil, fmt.Errorf("cloud: verifier: %w", err)
	}
	return c, nil
}

// timedReplay measures the store's transactions.
type timedReplay struct {
	*store.Store
	m *metrics
}

func (t timedReplay) Accept(ctx context.Context, recs []transport.Record) ([]error, error) {
	start := time.Now()
	v, err := t.Store.Accept(ctx, recs)
	t.m.storeSeconds.Observe(time.Since(start).Seconds())
	return v, err
}

// refusalReason names a refusal for the refused metric's label.
func refusalReason(err error) string {
	for _, r := range []struct {
		name string
		err  error
	}{
		{"replay", wire.ErrReplay}, {"no_consent", consent.ErrNoConsent}, {"revoked", identity.ErrRevoked},
		{"bad_signature", wire.ErrBadSignature}, {"decrypt", wire.ErrDecrypt}, {"wrong_device", wire.ErrWrongDevice},
		{"unknown_device", wire.ErrUnknownDevice}, {"malformed", wire.ErrMalformed}, {"topic", wire.ErrInvalidTopic},
	} {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "other"
}

// publishCRL writes a fresh CRL from the store to c.Out.
func (s *service) publishCRL(ctx context.Context, c *CRLRole) error {
	der, err := s.cfg.Store.CRL(ctx, s.cfg.CA)
	if err != nil {
		return fmt.Errorf("cloud: crl: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return fmt.Errorf("cloud: crl: %w", err)
	}
	if err := atomicfile.WriteFileMode(nil, c.Out, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("cloud: crl: %w", err)
	}
	s.m.crlNumber.Set(float64(crl.Number.Uint64()))
	s.m.crlNextUpdate.Set(float64(crl.NextUpdate.Unix()))
	s.log.Info("CRL written", "file", c.Out, "number", crl.Number, "entries", len(crl.RevokedCertificateEntries), "next_update", crl.NextUpdate)
	return nil
}

// crlLoop writes a fresh CRL every c.Every until ctx ends; a failure is
// logged and retried at the next tick (the CRL in place stays valid for
// days).
func (s *service) crlLoop(ctx context.Context, c *CRLRole) error {
	every := c.Every
	if every <= 0 {
		every = time.Hour
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := s.publishCRL(ctx, c); err != nil && ctx.Err() == nil {
				s.log.Error("CRL not written; the one in place stays", "err", err)
			}
		}
	}
}

// opsHandler serves /healthz (the process runs), /readyz (the store
// answers, the verifier is connected) and /metrics.
func (s *service) opsHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.cfg.Store.Ping(ctx); err != nil {
			http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if s.cfg.Verifier != nil && !s.verifierUp.Load() {
			http.Error(w, "verifier: not connected yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// metrics are the service's Prometheus metrics.
type metrics struct {
	readings, enrollments, renewals prometheus.Counter
	commandsSent, commandResults    prometheus.Counter
	refused                         *prometheus.CounterVec
	storeSeconds                    prometheus.Histogram
	crlNumber, crlNextUpdate        prometheus.Gauge
	campaigns                       *campaignMetrics
	reg                             *prometheus.Registry
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		readings:    prometheus.NewCounter(prometheus.CounterOpts{Name: "d2c_readings_verified_total", Help: "Readings of the telemetry records accepted (signature verified, fresh, kept in the store)."}),
		enrollments: prometheus.NewCounter(prometheus.CounterOpts{Name: "d2c_enrollments_total", Help: "Devices enrolled by the registrar (certificate recorded, token consumed)."}),
		renewals:    prometheus.NewCounter(prometheus.CounterOpts{Name: "d2c_renewals_total", Help: "Certificate renewals recorded by the registrar."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "d2c_messages_refused_total",
			Help: "Messages the verifier refused, by reason."}, []string{"reason"}),
		storeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "d2c_store_accept_seconds",
			Help: "Time of the store's transaction deciding one batch of records.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 12)}),
		crlNumber:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "d2c_crl_number", Help: "Number of the last CRL written."}),
		crlNextUpdate:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "d2c_crl_next_update_timestamp_seconds", Help: "When the last CRL written goes stale (Unix time)."}),
		commandsSent:   prometheus.NewCounter(prometheus.CounterOpts{Name: "d2c_commands_sent_total", Help: "Signed commands the command API handed to the broker."}),
		commandResults: prometheus.NewCounter(prometheus.CounterOpts{Name: "d2c_command_results_total", Help: "Command results accepted from devices (signed records of d2c.cmdres)."}),
		reg:            reg,
	}
	reg.MustRegister(m.readings, m.enrollments, m.renewals, m.refused, m.storeSeconds, m.crlNumber, m.crlNextUpdate,
		m.commandsSent, m.commandResults)
	m.campaigns = newCampaignMetrics(reg)
	return m
}

// watchVerifier exports the verifier's own counters.
func (m *metrics) watchVerifier(v *transport.Verifier) {
	for _, c := range []struct {
		name, help string
		get        func(transport.VerifierStats) uint64
	}{
		{"d2c_records_accepted_total", "Telemetry records accepted (fresh, kept in the store).", func(s transport.VerifierStats) uint64 { return s.Accepted }},
		{"d2c_messages_duplicate_total", "Messages dropped as duplicates (QoS 1 redeliveries, replays within the window).", func(s transport.VerifierStats) uint64 { return s.Duplicates }},
		{"d2c_session_keys_total", "Session-key deliveries accepted.", func(s transport.VerifierStats) uint64 { return s.KeysDelivered }},
		{"d2c_envelopes_parked_total", "Envelopes parked until their session key arrives.", func(s transport.VerifierStats) uint64 { return s.Parked }},
	} {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help},
			func() float64 { return float64(c.get(v.Stats())) }))
	}
}

// connectedWindow is how recently a device must have been heard from to
// count as connected.
const connectedWindow = 5 * time.Minute

// fleetCacheTTL is how long the fleet gauges read from the store are
// reused between scrapes.
const fleetCacheTTL = 5 * time.Second

var (
	devicesConnectedDesc = prometheus.NewDesc("d2c_devices_connected",
		"Devices that had a fresh message accepted, by any replica, within the last 5 minutes: the fleet connected, as the cloud sees it.", nil, nil)
	certificatesDesc = prometheus.NewDesc("d2c_certificates",
		"Device certificates in the store that have not expired, by status (valid, superseded, revoked).", []string{"status"}, nil)
)

// fleetCollector reads the fleet's gauges (devices connected,
// certificates by status) from the store when scraped, at most once per
// fleetCacheTTL, so every replica reports the whole fleet's figures.
type fleetCollector struct {
	store *store.Store
	log   *slog.Logger

	mu       sync.Mutex
	read     time.Time
	devices  int
	statuses map[string]int
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- devicesConnectedDesc
	ch <- certificatesDesc
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); now.Sub(c.read) >= fleetCacheTTL {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := c.store.DevicesSeen(ctx, now.Add(-connectedWindow))
		var counts map[string]int
		if err == nil {
			counts, err = c.store.CertificateCounts(ctx)
		}
		if err != nil {
			// No sample is better than a stale one.
			c.log.Warn("fleet gauges not read from the store", "err", err)
			c.read = time.Time{}
			return
		}
		c.read, c.devices, c.statuses = now, n, counts
	}
	ch <- prometheus.MustNewConstMetric(devicesConnectedDesc, prometheus.GaugeValue, float64(c.devices))
	for _, st := range []string{"valid", "superseded", "revoked"} {
		ch <- prometheus.MustNewConstMetric(certificatesDesc, prometheus.GaugeValue, float64(c.statuses[st]), st)
	}
}

// addrString is a's host:port, or "" for none.
func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
