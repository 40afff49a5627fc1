// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package repo_test

import (
	"bufio"
	"bytes"
	"crypto"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/repo"
)

// TestHandler serves a repository: metadata and images by GET, HEAD and
// Range; never a listing, a dot file, a key, or anything outside the
// directory, however the path is spelled; then a device fetches and
// verifies it through update.HTTPSource.
func TestHandler(t *testing.T) {
	r := newTestRepo(t)
	if _, err := repo.SignTimestamp(t.Context(), r.Dir, []crypto.Signer{r.TimestampKey}, time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	r.Write(t, "stray.key", []byte("secret"))
	r.Write(t, "v3/old.key", []byte("secret"))
	r.Write(t, ".release.json.tmp-1", []byte("partial"))
	r.Write(t, ".hidden/fw.bin", []byte("hidden"))
	outside := filepath.Join(filepath.Dir(r.Dir), "secret.txt")
	if err := os.WriteFile(outside, []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(r.Dir, "escape.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Dir(r.Dir), filepath.Join(r.Dir, "up")); err != nil {
		t.Fatal(err)
	}

	logger, logs := newLog(t)
	srv := httptest.NewServer(repo.Handler(r.Dir, logger))
	defer srv.Close()

	// raw sends a request line as given, so that no client cleans the
	// path first.
	raw := func(method, target string, header ...string) (*http.Response, []byte) {
		t.Helper()
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		req := method + " " + target + " HTTP/1.1\r\nHost: repo\r\nConnection: close\r\n"
		for i := 0; i+1 < len(header); i += 2 {
			req += header[i] + ": " + header[i+1] + "\r\n"
		}
		if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}

	resp, body := raw("GET", "/timestamp.json")
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, r.Read(t, "timestamp.json")) {
		t.Errorf("GET /timestamp.json: %s, %d bytes", resp.Status, len(body))
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("GET /timestamp.json: Cache-Control %q, want no-cache", cc)
	}
	resp, body = raw("GET", "/v3/fw.bin", "Range", "bytes=100-199")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, r.image[100:200]) {
		t.Errorf("GET /v3/fw.bin with Range: %s, %q", resp.Status, body)
	}
	if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes 100-199/%d", len(r.image)) {
		t.Errorf("Content-Range %q", cr)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "" {
		t.Errorf("an image with Cache-Control %q", cc)
	}
	resp, body = raw("HEAD", "/v3/fw.bin")
	if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.ContentLength != int64(len(r.image)) {
		t.Errorf("HEAD /v3/fw.bin: %s, Content-Length %d, body %d bytes", resp.Status, resp.ContentLength, len(body))
	}
	resp, body = raw("GET", "/v3/fw.bin", "Range", "bytes=100-199", "If-Range", `"other"`)
	if resp.StatusCode != http.StatusOK || len(body) != len(r.image) {
		t.Errorf("GET with a stale If-Range: %s, %d bytes, want the whole image", resp.Status, len(body))
	}

	for _, c := range []struct {
		method, target string
		status         int
	}{
		{"POST", "/timestamp.json", http.StatusMethodNotAllowed},
		{"PUT", "/v3/fw.bin", http.StatusMethodNotAllowed},
		{"DELETE", "/v3/fw.bin", http.StatusMethodNotAllowed},
		{"GET", "/", http.StatusNotFound},                    // no listing
		{"GET", "/v3/", http.StatusNotFound},                 // no listing
		{"GET", "/v3", http.StatusNotFound},                  // no listing, no redirect to one
		{"GET", "/stray.key", http.StatusNotFound},           // never a key
		{"GET", "/v3/old.key", http.StatusNotFound},          // never a key
		{"GET", "/.release.json.tmp-1", http.StatusNotFound}, // never a temporary file
		{"GET", "/.lock", http.StatusNotFound},               // never the lock
		{"GET", "/.hidden/fw.bin", http.StatusNotFound},      // nothing in a dot directory
		{"GET", "/%2ehidden/fw.bin", http.StatusNotFound},
		{"GET", "/7.root.json", http.StatusNotFound},
		{"GET", "/../secret.txt", http.StatusBadRequest},
		{"GET", "/v3/../../secret.txt", http.StatusBadRequest},
		{"GET", "/%2e%2e/secret.txt", http.StatusBadRequest},
		{"GET", "/v3/%2E%2E/%2e%2e/secret.txt", http.StatusBadRequest},
		{"GET", "/..%2fsecret.txt", http.StatusBadRequest},
		{"GET", "http://repo/../secret.txt", http.StatusBadRequest}, // absolute form
		{"GET", "//etc/passwd", http.StatusNotFound},                // absolute path: inside the repository
		{"GET", "/" + outside, http.StatusNotFound},
		{"GET", "/escape.txt", http.StatusNotFound},    // a link out of the repository
		{"GET", "/up/secret.txt", http.StatusNotFound}, // a link to a directory out of it
		{"GET", "/up/repo/timestamp.json", http.StatusNotFound},
	} {
		resp, body := raw(c.method, c.target)
		if resp.StatusCode != c.status {
			t.Errorf("%s %s: %s, want %d", c.method, c.target, resp.Status, c.status)
		}
		if bytes.Contains(body, []byte("secret")) || bytes.Contains(body, []byte("outside")) || bytes.Contains(body, []byte("root:")) {
			t.Errorf("%s %s: served %q", c.method, c.target, body)
		}
	}
	if resp, _ := raw("POST", "/timestamp.json"); resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("405 without Allow: GET, HEAD")
	}

	// A device's view.
	src := &update.HTTPSource{BaseURL: srv.URL + "/", Client: srv.Client()}
	pinned, err := src.Root(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := update.NewTrusted(pinned, update.Floors{}, time.Now(), testHardware)
	if err != nil {
		t.Fatal(err)
	}
	b, err := src.Timestamp(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ts, err := tr.UpdateTimestamp(b)
	if err != nil {
		t.Fatal(err)
	}
	if b, err = src.Release(t.Context(), ts.Release.Version); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.UpdateRelease(b); err != nil {
		t.Fatal(err)
	}

	for _, want := range []string{
		`msg=request method=GET path=/v3/fw.bin range="bytes=100-199" status=206 bytes=100`,
		`path=/stray.key range="" status=404`,
		`msg="file not served" path=/escape.txt`,
	} {
		if !strings.Contains(logs(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs())
		}
	}
}
