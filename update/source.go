// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package update

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
)

// ErrNotFound is returned by a [Source] for metadata it does not have: the
// end of the root chain.
var ErrNotFound = errors.New("update: metadata not found")

// Source is where the agent fetches metadata from. Each method returns at
// most the role's size limit; more is [ErrTooLarge].
type Source interface {
	// Root returns root metadata of version, or ErrNotFound.
	Root(ctx context.Context, version uint64) ([]byte, error)
	// Timestamp returns the current timestamp metadata.
	Timestamp(ctx context.Context) ([]byte, error)
	// Release returns release metadata of version: the version the
	// verified timestamp names.
	Release(ctx context.Context, version uint64) ([]byte, error)
}

// HTTPSource fetches metadata over HTTP(S) from a repository laid out as
// docs/update-format.md describes: BaseURL/<N>.root.json,
// BaseURL/timestamp.json and BaseURL/<V>.release.json. Release metadata is
// fetched by the version the timestamp names (TUF's consistent snapshots),
// so that a device reading while a new release is published never pairs an
// old timestamp with a new release. `d2c update serve`
// serves such a directory. Production repositories are HTTPS; the metadata
// is signed, so a CDN or object store may serve it.
type HTTPSource struct {
	// BaseURL is the repository's address, for example
	// https://updates.example.com/fleet/.
	BaseURL string
	// Client makes the requests; nil means a client with a 30 s timeout.
	Client *http.Client
}

// Root implements [Source].
func (s *HTTPSource) Root(ctx context.Context, version uint64) ([]byte, error) {
	return s.get(ctx, strconv.FormatUint(version, 10)+".root.json", limits.UpdateRoot)
}

// Timestamp implements [Source].
func (s *HTTPSource) Timestamp(ctx context.Context) ([]byte, error) {
	return s.get(ctx, "timestamp.json", limits.UpdateTimestamp)
}

// Release implements [Source].
func (s *HTTPSource) Release(ctx context.Context, version uint64) ([]byte, error) {
	return s.get(ctx, strconv.FormatUint(version, 10)+".release.json", limits.UpdateRelease)
}

// Resolve returns the absolute address of an artifact URI, which may be
// relative to BaseURL.
func (s *HTTPSource) Resolve(uri string) (string, error) {
	base, err := url.Parse(s.BaseURL)
	if err != nil {
		return "", fmt.Errorf("update: repository address %q: %w", s.BaseURL, err)
	}
	ref, err := url.Parse(uri)
	if err != nil {
		return "", fmt.Errorf("update: artifact address %q: %w", uri, err)
	}
	return base.ResolveReference(ref).String(), nil
}

func (s *HTTPSource) get(ctx context.Context, name string, max int64) ([]byte, error) {
	u, err := s.Resolve(name)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("update: %s: %w", name, err)
	}
	c := s.Client
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("update: fetch %s: %w", u, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("%w: %s", ErrNotFound, u)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("update: fetch %s: %s", u, resp.Status)
	case resp.ContentLength > max:
		return nil, fmt.Errorf("%w: %s announces %d bytes, the limit is %d", ErrTooLarge, name, resp.ContentLength, max)
	}
	b, err := atomicfile.ReadAll(resp.Body, max)
	if errors.Is(err, atomicfile.ErrTooLarge) {
		return nil, fmt.Errorf("%w: %s is over %d bytes", ErrTooLarge, name, max)
	}
	if err != nil {
		return nil, fmt.Errorf("update: fetch %s: %w", u, err)
	}
	return b, nil
}
