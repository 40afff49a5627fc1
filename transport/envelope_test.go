// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/wire"
)

func TestSealVerifyRoundTrip(t *testing.T) {
	f := newTestFleet(t)
	f.device("dev-p256", identity.ECDSAP256)
	f.device("dev-ed", identity.Ed25519)
	for _, tc := range []struct {
		name string
		id   string
		enc  *Encryption
	}{
		{"signed P-256", "dev-p256", nil},
		{"signed Ed25519", "dev-ed", nil},
		{"session key", "dev-p256", &Encryption{CloudKey: &f.cloud.PublicKey, CloudKeyID: "cloud-1"}},
		{"per message", "dev-ed", &Encryption{CloudKey: &f.cloud.PublicKey, Mode: PerMessage}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := f.verifier(nil)
			s := f.sealer(tc.id, tc.enc)
			for seq := range uint64(3) {
				batch := []Reading{{Time: f.now, Body: []byte("t=21.5")}, {Time: f.now, Body: []byte{0, 1, 2}}}
				out, err := s.Seal(Record{Stream: "temp", Boot: 7, Seq: seq, Time: f.now, Readings: batch})
				if err != nil {
					t.Fatal(err)
				}
				if tc.enc != nil {
					if bytes.Contains(out.Envelope, []byte("t=21.5")) || strings.Count(string(out.Envelope), ".") != 4 {
						t.Fatal("encrypted envelope is not a JWE or leaks the body")
					}
				}
				if out.KeyDelivery != nil {
					if _, err := v.Verify(t.Context(), wire.KeyTopic(tc.id), out.KeyDelivery); err != nil {
						t.Fatalf("key delivery: %v", err)
					}
				}
				rec, err := v.Verify(t.Context(), wire.TelemetryTopic(tc.id, "temp"), out.Envelope)
				if err != nil {
					t.Fatalf("seq %d: %v", seq, err)
				}
				if rec.Device != tc.id || rec.Boot != 7 || rec.Seq != seq || len(rec.Readings) != 2 ||
					string(rec.Readings[0].Body) != "t=21.5" || !rec.Time.Equal(f.now) {
					t.Fatalf("record %+v", rec)
				}
				// The same envelope again is a duplicate, dropped.
				if _, err := v.Verify(t.Context(), wire.TelemetryTopic(tc.id, "temp"), out.Envelope); !errors.Is(err, wire.ErrDuplicate) {
					t.Fatalf("redelivery: %v, want ErrDuplicate", err)
				}
			}
		})
	}
}

// TestSessionKeyRotation: a new key is delivered after RotateAfter
// envelopes; envelopes under the kept keys still open; a replayed old
// delivery is refused and evicts nothing.
func TestSessionKeyRotation(t *testing.T) {
	f := newTestFleet(t)
	f.device("dev-r", identity.ECDSAP256)
	v := f.verifier(nil)
	s := f.sealer("dev-r", &Encryption{CloudKey: &f.cloud.PublicKey, RotateAfter: 2})
	var deliveries [][]byte
	var held [][]byte
	for seq := range uint64(2 * (keptKeyDeliveries + 1)) {
		f.now = f.now.Add(time.Second)
		out, err := s.Seal(Record{Stream: "s", Boot: 1, Seq: seq, Time: f.now, Readings: reading("x")})
		if err != nil {
			t.Fatal(err)
		}
		if out.KeyDelivery != nil {
			deliveries = append(deliveries, out.KeyDelivery)
			if _, err := v.Verify(t.Context(), wire.KeyTopic("dev-r"), out.KeyDelivery); err != nil {
				t.Fatal(err)
			}
		}
		held = append(held, out.Envelope)
	}
	if len(deliveries) != keptKeyDeliveries+1 {
		t.Fatalf("%d key deliveries for %d envelopes rotating every 2, want %d", len(deliveries), len(held), keptKeyDeliveries+1)
	}
	// The first delivery, replayed, is older than every key kept.
	if _, err := v.Verify(t.Context(), wire.KeyTopic("dev-r"), deliveries[0]); !errors.Is(err, wire.ErrReplay) {
		t.Fatalf("replayed first delivery: %v, want ErrReplay", err)
	}
	// A verifier sharing the kept deliveries (as verifier processes share
	// a store), with nothing cached, opens the envelopes of every kept key
	// from its delivery, and not those of the first key, no longer kept.
	other := f.verifier(func(c *VerifierConfig) { c.SessionKeys = v.cfg.SessionKeys })
	for i, env := range held {
		_, err := other.Verify(t.Context(), wire.TelemetryTopic("dev-r", "s"), env)
		if i < 2 && !errors.Is(err, wire.ErrDecrypt) || i >= 2 && err != nil {
			t.Fatalf("envelope %d: %v", i, err)
		}
	}
}

// sealed returns a fresh signed envelope of dev-a on stream s.
func sealedFor(t *testing.T, f *testFleet, id string, seq uint64) []byte {
	t.Helper()
	out, err := f.sealer(id, nil).Seal(Record{Stream: "s", Boot: 1, Seq: seq, Time: f.now, Readings: reading("hello")})
	if err != nil {
		t.Fatal(err)
	}
	return out.Envelope
}

// TestVerifierRefusals tries each attack of the threat model on the
// verifier and asserts the refusal (and that nothing was accepted).
func TestVerifierRefusals(t *testing.T) {
	f := newTestFleet(t)
	f.device("dev-a", identity.ECDSAP256)
	f.device("dev-b", identity.ECDSAP256)
	_, certR := f.device("dev-revoked", identity.ECDSAP256)
	if err := f.ca.Revoke(certR, 1); err != nil {
		t.Fatal(err)
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := sealedFor(t, f, "dev-a", 1)
	parts := strings.Split(string(good), ".")
	enc := base64.RawURLEncoding.EncodeToString

	forge := func(header map[string]string, payload []byte, key any, alg jose.SignatureAlgorithm) []byte {
		opts := &jose.SignerOptions{}
		for k, v := range header {
			opts.WithHeader(jose.HeaderKey(k), v)
		}
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
		if err != nil {
			t.Fatal(err)
		}
		o, err := s.Sign(payload)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := o.CompactSerialize()
		return []byte(c)
	}
	payloadA, _ := base64.RawURLEncoding.DecodeString(parts[1])
	hdr := map[string]string{"kid": "dev-a", "typ": wire.TelemetryType}
	noneHeader, _ := json.Marshal(map[string]string{"alg": "none", "kid": "dev-a", "typ": wire.TelemetryType})
	pubDER, _ := x509.MarshalPKIXPublicKey(f.devices["dev-a"].Public())

	cases := []struct {
		name  string
		topic string
		env   []byte
		want  error
	}{
		{"A's envelope on B's topic", wire.TelemetryTopic("dev-b", "s"), good, wire.ErrWrongDevice},
		{"A's envelope on another stream", wire.TelemetryTopic("dev-a", "other"), good, wire.ErrMalformed},
		{"flipped byte in the payload", wire.TelemetryTopic("dev-a", "s"), []byte(parts[0] + "." + flip(parts[1]) + "." + parts[2]), wire.ErrBadSignature},
		{"flipped byte in the signature", wire.TelemetryTopic("dev-a", "s"), []byte(parts[0] + "." + parts[1] + "." + flip(parts[2])), wire.ErrBadSignature},
		{"alg none", wire.TelemetryTopic("dev-a", "s"), []byte(enc(noneHeader) + "." + parts[1] + "."), wire.ErrMalformed},
		{"HS256 keyed with a public value", wire.TelemetryTopic("dev-a", "s"), forge(hdr, payloadA, pubDER, jose.HS256), wire.ErrMalformed},
		{"signed by another key", wire.TelemetryTopic("dev-a", "s"), forge(hdr, payloadA, otherKey, jose.ES256), wire.ErrBadSignature},
		{"embedded jwk header", wire.TelemetryTopic("dev-a", "s"), embedJWK(t, otherKey, payloadA), wire.ErrMalformed},
		{"unknown device", wire.TelemetryTopic("dev-zz", "s"), forge(map[string]string{"kid": "dev-zz", "typ": wire.TelemetryType}, payloadA, otherKey, jose.ES256), wire.ErrUnknownDevice},
		{"revoked device", wire.TelemetryTopic("dev-revoked", "s"), sealedFor(t, f, "dev-revoked", 1), identity.ErrRevoked},
		{"wrong typ", wire.TelemetryTopic("dev-a", "s"), forge(map[string]string{"kid": "dev-a", "typ": wire.CommandType}, payloadA, f.devices["dev-a"], jose.ES256), wire.ErrMalformed},
		{"truncated", wire.TelemetryTopic("dev-a", "s"), good[:len(good)/2], wire.ErrMalformed},
		{"garbage", wire.TelemetryTopic("dev-a", "s"), []byte("garbage"), wire.ErrMalformed},
		{"oversized", wire.TelemetryTopic("dev-a", "s"), bytes.Repeat([]byte("a"), 300<<10), wire.ErrMalformed},
		{"not our topic", "other/dev-a/s", good, wire.ErrInvalidTopic},
		{"wildcard device level", "d2c/v1/dev/+/up/tele/s", good, wire.ErrInvalidTopic},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := f.verifier(nil)
			if _, err := v.Verify(t.Context(), tc.topic, tc.env); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if st := v.Stats(); st.Accepted != 0 {
				t.Fatalf("accepted %d", st.Accepted)
			}
		})
	}

	t.Run("replay from an earlier boot and below the window", func(t *testing.T) {
		v := f.verifier(nil)
		s := f.sealer("dev-a", nil)
		seal := func(boot, seq uint64) []byte {
			out, err := s.Seal(Record{Stream: "s", Boot: boot, Seq: seq, Time: f.now, Readings: reading("x")})
			if err != nil {
				t.Fatal(err)
			}
			return out.Envelope
		}
		old := seal(1, 0)
		older := seal(1, 1)
		for _, e := range [][]byte{old, older, seal(2, 0), seal(3, 0)} {
			if _, err := v.Verify(t.Context(), wire.TelemetryTopic("dev-a", "s"), e); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := v.Verify(t.Context(), wire.TelemetryTopic("dev-a", "s"), old); !errors.Is(err, wire.ErrReplay) {
			t.Fatalf("boot 1 after boot 3: %v, want ErrReplay", err)
		}
		for seq := uint64(1); seq <= 300; seq++ {
			v.Verify(t.Context(), wire.TelemetryTopic("dev-a", "s"), seal(3, seq))
		}
		if _, err := v.Verify(t.Context(), wire.TelemetryTopic("dev-a", "s"), seal(3, 10)); !errors.Is(err, wire.ErrReplay) {
			t.Fatalf("seq far below the window: %v, want ErrReplay", err)
		}
		if st := v.Stats(); st.Replays != 2 {
			t.Fatalf("replays counted %d, want 2", st.Replays)
		}
	})
	t.Run("plaintext where encryption is required", func(t *testing.T) {
		v := f.verifier(func(c *VerifierConfig) { c.RequireEncryption = true })
		if _, err := v.Verify(t.Context(), wire.TelemetryTopic("dev-a", "s"), good); !errors.Is(err, wire.ErrDecrypt) {
			t.Fatalf("got %v, want ErrDecrypt", err)
		}
	})
	t.Run("session key of another device", func(t *testing.T) {
		v := f.verifier(nil)
		sb := f.sealer("dev-b", &Encryption{CloudKey: &f.cloud.PublicKey})
		out, err := sb.Seal(Record{Stream: "s", Boot: 1, Seq: 0, Time: f.now, Readings: reading("x")})
		if err != nil {
			t.Fatal(err)
		}
		// B's key delivery presented on A's key topic is refused...
		if _, err := v.Verify(t.Context(), wire.KeyTopic("dev-a"), out.KeyDelivery); !errors.Is(err, wire.ErrWrongDevice) {
			t.Fatalf("B's key on A's topic: %v, want ErrWrongDevice", err)
		}
		// ...and B's envelope cannot be opened as A's.
		if _, err := v.Verify(t.Context(), wire.KeyTopic("dev-b"), out.KeyDelivery); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(t.Context(), wire.TelemetryTopic("dev-a", "s"), out.Envelope); !errors.Is(err, wire.ErrDecrypt) {
			t.Fatalf("B's envelope on A's topic: %v, want ErrDecrypt", err)
		}
	})
	t.Run("encrypted to another cloud key", func(t *testing.T) {
		v := f.verifier(nil)
		s := f.sealer("dev-a", &Encryption{CloudKey: &otherKey.PublicKey, Mode: PerMessage})
		out, _ := s.Seal(Record{Stream: "s", Boot: 1, Seq: 0, Time: f.now, Readings: reading("x")})
		if _, err := v.Verify(t.Context(), wire.TelemetryTopic("dev-a", "s"), out.Envelope); !errors.Is(err, wire.ErrDecrypt) {
			t.Fatalf("got %v, want ErrDecrypt", err)
		}
	})
}

func flip(s string) string {
	b := []byte(s)
	i := len(b) / 2
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

// embedJWK signs with otherKey and embeds its public key in the header, the
// classic "trust the key in the token" attack.
func embedJWK(t *testing.T, key *ecdsa.PrivateKey, payload []byte) []byte {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{EmbedJWK: true}).WithType(wire.TelemetryType).WithHeader("kid", "dev-a"))
	if err != nil {
		t.Fatal(err)
	}
	o, _ := s.Sign(payload)
	c, _ := o.CompactSerialize()
	return []byte(c)
}

// TestEmptyBodyIsByteString: a reading without a body is encoded as an empty
// byte string (as docs/protocol.md says), never CBOR null.
func TestEmptyBodyIsByteString(t *testing.T) {
	c, err := newCodec()
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.EncodeRecord(Record{Device: "d", Stream: "s", Readings: []Reading{{}}})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte{0xf6}) || !bytes.HasSuffix(b, []byte{0x40}) {
		t.Fatalf("encoding %x: the body must be h'' (0x40)", b)
	}
	if _, err := c.DecodeRecord(b); err != nil {
		t.Fatal(err)
	}
}
