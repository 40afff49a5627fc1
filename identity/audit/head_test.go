// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"

	"github.com/d2c-iot/d2c/identity"
)

// device is an enrolled test device.
type device struct {
	id   string
	key  crypto.Signer
	cert *x509.Certificate
}

// newDevices returns devices enrolled with one throwaway fleet CA.
func newDevices(t testing.TB, kt identity.KeyType, ids ...string) []device {
	t.Helper()
	ca, err := identity.InitCA(filepath.Join(t.TempDir(), "ca"), identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []device
	for _, id := range ids {
		key, err := identity.GenerateKey(kt)
		if err != nil {
			t.Fatal(err)
		}
		der, err := identity.NewCSR(key, id)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := identity.ParseCSR(der)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := ca.IssueDevice(csr, id)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, device{id: id, key: key, cert: cert})
	}
	return out
}

// signRaw signs any header typ and payload with key, for forged heads.
func signRaw(t testing.TB, key crypto.Signer, typ string, kid string, payload []byte) []byte {
	t.Helper()
	alg, err := identity.JWSAlgorithm(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: cryptosigner.Opaque(key)},
		(&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return []byte(out)
}

func TestSignedHead(t *testing.T) {
	for _, kt := range []identity.KeyType{identity.ECDSAP256, identity.Ed25519} {
		t.Run(kt.String(), func(t *testing.T) {
			devs := newDevices(t, kt, "sensor-1", "sensor-2")
			a, b := devs[0], devs[1]
			dir := t.TempDir()
			l := openTest(t, dir, nil)
			appendN(t, l, 3)
			tok, err := l.SignHead(a.key, a.id)
			if err != nil {
				t.Fatal(err)
			}
			seq, hash := l.Head()
			h, err := VerifyHead(tok, a.cert)
			if err != nil {
				t.Fatal(err)
			}
			if h.Device != a.id || h.Seq != seq || h.Hash != hash || h.Time.IsZero() {
				t.Fatalf("verified head %+v, log head %d %x", h, seq, hash)
			}
			appendN(t, l, 1)
			mustClose(t, l)
			if rep, err := VerifyAgainstHead(dir, h); err != nil || rep.HeadsChecked != 1 {
				t.Fatalf("the log against its head: %+v, %v", rep, err)
			}

			kidA, _ := identity.KeyID(a.key.Public())
			kidB, _ := identity.KeyID(b.key.Public())
			payload := func(device string, seq uint64) []byte {
				p, _ := json.Marshal(wireHead{Device: device, Seq: seq, Hash: strings.Repeat("ab", 32), Time: 1})
				return p
			}
			otherDevice, _ := l.SignHead(b.key, b.id)
			tampered := func() []byte {
				parts := strings.Split(string(tok), ".")
				parts[1] = base64.RawURLEncoding.EncodeToString(payload(a.id, seq+1))
				return []byte(strings.Join(parts, "."))
			}()
			for _, tc := range []struct {
				name  string
				token []byte
				want  error
			}{
				{"wrong key", signRaw(t, b.key, HeadType, kidB, payload(a.id, 1)), ErrSignature},
				{"wrong key, right kid", signRaw(t, b.key, HeadType, kidA, payload(a.id, 1)), ErrSignature},
				{"other device's head", otherDevice, ErrSignature},
				{"names another device", signRaw(t, a.key, HeadType, kidA, payload(b.id, 1)), ErrWrongDevice},
				{"tampered payload", tampered, ErrSignature},
				{"wrong typ", signRaw(t, a.key, "JWT", kidA, payload(a.id, 1)), ErrMalformed},
				{"extra member", signRaw(t, a.key, HeadType, kidA, []byte(`{"device":"sensor-1","seq":1,"hash":"`+strings.Repeat("ab", 32)+`","time":1,"x":1}`)), ErrMalformed},
				{"duplicate member", signRaw(t, a.key, HeadType, kidA, []byte(`{"device":"sensor-1","seq":1,"seq":2,"hash":"`+strings.Repeat("ab", 32)+`","time":1}`)), ErrMalformed},
				{"upper-case hash", signRaw(t, a.key, HeadType, kidA, []byte(`{"device":"sensor-1","seq":1,"hash":"`+strings.Repeat("AB", 32)+`","time":1}`)), ErrMalformed},
				{"not a JWS", []byte("a.b"), ErrMalformed},
				{"padded base64", []byte(string(tok) + "="), ErrMalformed},
				{"too large", make([]byte, 3000), ErrTooLarge},
			} {
				if _, err := VerifyHead(tc.token, a.cert); !errors.Is(err, tc.want) {
					t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
				}
			}
		})
	}
}

func TestHeadTruncation(t *testing.T) {
	dev := newDevices(t, identity.ECDSAP256, "sensor-1")[0]
	dir := t.TempDir()
	l := openTest(t, dir, nil)
	appendN(t, l, 4)
	tok, err := l.SignHead(dev.key, dev.id)
	if err != nil {
		t.Fatal(err)
	}
	mustClose(t, l)
	h, err := VerifyHead(tok, dev.cert)
	if err != nil {
		t.Fatal(err)
	}
	// The attacker cuts the last two records and appends a new one.
	seg := segments(t, dir)[0]
	f := readFrames(t, seg)
	writeFrames(t, seg, f[:3])
	if _, err := Verify(dir); err != nil {
		t.Fatalf("the cut log alone verifies: %v", err)
	}
	if _, err := VerifyAgainstHead(dir, h); !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "before the signed head at record 5") {
		t.Fatalf("cut log: %v", err)
	}
	l = openTest(t, dir, nil)
	appendN(t, l, 2)
	mustClose(t, l)
	if _, err := VerifyAgainstHead(dir, h); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "record 5 modified") {
		t.Fatalf("cut and regrown log: %v", err)
	}
}

func TestCheckNextHead(t *testing.T) {
	h := SignedHead{Device: "sensor-1", Seq: 10, Hash: [32]byte{1}}
	for _, tc := range []struct {
		name string
		next SignedHead
		want error
	}{
		{"same", h, nil},
		{"later", SignedHead{Device: "sensor-1", Seq: 11, Hash: [32]byte{2}}, nil},
		{"older", SignedHead{Device: "sensor-1", Seq: 9, Hash: [32]byte{2}}, ErrTampered},
		{"fork", SignedHead{Device: "sensor-1", Seq: 10, Hash: [32]byte{2}}, ErrTampered},
		{"other device", SignedHead{Device: "sensor-2", Seq: 11}, ErrWrongDevice},
	} {
		if err := CheckNextHead(h, tc.next); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestHeadReporter(t *testing.T) {
	dev := newDevices(t, identity.ECDSAP256, "sensor-1")[0]
	l := openTest(t, t.TempDir(), nil)
	published := make(chan []byte, 10)
	fail := make(chan bool, 1)
	r, err := NewHeadReporter(l, HeadReporterConfig{
		Signer: dev.key, DeviceID: dev.id, Delay: 10 * time.Millisecond,
		Publish: func(ctx context.Context, stream string, body []byte) error {
			if stream != DefaultHeadStream {
				t.Errorf("stream %q", stream)
			}
			select {
			case <-fail:
				return errors.New("offline")
			default:
			}
			published <- body
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	next := func() SignedHead {
		t.Helper()
		select {
		case tok := <-published:
			h, err := VerifyHead(tok, dev.cert)
			if err != nil {
				t.Fatal(err)
			}
			return h
		case <-time.After(5 * time.Second):
			t.Fatal("no head published")
		}
		return SignedHead{}
	}
	if h := next(); h.Seq != 1 {
		t.Errorf("first head at %d, want 1", h.Seq)
	}
	// A burst of appends: one head after Delay, covering all of it.
	appendN(t, l, 3)
	if h := next(); h.Seq != 4 {
		t.Errorf("head after a burst at %d, want 4", h.Seq)
	}
	// A failed publish is retried.
	fail <- true
	appendN(t, l, 1)
	if h := next(); h.Seq != 5 {
		t.Errorf("head after a retry at %d, want 5", h.Seq)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run after cancel: %v", err)
	}
	go func() { done <- r.Run(t.Context()) }()
	next()
	mustClose(t, l)
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Run after close: %v", err)
	}
	for _, cfg := range []HeadReporterConfig{
		{},
		{Signer: dev.key, Publish: func(context.Context, string, []byte) error { return nil }},
		{Signer: dev.key, DeviceID: "x", Publish: func(context.Context, string, []byte) error { return nil }, Stream: "a/b"},
	} {
		if _, err := NewHeadReporter(l, cfg); err == nil {
			t.Errorf("NewHeadReporter(%+v) accepted", cfg)
		}
	}
}
