// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

// ESTClient is the device half of enrollment: an RFC 7030 EST client over
// HTTPS with TLS 1.3. The zero value is not usable: URL and a trust
// decision (Anchors or BootstrapFingerprint) are required, and the client
// fails closed with [ErrNoTrustAnchor] without one.
type ESTClient struct {
	// URL is the registrar's base URL, https only, e.g.
	// "https://est.example.com:8443". Required.
	URL string
	// Anchors are the certificates the registrar's TLS certificate must
	// chain to (RFC 7030 section 3.6.1, explicit trust anchor database).
	Anchors []*x509.Certificate
	// BootstrapFingerprint is the SHA-256 of the fleet root certificate,
	// obtained out of band (printed by `d2c ca init`). When Anchors is
	// empty, [ESTClient.CACerts] accepts a response only if it contains the
	// root with this fingerprint and the server's certificate chains to it
	// (RFC 7030 section 4.1.1, bootstrap distribution of CA certificates).
	// Every other call requires Anchors.
	BootstrapFingerprint []byte
	// Timeout bounds each request. Default 30 s.
	Timeout time.Duration
	// Time returns the time used to verify certificates; a device passes
	// its [TrustedClock]'s Now. Default time.Now.
	Time func() time.Time
}

// EnrollAuth is the credential of a first enrollment: a token, or an
// IDevID certificate.
type EnrollAuth struct {
	// DeviceID is presented as the HTTP Basic user name with Token.
	DeviceID string
	// Token is a one-time enrollment token from the fleet.
	Token string
	// IDevID is a manufacturer-installed certificate and key, used as TLS
	// client certificate instead of a token.
	IDevID *tls.Certificate
}

func (c ESTClient) now() time.Time {
	if c.Time != nil {
		return c.Time()
	}
	return time.Now()
}

func (c ESTClient) endpoint(path string) (string, string, error) {
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", "", fmt.Errorf("identity: EST URL %q must be https://host[:port]", truncate(c.URL))
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	return u.String(), u.Hostname(), nil
}

// httpClient returns a client for one request: TLS 1.3, the anchors as
// roots (or, for bootstrap, no verification here: the caller verifies
// before trusting anything), an optional client certificate.
func (c ESTClient) httpClient(bootstrap bool, clientCert *tls.Certificate) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS13, Time: c.now}
	switch {
	case len(c.Anchors) > 0:
		pool := x509.NewCertPool()
		for _, a := range c.Anchors {
			pool.AddCert(a)
		}
		tc.RootCAs = pool
	case bootstrap && len(c.BootstrapFingerprint) == sha256.Size:
		// RFC 7030 section 4.1.1: the bootstrap response is accepted only
		// after CACerts checks the fingerprint and the server chain.
		tc.InsecureSkipVerify = true
	default:
		return nil, ErrNoTrustAnchor
	}
	if clientCert != nil {
		cc := *clientCert
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cc, nil }
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			TLSClientConfig:     tc,
			DialContext:         (&net.Dialer{Timeout: timeout}).DialContext,
			TLSHandshakeTimeout: timeout,
			ForceAttemptHTTP2:   false,
			Proxy:               http.ProxyFromEnvironment,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// do performs one EST request and returns the decoded certs-only body and
// the TLS state.
func (c ESTClient) do(ctx context.Context, method, path string, body []byte, bootstrap bool, clientCert *tls.Certificate, auth *EnrollAuth) ([]*x509.Certificate, *tls.ConnectionState, error) {
	u, _, err := c.endpoint(path)
	if err != nil {
		return nil, nil, err
	}
	hc, err := c.httpClient(bootstrap, clientCert)
	if err != nil {
		return nil, nil, err
	}
	defer hc.CloseIdleConnections()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: EST request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", mediaPKCS10)
		req.Header.Set("Content-Transfer-Encoding", "base64")
	}
	if auth != nil && auth.Token != "" {
		req.SetBasicAuth(auth.DeviceID, auth.Token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		var uerr x509.UnknownAuthorityError
		var herr x509.HostnameError
		var cerr *tls.CertificateVerificationError
		if errors.As(err, &uerr) || errors.As(err, &herr) || errors.As(err, &cerr) {
			return nil, nil, fmt.Errorf("%w: EST server %s: %v", ErrUntrusted, c.URL, err)
		}
		return nil, nil, fmt.Errorf("identity: EST %s: %w", path, err)
	}
	defer resp.Body.Close()
	raw, err := atomicfile.ReadAll(resp.Body, limits.ESTResponseBody)
	if errors.Is(err, atomicfile.ErrTooLarge) {
		return nil, nil, fmt.Errorf("%w: EST response over %d bytes", ErrTooLarge, limits.ESTResponseBody)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("identity: EST %s: read response: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, serverError(resp.StatusCode, resp.Header.Get(errorCodeHeader), raw)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != mediaPKCS7 {
		return nil, nil, fmt.Errorf("%w: EST response Content-Type %q", ErrMalformed, truncate(resp.Header.Get("Content-Type")))
	}
	certs, err := DecodeCertsOnly(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("EST %s response: %w", path, err)
	}
	return certs, resp.TLS, nil
}

func serverError(status int, code string, body []byte) error {
	msg := strings.TrimSpace(string(body))
	if len(msg) > 512 {
		msg = msg[:512] + "..."
	}
	// The text comes from the server: keep terminal control bytes out.
	msg = strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\n' || r == 0x7f || r == utf8.RuneError {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(msg, "?"))
	sentinel := errorForCode(code)
	if sentinel == nil {
		switch status {
		case http.StatusUnauthorized, http.StatusForbidden:
			sentinel = ErrNotAuthorized
		case http.StatusRequestEntityTooLarge:
			sentinel = ErrTooLarge
		case http.StatusBadRequest, http.StatusUnsupportedMediaType:
			sentinel = ErrMalformed
		}
	}
	return &ServerError{Status: status, Message: msg, err: sentinel}
}

// CACerts fetches the fleet CA certificates (RFC 7030 section 4.1) and
// returns those that chain to the trust anchors, or, in bootstrap mode, to
// the root whose SHA-256 is BootstrapFingerprint.
func (c ESTClient) CACerts(ctx context.Context) ([]*x509.Certificate, error) {
	bootstrap := len(c.Anchors) == 0
	certs, state, err := c.do(ctx, http.MethodGet, ESTCACerts, nil, bootstrap, nil, nil)
	if err != nil {
		return nil, err
	}
	roots := c.Anchors
	if bootstrap {
		var root *x509.Certificate
		for _, cert := range certs {
			sum := sha256.Sum256(cert.Raw)
			if subtle.ConstantTimeCompare(sum[:], c.BootstrapFingerprint) == 1 && cert.IsCA {
				root = cert
			}
		}
		if root == nil {
			return nil, fmt.Errorf("%w: no certificate in the cacerts response matches the bootstrap fingerprint", ErrUntrusted)
		}
		roots = []*x509.Certificate{root}
		// The TLS server must chain to the same root, or the response
		// could come from anyone who copied the public CA certificates.
		_, host, _ := c.endpoint("")
		if err := verifyChain(state.PeerCertificates, append(certs, state.PeerCertificates...), roots, c.now(), x509.ExtKeyUsageServerAuth, host); err != nil {
			return nil, fmt.Errorf("%w: EST server certificate: %v", ErrUntrusted, err)
		}
	}
	var out []*x509.Certificate
	for _, cert := range certs {
		if verifyChain([]*x509.Certificate{cert}, certs, roots, c.now(), x509.ExtKeyUsageAny, "") == nil {
			out = append(out, cert)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no CA certificate chains to the trust anchors", ErrUntrusted)
	}
	return out, nil
}

// Enroll sends a first enrollment (simpleenroll, RFC 7030 section 4.2.1) of
// the DER CSR and returns the issued certificate, unverified: the caller
// checks it against its key and anchors ([Store.Enroll] does).
func (c ESTClient) Enroll(ctx context.Context, csrDER []byte, auth EnrollAuth) (*x509.Certificate, error) {
	if len(c.Anchors) == 0 {
		return nil, ErrNoTrustAnchor
	}
	if auth.IDevID == nil && auth.Token == "" {
		return nil, fmt.Errorf("%w: enrollment needs a token or an IDevID", ErrNotAuthorized)
	}
	certs, _, err := c.do(ctx, http.MethodPost, ESTSimpleEnroll, base64Body(csrDER), false, auth.IDevID, &auth)
	if err != nil {
		return nil, err
	}
	return issuedCert(certs)
}

// Reenroll sends a renewal (simplereenroll, RFC 7030 section 4.2.2)
// authenticated by the current certificate and returns the issued
// certificate, unverified.
func (c ESTClient) Reenroll(ctx context.Context, csrDER []byte, current tls.Certificate) (*x509.Certificate, error) {
	if len(c.Anchors) == 0 {
		return nil, ErrNoTrustAnchor
	}
	certs, _, err := c.do(ctx, http.MethodPost, ESTSimpleReenroll, base64Body(csrDER), false, &current, nil)
	if err != nil {
		return nil, err
	}
	return issuedCert(certs)
}

func issuedCert(certs []*x509.Certificate) (*x509.Certificate, error) {
	for _, c := range certs {
		if !c.IsCA {
			return c, nil
		}
	}
	return nil, fmt.Errorf("%w: EST response holds no end-entity certificate", ErrMalformed)
}

// verifyChain verifies chain[0] against roots with the other certificates
// as intermediates.
func verifyChain(chain, pool, roots []*x509.Certificate, at time.Time, usage x509.ExtKeyUsage, host string) error {
	if len(chain) == 0 {
		return errors.New("no certificate")
	}
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rp.AddCert(r)
	}
	for _, c := range pool {
		ip.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: rp, Intermediates: ip, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: host})
	return err
}
