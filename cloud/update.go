// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package cloud

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/d2c-iot/d2c/update/repo"
)

// UpdateRole configures the update repository: a directory of signed
// metadata and artifacts (docs/update-format.md) that the service serves
// to devices over HTTPS, and whose short-lived timestamp it re-signs with
// the online timestamp key before it expires. Releases are signed offline
// (d2c update release sign) into the directory; the role never holds a
// root or release key.
type UpdateRole struct {
	// Dir is the repository directory. Required.
	Dir string
	// Listen, if set, is the TCP address (host:port) the repository is
	// served on, GET and HEAD with byte ranges; leave it empty when a web
	// server or a CDN serves Dir.
	Listen string
	// Certificate is the TLS server certificate, with Listen.
	Certificate tls.Certificate
	// TimestampKeys, if set, are the online timestamp keys (files, or a
	// PKCS#11 token): the role keeps Dir/timestamp.json fresh with them.
	// Without them another job must (d2c update timestamp).
	TimestampKeys []crypto.Signer
	// TimestampValidity is each timestamp's lifetime; it is re-signed
	// once less than half is left. Default 24 hours.
	TimestampValidity time.Duration
	// CampaignEvery is how often the role's campaign controller
	// evaluates the store's active campaigns (d2c rollout; advancing,
	// completing or aborting them from the devices' signed update
	// reports), and how often, with TimestampKeys, the timestamp's cohort
	// rule is compared with the campaign's and re-signed when it differs
	// (docs/update-format.md, "Campaigns"). Default 5 seconds; the
	// timestamp is checked at least twice per TimestampValidity.
	CampaignEvery time.Duration
}

// updateRole starts what u configures: the server's listener, and the
// refresher's check that it can sign. It returns the functions to run.
//
// The campaign controller, which needs the store alone, runs in every
// update role (campaigns returns it).
func (s *service) updateRole(u *UpdateRole) (serveRepo, refresh, campaigns func(context.Context) error, addr net.Addr, err error) {
	serveRepo, refresh, addr, err = s.repoRole(u)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	c := &campaignController{store: s.cfg.Store, every: u.CampaignEvery, log: s.log.With("role", "update campaigns"),
		m: s.m.campaigns, now: time.Now}
	if c.every == 0 {
		c.every = defaultCampaignEvery
	}
	return serveRepo, refresh, c.run, addr, nil
}

// repoRole starts the repository's server and timestamp refresher.
func (s *service) repoRole(u *UpdateRole) (serveRepo func(context.Context) error, refresh func(context.Context) error, addr net.Addr, err error) {
	if u.Dir == "" {
		return nil, nil, nil, errors.New("cloud: update: Dir is required")
	}
	if u.Listen == "" && len(u.TimestampKeys) == 0 {
		return nil, nil, nil, errors.New("cloud: update: nothing to do: set Listen, TimestampKeys or both")
	}
	if u.CampaignEvery < 0 {
		return nil, nil, nil, fmt.Errorf("cloud: update: CampaignEvery %v: want a positive duration (or zero for %v)", u.CampaignEvery, defaultCampaignEvery)
	}
	log := s.log.With("role", "update")
	if len(u.TimestampKeys) > 0 {
		every, validity := u.CampaignEvery, u.TimestampValidity
		if every == 0 {
			every = defaultCampaignEvery
		}
		if validity == 0 {
			validity = 24 * time.Hour
		}
		// The rule is checked as often as the controller may change it,
		// and a change is signed at that check; the expiry is checked at
		// least twice per validity.
		every = min(every, validity/2)
		r := repo.Refresher{Dir: u.Dir, Keys: u.TimestampKeys, Validity: u.TimestampValidity, Logger: log,
			Every: every, Rollout: campaignRule(s.cfg.Store)}
		if err := r.Validate(); err != nil {
			return nil, nil, nil, fmt.Errorf("cloud: update: %w", err)
		}
		refresh = r.Run
	}
	if u.Listen != "" {
		if len(u.Certificate.Certificate) == 0 {
			return nil, nil, nil, errors.New("cloud: update: Listen needs Certificate (the repository is served over HTTPS)")
		}
		ln, err := net.Listen("tcp", u.Listen)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("cloud: update: %w", err)
		}
		srv := &http.Server{
			Handler:           repo.Handler(u.Dir, log),
			TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{u.Certificate}},
			ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
			ErrorLog: slogLogger(log),
		}
		addr = ln.Addr()
		serveRepo = func(ctx context.Context) error { return serve(ctx, srv, ln, true) }
	}
	return serveRepo, refresh, addr, nil
}
