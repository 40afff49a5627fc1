// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"crypto/sha256"
	"fmt"
	"hash"
)

// ArtifactVerifier hashes an artifact's content as it is written, refuses
// bytes past the signed length, and checks length and digest at the end
// (TUF 5.7.3; Uptane "Verify image" step 7 and its note on length). Write
// the download through it (for example with io.MultiWriter beside the
// slot file), then call Verify before using the content.
type ArtifactVerifier struct {
	a Artifact
	h hash.Hash
	n int64
}

// Verifier returns an ArtifactVerifier for a.
func (a Artifact) Verifier() *ArtifactVerifier {
	return &ArtifactVerifier{a: a, h: sha256.New()}
}

// Write hashes p. Bytes past the artifact's length are refused with
// [ErrEndlessData]: the bytes up to the length are taken and counted in n.
func (v *ArtifactVerifier) Write(p []byte) (n int, err error) {
	room := v.a.Length - v.n
	if int64(len(p)) > room {
		v.h.Write(p[:room])
		v.n += room
		return int(room), fmt.Errorf("%w: artifact %s goes on past its %d bytes", ErrEndlessData, v.a.Name, v.a.Length)
	}
	v.h.Write(p)
	v.n += int64(len(p))
	return len(p), nil
}

// Written returns the number of bytes taken so far.
func (v *ArtifactVerifier) Written() int64 { return v.n }

// Verify checks that exactly the artifact's length was written
// ([ErrLength]) and that its SHA-256 is the signed one ([ErrDigest]).
func (v *ArtifactVerifier) Verify() error {
	if v.n != v.a.Length {
		return fmt.Errorf("%w: artifact %s: %d bytes of %d", ErrLength, v.a.Name, v.n, v.a.Length)
	}
	var sum [32]byte
	v.h.Sum(sum[:0])
	if sum != v.a.SHA256 {
		return fmt.Errorf("%w: artifact %s: SHA-256 %x, signed %x", ErrDigest, v.a.Name, sum, v.a.SHA256)
	}
	return nil
}
