// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"crypto"
	"crypto/elliptic"
	"encoding/base64"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/wire"
)

// highS returns the compact ES256 JWS env with its signature (r, s)
// replaced by (r, n-s): the same signature in its other valid form
// (ECDSA signatures are malleable; RFC 7518 section 3.4 does not require
// low S, and other JOSE implementations emit either form).
func highS(t *testing.T, env []byte) []byte {
	t.Helper()
	parts := strings.Split(string(env), ".")
	if len(parts) != 3 {
		t.Fatalf("not a compact JWS: %q", env)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		t.Fatalf("ES256 signature: %d bytes, %v", len(sig), err)
	}
	s := new(big.Int).SetBytes(sig[32:])
	s.Sub(elliptic.P256().Params().N, s)
	s.FillBytes(sig[32:])
	parts[2] = base64.RawURLEncoding.EncodeToString(sig)
	return []byte(strings.Join(parts, "."))
}

// TestMalleatedSignature: a second valid spelling of a signed record (the
// (r, n-s) form of its ECDSA signature) is accepted when it comes first,
// as a signature from another JOSE implementation must be, and is dropped
// as a duplicate when the original came first: deduplication keys on the
// signed (device, boot, seq), never on envelope bytes. Commands likewise
// key on the signed command ID.
func TestMalleatedSignature(t *testing.T) {
	f := newTestFleet(t)
	f.device("dev-m", identity.ECDSAP256)
	topic := wire.TelemetryTopic("dev-m", "s")

	v := f.verifier(nil)
	env := sealedFor(t, f, "dev-m", 1)
	other := highS(t, env)
	if string(other) == string(env) {
		t.Fatal("the malleated envelope is the same bytes")
	}
	if _, err := v.Verify(t.Context(), topic, other); err != nil {
		t.Fatalf("high-S envelope first: %v, want accepted", err)
	}
	if _, err := v.Verify(t.Context(), topic, env); !errors.Is(err, wire.ErrDuplicate) {
		t.Fatalf("then the low-S original: %v, want ErrDuplicate", err)
	}

	v = f.verifier(nil)
	env = sealedFor(t, f, "dev-m", 2)
	if _, err := v.Verify(t.Context(), topic, env); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(t.Context(), topic, highS(t, env)); !errors.Is(err, wire.ErrDuplicate) {
		t.Fatalf("malleated copy of an accepted envelope: %v, want ErrDuplicate", err)
	}
	if st := v.Stats(); st.Accepted != 1 || st.Duplicates != 1 {
		t.Fatalf("verifier %+v, want 1 accepted and 1 duplicate", st)
	}

	// A command: the malleated copy of a command already run is a replay.
	key, _ := identity.GenerateKey(identity.ECDSAP256)
	now := func() time.Time { return f.now }
	cmdEnv, err := (&CommandSigner{Key: key, Time: now}).Sign(Command{Device: "dev-m", Name: "blink"})
	if err != nil {
		t.Fatal(err)
	}
	cv, err := newCommandVerifier(nil, filepath.Join(t.TempDir(), "commands.state"), "dev-m", []crypto.PublicKey{key.Public()}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cv.verify(cmdEnv); err != nil {
		t.Fatal(err)
	}
	if _, err := cv.verify(highS(t, cmdEnv)); !errors.Is(err, ErrCommandReplayed) {
		t.Fatalf("malleated copy of a command already run: %v, want ErrCommandReplayed", err)
	}
}
