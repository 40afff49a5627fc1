// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package fetch downloads an update artifact into a slot image.
//
// [Download] streams the artifact that verified metadata names (URL,
// length, SHA-256) into a [Sink], hashing as it writes, and holds against
// the update channel's attacks:
//
//   - endless data: the body is read through a limit of the signed length;
//     a server that announces or sends more is refused with
//     [ErrEndlessData] and nothing past the length is written;
//   - slow retrieval: every RateWindow must bring MinRate×RateWindow bytes,
//     headers included, or the download stops with [ErrSlowRetrieval];
//   - arbitrary content: a digest or length mismatch ([ErrDigest],
//     [ErrLength]) empties the sink, so nothing unverified stays in the
//     slot.
//
// Downloads resume: the bytes a sink already holds are re-hashed and the
// rest is requested with an HTTP Range (RFC 9110 §14), with If-Range on the
// entity tag seen earlier in the same call. A server that ignores the range
// answers 200 and the sink starts over. An interrupted body is retried from
// the last byte written, Retries times.
//
// Production downloads use HTTPS: the URL comes from signed metadata and the
// digest is what makes the bytes trusted, but TLS keeps the request private.
// Plain http is accepted only from a caller that passes its own
// [Request.Client] (tests, or a mirror reached over a trusted link).
package fetch

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Sentinel errors, for errors.Is. Each is wrapped with what happened.
var (
	// ErrEndlessData: the server announced or sent more than the signed
	// length. Nothing past the length was written; the sink was reset.
	ErrEndlessData = errors.New("fetch: endless data")
	// ErrLength: the server's artifact does not have the signed length
	// (Content-Length or Content-Range says otherwise). The sink was reset.
	ErrLength = errors.New("fetch: length mismatch")
	// ErrDigest: the downloaded bytes do not hash to the signed SHA-256.
	// The sink was reset.
	ErrDigest = errors.New("fetch: digest mismatch")
	// ErrSlowRetrieval: fewer than MinRate×RateWindow bytes arrived within
	// a RateWindow. The bytes written so far are kept for a resume.
	ErrSlowRetrieval = errors.New("fetch: slow retrieval")
	// ErrResponse: the server's answer is unusable (status, Content-Range,
	// Content-Encoding, redirects).
	ErrResponse = errors.New("fetch: bad response")
	// ErrInsecure: a plain http URL without a caller-provided client.
	ErrInsecure = errors.New("fetch: plain http needs an explicit Request.Client")
)

// Defaults and bounds. (Candidates for internal/limits.)
const (
	// DefaultMinRate is the default minimum throughput, bytes per second.
	DefaultMinRate = 1 << 10
	// DefaultRateWindow is the default window the minimum throughput is
	// measured over.
	DefaultRateWindow = 30 * time.Second
	// DefaultRetries is the default number of reconnections.
	DefaultRetries = 5

	maxRedirects   = 5
	maxHeaderBytes = 64 << 10 // response headers, default client only
	maxETag        = 256
	bufSize        = 128 << 10
)

// retryDelay is the pause before reconnection attempt n (1-based).
var retryDelay = func(n int) time.Duration { return min(time.Duration(n)*250*time.Millisecond, 5*time.Second) }

// Sink receives a download. slot.Image satisfies it.
type Sink interface {
	io.Writer
	// Offset returns the number of bytes the sink holds.
	Offset() int64
	// Existing reads the first Offset bytes.
	Existing() io.Reader
	// Reset empties the sink.
	Reset() error
	// Sync makes what was written durable.
	Sync() error
}

// Request is one artifact to download. Its zero fields take the documented
// defaults; Download does not modify it.
type Request struct {
	// URL is the artifact's https URL, from verified metadata.
	URL string
	// Length is the artifact's signed length in bytes.
	Length int64
	// SHA256 is the artifact's signed digest.
	SHA256 [32]byte

	// Client sends the requests. Default: a client that speaks only
	// https, with bounded response headers. A caller's client may speak
	// plain http; its Timeout should be 0 (the rate check bounds time).
	// Download copies it to add its redirect policy (at most 5 redirects,
	// never from https to http).
	Client *http.Client

	// MinRate is the minimum throughput in bytes per second. Default
	// DefaultMinRate (1 KiB/s).
	MinRate int64
	// RateWindow is the window MinRate is checked over: each window must
	// bring MinRate×RateWindow bytes. Default DefaultRateWindow (30 s).
	RateWindow time.Duration

	// Progress, if set, is called with the bytes held and the total: at
	// the start, about every 1% (at least 64 KiB) and at the end. It runs
	// on Download's goroutine.
	Progress func(done, total int64)

	// Retries is how many times an interrupted transfer reconnects
	// (resuming with Range) within one call. Default (0) DefaultRetries;
	// negative means none.
	Retries int
}

// Download fetches req.URL into dst, resuming after the dst.Offset() bytes
// it already holds, and returns nil once exactly req.Length bytes hashing
// to req.SHA256 are in dst and synced.
//
// On ErrDigest, ErrLength, ErrEndlessData, a malformed partial response
// (ErrResponse about Content-Range or Content-Encoding) and write errors (a
// full disk) dst is reset. On an interruption (retries exhausted), an error
// status, ErrSlowRetrieval or a cancelled ctx, dst keeps what arrived,
// synced, so that the next call resumes.
func Download(ctx context.Context, req Request, dst Sink) error {
	if dst == nil {
		return errors.New("fetch: nil sink")
	}
	d, err := newDownload(req, dst)
	if err != nil {
		return err
	}
	return d.run(ctx)
}

type download struct {
	req    Request
	client *http.Client
	dst    Sink
	h      hash.Hash
	off    int64
	etag   string
	buf    []byte

	reported int64 // last offset given to Progress
	step     int64
}

func newDownload(req Request, dst Sink) (*download, error) {
	u, err := url.Parse(req.URL)
	if err != nil {
		return nil, fmt.Errorf("fetch: url: %w", err)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && req.Client != nil:
	case u.Scheme == "http":
		return nil, fmt.Errorf("%w: %s", ErrInsecure, req.URL)
	default:
		return nil, fmt.Errorf("fetch: url %q: scheme must be https", req.URL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("fetch: url %q has no host", req.URL)
	}
	if req.Length < 0 {
		return nil, fmt.Errorf("fetch: negative length %d", req.Length)
	}
	if req.MinRate <= 0 {
		req.MinRate = DefaultMinRate
	}
	if req.RateWindow <= 0 {
		req.RateWindow = DefaultRateWindow
	}
	switch {
	case req.Retries == 0:
		req.Retries = DefaultRetries
	case req.Retries < 0:
		req.Retries = 0
	}
	var c http.Client
	if req.Client != nil {
		c = *req.Client
	} else {
		c = http.Client{Transport: defaultTransport}
	}
	c.CheckRedirect = checkRedirect(c.CheckRedirect)
	return &download{
		req:    req,
		client: &c,
		dst:    dst,
		h:      sha256.New(),
		step:   max(req.Length/100, 64<<10),
	}, nil
}

// defaultTransport speaks https only (newDownload refuses http URLs
// without a caller's client, and redirects never downgrade) with bounded
// headers and handshake time.
var defaultTransport = &http.Transport{
	Proxy:                  http.ProxyFromEnvironment,
	DialContext:            (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12},
	TLSHandshakeTimeout:    30 * time.Second,
	MaxResponseHeaderBytes: maxHeaderBytes,
	ForceAttemptHTTP2:      true,
	IdleConnTimeout:        90 * time.Second,
	MaxIdleConns:           4,
}

func checkRedirect(next func(*http.Request, []*http.Request) error) func(*http.Request, []*http.Request) error {
	return func(r *http.Request, via []*http.Request) error {
		if len(via) > maxRedirects {
			return fmt.Errorf("%w: more than %d redirects", ErrResponse, maxRedirects)
		}
		if r.URL.Scheme != "https" && (r.URL.Scheme != "http" || via[0].URL.Scheme != "http") {
			return fmt.Errorf("%w: redirect from %s to %s (downgrade or unknown scheme)", ErrResponse, via[len(via)-1].URL.Scheme, r.URL.Scheme)
		}
		if next != nil {
			return next(r, via)
		}
		return nil
	}
}

// errRetry marks an interruption worth reconnecting for.
type errRetry struct{ err error }

func (e errRetry) Error() string { return e.err.Error() }
func (e errRetry) Unwrap() error { return e.err }

func (d *download) progress(force bool) {
	if d.req.Progress == nil {
		return
	}
	if force || d.off-d.reported >= d.step || (d.off == d.req.Length && d.reported != d.off) {
		d.reported = d.off
		d.req.Progress(d.off, d.req.Length)
	}
}

// reset empties the sink and the hash, joining a reset failure to cause.
func (d *download) reset(cause error) error {
	d.off, d.etag = 0, ""
	d.h.Reset()
	if err := d.dst.Reset(); err != nil {
		return errors.Join(cause, fmt.Errorf("fetch: reset sink: %w", err))
	}
	return cause
}

// keep syncs a partial download so that the next call resumes from it.
func (d *download) keep(cause error) error {
	if err := d.dst.Sync(); err != nil {
		return errors.Join(cause, fmt.Errorf("fetch: fsync partial download: %w", err))
	}
	return cause
}

func (d *download) run(ctx context.Context) error {
	d.buf = make([]byte, bufSize)
	resumed, err := d.rehash()
	if err != nil {
		return err
	}
	d.progress(true)
	attempts := 0
	for {
		for d.off < d.req.Length {
			if err := ctx.Err(); err != nil {
				return d.keep(fmt.Errorf("fetch: %w", err))
			}
			err := d.attempt(ctx)
			var retry errRetry
			switch {
			case err == nil:
			case errors.As(err, &retry) && attempts < d.req.Retries:
				attempts++
				t := time.NewTimer(retryDelay(attempts))
				select {
				case <-ctx.Done():
					t.Stop()
					return d.keep(fmt.Errorf("fetch: %w", ctx.Err()))
				case <-t.C:
				}
			case errors.As(err, &retry):
				return d.keep(fmt.Errorf("fetch: interrupted after %d of %d bytes, %d reconnections: %w", d.off, d.req.Length, attempts, retry.err))
			default:
				return err
			}
		}
		if [32]byte(d.h.Sum(nil)) != d.req.SHA256 {
			if resumed {
				// The bytes found in the sink were not this artifact's
				// beginning (a leftover of another download): start over
				// once.
				resumed = false
				if err := d.reset(nil); err != nil {
					return err
				}
				d.progress(true)
				continue
			}
			return d.reset(fmt.Errorf("%w: %d bytes from %s do not hash to the signed SHA-256", ErrDigest, d.req.Length, d.req.URL))
		}
		if err := d.dst.Sync(); err != nil {
			return fmt.Errorf("fetch: fsync: %w", err)
		}
		d.progress(false)
		return nil
	}
}

// rehash hashes the bytes the sink already holds, and reports whether
// there were any. A sink holding more than the artifact, or unreadable, is
// reset.
func (d *download) rehash() (bool, error) {
	off := d.dst.Offset()
	if off == 0 {
		return false, nil
	}
	if off < 0 || off > d.req.Length {
		return false, d.reset(nil)
	}
	n, err := io.CopyBuffer(d.h, io.LimitReader(d.dst.Existing(), off), d.buf)
	if err != nil || n != off {
		return false, d.reset(nil)
	}
	d.off = off
	return true, nil
}

// attempt makes one request and copies its body into the sink, until the
// artifact is complete or an error. errRetry errors may be retried; the
// others end the download.
func (d *download) attempt(ctx context.Context) error {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var got atomic.Int64
	defer d.watch(cancel, &got)()

	hreq, err := http.NewRequestWithContext(actx, http.MethodGet, d.req.URL, nil)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	// Identity: the body is the artifact itself, and the transport does
	// not decompress (no decompression bomb, ranges stay byte ranges).
	hreq.Header.Set("Accept-Encoding", "identity")
	if d.off > 0 {
		hreq.Header.Set("Range", "bytes="+strconv.FormatInt(d.off, 10)+"-")
		if d.etag != "" {
			hreq.Header.Set("If-Range", d.etag)
		}
	}
	resp, err := d.client.Do(hreq)
	if err != nil {
		return d.interrupted(ctx, actx, err)
	}
	defer resp.Body.Close()

	switch code := resp.StatusCode; {
	case code == http.StatusPartialContent:
		if err := d.checkContentRange(resp.Header.Get("Content-Range")); err != nil {
			return err
		}
	case code == http.StatusOK:
		if d.off > 0 {
			// The server ignored the range (or If-Range failed): the
			// body is the whole artifact.
			if err := d.reset(nil); err != nil {
				return err
			}
		}
	case code == http.StatusRequestedRangeNotSatisfiable && d.off > 0:
		// What the sink holds is not a prefix the server knows.
		if err := d.reset(nil); err != nil {
			return err
		}
		return errRetry{fmt.Errorf("%w: 416 for bytes=%d-", ErrResponse, d.off)}
	case code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests:
		return errRetry{fmt.Errorf("%w: %s", ErrResponse, resp.Status)}
	default:
		return d.keep(fmt.Errorf("%w: %s from %s", ErrResponse, resp.Status, d.req.URL))
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && ce != "identity" {
		return d.reset(fmt.Errorf("%w: Content-Encoding %q, want the artifact's bytes", ErrResponse, ce))
	}
	if et := resp.Header.Get("ETag"); et != "" && len(et) <= maxETag && !strings.HasPrefix(et, "W/") {
		d.etag = et
	}
	remaining := d.req.Length - d.off
	switch cl := resp.ContentLength; {
	case cl > remaining:
		return d.reset(fmt.Errorf("%w: Content-Length %d announces more than the %d bytes left of the signed %d", ErrEndlessData, cl, remaining, d.req.Length))
	case cl >= 0 && cl < remaining:
		return d.reset(fmt.Errorf("%w: Content-Length %d, but %d bytes are left of the signed %d", ErrLength, cl, remaining, d.req.Length))
	}

	for d.off < d.req.Length {
		// Fill the buffer before writing: fewer, larger writes (kind to
		// flash), and a write pattern that depends only on the length,
		// not on how the network split the body.
		want := int(min(int64(len(d.buf)), d.req.Length-d.off))
		n := 0
		var rerr error
		for n < want && rerr == nil {
			var k int
			k, rerr = resp.Body.Read(d.buf[n:want])
			n += k
			got.Add(int64(k))
		}
		if n > 0 {
			w, werr := d.dst.Write(d.buf[:n])
			if w > 0 {
				d.h.Write(d.buf[:w])
				d.off += int64(w)
			}
			if werr == nil && w < n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return d.reset(fmt.Errorf("fetch: write: %w", werr))
			}
			d.progress(false)
		}
		if rerr == io.EOF && d.off < d.req.Length {
			rerr = io.ErrUnexpectedEOF
		}
		if rerr != nil && d.off < d.req.Length {
			return d.interrupted(ctx, actx, rerr)
		}
	}
	// The signed length is in: one more byte means the server sends more
	// than it should.
	var one [1]byte
	for {
		n, rerr := resp.Body.Read(one[:])
		if n > 0 {
			return d.reset(fmt.Errorf("%w: server sent more than the signed %d bytes", ErrEndlessData, d.req.Length))
		}
		if rerr != nil {
			// EOF, or the connection ending after the last byte: the
			// artifact is complete either way.
			return nil
		}
	}
}

// interrupted classifies a transport or body error.
func (d *download) interrupted(ctx, actx context.Context, err error) error {
	if cause := context.Cause(actx); errors.Is(cause, ErrSlowRetrieval) {
		return d.keep(cause)
	}
	if ctx.Err() != nil {
		return d.keep(fmt.Errorf("fetch: %w", ctx.Err()))
	}
	var certErr *tls.CertificateVerificationError
	if errors.Is(err, ErrResponse) || errors.As(err, &certErr) {
		return d.keep(fmt.Errorf("fetch: %w", err))
	}
	return errRetry{err}
}

// checkContentRange accepts "bytes <off>-<Length-1>/<Length or *>"
// (RFC 9110 §14.4).
func (d *download) checkContentRange(cr string) error {
	spec, ok := strings.CutPrefix(cr, "bytes ")
	rng, total, ok2 := strings.Cut(spec, "/")
	first, last, ok3 := strings.Cut(rng, "-")
	if !ok || !ok2 || !ok3 || len(cr) > 64 {
		return d.reset(fmt.Errorf("%w: 206 with Content-Range %q", ErrResponse, cr))
	}
	if total != "*" {
		n, err := strconv.ParseInt(total, 10, 64)
		if err != nil {
			return d.reset(fmt.Errorf("%w: 206 with Content-Range %q", ErrResponse, cr))
		}
		if n != d.req.Length {
			return d.reset(fmt.Errorf("%w: server's artifact has %d bytes, the signed length is %d", ErrLength, n, d.req.Length))
		}
	}
	f, err1 := strconv.ParseInt(first, 10, 64)
	l, err2 := strconv.ParseInt(last, 10, 64)
	if err1 != nil || err2 != nil || f != d.off || l != d.req.Length-1 {
		return d.reset(fmt.Errorf("%w: asked for bytes %d-, got Content-Range %q", ErrResponse, d.off, cr))
	}
	return nil
}

// watch cancels the attempt with ErrSlowRetrieval when a RateWindow
// brings fewer than MinRate×RateWindow bytes. It returns the function that
// stops it.
func (d *download) watch(cancel context.CancelCauseFunc, got *atomic.Int64) (stop func()) {
	window := d.req.RateWindow
	need := max(int64(float64(d.req.MinRate)*window.Seconds()), 1)
	t := time.NewTicker(window)
	done := make(chan struct{})
	go func() {
		defer t.Stop()
		var last int64
		for {
			select {
			case <-done:
				return
			case <-t.C:
				cur := got.Load()
				if cur-last < need {
					cancel(fmt.Errorf("%w: %d bytes in %v, below the minimum of %d bytes/s", ErrSlowRetrieval, cur-last, window, d.req.MinRate))
					return
				}
				last = cur
			}
		}
	}()
	return func() { close(done) }
}
