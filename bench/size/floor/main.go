// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command floor is the size floor of the device program (examples/device):
// a program that links what the device half links from outside d2c (TLS
// with a client certificate, x509 parsing and a CSR, MQTT v5 through
// autopaho, a JWS signed and verified and a JWE encrypted with go-jose,
// CBOR through fxamacker/cbor, an HTTPS GET through net/http) and does
// none of d2c's work: no enrollment, no store, no envelopes, no update
// agent, no configuration, no logging. docs/performance.md ("Device binary
// size") compares the two, built the same way:
//
//	CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7 go build -trimpath -ldflags='-s -w' -tags nethttpomithttp2 -o /tmp/floor-arm ./bench/size/floor
//
// Every call depends on the command line, so the linker keeps all of it.
// Run, it makes a throwaway key and certificate, seals a message, fetches
// the URL given as its first argument and publishes to the broker given as
// its second (host:port, TLS).
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/fxamacker/cbor/v2"
	"github.com/go-jose/go-jose/v4"
)

type reading struct {
	Stream string  `cbor:"1,keyasint"`
	Value  float64 `cbor:"2,keyasint"`
	At     int64   `cbor:"3,keyasint"`
}

func main() {
	if len(os.Args) != 3 {
		os.Stderr.WriteString("usage: floor https-url broker-host:port\n")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}

func run(rawURL, broker string) error {
	// A key, a self-signed certificate parsed back, and a CSR.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: broker},
		NotBefore:    time.Now(),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: cert.Subject}, key)
	if err != nil {
		return err
	}
	if _, err := x509.ParseCertificateRequest(csr); err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	tlsCfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      roots,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}},
	}

	// CBOR both ways.
	em, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		return err
	}
	dm, err := cbor.DecOptions{DupMapKey: cbor.DupMapKeyEnforcedAPF, IndefLength: cbor.IndefLengthForbidden}.DecMode()
	if err != nil {
		return err
	}
	body, err := em.Marshal(reading{Stream: broker, Value: 21.37, At: time.Now().Unix()})
	if err != nil {
		return err
	}
	var back reading
	if err := dm.Unmarshal(body, &back); err != nil {
		return err
	}

	// A JWE (ECDH-ES+A256KW, A256GCM) and a JWS over it, verified.
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: &key.PublicKey}, nil)
	if err != nil {
		return err
	}
	jwe, err := enc.Encrypt(body)
	if err != nil {
		return err
	}
	sealed, err := jwe.CompactSerialize()
	if err != nil {
		return err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	if err != nil {
		return err
	}
	jws, err := signer.Sign([]byte(sealed))
	if err != nil {
		return err
	}
	compact, err := jws.CompactSerialize()
	if err != nil {
		return err
	}
	parsed, err := jose.ParseSignedCompact(compact, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return err
	}
	payload, err := parsed.Verify(&key.PublicKey)
	if err != nil {
		return err
	}

	// An HTTPS GET.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return err
	}

	// MQTT v5 over TLS: connect, publish, disconnect.
	cm, err := autopaho.NewConnection(ctx, autopaho.ClientConfig{
		ServerUrls:   []*url.URL{{Scheme: "tls", Host: broker}},
		TlsCfg:       tlsCfg,
		KeepAlive:    30,
		ClientConfig: paho.ClientConfig{ClientID: cert.Subject.CommonName},
	})
	if err != nil {
		return err
	}
	if err := cm.AwaitConnection(ctx); err != nil {
		return err
	}
	if _, err := cm.Publish(ctx, &paho.Publish{Topic: "floor/" + back.Stream, QoS: 1, Payload: payload}); err != nil {
		return err
	}
	return cm.Disconnect(ctx)
}
