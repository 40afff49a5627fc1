// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"crypto"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/limits"
)

// attack is one adversarial case: setup brings a device to the step under
// attack (with the legitimate steps before it), attempt is the refused
// step. The test asserts the refusal's sentinel and that the Trusted state
// (root, floors, accepted metadata) did not change.
type attack struct {
	name    string
	setup   func(t *testing.T, r *tkRepo) *Trusted
	attempt func(t *testing.T, r *tkRepo, tr *Trusted) error
	want    error
}

// atTimestamp returns a device at root version 1 with no timestamp yet.
func atTimestamp(floors Floors) func(*testing.T, *tkRepo) *Trusted {
	return func(t *testing.T, r *tkRepo) *Trusted { return r.trusted(floors) }
}

// atRelease returns a device that verified the repository's timestamp,
// or else the timestamp ts returns (for attacks that need a timestamp
// naming forged release bytes, as a thief of the online key could sign).
func atRelease(ts func(t *testing.T, r *tkRepo) []byte) func(*testing.T, *tkRepo) *Trusted {
	return func(t *testing.T, r *tkRepo) *Trusted {
		tr := r.trusted(Floors{})
		b := r.timestampBytes
		if ts != nil {
			b = ts(t, r)
		}
		if _, err := tr.UpdateTimestamp(b); err != nil {
			t.Fatalf("setup: timestamp: %v", err)
		}
		return tr
	}
}

func tryRoot(b func(t *testing.T, r *tkRepo) []byte) func(*testing.T, *tkRepo, *Trusted) error {
	return func(t *testing.T, r *tkRepo, tr *Trusted) error { _, err := tr.UpdateRoot(b(t, r)); return err }
}

func tryTimestamp(b func(t *testing.T, r *tkRepo) []byte) func(*testing.T, *tkRepo, *Trusted) error {
	return func(t *testing.T, r *tkRepo, tr *Trusted) error { _, err := tr.UpdateTimestamp(b(t, r)); return err }
}

func tryRelease(b func(t *testing.T, r *tkRepo) []byte) func(*testing.T, *tkRepo, *Trusted) error {
	return func(t *testing.T, r *tkRepo, tr *Trusted) error { _, err := tr.UpdateRelease(b(t, r)); return err }
}

// forged is a release document and a timestamp naming it, for attacks on
// the release signatures: the timestamp key is online, so assume it
// stolen and test that the release keys still hold.
type forged struct{ release []byte }

func (f *forged) timestamp(t *testing.T, r *tkRepo) []byte { return r.timestampFor(f.release, 2) }
func (f *forged) get(t *testing.T, r *tkRepo) []byte       { return f.release }

// releaseAttack builds a release attack from the forged release bytes.
func releaseAttack(name string, want error, build func(t *testing.T, r *tkRepo) []byte) attack {
	f := &forged{}
	return attack{
		name: name,
		setup: func(t *testing.T, r *tkRepo) *Trusted {
			f.release = build(t, r)
			return atRelease(f.timestamp)(t, r)
		},
		attempt: tryRelease(f.get),
		want:    want,
	}
}

// protected builds a raw JWS of payload with one signature under an
// arbitrary protected header (no signing: sig is given).
func rawJWS(t *testing.T, payload []byte, header map[string]any, sig []byte) ([]byte, string) {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	ph := b64.EncodeToString(h)
	pp := b64.EncodeToString(payload)
	out, err := json.Marshal(jwsJSON{Payload: pp, Signatures: []jwsSigJSON{{Protected: ph, Signature: b64.EncodeToString(sig)}}})
	if err != nil {
		t.Fatal(err)
	}
	return out, ph + "." + pp
}

func tamperVersion(t testing.TB, b []byte, from, to string) []byte {
	t.Helper()
	p := string(payloadOf(t, b))
	if !strings.Contains(p, from) {
		t.Fatalf("payload %s has no %s", p, from)
	}
	return withPayload(t, b, []byte(strings.Replace(p, from, to, 1)))
}

func attacks() []attack {
	return []attack{
		// Arbitrary software / metadata: signatures.
		{
			name:  "bad-signature/tampered-timestamp-payload-byte",
			setup: atTimestamp(Floors{}),
			attempt: tryTimestamp(func(t *testing.T, r *tkRepo) []byte {
				return tamperVersion(t, r.timestampBytes, `"version":1,"expires"`, `"version":9,"expires"`)
			}),
			want: ErrBadSignature,
		},
		releaseAttack("bad-signature/tampered-release-payload-byte", ErrBadSignature, func(t *testing.T, r *tkRepo) []byte {
			return tamperVersion(t, r.releaseBytes, `"security_counter":1`, `"security_counter":7`)
		}),
		releaseAttack("bad-signature/signature-of-another-document", ErrBadSignature, func(t *testing.T, r *tkRepo) []byte {
			other := r.must(r.newRelease(2, 1).Sign(r.k.release1))
			var a, b jwsJSON
			_ = json.Unmarshal(r.releaseBytes, &a)
			_ = json.Unmarshal(other, &b)
			a.Signatures = b.Signatures
			out, _ := json.Marshal(a)
			return out
		}),
		releaseAttack("unknown-key/release-signed-by-attacker", ErrUnknownKey, func(t *testing.T, r *tkRepo) []byte {
			return r.must(r.newRelease(2, 1).Sign(r.k.attacker))
		}),
		releaseAttack("unknown-key/valid-signatures-plus-one-by-attacker", ErrUnknownKey, func(t *testing.T, r *tkRepo) []byte {
			return r.must(r.newRelease(2, 1).Sign(r.k.release1, r.k.attacker))
		}),
		releaseAttack("kid-spoofing/attacker-key-named-as-release-key", ErrBadSignature, func(t *testing.T, r *tkRepo) []byte {
			payload, err := r.newRelease(2, 1).encode()
			r.ok(err)
			return signWithHeader(t, payload, r.k.attacker, map[jose.HeaderKey]any{"kid": tkID(t, r.k.release1), "typ": RoleRelease.MediaType()})
		}),
		releaseAttack("algorithm-confusion/EdDSA-signature-for-ES256-key", ErrAlgorithm, func(t *testing.T, r *tkRepo) []byte {
			payload, err := r.newRelease(2, 1).encode()
			r.ok(err)
			// release2 is Ed25519; release1 (P-256) is the trusted key.
			return signWithHeader(t, payload, r.k.release2, map[jose.HeaderKey]any{"kid": tkID(t, r.k.release1), "typ": RoleRelease.MediaType()})
		}),
		releaseAttack("algorithm/alg-none", ErrAlgorithm, func(t *testing.T, r *tkRepo) []byte {
			payload, err := r.newRelease(2, 1).encode()
			r.ok(err)
			b, _ := rawJWS(t, payload, map[string]any{"alg": "none", "kid": tkID(t, r.k.release1), "typ": RoleRelease.MediaType()}, nil)
			return b
		}),
		releaseAttack("algorithm/HS256-keyed-with-the-public-key", ErrAlgorithm, func(t *testing.T, r *tkRepo) []byte {
			payload, err := r.newRelease(2, 1).encode()
			r.ok(err)
			pub, err := identity.MarshalPublicKey(r.k.release1.Public())
			r.ok(err)
			hdr := map[string]any{"alg": "HS256", "kid": tkID(t, r.k.release1), "typ": RoleRelease.MediaType()}
			_, input := rawJWS(t, payload, hdr, nil)
			mac := hmac.New(sha256.New, pub)
			mac.Write([]byte(input))
			b, _ := rawJWS(t, payload, hdr, mac.Sum(nil))
			return b
		}),
		releaseAttack("header/critical-b64-parameter", ErrMalformed, func(t *testing.T, r *tkRepo) []byte {
			payload, err := r.newRelease(2, 1).encode()
			r.ok(err)
			return signWithHeader(t, payload, r.k.release1, map[jose.HeaderKey]any{"kid": tkID(t, r.k.release1), "typ": RoleRelease.MediaType(), "crit": []string{"b64"}, "b64": true})
		}),
		releaseAttack("header/embedded-jwk", ErrMalformed, func(t *testing.T, r *tkRepo) []byte {
			payload, err := r.newRelease(2, 1).encode()
			r.ok(err)
			j, err := encodeJWK(r.k.attacker.Public())
			r.ok(err)
			return signWithHeader(t, payload, r.k.release1, map[jose.HeaderKey]any{"kid": tkID(t, r.k.release1), "typ": RoleRelease.MediaType(), "jwk": j})
		}),
		releaseAttack("header/unprotected-header-member", ErrMalformed, func(t *testing.T, r *tkRepo) []byte {
			return []byte(strings.Replace(string(r.must(r.newRelease(2, 1).Sign(r.k.release1))), `"signature":`, `"header":{"kid":"x"},"signature":`, 1))
		}),
		releaseAttack("format/flattened-serialization", ErrMalformed, func(t *testing.T, r *tkRepo) []byte {
			var w jwsJSON
			_ = json.Unmarshal(r.must(r.newRelease(2, 1).Sign(r.k.release1)), &w)
			b, _ := json.Marshal(map[string]string{"payload": w.Payload, "protected": w.Signatures[0].Protected, "signature": w.Signatures[0].Signature})
			return b
		}),
		releaseAttack("format/duplicate-member-in-signed-payload", ErrMalformed, func(t *testing.T, r *tkRepo) []byte {
			payload, err := r.newRelease(2, 1).encode()
			r.ok(err)
			dup := strings.Replace(string(payload), `"security_counter":1`, `"security_counter":1,"security_counter":0`, 1)
			return signRaw(t, RoleRelease, []byte(dup), r.k.release1)
		}),
		releaseAttack("format/member-in-another-case", ErrMalformed, func(t *testing.T, r *tkRepo) []byte {
			payload, err := r.newRelease(2, 1).encode()
			r.ok(err)
			return signRaw(t, RoleRelease, []byte(strings.Replace(string(payload), `"hardware_class"`, `"Hardware_Class"`, 1)), r.k.release1)
		}),
		releaseAttack("format/unknown-member", ErrMalformed, func(t *testing.T, r *tkRepo) []byte {
			payload, err := r.newRelease(2, 1).encode()
			r.ok(err)
			return signRaw(t, RoleRelease, []byte(strings.Replace(string(payload), `{"_type"`, `{"install_anyway":true,"_type"`, 1)), r.k.release1)
		}),
		releaseAttack("format/trailing-data", ErrMalformed, func(t *testing.T, r *tkRepo) []byte {
			return append(r.must(r.newRelease(2, 1).Sign(r.k.release1)), []byte(` {}`)...)
		}),

		// Thresholds.
		{
			name:    "threshold/root-rotation-signed-by-one-of-two",
			setup:   atTimestamp(Floors{}),
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte { return r.rotate(nil, r.k.rootA) }),
			want:    ErrThreshold,
		},
		{
			name:  "threshold/same-key-twice-counted-once",
			setup: atTimestamp(Floors{}),
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte {
				// Two valid signatures by root key A (ECDSA signatures
				// differ each time), threshold 2.
				next := r.root.Next(tkTime.Add(tkRootTTL))
				a1 := r.signRoot(next, r.k.rootA)
				a2 := r.signRoot(next, r.k.rootA)
				return mergeSignatures(t, a1, a2)
			}),
			want: ErrThreshold,
		},
		thresholdReleaseAttack(),

		// Rollback.
		{
			name:    "rollback/timestamp-below-floor",
			setup:   atTimestamp(Floors{TimestampVersion: 5}),
			attempt: tryTimestamp(func(t *testing.T, r *tkRepo) []byte { return r.timestampFor(r.releaseBytes, 3) }),
			want:    ErrRollback,
		},
		{
			name:    "rollback/timestamp-names-release-below-floor",
			setup:   atTimestamp(Floors{ReleaseVersion: 5}),
			attempt: tryTimestamp(func(t *testing.T, r *tkRepo) []byte { return r.timestampFor(r.releaseBytes, 10) }),
			want:    ErrRollback,
		},
		{
			name: "rollback/older-root",
			setup: func(t *testing.T, r *tkRepo) *Trusted {
				r.rotate(nil, r.k.rootA, r.k.rootB)
				tr, err := NewTrusted(r.roots[1], Floors{}, tkTime, tkHW)
				r.ok(err)
				return tr
			},
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte { return r.roots[0] }),
			want:    ErrRollback,
		},
		{
			name: "rollback/same-root-again",
			setup: func(t *testing.T, r *tkRepo) *Trusted {
				return r.trusted(Floors{})
			},
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte { return r.roots[0] }),
			want:    ErrRollback,
		},
		{
			name: "security-counter/release-below-floor",
			setup: func(t *testing.T, r *tkRepo) *Trusted {
				r.publish(r.newRelease(9, 3))
				tr := r.trusted(Floors{SecurityCounter: 5})
				if _, err := tr.UpdateTimestamp(r.timestampBytes); err != nil {
					t.Fatal(err)
				}
				return tr
			},
			attempt: tryRelease(func(t *testing.T, r *tkRepo) []byte { return r.releaseBytes }),
			want:    ErrSecurityCounter,
		},

		// Freeze.
		{
			name: "freeze/expired-timestamp",
			setup: func(t *testing.T, r *tkRepo) *Trusted {
				tr, err := NewTrusted(r.roots[0], Floors{}, tkTime.Add(tkTSTTL), tkHW)
				r.ok(err)
				return tr
			},
			attempt: tryTimestamp(func(t *testing.T, r *tkRepo) []byte { return r.timestampBytes }),
			want:    ErrExpired,
		},
		{
			name: "freeze/expired-release",
			setup: func(t *testing.T, r *tkRepo) *Trusted {
				rel := r.newRelease(2, 1)
				rel.Expires = tkTime.Add(-time.Second)
				r.publish(rel)
				return atRelease(nil)(t, r)
			},
			attempt: tryRelease(func(t *testing.T, r *tkRepo) []byte { return r.releaseBytes }),
			want:    ErrExpired,
		},
		{
			name: "freeze/expired-root",
			setup: func(t *testing.T, r *tkRepo) *Trusted {
				tr, err := NewTrusted(r.roots[0], Floors{}, tkTime.Add(tkRootTTL+time.Hour), tkHW)
				r.ok(err)
				return tr
			},
			attempt: tryTimestamp(func(t *testing.T, r *tkRepo) []byte { return r.timestampBytes }),
			want:    ErrExpired,
		},
		{
			name: "freeze/clock-at-1970-with-a-trusted-floor",
			setup: func(t *testing.T, r *tkRepo) *Trusted {
				// The device's clock reads 1970; its trusted clock floor,
				// raised earlier from verified data, is two days later
				// than the timestamp was signed.
				clock, err := identity.OpenTrustedClock(filepath.Join(t.TempDir(), "time.state"), func() time.Time { return time.Unix(0, 0) })
				r.ok(err)
				r.ok(clock.Observe(tkTime.Add(2 * tkTSTTL)))
				tr, err := NewTrusted(r.roots[0], Floors{}, clock.Now(), tkHW)
				r.ok(err)
				return tr
			},
			attempt: tryTimestamp(func(t *testing.T, r *tkRepo) []byte { return r.timestampBytes }),
			want:    ErrExpired,
		},

		// Mix-and-match.
		{
			name: "mix-and-match/release-of-another-timestamp",
			setup: func(t *testing.T, r *tkRepo) *Trusted {
				r.publish(r.newRelease(2, 1))
				return atRelease(nil)(t, r)
			},
			attempt: tryRelease(func(t *testing.T, r *tkRepo) []byte {
				// Release 3, genuinely signed, but the timestamp names 2.
				return r.must(r.newRelease(3, 1).Sign(r.k.release1))
			}),
			want: ErrMixAndMatch,
		},
		{
			name:  "mix-and-match/release-of-another-chain",
			setup: atRelease(nil),
			attempt: tryRelease(func(t *testing.T, r *tkRepo) []byte {
				return r.must(r.newRelease(1, 1).Sign(r.k.attacker))
			}),
			want: ErrMixAndMatch,
		},
		{
			name: "mix-and-match/version-differs-from-the-timestamp",
			setup: atRelease(func(t *testing.T, r *tkRepo) []byte {
				ts := &Timestamp{Version: 2, Expires: tkTime.Add(tkTSTTL), Release: MetaRef{Version: 7, Length: int64(len(r.releaseBytes)), SHA256: sha256.Sum256(r.releaseBytes)}}
				return r.must(ts.Sign(r.k.ts1))
			}),
			attempt: tryRelease(func(t *testing.T, r *tkRepo) []byte { return r.releaseBytes }),
			want:    ErrMixAndMatch,
		},
		{
			name:    "mix-and-match/one-byte-longer",
			setup:   atRelease(nil),
			attempt: tryRelease(func(t *testing.T, r *tkRepo) []byte { return append(append([]byte{}, r.releaseBytes...), ' ') }),
			want:    ErrMixAndMatch,
		},

		// Wrong hardware.
		func() attack {
			a := releaseAttack("wrong-hardware/release-for-another-board", ErrWrongHardware, func(t *testing.T, r *tkRepo) []byte {
				rel := r.newRelease(2, 1)
				rel.HardwareClass = "other-board"
				return r.must(rel.Sign(r.k.release1))
			})
			return a
		}(),

		// Endless data: size bounds, checked before parsing.
		{
			name:    "too-large/root",
			setup:   atTimestamp(Floors{}),
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte { return make([]byte, limits.UpdateRoot+1) }),
			want:    ErrTooLarge,
		},
		{
			name:    "too-large/timestamp",
			setup:   atTimestamp(Floors{}),
			attempt: tryTimestamp(func(t *testing.T, r *tkRepo) []byte { return make([]byte, limits.UpdateTimestamp+1) }),
			want:    ErrTooLarge,
		},
		{
			name:    "too-large/release",
			setup:   atRelease(nil),
			attempt: tryRelease(func(t *testing.T, r *tkRepo) []byte { return make([]byte, limits.UpdateRelease+1) }),
			want:    ErrTooLarge,
		},
		{
			name:  "too-large/too-many-signatures",
			setup: atTimestamp(Floors{}),
			attempt: tryTimestamp(func(t *testing.T, r *tkRepo) []byte {
				b := r.timestampBytes
				for range limits.UpdateSignatures {
					b = mergeSignatures(t, b, r.timestampBytes)
				}
				return b
			}),
			want: ErrTooLarge,
		},
		{
			name:  "too-large/too-many-keys-in-root",
			setup: atTimestamp(Floors{}),
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte {
				next := r.root.Next(tkTime.Add(tkRootTTL))
				payload, err := next.encode()
				r.ok(err)
				var w map[string]any
				r.ok(json.Unmarshal(payload, &w))
				keys := w["keys"].(map[string]any)
				for i := range limits.UpdateKeys {
					s, err := identity.GenerateKey(identity.Ed25519)
					r.ok(err)
					j, _ := encodeJWK(s.Public())
					keys[tkID(t, s)+strings.Repeat("x", i%2)] = j
				}
				b, err := json.Marshal(w)
				r.ok(err)
				return signRaw(t, RoleRoot, b, r.k.rootA, r.k.rootB)
			}),
			want: ErrTooLarge,
		},

		// Root rotation.
		{
			name:  "root/rotation-skips-a-version",
			setup: atTimestamp(Floors{}),
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte {
				next := r.root.Next(tkTime.Add(tkRootTTL))
				next.Version = 3
				return r.must(next.Sign(r.k.rootA, r.k.rootB))
			}),
			want: ErrRootVersionSkip,
		},
		{
			name:  "root/rotation-not-signed-by-the-old-threshold",
			setup: atTimestamp(Floors{}),
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte {
				// The new root trusts only D, and only D signed it.
				return r.rotate(func(n *Root) { r.ok(n.SetRole(RoleRoot, 1, r.k.rootD.Public())) }, r.k.rootD)
			}),
			want: ErrThreshold,
		},
		{
			name:  "root/rotation-not-signed-by-the-new-threshold",
			setup: atTimestamp(Floors{}),
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte {
				// Old threshold (A, B) met; the new root needs 2 of C, D.
				return r.rotate(func(n *Root) { r.ok(n.SetRole(RoleRoot, 2, r.k.rootC.Public(), r.k.rootD.Public())) }, r.k.rootA, r.k.rootB, r.k.rootD)
			}),
			want: ErrThreshold,
		},
		{
			name: "root/revoked-root-key-signs-the-next-root",
			setup: func(t *testing.T, r *tkRepo) *Trusted {
				tr := r.trusted(Floors{})
				// v2 revokes root key A: root role B, C, D, threshold 2.
				b := r.rotate(func(n *Root) {
					r.ok(n.SetRole(RoleRoot, 2, r.k.rootB.Public(), r.k.rootC.Public(), r.k.rootD.Public()))
				}, r.k.rootA, r.k.rootB, r.k.rootC)
				if _, err := tr.UpdateRoot(b); err != nil {
					t.Fatal(err)
				}
				return tr
			},
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte {
				// v3 signed by revoked A and by B: A no longer counts
				// toward v2's threshold of 2.
				return r.signRoot(r.root.Next(tkTime.Add(tkRootTTL)), r.k.rootA, r.k.rootB)
			}),
			want: ErrThreshold,
		},
		{
			name: "revoked-key/release-key-removed-by-rotation",
			setup: func(t *testing.T, r *tkRepo) *Trusted {
				tr := r.trusted(Floors{})
				b := r.rotate(func(n *Root) { r.ok(n.SetRole(RoleRelease, 1, r.k.release2.Public())) }, r.k.rootA, r.k.rootB)
				if _, err := tr.UpdateRoot(b); err != nil {
					t.Fatal(err)
				}
				// The revoked key signs a release; the (online, maybe
				// stolen) timestamp key names it.
				old := r.must(r.newRelease(2, 1).Sign(r.k.release1))
				if _, err := tr.UpdateTimestamp(r.timestampFor(old, 2)); err != nil {
					t.Fatal(err)
				}
				r.releaseBytes = old
				return tr
			},
			attempt: tryRelease(func(t *testing.T, r *tkRepo) []byte { return r.releaseBytes }),
			want:    ErrUnknownKey,
		},
		{
			name: "revoked-key/timestamp-key-removed-by-rotation",
			setup: func(t *testing.T, r *tkRepo) *Trusted {
				tr := r.trusted(Floors{})
				b := r.rotate(func(n *Root) { r.ok(n.SetRole(RoleTimestamp, 1, r.k.ts2.Public())) }, r.k.rootA, r.k.rootB)
				if _, err := tr.UpdateRoot(b); err != nil {
					t.Fatal(err)
				}
				return tr
			},
			attempt: tryTimestamp(func(t *testing.T, r *tkRepo) []byte { return r.timestampFor(r.releaseBytes, 2, r.k.ts1) }),
			want:    ErrUnknownKey,
		},

		// Wrong type.
		{
			name: "wrong-type/timestamp-presented-as-release",
			setup: atRelease(func(t *testing.T, r *tkRepo) []byte {
				// A timestamp that names the first timestamp's bytes as its
				// release: the hashes match, the type does not.
				return r.timestampFor(r.timestampBytes, 2)
			}),
			attempt: tryRelease(func(t *testing.T, r *tkRepo) []byte { return r.timestampBytes }),
			want:    ErrWrongType,
		},
		{
			name:    "wrong-type/release-presented-as-timestamp",
			setup:   atTimestamp(Floors{}),
			attempt: tryTimestamp(func(t *testing.T, r *tkRepo) []byte { return r.releaseBytes }),
			want:    ErrWrongType,
		},
		{
			name:    "wrong-type/timestamp-presented-as-root",
			setup:   atTimestamp(Floors{}),
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte { return r.timestampBytes }),
			want:    ErrWrongType,
		},
		releaseAttack("wrong-type/release-typ-over-a-timestamp-payload", ErrWrongType, func(t *testing.T, r *tkRepo) []byte {
			// Same key for both roles would make this a confusion; the
			// payload's _type still decides.
			return signRaw(t, RoleRelease, payloadOf(t, r.timestampBytes), r.k.release1)
		}),

		// Order.
		{
			name:    "order/release-before-timestamp",
			setup:   atTimestamp(Floors{}),
			attempt: tryRelease(func(t *testing.T, r *tkRepo) []byte { return r.releaseBytes }),
			want:    ErrOutOfOrder,
		},
		{
			name:    "order/root-after-timestamp",
			setup:   atRelease(nil),
			attempt: tryRoot(func(t *testing.T, r *tkRepo) []byte { return r.rotate(nil, r.k.rootA, r.k.rootB) }),
			want:    ErrOutOfOrder,
		},
	}
}

// TestAttacksRefused runs every attack: each must be refused with its
// sentinel, leave the Trusted state unchanged, and say which attack it was.
func TestAttacksRefused(t *testing.T) {
	for _, a := range attacks() {
		t.Run(a.name, func(t *testing.T) {
			r := newTkRepo(t)
			tr := a.setup(t, r)
			before := stateOf(tr)
			err := a.attempt(t, r, tr)
			if !errors.Is(err, a.want) {
				t.Fatalf("got %v, want %v", err, a.want)
			}
			if after := stateOf(tr); after != before {
				t.Errorf("refusal changed the state:\n before %s\n after  %s", before, after)
			}
			if !strings.HasPrefix(err.Error(), "update: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			t.Log(err)
		})
	}
}

// thresholdReleaseAttack: the trusted root needs 2 release keys; a
// release signed by one is refused.
func thresholdReleaseAttack() attack {
	return attack{
		name: "threshold/release-role-of-two-signed-by-one",
		setup: func(t *testing.T, r *tkRepo) *Trusted {
			tr := r.trusted(Floors{})
			b := r.rotate(func(n *Root) {
				r.ok(n.SetRole(RoleRelease, 2, r.k.release1.Public(), r.k.release2.Public()))
			}, r.k.rootA, r.k.rootB)
			if _, err := tr.UpdateRoot(b); err != nil {
				t.Fatal(err)
			}
			r.releaseBytes = r.must(r.newRelease(2, 1).Sign(r.k.release1))
			if _, err := tr.UpdateTimestamp(r.timestampFor(r.releaseBytes, 2)); err != nil {
				t.Fatal(err)
			}
			return tr
		},
		attempt: tryRelease(func(t *testing.T, r *tkRepo) []byte { return r.releaseBytes }),
		want:    ErrThreshold,
	}
}

// TestNewTrustedRefuses covers the pinned root itself.
func TestNewTrustedRefuses(t *testing.T) {
	r := newTkRepo(t)
	notSelfSigned := r.rotate(func(n *Root) { r.ok(n.SetRole(RoleRoot, 1, r.k.rootD.Public())) }, r.k.rootA, r.k.rootB)
	cases := []struct {
		name string
		root []byte
		hw   string
		want error
	}{
		{"release-as-root", r.releaseBytes, tkHW, ErrWrongType},
		{"not-signed-by-its-own-root-keys", notSelfSigned, tkHW, ErrUnknownKey},
		{"below-its-own-threshold", signRaw(t, RoleRoot, payloadOf(t, r.roots[0]), r.k.rootA), tkHW, ErrThreshold},
		{"garbage", []byte("{"), tkHW, ErrMalformed},
		{"empty", nil, tkHW, ErrMalformed},
		{"too-large", make([]byte, limits.UpdateRoot+1), tkHW, ErrTooLarge},
		{"bad-hardware-class", r.roots[0], "a/b", ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := NewTrusted(c.root, Floors{}, tkTime, c.hw); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	// No trusted time would pass every expiry check: fail closed.
	if _, err := NewTrusted(r.roots[0], Floors{}, time.Time{}, tkHW); err == nil {
		t.Fatal("accepted a zero trusted time")
	}
}

// TestFastForwardRecovery: a thief of the online timestamp key (and, in
// the second case, of the release key) pushes huge versions; the device
// accepts them (they are validly signed) and then refuses the genuine
// metadata as a rollback. Rotating the stolen key resets that role's floor
// (TUF 5.3.11) and the device recovers; the security-counter floor stays.
func TestFastForwardRecovery(t *testing.T) {
	const huge = 1 << 40
	t.Run("timestamp-key", func(t *testing.T) {
		r := newTkRepo(t)
		tr := r.trusted(Floors{SecurityCounter: 1})
		evil := r.timestampFor(r.releaseBytes, huge)
		if _, err := tr.UpdateTimestamp(evil); err != nil {
			t.Fatal(err)
		}
		floors := tr.Floors()
		if floors.TimestampVersion != huge {
			t.Fatalf("floors %+v", floors)
		}
		// Next cycle: genuine timestamp 2 is now a "rollback".
		r.publish(r.newRelease(2, 1))
		tr, err := NewTrusted(r.roots[0], floors, tkTime, tkHW)
		r.ok(err)
		if _, err := tr.UpdateTimestamp(r.timestampBytes); !errors.Is(err, ErrRollback) {
			t.Fatalf("before recovery: %v, want ErrRollback", err)
		}
		// Recovery: root 2 replaces timestamp key 1 by key 2.
		root2 := r.rotate(func(n *Root) { r.ok(n.SetRole(RoleTimestamp, 1, r.k.ts2.Public())) }, r.k.rootA, r.k.rootB)
		r.timestampSigners = []crypto.Signer{r.k.ts2}
		r.publish(r.newRelease(3, 1))
		tr, err = NewTrusted(r.roots[0], floors, tkTime, tkHW)
		r.ok(err)
		if _, err := tr.UpdateRoot(root2); err != nil {
			t.Fatal(err)
		}
		if f := tr.Floors(); f.TimestampVersion != 0 || f.ReleaseVersion != floors.ReleaseVersion || f.SecurityCounter != 1 {
			t.Fatalf("after rotation: floors %+v", f)
		}
		if _, err := tr.UpdateTimestamp(r.timestampBytes); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
		if _, err := tr.UpdateRelease(r.releaseBytes); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	})
	t.Run("release-key", func(t *testing.T) {
		r := newTkRepo(t)
		tr := r.trusted(Floors{SecurityCounter: 4})
		evilRel := r.must(r.newRelease(huge, 4).Sign(r.k.release1))
		if _, err := tr.UpdateTimestamp(r.timestampFor(evilRel, 2)); err != nil {
			t.Fatal(err)
		}
		if _, err := tr.UpdateRelease(evilRel); err != nil {
			t.Fatal(err)
		}
		floors := tr.Floors()
		if floors.ReleaseVersion != huge {
			t.Fatalf("floors %+v", floors)
		}
		r.timestamp.Version = 2
		r.publish(r.newRelease(2, 4))
		tr, err := NewTrusted(r.roots[0], floors, tkTime, tkHW)
		r.ok(err)
		if _, err := tr.UpdateTimestamp(r.timestampBytes); !errors.Is(err, ErrRollback) {
			t.Fatalf("before recovery: %v, want ErrRollback", err)
		}
		root2 := r.rotate(func(n *Root) { r.ok(n.SetRole(RoleRelease, 1, r.k.release2.Public())) }, r.k.rootA, r.k.rootB)
		r.releaseSigners = []crypto.Signer{r.k.release2}
		r.publish(r.newRelease(3, 4))
		tr, err = NewTrusted(r.roots[0], floors, tkTime, tkHW)
		r.ok(err)
		if _, err := tr.UpdateRoot(root2); err != nil {
			t.Fatal(err)
		}
		if f := tr.Floors(); f.ReleaseVersion != 0 || f.TimestampVersion != floors.TimestampVersion || f.SecurityCounter != 4 {
			t.Fatalf("after rotation: floors %+v", f)
		}
		if _, err := tr.UpdateTimestamp(r.timestampBytes); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
		if _, err := tr.UpdateRelease(r.releaseBytes); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	})
	t.Run("adding-a-key-resets-nothing", func(t *testing.T) {
		r := newTkRepo(t)
		floors := Floors{TimestampVersion: 7, ReleaseVersion: 7, SecurityCounter: 7}
		tr := r.trusted(floors)
		root2 := r.rotate(func(n *Root) {
			r.ok(n.SetRole(RoleTimestamp, 1, r.k.ts1.Public(), r.k.ts2.Public()))
			r.ok(n.SetRole(RoleRelease, 1, r.k.release1.Public(), r.k.release2.Public()))
		}, r.k.rootA, r.k.rootB)
		if _, err := tr.UpdateRoot(root2); err != nil {
			t.Fatal(err)
		}
		if tr.Floors() != floors {
			t.Fatalf("floors %+v, want %+v", tr.Floors(), floors)
		}
	})
}
