// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/d2c-iot/d2c/internal/limits"
)

// EST paths (RFC 7030 section 3.2.2) and media types (section 4).
const (
	ESTPathPrefix     = "/.well-known/est/"
	ESTCACerts        = ESTPathPrefix + "cacerts"
	ESTSimpleEnroll   = ESTPathPrefix + "simpleenroll"
	ESTSimpleReenroll = ESTPathPrefix + "simplereenroll"

	mediaPKCS10   = "application/pkcs10"
	mediaPKCS7    = "application/pkcs7-mime"
	mediaCertOnly = "application/pkcs7-mime; smime-type=certs-only"
	estRealm      = `Basic realm="d2c-est", charset="UTF-8"`
)

// RegistrarConfig configures a [Registrar]. Fields left zero take the
// documented default; the required ones make [NewRegistrar] fail closed.
type RegistrarConfig struct {
	// CA issues device certificates. Required.
	CA *CA
	// TokenKeys are the public keys of the fleet's enrollment token
	// signers. Token enrollment is disabled when empty.
	TokenKeys []crypto.PublicKey
	// TokenIssuer is the required "iss" claim. Default "d2c".
	TokenIssuer string
	// Registry records every certificate issued, consumes tokens and
	// decides renewals and revocation ([Registry]; cloud/store). When set,
	// UsedTokens is not used. Recommended: without it the registrar keeps
	// no record of what it issued, any unrevoked certificate of a device
	// may renew, and revocation comes from the CA's own list.
	Registry Registry
	// UsedTokens enforces single use of tokens when there is no Registry.
	// Required when TokenKeys is set and Registry is not; see
	// [OpenUsedTokens].
	UsedTokens UsedTokens
	// IDevIDRoots are the manufacturers' roots for IDevID client
	// certificates (IEEE 802.1AR). IDevID enrollment is disabled when nil.
	IDevIDRoots *x509.CertPool
	// IDevIDDeviceID maps a verified IDevID certificate to the device ID it
	// may enroll. Default: the subject serialNumber attribute (as 802.1AR
	// puts it), else the CN; it must be a valid device ID.
	IDevIDDeviceID func(*x509.Certificate) (string, error)
	// RenewExpiredWithin lets a device whose certificate expired less than
	// this long ago renew with it. Default 0: an expired certificate cannot
	// renew, and the device must enroll again with a new token.
	RenewExpiredWithin time.Duration
	// Logger receives one event per request (never secrets). Default: none.
	Logger *slog.Logger
}

// Registrar is the cloud half of enrollment: an [http.Handler] serving the
// RFC 7030 EST endpoints cacerts, simpleenroll and simplereenroll.
//
// simpleenroll accepts either a one-time enrollment token, presented with
// HTTP Basic authentication (RFC 7030 section 3.2.3; user name = device ID,
// password = token) so that generic EST clients can use it, or an IDevID
// client certificate. simplereenroll accepts the device's current
// certificate as TLS client certificate. Every refusal is a 4xx answer that
// changes no state; a token is consumed only when a certificate is issued.
// Serve it over TLS 1.3 with [Registrar.TLSConfig].
type Registrar struct {
	cfg    RegistrarConfig
	tokens TokenVerifier
	log    *slog.Logger
}

// NewRegistrar checks cfg and returns a registrar.
func NewRegistrar(cfg RegistrarConfig) (*Registrar, error) {
	if cfg.CA == nil {
		return nil, errors.New("identity: registrar needs a CA")
	}
	if len(cfg.TokenKeys) > 0 && cfg.UsedTokens == nil && cfg.Registry == nil {
		return nil, errors.New("identity: registrar with token keys needs a Registry or a UsedTokens store (single use)")
	}
	if cfg.IDevIDDeviceID == nil {
		cfg.IDevIDDeviceID = defaultIDevIDDeviceID
	}
	if cfg.RenewExpiredWithin < 0 {
		return nil, errors.New("identity: RenewExpiredWithin is negative")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.TokenKeys = append([]crypto.PublicKey(nil), cfg.TokenKeys...)
	return &Registrar{
		cfg:    cfg,
		tokens: TokenVerifier{Keys: cfg.TokenKeys, Issuer: cfg.TokenIssuer, Time: cfg.CA.Now},
		log:    log,
	}, nil
}

// TLSConfig returns a server TLS configuration for the registrar: TLS 1.3
// only, serving cert, requesting (not requiring) a client certificate, which
// the handler verifies itself against the fleet or IDevID roots.
func (r *Registrar) TLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
	}
}

// httpError is a refusal: status, text for the client, cause for errors.Is.
type httpError struct {
	status int
	err    error
}

func refuse(status int, err error) *httpError { return &httpError{status, err} }

// ServeHTTP implements [http.Handler].
func (r *Registrar) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var (
		body []byte
		herr *httpError
		op   = strings.TrimPrefix(req.URL.Path, ESTPathPrefix)
		dev  string
	)
	switch req.URL.Path {
	case ESTCACerts:
		if req.Method != http.MethodGet {
			herr = refuse(http.StatusMethodNotAllowed, errors.New("use GET"))
			w.Header().Set("Allow", http.MethodGet)
			break
		}
		body, herr = r.caCerts()
	case ESTSimpleEnroll, ESTSimpleReenroll:
		if req.Method != http.MethodPost {
			herr = refuse(http.StatusMethodNotAllowed, errors.New("use POST"))
			w.Header().Set("Allow", http.MethodPost)
			break
		}
		body, dev, herr = r.enroll(w, req, req.URL.Path == ESTSimpleReenroll)
	default:
		herr = refuse(http.StatusNotFound, errors.New("not an EST endpoint"))
	}
	if herr != nil {
		r.log.LogAttrs(req.Context(), slog.LevelWarn, "est refused",
			slog.String("op", op), slog.String("device", dev), slog.String("remote", req.RemoteAddr),
			slog.Int("status", herr.status), slog.String("reason", herr.err.Error()))
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if code := codeForError(herr.err); code != "" {
			w.Header().Set(errorCodeHeader, code)
		}
		w.WriteHeader(herr.status)
		fmt.Fprintln(w, herr.err.Error())
		return
	}
	r.log.LogAttrs(req.Context(), slog.LevelInfo, "est ok", slog.String("op", op),
		slog.String("device", dev), slog.String("remote", req.RemoteAddr))
	ct := mediaCertOnly
	if op == "cacerts" {
		ct = mediaPKCS7
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Transfer-Encoding", "base64")
	_, _ = w.Write(body)
}

func (r *Registrar) caCerts() ([]byte, *httpError) {
	b, err := EncodeCertsOnly(r.cfg.CA.Chain()...)
	if err != nil {
		return nil, refuse(http.StatusInternalServerError, errors.New("internal error"))
	}
	return b, nil
}

// enroll serves simpleenroll and simplereenroll. All checks run before the
// token is consumed, so a refusal leaves no trace in the state.
func (r *Registrar) enroll(w http.ResponseWriter, req *http.Request, renew bool) ([]byte, string, *httpError) {
	if req.TLS == nil {
		return nil, "", refuse(http.StatusForbidden, errors.New("EST requires TLS"))
	}
	csr, herr := readCSR(w, req)
	if herr != nil {
		return nil, "", herr
	}
	var (
		id      string
		tok     *Token
		current *x509.Certificate
	)
	if renew {
		id, current, herr = r.authCurrentCert(req, csr)
	} else {
		id, tok, herr = r.authEnroll(w, req)
	}
	if herr != nil {
		return nil, id, herr
	}
	if err := checkCSRFor(csr, id); err != nil {
		return nil, id, refuse(http.StatusForbidden, err)
	}
	if kt, err := keyTypeOf(csr.PublicKey); err != nil {
		return nil, id, refuse(http.StatusBadRequest, err)
	} else if !containsKeyType(r.cfg.CA.cfg.AllowedKeys, kt) {
		return nil, id, refuse(http.StatusBadRequest, fmt.Errorf("%w: %v not allowed by CA policy", ErrUnsupportedKey, kt))
	}
	if current != nil && r.cfg.Registry != nil {
		if err := r.cfg.Registry.CanRenew(req.Context(), current); err != nil {
			return nil, id, r.registryRefusal(err)
		}
	}
	if tok != nil && r.cfg.Registry == nil {
		if err := r.cfg.UsedTokens.Consume(req.Context(), tok.ID, tok.Expiry); err != nil {
			return nil, id, r.tokenRefusal(w, err)
		}
	}
	cert, err := r.cfg.CA.IssueDevice(csr, id)
	if err != nil {
		r.log.Error("est: issue certificate", "device", id, "err", err)
		return nil, id, refuse(http.StatusInternalServerError, errors.New("internal error"))
	}
	if r.cfg.Registry != nil {
		// Recorded, and the token consumed, in one transaction before the
		// certificate is sent: a refusal here leaves no trace, and the
		// certificate signed for it is never sent.
		chain := append([]*x509.Certificate{cert}, r.cfg.CA.Chain()...)
		switch {
		case current != nil:
			err = r.cfg.Registry.Renewed(req.Context(), current, chain)
		case tok != nil:
			err = r.cfg.Registry.Enrolled(req.Context(), id, tok.ID, tok.Expiry, chain)
		default:
			err = r.cfg.Registry.Enrolled(req.Context(), id, "", time.Time{}, chain)
		}
		if err != nil {
			if errors.Is(err, ErrTokenReused) {
				return nil, id, r.tokenRefusal(w, err)
			}
			return nil, id, r.registryRefusal(err)
		}
	}
	// RFC 7030 section 4.2.3: the response holds the issued certificate.
	b, err := EncodeCertsOnly(cert)
	if err != nil {
		return nil, id, refuse(http.StatusInternalServerError, errors.New("internal error"))
	}
	return b, id, nil
}

// tokenRefusal answers a token that could not be consumed.
func (r *Registrar) tokenRefusal(w http.ResponseWriter, err error) *httpError {
	if errors.Is(err, ErrTokenReused) {
		w.Header().Set("WWW-Authenticate", estRealm)
		return refuse(http.StatusUnauthorized, err)
	}
	r.log.Error("est: record used token", "err", err)
	return refuse(http.StatusServiceUnavailable, errors.New("cannot record token use; try again later"))
}

// registryRefusal answers a renewal the registry refused, or a registry
// failure.
func (r *Registrar) registryRefusal(err error) *httpError {
	if errors.Is(err, ErrRevoked) || errors.Is(err, ErrSuperseded) {
		return refuse(http.StatusUnauthorized, err)
	}
	r.log.Error("est: registry", "err", err)
	return refuse(http.StatusServiceUnavailable, errors.New("cannot record the certificate; try again later"))
}

// readCSR reads a base64 PKCS#10 body (RFC 7030 section 4.2.1) of bounded
// size and checks its self-signature.
func readCSR(w http.ResponseWriter, req *http.Request) (*x509.CertificateRequest, *httpError) {
	mt, _, err := mime.ParseMediaType(req.Header.Get("Content-Type"))
	if err != nil || mt != mediaPKCS10 {
		return nil, refuse(http.StatusUnsupportedMediaType, fmt.Errorf("%w: Content-Type must be %s", ErrMalformed, mediaPKCS10))
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, req.Body, limits.ESTRequestBody))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, refuse(http.StatusRequestEntityTooLarge, fmt.Errorf("%w: request body over %d bytes", ErrTooLarge, limits.ESTRequestBody))
	}
	if err != nil {
		return nil, refuse(http.StatusBadRequest, fmt.Errorf("%w: reading body: %v", ErrMalformed, err))
	}
	der, err := decodeBase64(raw)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, err)
	}
	csr, err := ParseCSR(der)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, err)
	}
	return csr, nil
}

// authEnroll authenticates a first enrollment by IDevID certificate or by
// token, returning the authorized device ID and the verified token, if
// one was used (consumed once everything else has been checked).
func (r *Registrar) authEnroll(w http.ResponseWriter, req *http.Request) (string, *Token, *httpError) {
	unauthorized := func(err error) (string, *Token, *httpError) {
		w.Header().Set("WWW-Authenticate", estRealm)
		return "", nil, refuse(http.StatusUnauthorized, err)
	}
	if certs := req.TLS.PeerCertificates; len(certs) > 0 {
		if r.cfg.IDevIDRoots == nil {
			return unauthorized(fmt.Errorf("%w: IDevID enrollment not enabled", ErrNotAuthorized))
		}
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: r.cfg.IDevIDRoots, Intermediates: inter,
			CurrentTime: r.cfg.CA.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			return unauthorized(fmt.Errorf("%w: IDevID: %v", ErrUntrusted, err))
		}
		id, err := r.cfg.IDevIDDeviceID(certs[0])
		if err == nil {
			err = ValidateDeviceID(id)
		}
		if err != nil {
			return unauthorized(fmt.Errorf("%w: IDevID names no valid device ID: %v", ErrNotAuthorized, err))
		}
		return id, nil, nil
	}
	if len(r.cfg.TokenKeys) == 0 {
		return unauthorized(fmt.Errorf("%w: token enrollment not enabled", ErrNotAuthorized))
	}
	if len(req.Header.Get("Authorization")) > limits.AuthorizationHeader {
		return unauthorized(fmt.Errorf("%w: Authorization header too large", ErrTooLarge))
	}
	user, token, ok := req.BasicAuth()
	if !ok {
		return unauthorized(fmt.Errorf("%w: HTTP Basic authentication with the enrollment token required", ErrNotAuthorized))
	}
	tok, err := r.tokens.Verify(token)
	if err != nil {
		return unauthorized(err)
	}
	if user != tok.DeviceID {
		return unauthorized(fmt.Errorf("%w: token is for device %q, presented by %q", ErrNotAuthorized, tok.DeviceID, truncate(user)))
	}
	return tok.DeviceID, &tok, nil
}

// authCurrentCert authenticates a renewal by the device's current
// certificate (RFC 7030 section 3.3.2) and checks that the CSR keeps its
// subject and subjectAltName (section 4.2.2). It returns the device ID and
// the certificate.
func (r *Registrar) authCurrentCert(req *http.Request, csr *x509.CertificateRequest) (string, *x509.Certificate, *httpError) {
	certs := req.TLS.PeerCertificates
	if len(certs) == 0 {
		return "", nil, refuse(http.StatusUnauthorized, fmt.Errorf("%w: renewal requires the current certificate as TLS client certificate", ErrNotAuthorized))
	}
	roots := x509.NewCertPool()
	roots.AddCert(r.cfg.CA.Root())
	var revocations RevocationChecker = r.cfg.CA
	if r.cfg.Registry != nil {
		revocations = r.cfg.Registry
	}
	policy := DeviceCertPolicy{Roots: roots, Revocations: revocations}
	chain := append([]*x509.Certificate{certs[0], r.cfg.CA.Issuing()}, certs[1:]...)
	now := r.cfg.CA.Now()
	id, err := policy.Verify(chain, now)
	if errors.Is(err, ErrCertExpired) && r.cfg.RenewExpiredWithin > 0 && now.Before(certs[0].NotAfter.Add(r.cfg.RenewExpiredWithin)) {
		id, err = policy.Verify(chain, certs[0].NotAfter.Add(-time.Second))
	}
	if err != nil {
		return "", nil, refuse(http.StatusUnauthorized, err)
	}
	if err := checkRenewalCSR(csr, certs[0]); err != nil {
		return id, nil, refuse(http.StatusForbidden, err)
	}
	return id, certs[0], nil
}

func defaultIDevIDDeviceID(c *x509.Certificate) (string, error) {
	if c.Subject.SerialNumber != "" {
		return c.Subject.SerialNumber, nil
	}
	return c.Subject.CommonName, nil
}

func containsKeyType(ts []KeyType, t KeyType) bool {
	for _, x := range ts {
		if x == t {
			return true
		}
	}
	return false
}

// base64Body encodes an EST request body (RFC 7030 section 4.2.1).
func base64Body(der []byte) []byte { return base64Lines(der) }

// errorCodeHeader carries a stable, machine-readable reason with an EST
// refusal, so that a d2c client can tell, say, a reused token from a wrong
// one. Other EST clients ignore it and use the status code.
const errorCodeHeader = "D2C-Error"

var errorCodes = []struct {
	code string
	err  error
}{
	{"token-reused", ErrTokenReused},
	{"token-expired", ErrTokenExpired},
	{"token-invalid", ErrTokenInvalid},
	{"superseded", ErrSuperseded},
	{"revoked", ErrRevoked},
	{"cert-expired", ErrCertExpired},
	{"untrusted", ErrUntrusted},
	{"unsupported-key", ErrUnsupportedKey},
	{"too-large", ErrTooLarge},
	{"malformed", ErrMalformed},
	{"not-authorized", ErrNotAuthorized},
}

func codeForError(err error) string {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return ""
}

func errorForCode(code string) error {
	for _, c := range errorCodes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}
