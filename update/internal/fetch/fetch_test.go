// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/update/slot"
)

var _ Sink = slot.Image(nil) // slot images are download sinks

func init() { retryDelay = func(int) time.Duration { return time.Millisecond } }

// memSink is an in-memory Sink that records its history.
type memSink struct {
	mu        sync.Mutex
	buf       []byte
	maxLen    int // longest the content ever was
	resets    int
	syncs     int
	failAfter int // > 0: writes past this many bytes fail with ENOSPC
}

func (s *memSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failAfter > 0 && len(s.buf)+len(p) > s.failAfter {
		n := s.failAfter - len(s.buf)
		s.buf = append(s.buf, p[:n]...)
		return n, syscall.ENOSPC
	}
	s.buf = append(s.buf, p...)
	s.maxLen = max(s.maxLen, len(s.buf))
	return len(p), nil
}
func (s *memSink) Offset() int64       { return int64(len(s.buf)) }
func (s *memSink) Existing() io.Reader { return bytes.NewReader(s.buf) }
func (s *memSink) Reset() error        { s.buf = s.buf[:0]; s.resets++; return nil }
func (s *memSink) Sync() error         { s.syncs++; return nil }

func artifact(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// server serves data with http.ServeContent (Range, If-Range, ETag) unless
// handle takes over, and logs each request's Range header.
type server struct {
	*httptest.Server
	data []byte
	mu   sync.Mutex
	seen []string // Range header per request ("" for none)
}

func newServer(t *testing.T, data []byte, handle func(n int, w http.ResponseWriter, r *http.Request) bool) *server {
	s := &server{data: data}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.seen = append(s.seen, r.Header.Get("Range"))
		n := len(s.seen)
		s.mu.Unlock()
		if handle != nil && handle(n, w, r) {
			return
		}
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(s.data))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) ranges() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

func (s *server) request(data []byte) Request {
	return Request{URL: s.URL + "/artifact", Length: int64(len(data)), SHA256: sha256.Sum256(data), Client: s.Client()}
}

func TestDownloadFull(t *testing.T) {
	data := artifact(1 << 20)
	srv := newServer(t, data, nil)
	req := srv.request(data)
	var calls [][2]int64
	req.Progress = func(done, total int64) { calls = append(calls, [2]int64{done, total}) }
	sink := &memSink{}
	if err := Download(context.Background(), req, sink); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.buf, data) || sink.syncs == 0 {
		t.Fatalf("sink holds %d bytes (syncs %d)", len(sink.buf), sink.syncs)
	}
	if calls[0] != [2]int64{0, 1 << 20} || calls[len(calls)-1] != [2]int64{1 << 20, 1 << 20} || len(calls) > 20 {
		t.Fatalf("progress calls %v", calls)
	}
	for i := 1; i < len(calls); i++ {
		if calls[i][0] <= calls[i-1][0] {
			t.Fatalf("progress not increasing: %v", calls)
		}
	}
	if got := srv.ranges(); len(got) != 1 || got[0] != "" {
		t.Fatalf("requests %q", got)
	}
}

// countSink counts Write calls.
type countSink struct {
	memSink
	writes int
}

func (s *countSink) Write(p []byte) (int, error) { s.writes++; return s.memSink.Write(p) }

// TestDownloadWritePattern: the sink sees full-buffer writes however the
// network splits the body, so crash tests count the same operations on
// every run.
func TestDownloadWritePattern(t *testing.T) {
	data := artifact(300 << 10)
	srv := newServer(t, data, func(_ int, w http.ResponseWriter, r *http.Request) bool {
		for i := 0; i < len(data); i += 1000 {
			w.Write(data[i:min(i+1000, len(data))])
			w.(http.Flusher).Flush()
		}
		return true
	})
	sink := &countSink{}
	if err := Download(context.Background(), srv.request(data), sink); err != nil {
		t.Fatal(err)
	}
	if want := (len(data) + bufSize - 1) / bufSize; sink.writes != want {
		t.Fatalf("%d writes, want %d", sink.writes, want)
	}
}

func TestDownloadTLS(t *testing.T) {
	data := artifact(100 << 10)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	sink := &memSink{}
	req := Request{URL: srv.URL, Length: int64(len(data)), SHA256: sha256.Sum256(data), Client: srv.Client()}
	if err := Download(context.Background(), req, sink); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.buf, data) {
		t.Fatal("content differs")
	}
	// The default client verifies the server against the system roots.
	req.Client = nil
	if err := Download(context.Background(), req, &memSink{}); err == nil {
		t.Fatal("default client accepted an untrusted certificate")
	}
}

// TestDownloadResumeAfterCut: the server cuts the connection after K
// bytes; the retry asks for bytes=K- (with If-Range) and completes.
func TestDownloadResumeAfterCut(t *testing.T) {
	data := artifact(300 << 10)
	const cut = 100 << 10
	srv := newServer(t, data, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n > 1 {
			if r.Header.Get("If-Range") != `"v1"` {
				t.Errorf("resume without If-Range: %q", r.Header.Get("If-Range"))
			}
			return false
		}
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.Write(data[:cut])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // connection cut
	})
	sink := &memSink{}
	if err := Download(context.Background(), srv.request(data), sink); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.buf, data) || sink.resets != 0 {
		t.Fatalf("sink holds %d bytes, %d resets", len(sink.buf), sink.resets)
	}
	if got := srv.ranges(); len(got) != 2 || got[1] != fmt.Sprintf("bytes=%d-", cut) {
		t.Fatalf("requests' Range %q, want a second one from byte %d", got, cut)
	}
}

// TestDownloadResumeExisting: bytes already in the sink are re-hashed and
// only the rest is requested; a leftover that is not this artifact's
// beginning costs one restart from zero.
func TestDownloadResumeExisting(t *testing.T) {
	data := artifact(200 << 10)
	srv := newServer(t, data, nil)
	sink := &memSink{buf: append([]byte(nil), data[:50000]...)}
	if err := Download(context.Background(), srv.request(data), sink); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.buf, data) {
		t.Fatal("content differs")
	}
	if got := srv.ranges(); len(got) != 1 || got[0] != "bytes=50000-" {
		t.Fatalf("requests' Range %q", got)
	}

	srv = newServer(t, data, nil)
	sink = &memSink{buf: bytes.Repeat([]byte{0xee}, 50000)}
	if err := Download(context.Background(), srv.request(data), sink); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.buf, data) || sink.resets != 1 {
		t.Fatalf("content differs, %d resets", sink.resets)
	}
	if got := srv.ranges(); len(got) != 2 || got[0] != "bytes=50000-" || got[1] != "" {
		t.Fatalf("requests' Range %q", got)
	}

	// A complete, correct sink needs no request at all.
	srv = newServer(t, data, nil)
	if err := Download(context.Background(), srv.request(data), sink); err != nil {
		t.Fatal(err)
	}
	if got := srv.ranges(); len(got) != 0 {
		t.Fatalf("requests %q for a complete sink", got)
	}
}

func TestDownloadServerIgnoresRange(t *testing.T) {
	data := artifact(100 << 10)
	srv := newServer(t, data, func(_ int, w http.ResponseWriter, r *http.Request) bool {
		w.Write(data) // 200, whole body, whatever the Range
		return true
	})
	sink := &memSink{buf: append([]byte(nil), data[:1000]...)}
	if err := Download(context.Background(), srv.request(data), sink); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.buf, data) || sink.resets != 1 {
		t.Fatalf("sink holds %d bytes, %d resets", len(sink.buf), sink.resets)
	}
	if got := srv.ranges(); len(got) != 1 || got[0] != "bytes=1000-" {
		t.Fatalf("requests' Range %q", got)
	}
}

// TestDownloadEndlessData: a server that keeps sending past the signed
// length is refused, and nothing past the length is ever written.
func TestDownloadEndlessData(t *testing.T) {
	data := artifact(64 << 10)
	srv := newServer(t, data, func(_ int, w http.ResponseWriter, r *http.Request) bool {
		w.Write(data) // chunked: no Content-Length
		for r.Context().Err() == nil {
			if _, err := w.Write(make([]byte, 4096)); err != nil {
				break
			}
			w.(http.Flusher).Flush()
		}
		return true
	})
	sink := &memSink{}
	err := Download(context.Background(), srv.request(data), sink)
	if !errors.Is(err, ErrEndlessData) {
		t.Fatalf("err %v, want ErrEndlessData", err)
	}
	if !strings.Contains(err.Error(), "more than the signed 65536 bytes") {
		t.Errorf("message %q does not name the attack", err)
	}
	if sink.maxLen > len(data) || len(sink.buf) != 0 {
		t.Fatalf("sink held up to %d bytes, now %d; want at most %d, then reset", sink.maxLen, len(sink.buf), len(data))
	}
}

func TestDownloadContentLength(t *testing.T) {
	data := artifact(64 << 10)
	for name, c := range map[string]struct {
		length int
		want   error
	}{
		"too long":  {len(data) + 1, ErrEndlessData},
		"too short": {len(data) - 1, ErrLength},
	} {
		t.Run(name, func(t *testing.T) {
			body := append(append([]byte(nil), data...), 0)[:c.length]
			srv := newServer(t, data, func(_ int, w http.ResponseWriter, r *http.Request) bool {
				w.Header().Set("Content-Length", fmt.Sprint(len(body)))
				w.Write(body)
				return true
			})
			sink := &memSink{}
			if err := Download(context.Background(), srv.request(data), sink); !errors.Is(err, c.want) {
				t.Fatalf("err %v, want %v", err, c.want)
			}
			if sink.maxLen != 0 {
				t.Fatalf("%d bytes written before the refusal", sink.maxLen)
			}
		})
	}
}

func TestDownloadBadContentRange(t *testing.T) {
	data := artifact(64 << 10)
	for name, c := range map[string]struct {
		cr   string
		want error
	}{
		"wrong start": {"bytes 0-65535/65536", ErrResponse},
		"wrong total": {"bytes 1000-65535/70000", ErrLength},
		"garbage":     {"items 1-2", ErrResponse},
		"missing":     {"", ErrResponse},
	} {
		t.Run(name, func(t *testing.T) {
			srv := newServer(t, data, func(_ int, w http.ResponseWriter, r *http.Request) bool {
				if c.cr != "" {
					w.Header().Set("Content-Range", c.cr)
				}
				w.WriteHeader(http.StatusPartialContent)
				w.Write(data[1000:])
				return true
			})
			sink := &memSink{buf: append([]byte(nil), data[:1000]...)}
			if err := Download(context.Background(), srv.request(data), sink); !errors.Is(err, c.want) {
				t.Fatalf("err %v, want %v", err, c.want)
			}
			if len(sink.buf) != 0 {
				t.Fatalf("sink not reset (%d bytes)", len(sink.buf))
			}
		})
	}
}

// TestDownloadSlowRetrieval: a server trickling bytes (or holding back its
// headers) is dropped after one window; the bytes that came are kept.
func TestDownloadSlowRetrieval(t *testing.T) {
	data := artifact(64 << 10)
	trickle := func(_ int, w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		for i := 0; i < len(data) && r.Context().Err() == nil; i += 10 {
			w.Write(data[i : i+10])
			w.(http.Flusher).Flush()
			time.Sleep(20 * time.Millisecond) // 500 B/s
		}
		return true
	}
	stall := func(_ int, w http.ResponseWriter, r *http.Request) bool {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
		return true
	}
	for name, h := range map[string]func(int, http.ResponseWriter, *http.Request) bool{"body": trickle, "headers": stall} {
		t.Run(name, func(t *testing.T) {
			srv := newServer(t, data, h)
			req := srv.request(data)
			req.MinRate, req.RateWindow = 1024, 200*time.Millisecond
			sink := &memSink{}
			start := time.Now()
			err := Download(context.Background(), req, sink)
			if !errors.Is(err, ErrSlowRetrieval) {
				t.Fatalf("err %v, want ErrSlowRetrieval", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("took %v", d)
			}
			if sink.resets != 0 || sink.syncs == 0 {
				t.Fatalf("partial download not kept: %d resets, %d syncs", sink.resets, sink.syncs)
			}
			if name == "body" && len(sink.buf) == 0 {
				t.Fatal("no bytes kept")
			}
		})
	}
}

func TestDownloadWrongDigest(t *testing.T) {
	data := artifact(100 << 10)
	srv := newServer(t, data, nil)
	req := srv.request(data)
	req.SHA256[0] ^= 1
	sink := &memSink{}
	if err := Download(context.Background(), req, sink); !errors.Is(err, ErrDigest) {
		t.Fatalf("err %v, want ErrDigest", err)
	}
	if len(sink.buf) != 0 || sink.resets != 1 {
		t.Fatalf("sink holds %d bytes, %d resets; want reset", len(sink.buf), sink.resets)
	}
}

func TestDownloadContextCancel(t *testing.T) {
	data := artifact(1 << 20)
	srv := newServer(t, data, func(_ int, w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		for i := 0; i < len(data) && r.Context().Err() == nil; i += 64 << 10 {
			w.Write(data[i : i+64<<10])
			w.(http.Flusher).Flush()
			time.Sleep(5 * time.Millisecond)
		}
		return true
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := srv.request(data)
	req.Progress = func(done, _ int64) {
		if done > 0 {
			cancel()
		}
	}
	sink := &memSink{}
	if err := Download(ctx, req, sink); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if len(sink.buf) == 0 || sink.resets != 0 || sink.syncs == 0 {
		t.Fatalf("partial download not kept: %d bytes, %d resets, %d syncs", len(sink.buf), sink.resets, sink.syncs)
	}
}

func TestDownloadDiskFull(t *testing.T) {
	data := artifact(200 << 10)
	srv := newServer(t, data, nil)
	sink := &memSink{failAfter: 70000}
	err := Download(context.Background(), srv.request(data), sink)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err %v, want ENOSPC", err)
	}
	if len(sink.buf) != 0 || sink.resets != 1 {
		t.Fatalf("sink holds %d bytes, %d resets; want reset", len(sink.buf), sink.resets)
	}
}

// TestDownloadRetriesExhausted: a server that always cuts gets Retries
// reconnections, each resuming further, then the partial bytes are kept.
func TestDownloadRetriesExhausted(t *testing.T) {
	data := artifact(100 << 10)
	srv := newServer(t, data, func(_ int, w http.ResponseWriter, r *http.Request) bool {
		var from int
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from)
		w.Header().Set("Content-Length", fmt.Sprint(len(data)-from))
		if from > 0 {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(data)-1, len(data)))
			w.WriteHeader(http.StatusPartialContent)
		}
		w.Write(data[from : from+1000])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	req := srv.request(data)
	req.Retries = 2
	sink := &memSink{}
	err := Download(context.Background(), req, sink)
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err %v, want an interruption", err)
	}
	if len(sink.buf) != 3000 || !bytes.Equal(sink.buf, data[:3000]) {
		t.Fatalf("sink holds %d bytes, want the 3000 received", len(sink.buf))
	}
	if got := srv.ranges(); strings.Join(got, ",") != ",bytes=1000-,bytes=2000-" {
		t.Fatalf("requests' Range %q", got)
	}
}

func TestDownloadErrorStatus(t *testing.T) {
	data := artifact(1000)
	srv := newServer(t, data, func(_ int, w http.ResponseWriter, r *http.Request) bool {
		http.NotFound(w, r)
		return true
	})
	sink := &memSink{buf: data[:10:10]}
	if err := Download(context.Background(), srv.request(data), sink); !errors.Is(err, ErrResponse) {
		t.Fatalf("err %v, want ErrResponse", err)
	}
	if len(sink.buf) != 10 {
		t.Fatal("a 404 discarded the partial download")
	}
}

func TestDownloadRefusesInsecure(t *testing.T) {
	req := Request{URL: "http://127.0.0.1:1/a", Length: 1}
	if err := Download(context.Background(), req, &memSink{}); !errors.Is(err, ErrInsecure) {
		t.Fatalf("http without a client: %v, want ErrInsecure", err)
	}
	for _, u := range []string{"ftp://x/a", "file:///etc/passwd", "https:///a", "::"} {
		if err := Download(context.Background(), Request{URL: u, Length: 1}, &memSink{}); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
}

func TestDownloadRedirects(t *testing.T) {
	data := artifact(1000)
	plain := newServer(t, data, nil)
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		case "/downgrade":
			http.Redirect(w, r, plain.URL+"/a", http.StatusFound)
		}
	}))
	defer tlsSrv.Close()
	for _, path := range []string{"/loop", "/downgrade"} {
		req := Request{URL: tlsSrv.URL + path, Length: 1000, SHA256: sha256.Sum256(data), Client: tlsSrv.Client()}
		err := Download(context.Background(), req, &memSink{})
		if !errors.Is(err, ErrResponse) {
			t.Errorf("%s: %v, want ErrResponse", path, err)
		}
	}
	if got := plain.ranges(); len(got) != 0 {
		t.Errorf("downgraded request reached the plain server: %q", got)
	}
}

// BenchmarkDownload measures Download from a local server into a sink that
// discards; compare with BenchmarkBaselineCopySHA256.
func BenchmarkDownload(b *testing.B) {
	data := artifact(16 << 20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	req := Request{URL: srv.URL, Length: int64(len(data)), SHA256: sha256.Sum256(data), Client: srv.Client()}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if err := Download(context.Background(), req, &discardSink{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBaselineCopySHA256 is the floor: one GET, io.Copy through
// SHA-256 into io.Discard.
func BenchmarkBaselineCopySHA256(b *testing.B) {
	data := artifact(16 << 20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	c := srv.Client()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		resp, err := c.Get(srv.URL)
		if err != nil {
			b.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(h, io.Discard), resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
}

type discardSink struct{ n int64 }

func (s *discardSink) Write(p []byte) (int, error) { s.n += int64(len(p)); return len(p), nil }
func (s *discardSink) Offset() int64               { return s.n }
func (s *discardSink) Existing() io.Reader         { return strings.NewReader("") }
func (s *discardSink) Reset() error                { s.n = 0; return nil }
func (s *discardSink) Sync() error                 { return nil }
