// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package audit

import (
	"testing"
)

// BenchmarkAppend measures one durable append (write + fsync).
func BenchmarkAppend(b *testing.B) {
	l := openTest(b, b.TempDir(), nil)
	defer mustClose(b, l)
	d := Detail{"topic": "d2c/v1/dev/sensor-1/down/cmd", "reason": "signature does not verify"}
	ctx := b.Context()
	for b.Loop() {
		if _, err := l.Append(ctx, KindMessageRefused, d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify measures a walk of a log of 10 000 records (about 1.2
// MB in five segments).
func BenchmarkVerify(b *testing.B) {
	dir := b.TempDir()
	l := openTest(b, dir, nil)
	d := Detail{"topic": "d2c/v1/dev/sensor-1/down/cmd", "reason": "signature does not verify"}
	// Unsynced appends would be faster to set up, but the writer has no
	// such mode: 10 000 fsyncs on a tmpfs take a moment only.
	for range 10_000 {
		if _, err := l.Append(b.Context(), KindMessageRefused, d); err != nil {
			b.Fatal(err)
		}
	}
	mustClose(b, l)
	if _, err := Verify(dir); err != nil {
		b.Fatal(err)
	}
	var size int64
	for _, s := range segments(b, dir) {
		size += fileSize(b, s)
	}
	b.SetBytes(size)
	for b.Loop() {
		if _, err := Verify(dir); err != nil {
			b.Fatal(err)
		}
	}
}
