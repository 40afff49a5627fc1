// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/internal/strictjson"
)

// strictUnmarshal decodes one JSON value from data into v (a pointer to one
// of the wire structs of this package) in the one form that encodes it,
// nested at most limits.UpdateJSONDepth deep (internal/strictjson;
// docs/update-format.md, "JSON strictness").
func strictUnmarshal(data []byte, v any) error {
	return strictjson.Unmarshal(data, v, limits.UpdateJSONDepth)
}

// truncate shortens a string from outside for an error message.
func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
