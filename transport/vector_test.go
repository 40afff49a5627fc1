// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package transport

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport/internal/jws"
	"github.com/d2c-iot/d2c/transport/wire"
)

var update = flag.Bool("update", false, "rewrite the test vectors in testdata/vectors")

// vector is a worked example another implementation can check: the device
// key, the record, its CBOR encoding and the JWS envelope.
type vector struct {
	Comment      string `json:"comment"`
	DeviceKeyPEM string `json:"device_public_key_pem"`
	Topic        string `json:"topic"`
	RecordCBOR   string `json:"record_cbor_hex"`
	Envelope     string `json:"envelope_jws"`
}

// TestTelemetryVector checks the committed worked example of
// docs/protocol.md: the CBOR of the record is exactly what this code
// encodes, and the JWS verifies with the device's public key.
func TestTelemetryVector(t *testing.T) {
	path := filepath.Join("testdata", "vectors", "telemetry-p256.json")
	rec := Record{Device: "sensor-42", Stream: "temp", Boot: 3, Seq: 17, Time: time.UnixMilli(1795000000000),
		Readings: []Reading{{Time: time.UnixMilli(1795000000000), Body: []byte(`{"c":21.5}`)}}}
	c, err := newCodec()
	if err != nil {
		t.Fatal(err)
	}
	cbor, err := c.EncodeRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		key, _ := identity.GenerateKey(identity.ECDSAP256)
		s, err := NewSealer("sensor-42", key, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		out, err := s.Seal(rec)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKIXPublicKey(key.Public())
		v := vector{Comment: "d2c telemetry v1: ES256 JWS over the CBOR record; see docs/protocol.md",
			DeviceKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
			Topic:        wire.TelemetryTopic("sensor-42", "temp"), RecordCBOR: hex.EncodeToString(cbor), Envelope: string(out.Envelope)}
		b, _ := json.MarshalIndent(v, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	var v vector
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if v.RecordCBOR != hex.EncodeToString(cbor) {
		t.Fatalf("the record's CBOR changed:\n got %x\nwant %s", cbor, v.RecordCBOR)
	}
	blk, _ := pem.Decode([]byte(v.DeviceKeyPEM))
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	obj, kid, err := jws.Parse([]byte(v.Envelope), wire.TelemetryType)
	if err != nil || kid != "sensor-42" {
		t.Fatalf("envelope: kid %q, %v", kid, err)
	}
	payload, err := jws.Verify(obj, pub.(*ecdsa.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(payload) != v.RecordCBOR {
		t.Fatal("the JWS payload is not the record's CBOR")
	}
	if !strings.HasPrefix(v.Topic, wire.TopicPrefix) {
		t.Fatalf("topic %q", v.Topic)
	}
}
