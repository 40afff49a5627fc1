// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package cloud

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/wire"
)

// CommandRole configures the command API: HTTPS (TLS 1.3) on which the
// application, authenticated by its client certificate, sends signed
// commands to devices and reads the results they report. It publishes
// through the verifier role's broker connection, so it needs that role.
//
// The API (docs/operations.md has the reference):
//
//	POST /v1/devices/{device}/commands        {"name", "body" (base64), "ttl"} → 202, the command
//	GET  /v1/devices/{device}/commands/{id}   the command, its state and result; ?wait=30s waits for a result
type CommandRole struct {
	// Listen is the TCP address, host:port (port 0: a free one).
	Listen string
	// Certificate is the API's TLS server certificate. Required.
	Certificate tls.Certificate
	// Key signs commands; devices are configured with its public half
	// (transport.ClientConfig.CommandKeys). Required.
	Key crypto.Signer
	// Clients are the services allowed to use the API: the names of
	// their certificates (CN "svc:<name>", from the fleet CA; see
	// identity.CA.IssueService). Required: a device certificate, also
	// from the fleet CA, is refused.
	Clients []string
	// TTL is a command's lifetime when the request names none. Default
	// 5 minutes; a request may ask for 1 second to 24 hours.
	TTL time.Duration
}

// Bounds of the command API.
const (
	maxCommandRequest = 64 << 10
	maxCommandTTL     = 24 * time.Hour
	maxCommandWait    = 60 * time.Second
	commandSendTime   = 10 * time.Second
	commandPoll       = 200 * time.Millisecond
)

// commandAPI serves the command API.
type commandAPI struct {
	role    *CommandRole
	store   *store.Store
	cloud   func() *transport.Cloud
	clients map[string]bool
	log     *slog.Logger
	m       *metrics
	now     func() time.Time
}

// commandServer builds the command API's server and listener.
func (s *service) commandServer(r *CommandRole, cloud func() *transport.Cloud) (*http.Server, net.Listener, error) {
	if r.Key == nil || len(r.Clients) == 0 || len(r.Certificate.Certificate) == 0 {
		return nil, nil, errors.New("cloud: commands: Key, Clients and Certificate are required")
	}
	api := &commandAPI{role: r, store: s.cfg.Store, cloud: cloud, clients: map[string]bool{}, log: s.log.With("role", "commands"), m: s.m, now: time.Now}
	for _, c := range r.Clients {
		if err := identity.ValidateDeviceID(c); err != nil {
			return nil, nil, fmt.Errorf("cloud: commands: client %q: %w", c, err)
		}
		api.clients[c] = true
	}
	roots := x509.NewCertPool()
	roots.AddCert(s.cfg.CA.Root())
	ln, err := net.Listen("tcp", r.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("cloud: commands: %w", err)
	}
	srv := &http.Server{
		Handler: api.handler(),
		TLSConfig: &tls.Config{
			MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{r.Certificate},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots,
		},
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: maxCommandWait + 30*time.Second,
		IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
		ErrorLog: slogLogger(s.log),
	}
	return srv, ln, nil
}

func (a *commandAPI) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/devices/{device}/commands", a.send)
	mux.HandleFunc("GET /v1/devices/{device}/commands/{id}", a.get)
	return a.authenticate(mux)
}

// authenticate admits the services named in Clients; the TLS handshake
// has verified the certificate chains to the fleet root.
func (a *commandAPI) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			apiError(w, http.StatusUnauthorized, "a client certificate is required")
			return
		}
		cn := r.TLS.PeerCertificates[0].Subject.CommonName
		name, ok := strings.CutPrefix(cn, identity.ServicePrefix)
		if !ok || !a.clients[name] {
			a.log.Warn("command API: client refused", "cn", cn, "remote", r.RemoteAddr)
			apiError(w, http.StatusForbidden, fmt.Sprintf("certificate %q is not one of the API's clients", cn))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), clientKey{}, name)))
	})
}

type clientKey struct{}

// commandRequest is the body of POST .../commands.
type commandRequest struct {
	Name string `json:"name"`
	Body []byte `json:"body,omitempty"` // standard base64
	TTL  string `json:"ttl,omitempty"`  // Go duration: "30s", "5m"
}

// commandJSON is a command as the API shows it.
type commandJSON struct {
	Device   string      `json:"device"`
	ID       string      `json:"id"` // a decimal string: IDs may exceed 2^53
	Name     string      `json:"name"`
	Body     []byte      `json:"body,omitempty"`
	Client   string      `json:"client"`
	State    string      `json:"state"`
	Reserved time.Time   `json:"reserved"`
	Expires  time.Time   `json:"expires"`
	Sent     *time.Time  `json:"sent,omitempty"`
	Result   *resultJSON `json:"result,omitempty"`
}

type resultJSON struct {
	Failed bool      `json:"failed"`
	Output []byte    `json:"output,omitempty"`
	Time   time.Time `json:"time"`
}

func (a *commandAPI) toJSON(c store.Command) commandJSON {
	// Milliseconds, as the store keeps them: the same command reads the
	// same from POST and GET.
	ms := func(t time.Time) time.Time { return t.UTC().Truncate(time.Millisecond) }
	j := commandJSON{Device: c.Device, ID: strconv.FormatUint(c.ID, 10), Name: c.Name, Body: c.Body, Client: c.Client,
		State: string(c.State(a.now())), Reserved: ms(c.Reserved), Expires: ms(c.Expires)}
	if !c.Sent.IsZero() {
		t := ms(c.Sent)
		j.Sent = &t
	}
	if c.Result != nil {
		j.Result = &resultJSON{Failed: c.Result.Failed, Output: c.Result.Output, Time: ms(c.Result.Time)}
	}
	return j
}

func (a *commandAPI) send(w http.ResponseWriter, r *http.Request) {
	device := r.PathValue("device")
	if err := identity.ValidateDeviceID(device); err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	var req commandRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxCommandRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			apiError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request over %d bytes", maxCommandRequest))
			return
		}
		apiError(w, http.StatusBadRequest, "request body: "+err.Error())
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		apiError(w, http.StatusBadRequest, "request body: data after the JSON object")
		return
	}
	if req.Name == "" || len(req.Name) > 64 {
		apiError(w, http.StatusBadRequest, `"name" must be 1 to 64 bytes`)
		return
	}
	ttl := a.role.TTL
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d < time.Second || d > maxCommandTTL {
			apiError(w, http.StatusBadRequest, fmt.Sprintf(`"ttl" %q: want a duration from 1s to %s`, req.TTL, maxCommandTTL))
			return
		}
		ttl = d
	}
	ctx := r.Context()
	chains, err := a.store.DeviceCertificates(ctx, device)
	if err != nil && !errors.Is(err, wire.ErrUnknownDevice) && !errors.Is(err, identity.ErrRevoked) {
		apiError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if len(chains) == 0 {
		apiError(w, http.StatusNotFound, fmt.Sprintf("device %q has no valid certificate (not enrolled, revoked or expired)", device))
		return
	}
	client, _ := ctx.Value(clientKey{}).(string)
	c, err := a.store.ReserveCommand(ctx, store.Command{Device: device, Name: req.Name, Body: req.Body, Client: client,
		Expires: a.now().Add(ttl)})
	if err != nil {
		apiError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	signer := &transport.CommandSigner{Key: a.role.Key, TTL: ttl, Time: a.now}
	env, err := signer.Sign(transport.Command{ID: c.ID, Device: device, Name: req.Name, Body: req.Body})
	if err != nil {
		a.log.Error("command not signed", "device", device, "id", c.ID, "err", err)
		apiError(w, http.StatusInternalServerError, "sign: "+err.Error())
		return
	}
	sctx, cancel := context.WithTimeout(ctx, commandSendTime)
	err = a.cloud().SendCommand(sctx, device, env)
	cancel()
	if err != nil {
		a.log.Warn("command not sent", "device", device, "id", c.ID, "client", client, "err", err)
		w.Header().Set("Retry-After", "5")
		apiError(w, http.StatusServiceUnavailable, "broker did not take the command: "+err.Error())
		return
	}
	if sent, err := a.store.CommandSent(ctx, device, c.ID); err != nil {
		a.log.Warn("command sent, not marked so", "device", device, "id", c.ID, "err", err)
	} else {
		c.Sent = sent
	}
	a.m.commandsSent.Inc()
	a.log.Info("command sent", "device", device, "id", c.ID, "name", req.Name, "client", client, "expires", c.Expires)
	w.Header().Set("Location", fmt.Sprintf("/v1/devices/%s/commands/%d", device, c.ID))
	writeJSON(w, http.StatusAccepted, a.toJSON(c))
}

func (a *commandAPI) get(w http.ResponseWriter, r *http.Request) {
	device := r.PathValue("device")
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 63)
	if identity.ValidateDeviceID(device) != nil || err != nil || id == 0 {
		apiError(w, http.StatusNotFound, "no such command")
		return
	}
	var wait time.Duration
	if q := r.URL.Query().Get("wait"); q != "" {
		if wait, err = time.ParseDuration(q); err != nil || wait < 0 || wait > maxCommandWait {
			apiError(w, http.StatusBadRequest, fmt.Sprintf(`"wait" %q: want a duration up to %s`, q, maxCommandWait))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	for {
		c, err := a.store.Command(r.Context(), device, id)
		switch {
		case errors.Is(err, store.ErrNoSuchCommand):
			apiError(w, http.StatusNotFound, "no such command")
			return
		case err != nil:
			apiError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		st := c.State(a.now())
		final := slices.Contains([]store.CommandState{store.CommandSucceeded, store.CommandFailed, store.CommandExpired}, st)
		if final || wait == 0 {
			writeJSON(w, http.StatusOK, a.toJSON(c))
			return
		}
		select {
		case <-ctx.Done():
			writeJSON(w, http.StatusOK, a.toJSON(c))
			return
		case <-time.After(commandPoll):
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
