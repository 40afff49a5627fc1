package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
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
	Ops       string              `json:"ops"`
	Registrar *cloudRegistrarRole `json:"registrar"`
	Verifier  *cloudVerifierRole  `json:"verifier"`
	CRL       *cloudCRLRole       `json:"crl"`
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
		summary: "run the cloud service: registrar, verifier, CRL publication",
		usage:   "--config FILE [--ready-file FILE]",
		details: `
Runs the cloud half of d2c as one service on the fleet's cloud store: the
EST registrar, the telemetry verifier (verified records go to the store's
records table), and CRL publication for the broker, each when its section
is in the configuration file, with /healthz, /readyz and Prometheus
/metrics on "ops". Replicas on one PostgreSQL store (and, for verifiers,
one unguessable "group") share the work. It stops gracefully on SIGINT or
SIGTERM.

The configuration is JSON (unknown fields are errors; relative paths are
relative to the file):

  {
    "db": "sqlite:fleet.db",             (default; or postgres://...)
    "ca": "ca",                          (the fleet CA directory)
    "ops": "127.0.0.1:9090",
    "registrar": {"listen": "0.0.0.0:8443", "hosts": ["est.example.com"]},
    "verifier": {"broker": "broker.example.com:8883", "cert": "verifier.crt",
                 "key": "verifier.key", "cloud_key": "cloud.key"},
    "crl": {"out": "/etc/mosquitto/crl.pem", "every": "1h"}
  }

The registrar's "cert" and "key" default to a certificate issued from the
CA for "hosts"; the verifier's "group" (16 or more unguessable characters)
joins a shared subscription. D2C_CLOUD_DB and D2C_CLOUD_OPS override "db"
and "ops". With --ready-file, the addresses the service listens on are
written there (JSON) once every role is up.`,
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
	if r := c.CRL; r != nil {
		rel(&r.Out)
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
	if c.Registrar != nil || c.CRL != nil {
		if c.CA == "" {
			return usageErrorf(`the registrar and crl sections need "ca", the fleet CA directory`)
		}
		if ca, err = openCA(c.CA); err != nil {
			return err
		}
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
			b, _ := json.Marshal(map[string]string{"registrar": addrString(a.Registrar), "ops": addrString(a.Ops)})
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
	host, _, err := net.SplitHostPort(r.Listen)
	if err != nil {
		return nil, usageErrorf(`registrar "listen" %q: %v`, r.Listen, err)
	}
	if (r.Cert == "") != (r.Key == "") {
		return nil, usageErrorf(`registrar "cert" and "key" go together`)
	}
	hosts := r.Hosts
	if len(hosts) == 0 {
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			host = "localhost"
		}
		hosts = []string{host}
	}
	cert, err := registrarCertificate(ca, r.Cert, r.Key, hosts)
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
