// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/internal/statefile"
)

// File names inside a fleet CA directory.
const (
	CARootCertFile    = "root.crt"
	CARootKeyFile     = "root.key"
	CAIssuingCertFile = "issuing.crt"
	CAIssuingKeyFile  = "issuing.key"
	CARevokedFile     = "revoked.state"
	// CALockFile serializes writers of the revocation list across processes.
	CALockFile = "revoked.lock"
	// CATokenKeyFile holds the key that signs enrollment tokens.
	CATokenKeyFile = "token.key"
	// CATokenPublicKeyFile holds its public half, which is all a registrar
	// needs ([ReadPublicKeyFile]).
	CATokenPublicKeyFile = "token.pub"
	// CACommandKeyFile holds the fleet's command-signing key, an online
	// key the cloud service's command API signs with.
	CACommandKeyFile = "command.key"
	// CACommandPublicKeyFile holds its public half, which devices are
	// configured with (transport.ClientConfig.CommandKeys).
	CACommandPublicKeyFile = "command.pub"
)

// clockSkew is how far back a certificate's validity starts, so that a
// device whose clock is slightly behind accepts it at once.
const clockSkew = 5 * time.Minute

// CAConfig is the policy of a fleet CA. The zero value is a secure default.
type CAConfig struct {
	// Fleet names the fleet in certificate subjects (organization).
	// Default "d2c fleet".
	Fleet string
	// DeviceValidity is the lifetime of device certificates. Default 90
	// days. Devices renew automatically well before the end.
	DeviceValidity time.Duration
	// ServerValidity is the lifetime of broker and registrar certificates.
	// Default 365 days.
	ServerValidity time.Duration
	// AllowedKeys are the device key types the CA certifies. Default
	// ECDSA P-256 and Ed25519.
	AllowedKeys []KeyType
	// CRLValidity is the time between a CRL's thisUpdate and nextUpdate.
	// Default 7 days; publish a new CRL before it runs out.
	CRLValidity time.Duration
	// Time returns the current time. Default time.Now.
	Time func() time.Time
	// IssuingKey is the issuing CA's private key when it is kept outside
	// the CA directory, in a PKCS#11 token (identity/pkcs11.OpenURI), a
	// TPM or another device: an ECDSA P-256 crypto.Signer. Default nil:
	// the key is the file issuing.key in the CA directory
	// ([CAIssuingKeyFile]).
	//
	// With it set, [InitCA] certifies this key as the issuing CA and
	// writes no issuing.key, and [LoadCA] signs every certificate and CRL
	// with it after checking that it is the key issuing.crt certifies.
	// Both refuse a CA directory that holds an issuing.key as well (an
	// error wrapping fs.ErrExist): a file beside a key that should exist
	// only in hardware is a copy, or a leftover, to look into. The CA
	// never closes the signer; its owner does, after the CA's last use.
	IssuingKey crypto.Signer
}

func (c CAConfig) withDefaults() CAConfig {
	if c.Fleet == "" {
		c.Fleet = "d2c fleet"
	}
	if c.DeviceValidity == 0 {
		c.DeviceValidity = 90 * 24 * time.Hour
	}
	if c.ServerValidity == 0 {
		c.ServerValidity = 365 * 24 * time.Hour
	}
	if len(c.AllowedKeys) == 0 {
		c.AllowedKeys = []KeyType{ECDSAP256, Ed25519}
	} else {
		c.AllowedKeys = slices.Clone(c.AllowedKeys)
	}
	if c.CRLValidity == 0 {
		c.CRLValidity = 7 * 24 * time.Hour
	}
	if c.Time == nil {
		c.Time = time.Now
	}
	return c
}

// CA is a fleet certificate authority: an offline root and an online issuing
// intermediate that signs device and server certificates and the CRL.
//
// Its state lives in a directory (mode 0700): the certificates, the issuing
// key (0600; unless [CAConfig.IssuingKey] keeps it in a token) and the
// revocation list. [InitCA] also writes the root key there; move it offline
// after initialisation, since the CA never needs it again.
type CA struct {
	dir     string
	cfg     CAConfig
	root    *x509.Certificate
	issuing *x509.Certificate
	key     crypto.Signer
	codec   *statefile.Codec

	mu          sync.Mutex
	revoked     revokedState
	revokedSet  map[string]bool // serial bytes of revoked, for constant-time checks
	revokedStat fs.FileInfo     // of the revoked.state last read, to notice other writers
}

type revokedState struct {
	CRLNumber uint64         `cbor:"1,keyasint"`
	Entries   []revokedEntry `cbor:"2,keyasint"`
}

type revokedEntry struct {
	Serial    []byte `cbor:"1,keyasint"`
	RevokedAt int64  `cbor:"2,keyasint"`
	Reason    int    `cbor:"3,keyasint"`
	Subject   string `cbor:"4,keyasint"`
}

// InitCA creates a new fleet CA in dir: a root (ECDSA P-256, 20 years), an
// issuing intermediate (10 years, path length 0), the enrollment token
// signing key ([CATokenKeyFile]) and the command-signing key
// ([CACommandKeyFile]). The issuing key is generated and written
// to [CAIssuingKeyFile], or, if cfg.IssuingKey is set, is that key, which
// must be ECDSA P-256, and no issuing.key is written. It refuses to
// overwrite an existing CA.
func InitCA(dir string, cfg CAConfig) (*CA, error) {
	cfg = cfg.withDefaults()
	if _, err := os.Stat(filepath.Join(dir, CAIssuingCertFile)); err == nil {
		return nil, fmt.Errorf("identity: a CA already exists in %s", dir)
	}
	var issKey crypto.Signer
	if cfg.IssuingKey != nil {
		kt, err := keyTypeOf(cfg.IssuingKey.Public())
		if err != nil {
			return nil, fmt.Errorf("identity: init CA: issuing key: %w", err)
		}
		if kt != ECDSAP256 {
			return nil, fmt.Errorf("%w: the issuing key is %v; an issuing CA key must be ECDSA P-256", ErrUnsupportedKey, kt)
		}
		if err := noIssuingKeyFile(dir); err != nil {
			return nil, fmt.Errorf("identity: init CA: %w", err)
		}
		issKey = cfg.IssuingKey
	}
	if err := atomicfile.MkdirPrivate(nil, dir); err != nil {
		return nil, err
	}
	now := cfg.Time()
	rootKey, err := GenerateKey(ECDSAP256)
	if err != nil {
		return nil, err
	}
	rootTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cfg.Fleet + " Root CA", Organization: []string{cfg.Fleet}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	root, err := createCert(rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	if issKey == nil {
		if issKey, err = GenerateKey(ECDSAP256); err != nil {
			return nil, err
		}
	}
	issTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cfg.Fleet + " Issuing CA", Organization: []string{cfg.Fleet}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	issuing, err := createCert(issTmpl, root, issKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	tokenKey, err := GenerateKey(ECDSAP256)
	if err != nil {
		return nil, err
	}
	commandKey, err := GenerateKey(ECDSAP256)
	if err != nil {
		return nil, err
	}
	type file struct {
		name string
		perm fs.FileMode
		data func() ([]byte, error)
	}
	files := []file{
		{CARootKeyFile, 0o600, func() ([]byte, error) { return MarshalPrivateKey(rootKey) }},
		{CATokenKeyFile, 0o600, func() ([]byte, error) { return MarshalPrivateKey(tokenKey) }},
		{CATokenPublicKeyFile, 0o644, func() ([]byte, error) { return MarshalPublicKey(tokenKey.Public()) }},
		{CACommandKeyFile, 0o600, func() ([]byte, error) { return MarshalPrivateKey(commandKey) }},
		{CACommandPublicKeyFile, 0o644, func() ([]byte, error) { return MarshalPublicKey(commandKey.Public()) }},
		{CARootCertFile, 0o644, func() ([]byte, error) { return EncodeCertificatesPEM(root), nil }},
		// issuing.crt last: its presence means a complete CA.
		{CAIssuingCertFile, 0o644, func() ([]byte, error) { return EncodeCertificatesPEM(issuing), nil }},
	}
	if cfg.IssuingKey == nil {
		files = append([]file{{CAIssuingKeyFile, 0o600, func() ([]byte, error) { return MarshalPrivateKey(issKey) }}}, files...)
	}
	for _, w := range files {
		b, err := w.data()
		if err != nil {
			return nil, err
		}
		if err := atomicfile.WriteFileMode(nil, filepath.Join(dir, w.name), b, w.perm); err != nil {
			return nil, fmt.Errorf("identity: init CA: %w", err)
		}
	}
	return LoadCA(dir, cfg)
}

// LoadCA opens the fleet CA in dir. It needs the certificates and the
// issuing key (cfg.IssuingKey, or else the file issuing.key), not the root
// key. A zero cfg.Fleet takes the fleet name from the root certificate. An
// issuing key that is not the key of issuing.crt is refused
// ([ErrMalformed]), and so is an issuing.key file beside cfg.IssuingKey
// (fs.ErrExist).
func LoadCA(dir string, cfg CAConfig) (*CA, error) {
	root, err := readOneCert(filepath.Join(dir, CARootCertFile))
	if err != nil {
		return nil, err
	}
	if cfg.Fleet == "" && len(root.Subject.Organization) == 1 {
		cfg.Fleet = root.Subject.Organization[0]
	}
	cfg = cfg.withDefaults()
	issuing, err := readOneCert(filepath.Join(dir, CAIssuingCertFile))
	if err != nil {
		return nil, err
	}
	key := cfg.IssuingKey
	if key != nil {
		if err := noIssuingKeyFile(dir); err != nil {
			return nil, fmt.Errorf("identity: load CA: %w", err)
		}
		if !publicKeysEqual(key.Public(), issuing.PublicKey) {
			return nil, fmt.Errorf("%w: the issuing key given (CAConfig.IssuingKey) is not the key %s certifies", ErrMalformed, CAIssuingCertFile)
		}
	} else {
		if key, err = ReadKeyFile(filepath.Join(dir, CAIssuingKeyFile)); err != nil {
			return nil, err
		}
		if !publicKeysEqual(key.Public(), issuing.PublicKey) {
			return nil, fmt.Errorf("%w: %s does not match %s", ErrMalformed, CAIssuingKeyFile, CAIssuingCertFile)
		}
	}
	if err := issuing.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("%w: issuing certificate not signed by root: %v", ErrUntrusted, err)
	}
	codec, err := statefile.New("d2c.revoked.v1", limits.RevokedCerts)
	if err != nil {
		return nil, err
	}
	ca := &CA{dir: dir, cfg: cfg, root: root, issuing: issuing, key: key, codec: codec}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if err := ca.refreshLocked(); err != nil {
		return nil, err
	}
	return ca, nil
}

// noIssuingKeyFile fails, wrapping fs.ErrExist, if dir holds an issuing
// key file although the issuing key is given as a signer.
func noIssuingKeyFile(dir string) error {
	path := filepath.Join(dir, CAIssuingKeyFile)
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return fmt.Errorf("%s exists although the issuing key is given as a signer (in a token): "+
			"a file copy of the key, or a leftover of an earlier CA; find out which, then move it away: %w", path, fs.ErrExist)
	case errors.Is(err, fs.ErrNotExist):
		return nil
	}
	return err
}

// refreshLocked rereads the revocation state if another process (say
// `d2c ca revoke` beside a running registrar) changed it. Writers also hold
// the CA directory's file lock (see [CA.lockWriters]), so no revocation is
// lost to a concurrent writer.
func (ca *CA) refreshLocked() error {
	path := filepath.Join(ca.dir, CARevokedFile)
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("identity: revocations: %w", err)
	}
	if old := ca.revokedStat; old != nil && os.SameFile(old, st) && old.ModTime().Equal(st.ModTime()) && old.Size() == st.Size() {
		return nil
	}
	var next revokedState
	if err := ca.codec.Load(path, &next); err != nil {
		return fmt.Errorf("identity: load revocations: %w", err)
	}
	ca.setRevokedLocked(next)
	ca.revokedStat = st
	return nil
}

func (ca *CA) setRevokedLocked(next revokedState) {
	ca.revoked = next
	ca.revokedSet = make(map[string]bool, len(next.Entries))
	for _, e := range next.Entries {
		ca.revokedSet[string(e.Serial)] = true
	}
}

// lockWriters takes the cross-process lock of the CA directory; Revoke and
// CRL hold it around their read-modify-write of the revocation state.
func (ca *CA) lockWriters() (func(), error) {
	return atomicfile.Lock(filepath.Join(ca.dir, CALockFile))
}

// saveRevokedLocked persists next and makes it current.
func (ca *CA) saveRevokedLocked(next revokedState) error {
	path := filepath.Join(ca.dir, CARevokedFile)
	if err := ca.codec.Save(nil, path, next); err != nil {
		return err
	}
	ca.setRevokedLocked(next)
	ca.revokedStat, _ = os.Stat(path)
	return nil
}

func readOneCert(path string) (*x509.Certificate, error) {
	b, err := atomicfile.ReadFile(path, limits.PEMFile)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	certs, err := ParseCertificatesPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%w: %s holds %d certificates, want 1", ErrMalformed, path, len(certs))
	}
	return certs[0], nil
}

// Root returns the fleet root certificate: the trust anchor devices, brokers
// and verifiers pin.
func (ca *CA) Root() *x509.Certificate { return ca.root }

// Issuing returns the issuing intermediate certificate.
func (ca *CA) Issuing() *x509.Certificate { return ca.issuing }

// Chain returns the certificates an EST cacerts response carries: the
// issuing intermediate and the root.
func (ca *CA) Chain() []*x509.Certificate { return []*x509.Certificate{ca.issuing, ca.root} }

// Now returns the CA's current time.
func (ca *CA) Now() time.Time { return ca.cfg.Time() }

// IssueDevice issues a client certificate for device id to the key in csr,
// whose self-signature the caller has checked ([ParseCSR]). The subject
// (CN = id) and the URI SAN are taken from id, the identity the caller has
// authenticated, never from the CSR.
func (ca *CA) IssueDevice(csr *x509.CertificateRequest, id string) (*x509.Certificate, error) {
	if err := ValidateDeviceID(id); err != nil {
		return nil, err
	}
	kt, err := keyTypeOf(csr.PublicKey)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(ca.cfg.AllowedKeys, kt) {
		return nil, fmt.Errorf("%w: %v not allowed by CA policy", ErrUnsupportedKey, kt)
	}
	u, _ := url.Parse(DeviceURI(id))
	now := ca.cfg.Time()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: id, Organization: []string{ca.cfg.Fleet}},
		URIs:                  []*url.URL{u},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              ca.capValidity(now.Add(ca.cfg.DeviceValidity)),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	return createCert(tmpl, ca.issuing, csr.PublicKey, ca.key)
}

// IssueServer issues a TLS server certificate (for a broker or the
// registrar) for the given DNS names and IP addresses.
func (ca *CA) IssueServer(pub crypto.PublicKey, hosts ...string) (*x509.Certificate, error) {
	if len(hosts) == 0 {
		return nil, fmt.Errorf("identity: server certificate needs at least one host name")
	}
	if _, err := keyTypeOf(pub); err != nil {
		return nil, err
	}
	now := ca.cfg.Time()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: hosts[0], Organization: []string{ca.cfg.Fleet}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              ca.capValidity(now.Add(ca.cfg.ServerValidity)),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return createCert(tmpl, ca.issuing, pub, ca.key)
}

// ServicePrefix begins the CN of a cloud service's client certificate. A
// colon never appears in a device ID, so no device can hold a service's
// name, or the broker rights that go with it.
const ServicePrefix = "svc:"

// IssueService issues a TLS client certificate for a cloud service (a
// telemetry verifier, a command sender) named name: CN "svc:<name>", where
// name follows the device ID format. Brokers give it the rights the
// generated ACL grants that user.
func (ca *CA) IssueService(pub crypto.PublicKey, name string) (*x509.Certificate, error) {
	if err := ValidateDeviceID(name); err != nil {
		return nil, fmt.Errorf("identity: service name: %w", err)
	}
	if _, err := keyTypeOf(pub); err != nil {
		return nil, err
	}
	now := ca.cfg.Time()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: ServicePrefix + name, Organization: []string{ca.cfg.Fleet}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              ca.capValidity(now.Add(ca.cfg.ServerValidity)),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	return createCert(tmpl, ca.issuing, pub, ca.key)
}

func (ca *CA) capValidity(t time.Time) time.Time {
	if t.After(ca.issuing.NotAfter) {
		return ca.issuing.NotAfter
	}
	return t
}

// createCert signs tmpl with a fresh random 128-bit serial number.
func createCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("identity: sign certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// randomSerial returns a positive serial of 128 random bits (RFC 5280
// section 4.1.2.2 allows up to 20 octets; CA/B Forum asks for 64 random bits
// at least).
func randomSerial() (*big.Int, error) {
	b := make([]byte, 16)
	for {
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		s := new(big.Int).SetBytes(b)
		if s.Sign() > 0 {
			return s, nil
		}
	}
}

// Revoke adds a certificate to the revocation list, persistently, with an
// RFC 5280 reason code (0 unspecified, 1 keyCompromise, 4 superseded,
// 5 cessationOfOperation...). Revoking twice is not an error.
func (ca *CA) Revoke(cert *x509.Certificate, reason int) error {
	if err := cert.CheckSignatureFrom(ca.issuing); err != nil {
		return fmt.Errorf("%w: certificate not issued by this CA: %v", ErrUntrusted, err)
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	unlock, err := ca.lockWriters()
	if err != nil {
		return err
	}
	defer unlock()
	if err := ca.refreshLocked(); err != nil {
		return err
	}
	if ca.isRevokedLocked(cert.SerialNumber) {
		return nil
	}
	if len(ca.revoked.Entries) >= limits.RevokedCerts {
		return fmt.Errorf("%w: revocation list full (%d entries)", ErrTooLarge, limits.RevokedCerts)
	}
	next := revokedState{CRLNumber: ca.revoked.CRLNumber, Entries: append(slices.Clone(ca.revoked.Entries), revokedEntry{
		Serial:    cert.SerialNumber.Bytes(),
		RevokedAt: ca.cfg.Time().Unix(),
		Reason:    reason,
		Subject:   cert.Subject.CommonName,
	})}
	if err := ca.saveRevokedLocked(next); err != nil {
		return fmt.Errorf("identity: revoke: %w", err)
	}
	return nil
}

// CheckRevoked returns an error wrapping [ErrRevoked] if cert is on the
// revocation list.
func (ca *CA) CheckRevoked(cert *x509.Certificate) error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if err := ca.refreshLocked(); err != nil {
		// Fail closed: a revocation list that cannot be read revokes all.
		return fmt.Errorf("%w: %v", ErrRevoked, err)
	}
	if ca.isRevokedLocked(cert.SerialNumber) {
		return fmt.Errorf("%w: serial %x (%s)", ErrRevoked, cert.SerialNumber, truncate(cert.Subject.CommonName))
	}
	return nil
}

func (ca *CA) isRevokedLocked(serial *big.Int) bool {
	return ca.revokedSet[string(serial.Bytes())]
}

// CRL signs a fresh certificate revocation list (RFC 5280 section 5, DER)
// listing every revoked certificate, with a CRL number one higher than the
// last. mosquitto's crlfile takes it PEM-encoded ("X509 CRL").
func (ca *CA) CRL() ([]byte, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	unlock, err := ca.lockWriters()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := ca.refreshLocked(); err != nil {
		return nil, err
	}
	next := revokedState{CRLNumber: ca.revoked.CRLNumber + 1, Entries: ca.revoked.Entries}
	now := ca.cfg.Time()
	list := &x509.RevocationList{
		Number:     new(big.Int).SetUint64(next.CRLNumber),
		ThisUpdate: now.Add(-clockSkew),
		NextUpdate: now.Add(ca.cfg.CRLValidity),
	}
	for _, e := range next.Entries {
		list.RevokedCertificateEntries = append(list.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber:   new(big.Int).SetBytes(e.Serial),
			RevocationTime: time.Unix(e.RevokedAt, 0),
			ReasonCode:     e.Reason,
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, list, ca.issuing, ca.key)
	if err != nil {
		return nil, fmt.Errorf("identity: sign CRL: %w", err)
	}
	if err := ca.saveRevokedLocked(next); err != nil {
		return nil, fmt.Errorf("identity: CRL number: %w", err)
	}
	return der, nil
}

// SignCRL signs a certificate revocation list (RFC 5280 section 5, DER)
// numbered number, listing entries, valid from now (less the clock skew
// allowance) for CAConfig.CRLValidity. It keeps no state: the caller (the
// fleet's store, which holds the revocations) numbers CRLs in strictly
// increasing order.
func (ca *CA) SignCRL(number uint64, entries []x509.RevocationListEntry) ([]byte, error) {
	if number == 0 {
		return nil, errors.New("identity: CRL number 0 (numbers start at 1)")
	}
	now := ca.cfg.Time()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    new(big.Int).SetUint64(number),
		ThisUpdate:                now.Add(-clockSkew),
		NextUpdate:                now.Add(ca.cfg.CRLValidity),
		RevokedCertificateEntries: entries,
	}, ca.issuing, ca.key)
	if err != nil {
		return nil, fmt.Errorf("identity: sign CRL: %w", err)
	}
	return der, nil
}

// RevocationList is a verified CRL: it answers CheckRevoked from the CRL's
// entries, whatever its age. Consumers that keep a CRL over time use
// [CRLCache], which refuses an older CRL and fails closed when the CRL
// goes stale.
type RevocationList struct {
	serials map[string]bool
	number  *big.Int
	this    time.Time
	next    time.Time
}

// ParseCRL parses a DER or PEM CRL and verifies it was signed by issuer.
func ParseCRL(data []byte, issuer *x509.Certificate) (*RevocationList, error) {
	if b, _ := pemDecode(data, "X509 CRL"); b != nil {
		data = b
	}
	crl, err := x509.ParseRevocationList(data)
	if err != nil {
		return nil, fmt.Errorf("%w: CRL: %v", ErrMalformed, err)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("%w: CRL signature: %v", ErrUntrusted, err)
	}
	rl := &RevocationList{serials: make(map[string]bool, len(crl.RevokedCertificateEntries)),
		number: crlNumber(crl), this: crl.ThisUpdate, next: crl.NextUpdate}
	for _, e := range crl.RevokedCertificateEntries {
		rl.serials[string(e.SerialNumber.Bytes())] = true
	}
	return rl, nil
}

// NextUpdate is when the CRL says a newer one will be available.
func (rl *RevocationList) NextUpdate() time.Time { return rl.next }

// ThisUpdate is when the CRL was issued.
func (rl *RevocationList) ThisUpdate() time.Time { return rl.this }

// Number is the CRL number (RFC 5280 5.2.3), or nil if the CRL has none.
// A consumer accepts only increasing numbers ([CRLCache]).
func (rl *RevocationList) Number() *big.Int {
	if rl.number == nil {
		return nil
	}
	return new(big.Int).Set(rl.number)
}

// CheckRevoked returns an error wrapping [ErrRevoked] if cert is listed.
func (rl *RevocationList) CheckRevoked(cert *x509.Certificate) error {
	if rl.serials[string(cert.SerialNumber.Bytes())] {
		return fmt.Errorf("%w: serial %x (%s)", ErrRevoked, cert.SerialNumber, truncate(cert.Subject.CommonName))
	}
	return nil
}

// RevocationChecker reports whether a certificate is revoked; [CA] and
// [RevocationList] implement it.
type RevocationChecker interface {
	CheckRevoked(cert *x509.Certificate) error
}

var (
	_ RevocationChecker = (*CA)(nil)
	_ RevocationChecker = (*RevocationList)(nil)
)
