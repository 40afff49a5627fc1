// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package jwsedit edits signed update metadata as an attacker without the
// keys can (a mirror, a CDN): the payload changes, the signatures stay.
// For tests and the attack lab; devices refuse what it makes.
package jwsedit

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// EditPayload decodes the payload of signed, a document in the JWS JSON
// general serialization (docs/update-format.md), as a JSON object, lets
// edit change it, and returns the document with the edited payload and
// the original signatures.
func EditPayload(signed []byte, edit func(payload map[string]any)) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(signed, &doc); err != nil {
		return nil, fmt.Errorf("jwsedit: %w", err)
	}
	encoded, _ := doc["payload"].(string)
	payload, err := base64.RawURLEncoding.DecodeString(encoded)
	if err != nil {
		return nil, fmt.Errorf("jwsedit: payload: %w", err)
	}
	var body map[string]any
	if err := json.Unmarshal(payload, &body); err != nil {
		return nil, fmt.Errorf("jwsedit: payload: %w", err)
	}
	edit(body)
	if payload, err = json.Marshal(body); err != nil {
		return nil, fmt.Errorf("jwsedit: %w", err)
	}
	doc["payload"] = base64.RawURLEncoding.EncodeToString(payload)
	return json.Marshal(doc)
}
