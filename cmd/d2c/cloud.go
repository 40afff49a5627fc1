// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/cloud"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

// cloudServeConfig is the configuration file of "cloud serve" (JSON; an
// unknown field is an error). Relative paths are relative to the file.
type cloudServeConfig struct {
	DB        string              `json:"db"`
	CA        string              `json:"ca"`
	CAKey     string              `json:"ca_key"`
	Ops       string              `json:"ops"`
	Registrar *cloudRegistrarRole `json:"registrar"`
	Verifier  *cloudVerifierRole  `json:"verifier"`
	Commands  *cloudCommandsRole  `json:"commands"`
	CRL       *cloudCRLRole       `json:"crl"`
	Update    *cloudUpdateRole    `json:"update"`
}

type cloudUpdateRole struct {
	Dir               string   `json:"dir"`
	Listen            string   `json:"listen"`
	Hosts             []string `json:"hosts"`
	Cert              string   `json:"cert"`
	Key               string   `json:"key"`
	TimestampKey      string   `json:"timestamp_key"`
	TimestampValidity string   `json:"timestamp_validity"`
	CampaignEvery     string   `json:"campaign_every"`
}

type cloudCommandsRole struct {
	Listen  string   `json:"listen"`
	Hosts   []string `json:"hosts"`
	Cert    string   `json:"cert"`
	Key     string   `json:"key"`
	SignKey string   `json:"sign_key"`
	Clients []string `json:"clients"`
	TTL     string   `json:"ttl"`
}

type cloudRegistrarRole struct {
	Listen             string   `json:"listen"`
	Hosts              []string `json:"hosts"`
	Cert               string   `json:"cert"`
	Key                string   `json:"key"`
	RenewExpiredWithin string   `json:"renew_expired_within"`
}

type cloudVerifierRole struct {
	Broker            string `json:"broker"`
	Roots             string `json:"roots"`
	ServerName        string `json:"server_name"`
	Cert              string `json:"cert"`
	Key               string `json:"key"`
	CloudKey          string `json:"cloud_key"`
	Group             string `json:"group"`
	RequireEncryption bool   `json:"require_encryption"`
}

type cloudCRLRole struct {
	Out   string `json:"out"`
	Every string `json:"every"`
}

// cloudEnv are the environment variables that override the file.
var cloudEnv = []struct {
	name string
	set  func(*cloudServeConfig, string)
}{
	{"D2C_CLOUD_DB", func(c *cloudServeConfig, v string) { c.DB = v }},
	{"D2C_CLOUD_OPS", func(c *cloudServeConfig, v string) { c.Ops = v }},
}

func cloudServeCommand() *command {
	return &command{
		path:    "cloud serve",
		summary: "run the cloud service: registrar, verifier, command API, CRL, update repository",
		usage:   "--config FILE [--ready-file FILE]",
		details: `
Runs the cloud half of d2c as one service on the fleet's cloud store: the
EST registrar, the telemetry verifier (verified records go to the store's
records table), the command API for the application, CRL publication for
the broker and the update repository, each when its section is in the
configuration file, with /healthz, /readyz and Prometheus /metrics on
"ops". Replicas on one PostgreSQL store (and, for verifiers, one
unguessable "group") share the work. It stops gracefully on SIGINT or
SIGTERM. docs/operations.md is the reference.

The configuration is JSON (unknown fields are errors; relative paths are
relative to the file):

  {
    "db": "sqlite:fleet.db",             (default; or postgres://...)
    "ca": "ca",                          (the fleet CA directory)
    "ops": "127.0.0.1:9090",
    "registrar": {"listen": "0.0.0.0:8443", "hosts": ["est.example.com"]},
    "verifier": {"broker": "broker.example.com:8883", "cert": "cloud.crt",
                 "key": "cloud.key", "cloud_key": "decrypt.key"},
    "commands": {"listen": "0.0.0.0:8444", "hosts": ["api.example.com"],
                 "clients": ["app"]},
    "crl": {"out": "/etc/mosquitto/crl.pem", "every": "1h"},
    "update": {"dir": "/srv/updates/fleet", "listen": "0.0.0.0:8445",
               "hosts": ["updates.example.com"], "timestamp_key": "timestamp.key"}
  }

The listening sections' "cert" and "key" default to a certificate issued
from the CA for their "hosts"; the verifier's "group" (16 or more
unguessable characters) joins a shared subscription. "commands" needs
"verifier" (commands go out on its connection: its service certificate
must also be allowed to write d2c/v1/dev/+/down/cmd); its "clients" are
the service certificates (d2c ca service-cert --service NAME) allowed to use
the API, and it signs with "sign_key" (default: command.key in the CA
directory). "update" serves the repository in "dir" on "listen" and keeps
its timestamp fresh with "timestamp_key" (a file or a pkcs11: URI); either
may be left out. It also runs the campaigns of d2c rollout, every
"campaign_every" (default 5s), and with "timestamp_key" signs each
campaign's current rule into the timestamp. "ca_key" names the issuing CA key when it is not
ca/issuing.key: a pkcs11: URI (RFC 7512) of a key in a PKCS#11 token (d2c
ca init --issuing-key); "sign_key" and "timestamp_key" take a pkcs11: URI
too. D2C_CLOUD_DB and D2C_CLOUD_OPS override "db" and "ops".
With --ready-file, the addresses the service listens on are written there
(JSON: registrar, commands, update, ops) once every role is up.`,
		example: `d2c cloud serve --config /etc/d2c/cloud.json`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			configFile := fl.String("config", "", "configuration file, JSON (required)")
			readyFile := fl.String("ready-file", "", "file to write the listening addresses to once ready")
			return func(ctx context.Context, s streams) error {
				if *configFile == "" {
					return usageErrorf("--config is required")
				}
				cfg, err := readCloudConfig(*configFile)
				if err != nil {
					return err
				}
				return serveCloud(ctx, s, cfg, *readyFile)
			}
		},
	}
}

// readCloudConfig reads and checks the configuration file, applying the
// environment's overrides and resolving relative paths.
func readCloudConfig(path string) (*cloudServeConfig, error) {
	b, err := atomicfile.ReadFile(path, limits.PEMFile)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c cloudServeConfig
	if err := dec.Decode(&c); err != nil {
		return nil, withHint(fmt.Errorf("%s: %w", path, err), "see d2c cloud serve --help for the fields")
	}
	for _, e := range cloudEnv {
		if v, ok := os.LookupEnv(e.name); ok {
			e.set(&c, v)
		}
	}
	base := filepath.Dir(path)
	rel := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	if c.DB == "" {
		c.DB = "sqlite:fleet.db"
	}
	if rest, ok := cutSQLite(c.DB); ok && !filepath.IsAbs(rest) {
		c.DB = "sqlite:" + filepath.Join(base, rest)
	}
	rel(&c.CA)
	if !isPKCS11URI(c.CAKey) {
		rel(&c.CAKey)
	}
	if r := c.Registrar; r != nil {
		rel(&r.Cert)
		rel(&r.Key)
	}
	if v := c.Verifier; v != nil {
		rel(&v.Roots)
		rel(&v.Cert)
		rel(&v.Key)
		rel(&v.CloudKey)
	}
	if r := c.Commands; r != nil {
		rel(&r.Cert)
		rel(&r.Key)
		if !isPKCS11URI(r.SignKey) {
			rel(&r.SignKey)
		}
	}
	if r := c.CRL; r != nil {
		rel(&r.Out)
	}
	if u := c.Update; u != nil {
		rel(&u.Dir)
		rel(&u.Cert)
		rel(&u.Key)
		if !isPKCS11URI(u.TimestampKey) {
			rel(&u.TimestampKey)
		}
	}
	return &c, nil
}

// cutSQLite returns the path of an SQLite URL ("sqlite:PATH" or a plain
// path), or false for a PostgreSQL URL.
func cutSQLite(url string) (string, bool) {
	if strings.HasPrefix(url, "postgres://") || strings.HasPrefix(url, "postgresql://") {
		return "", false
	}
	return strings.TrimPrefix(url, "sqlite:"), true
}

// serveCloud builds the service's roles from c and runs them until ctx
// ends.
func serveCloud(ctx context.Context, s streams, c *cloudServeConfig, readyFile string) error {
	log := slog.New(slog.NewJSONHandler(s.stderr, nil))
	st, err := openStore(ctx, c.DB)
	if err != nil {
		return err
	}
	defer st.Close()
	cfg := cloud.Config{Store: st, Ops: c.Ops, Logger: log}
	var ca *identity.CA
	if c.CA == "" && (c.Registrar != nil || c.CRL != nil || c.Commands != nil) {
		return usageErrorf(`the registrar, commands and crl sections need "ca", the fleet CA directory`)
	}
	// The CA (and its issuing key) is loaded only where it signs or
	// authenticates: a verifier takes only the anchors from its directory.
	if c.CA != "" && (c.Registrar != nil || c.CRL != nil || c.Commands != nil || c.Update != nil && c.Update.Listen != "" && c.Update.Cert == "") {
		var closeKey func() error
		if ca, closeKey, err = openSigningCA(ctx, c.CA, c.CAKey); err != nil {
			return fmt.Errorf(`"ca_key": %w`, err)
		}
		defer closeKey()
		cfg.CA = ca
	}
	if r := c.Registrar; r != nil {
		role, err := registrarRole(ca, c.CA, r)
		if err != nil {
			return err
		}
		cfg.Registrar = role
	}
	if v := c.Verifier; v != nil {
		role, err := verifierRole(v, c.CA)
		if err != nil {
			return err
		}
		cfg.Verifier = role
	}
	if r := c.Commands; r != nil {
		if c.Verifier == nil {
			return usageErrorf(`the commands section needs the verifier section: commands go out on its broker connection`)
		}
		role, closeKey, err := commandsRole(ctx, ca, c.CA, r)
		if err != nil {
			return err
		}
		defer closeKey()
		cfg.Commands = role
	}
	if u := c.Update; u != nil {
		role, closeKey, err := updateRole(ctx, ca, u)
		if err != nil {
			return err
		}
		defer closeKey()
		cfg.Update = role
	}
	if r := c.CRL; r != nil {
		role := &cloud.CRLRole{Out: r.Out}
		if r.Out == "" {
			return usageErrorf(`the crl section needs "out", the file the broker reads`)
		}
		if r.Every != "" {
			if role.Every, err = time.ParseDuration(r.Every); err != nil || role.Every <= 0 {
				return usageErrorf(`crl "every" %q: want a positive duration such as 1h`, r.Every)
			}
		}
		cfg.CRL = role
	}
	if readyFile != "" {
		cfg.Ready = func(a cloud.Addrs) {
			b, _ := json.Marshal(map[string]string{"registrar": addrString(a.Registrar), "commands": addrString(a.Commands),
				"update": addrString(a.Update), "ops": addrString(a.Ops)})
			if err := atomicfile.WriteFile(nil, readyFile, append(b, '\n')); err != nil {
				log.Error("ready file", "err", err)
			}
		}
		defer os.Remove(readyFile)
	}
	return cloud.Run(ctx, cfg)
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// registrarRole reads the registrar section.
func registrarRole(ca *identity.CA, caDir string, r *cloudRegistrarRole) (*cloud.RegistrarRole, error) {
	if r.Listen == "" {
		r.Listen = "127.0.0.1:8443"
	}
	cert, err := listenerCertificate(ca, "registrar", r.Listen, r.Cert, r.Key, r.Hosts)
	if err != nil {
		return nil, err
	}
	tokenKey, err := identity.ReadPublicKeyFile(filepath.Join(caDir, identity.CATokenPublicKeyFile))
	if err != nil {
		return nil, err
	}
	role := &cloud.RegistrarRole{Listen: r.Listen, Certificate: cert, TokenKeys: []crypto.PublicKey{tokenKey}}
	if r.RenewExpiredWithin != "" {
		if role.RenewExpiredWithin, err = time.ParseDuration(r.RenewExpiredWithin); err != nil || role.RenewExpiredWithin < 0 {
			return nil, usageErrorf(`registrar "renew_expired_within" %q: want a duration such as 720h`, r.RenewExpiredWithin)
		}
	}
	return role, nil
}

// verifierRole reads the verifier section; the fleet anchors come from
// its "roots" file, else from the CA directory.
func verifierRole(v *cloudVerifierRole, caDir string) (*cloud.VerifierRole, error) {
	if v.Broker == "" || v.Cert == "" || v.Key == "" {
		return nil, usageErrorf(`the verifier section needs "broker", "cert" and "key" (a service certificate: d2c ca service-cert)`)
	}
	if v.Roots == "" && caDir == "" {
		return nil, usageErrorf(`the verifier section needs "roots" (the fleet root and issuing CA, PEM), or a "ca" directory`)
	}
	dir := caDir
	if v.Roots != "" {
		dir = "" // the roots file wins
	}
	roots, fleet, _, err := tailTrust(streams{stderr: io.Discard}, dir, v.Roots, "")
	if err != nil {
		return nil, err
	}
	cert, _, err := serviceCertificate(v.Cert, v.Key, fleet)
	if err != nil {
		return nil, err
	}
	role := &cloud.VerifierRole{Broker: v.Broker, ServerName: v.ServerName, Certificate: cert, Roots: roots,
		Group: v.Group, RequireEncryption: v.RequireEncryption}
	if v.CloudKey != "" {
		k, err := identity.ReadKeyFile(v.CloudKey)
		if err != nil {
			return nil, err
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("%s: %w: the cloud key must be ECDSA P-256", v.CloudKey, identity.ErrUnsupportedKey)
		}
		role.DecryptionKey = ek
	} else if v.RequireEncryption {
		return nil, usageErrorf(`verifier "require_encryption" needs "cloud_key"`)
	}
	return role, nil
}

// listenerCertificate returns the TLS server certificate of a section
// that listens: its "cert" and "key" files, or one issued from the CA for
// its "hosts" (default: the host of "listen", or localhost).
func listenerCertificate(ca *identity.CA, section, listen, certFile, keyFile string, hosts []string) (tls.Certificate, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return tls.Certificate{}, usageErrorf(`%s "listen" %q: %v`, section, listen, err)
	}
	if (certFile == "") != (keyFile == "") {
		return tls.Certificate{}, usageErrorf(`%s "cert" and "key" go together`, section)
	}
	if len(hosts) == 0 {
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			host = "localhost"
		}
		hosts = []string{host}
	}
	return registrarCertificate(ca, certFile, keyFile, hosts)
}

// commandsRole reads the commands section; the command-signing key (a
// file or a pkcs11: URI) defaults to the CA directory's, and stays open
// until the service stops: close it then.
func commandsRole(ctx context.Context, ca *identity.CA, caDir string, r *cloudCommandsRole) (*cloud.CommandRole, func() error, error) {
	none := func() error { return nil }
	if r.Listen == "" {
		r.Listen = "127.0.0.1:8444"
	}
	if len(r.Clients) == 0 {
		return nil, none, usageErrorf(`the commands section needs "clients": the names of the service certificates (d2c ca service-cert --service NAME) allowed to send commands`)
	}
	cert, err := listenerCertificate(ca, "commands", r.Listen, r.Cert, r.Key, r.Hosts)
	if err != nil {
		return nil, none, err
	}
	role := &cloud.CommandRole{Listen: r.Listen, Certificate: cert, Clients: r.Clients}
	if r.TTL != "" {
		if role.TTL, err = time.ParseDuration(r.TTL); err != nil || role.TTL < time.Second || role.TTL > 24*time.Hour {
			return nil, none, usageErrorf(`commands "ttl" %q: want a duration from 1s to 24h`, r.TTL)
		}
	}
	signKey := r.SignKey
	if signKey == "" {
		signKey = filepath.Join(caDir, identity.CACommandKeyFile)
	}
	key, closeKey, err := openSigner(ctx, signKey)
	if err != nil {
		return nil, none, withHint(fmt.Errorf(`commands "sign_key": %w`, err),
			`the command-signing key: "sign_key" (a file or a pkcs11: URI), or command.key in the CA directory (d2c ca init writes it)`)
	}
	role.Key = key
	return role, closeKey, nil
}

// updateRole reads the update section. The timestamp key (a file or a
// pkcs11: URI) stays open until the service stops: close it then.
func updateRole(ctx context.Context, ca *identity.CA, u *cloudUpdateRole) (*cloud.UpdateRole, func() error, error) {
	none := func() error { return nil }
	if u.Dir == "" {
		return nil, none, usageErrorf(`the update section needs "dir", the repository directory (d2c update root init)`)
	}
	if u.Listen == "" && u.TimestampKey == "" {
		return nil, none, usageErrorf(`the update section needs "listen" (serve the repository), "timestamp_key" (keep its timestamp fresh), or both`)
	}
	role := &cloud.UpdateRole{Dir: u.Dir, Listen: u.Listen}
	if u.Listen != "" {
		if ca == nil {
			return nil, none, usageErrorf(`the update section's "listen" needs "ca": its server certificate comes from the fleet CA, unless "cert" and "key" are given`)
		}
		cert, err := listenerCertificate(ca, "update", u.Listen, u.Cert, u.Key, u.Hosts)
		if err != nil {
			return nil, none, err
		}
		role.Certificate = cert
	}
	if u.TimestampValidity != "" {
		d, err := time.ParseDuration(u.TimestampValidity)
		if err != nil || d < 2*time.Second {
			return nil, none, usageErrorf(`update "timestamp_validity" %q: want a duration such as 24h`, u.TimestampValidity)
		}
		role.TimestampValidity = d
	}
	if u.CampaignEvery != "" {
		d, err := time.ParseDuration(u.CampaignEvery)
		if err != nil || d <= 0 {
			return nil, none, usageErrorf(`update "campaign_every" %q: want a duration such as 5s`, u.CampaignEvery)
		}
		role.CampaignEvery = d
	}
	closeKey := none
	if u.TimestampKey != "" {
		key, closer, err := openSigner(ctx, u.TimestampKey)
		if err != nil {
			return nil, none, fmt.Errorf("update \"timestamp_key\": %w", err)
		}
		role.TimestampKeys, closeKey = []crypto.Signer{key}, closer
	}
	return role, closeKey, nil
}
