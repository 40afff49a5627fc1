// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/update"
)

// d2cRun runs the CLI in process and fails the test unless it exits 0.
func d2cRun(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), args, &stdout, &stderr); code != exitOK {
		t.Fatalf("d2c %s: exit %d\n%s", strings.Join(args, " "), code, stderr.String())
	}
	return stdout.String()
}

// newTestRepo builds a repository in a temporary directory with one
// release of image, and returns the directory.
func newTestRepo(t *testing.T, image []byte) (dir, keys string) {
	t.Helper()
	tmp := t.TempDir()
	keys, dir = filepath.Join(tmp, "keys"), filepath.Join(tmp, "repo")
	for _, role := range []string{"root", "release", "timestamp"} {
		d2cRun(t, "update", "keys", "gen", "--role", role, "--out", keys)
	}
	d2cRun(t, "update", "root", "init", "--repo", dir, "--root-key", filepath.Join(keys, "root.key"),
		"--release-pub", filepath.Join(keys, "release.pub"), "--timestamp-pub", filepath.Join(keys, "timestamp.pub"))
	img := filepath.Join(tmp, "fw.bin")
	if err := os.WriteFile(img, image, 0o644); err != nil {
		t.Fatal(err)
	}
	d2cRun(t, "update", "release", "sign", "--repo", dir, "--key", filepath.Join(keys, "release.key"),
		"--version", "3", "--security-counter", "1", "--hardware-class", "hw", "--image", img,
		"--timestamp-key", filepath.Join(keys, "timestamp.key"), "--progress=false")
	return dir, keys
}

// lockedBuffer is a bytes.Buffer safe for the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestUpdateServe runs "update serve" in process on a free loopback port:
// metadata and images by GET, HEAD and Range, nothing else (the handler,
// update/repo.Handler, has its own tests, a device's view included);
// cancelling the context stops the server.
func TestUpdateServe(t *testing.T) {
	image := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	dir, _ := newTestRepo(t, image)
	if err := os.WriteFile(filepath.Join(dir, "stray.key"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".release.json.tmp-1"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, repoLockFile)); err != nil {
		t.Fatalf("the signing commands left no lock file: %v", err)
	}

	urlFile := filepath.Join(t.TempDir(), "url")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"update", "serve", "--repo", dir, "--listen", "127.0.0.1:0", "--url-file", urlFile}, &stdout, &stderr)
	}()
	base := waitURL(t, urlFile, done)

	get := func(method, path string, header ...string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}

	resp, body := get("GET", "timestamp.json")
	want, _ := os.ReadFile(filepath.Join(dir, "timestamp.json"))
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Errorf("GET timestamp.json: %s, %d bytes (want %d)", resp.Status, len(body), len(want))
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("GET timestamp.json: Cache-Control %q", cc)
	}

	resp, body = get("GET", "v3/fw.bin", "Range", "bytes=100-199")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, image[100:200]) {
		t.Errorf("GET v3/fw.bin with Range: %s, %q", resp.Status, body)
	}
	if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes 100-199/%d", len(image)) {
		t.Errorf("Content-Range %q", cr)
	}
	resp, body = get("HEAD", "v3/fw.bin")
	if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.ContentLength != int64(len(image)) {
		t.Errorf("HEAD v3/fw.bin: %s, Content-Length %d, body %d bytes", resp.Status, resp.ContentLength, len(body))
	}

	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"POST", "timestamp.json", http.StatusMethodNotAllowed},
		{"PUT", "v3/fw.bin", http.StatusMethodNotAllowed},
		{"GET", "", http.StatusNotFound},                    // no listing
		{"GET", "v3/", http.StatusNotFound},                 // no listing
		{"GET", "stray.key", http.StatusNotFound},           // never a key
		{"GET", ".release.json.tmp-1", http.StatusNotFound}, // never a temporary
		{"GET", repoLockFile, http.StatusNotFound},          // never the lock
		{"GET", "7.root.json", http.StatusNotFound},
	} {
		if resp, _ := get(c.method, c.path); resp.StatusCode != c.status {
			t.Errorf("%s /%s: %s, want %d", c.method, c.path, resp.Status, c.status)
		}
	}

	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("update serve: exit %d\n%s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("update serve did not stop")
	}
	if _, err := os.Stat(urlFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("url file left behind: %v", err)
	}
	out, log := stdout.String(), stderr.String()
	if !strings.Contains(out, "serving "+dir+" at "+base) {
		t.Errorf("stdout: %q", out)
	}
	for _, want := range []string{
		"warning: development server, plain HTTP",
		`msg=request method=GET path=/v3/fw.bin range="bytes=100-199" status=206 bytes=100`,
		"path=/stray.key range=\"\" status=404",
		"msg=\"repository server stopped\"",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("stderr lacks %q:\n%s", want, log)
		}
	}
}

// TestUpdateRepoLock holds a repository's lock as a command writing it
// would: each writing command waits for it, then fails saying why, having
// written nothing; a command whose wait outlasts the holder goes ahead.
func TestUpdateRepoLock(t *testing.T) {
	dir, keys := newTestRepo(t, []byte("firmware"))
	newDir := filepath.Join(t.TempDir(), "new")
	if err := os.Mkdir(newDir, 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "fw4.bin")
	if err := os.WriteFile(img, []byte("firmware 4"), 0o644); err != nil {
		t.Fatal(err)
	}
	key := func(role string) string { return filepath.Join(keys, role+".key") }
	timestamp := []string{"update", "timestamp", "--repo", dir, "--key", key("timestamp")}
	for _, c := range []struct {
		repo string
		args []string
	}{
		{dir, timestamp},
		{dir, []string{"update", "release", "sign", "--repo", dir, "--key", key("release"), "--version", "4",
			"--security-counter", "1", "--hardware-class", "hw", "--image", img, "--timestamp-key", key("timestamp"), "--progress=false"}},
		{dir, []string{"update", "root", "rotate", "--repo", dir, "--old-key", key("root")}},
		{newDir, []string{"update", "root", "init", "--repo", newDir, "--root-key", key("root"),
			"--release-pub", filepath.Join(keys, "release.pub"), "--timestamp-pub", filepath.Join(keys, "timestamp.pub")}},
	} {
		name, _, _ := strings.Cut(strings.Join(c.args, " "), " --")
		t.Run(name, func(t *testing.T) {
			defer func(w time.Duration) { repoLockWait = w }(repoLockWait)
			repoLockWait = 100 * time.Millisecond
			unlock, err := atomicfile.Lock(filepath.Join(c.repo, repoLockFile))
			if err != nil {
				t.Fatal(err)
			}
			defer unlock()
			before := listRepo(t, c.repo)
			var stdout, stderr bytes.Buffer
			start := time.Now()
			code := run(t.Context(), c.args, &stdout, &stderr)
			if waited := time.Since(start); waited < repoLockWait {
				t.Errorf("gave up after %v, before waiting %v", waited, repoLockWait)
			}
			want := "another d2c update command is writing " + c.repo + "; try again"
			if code != exitError || !strings.Contains(stderr.String(), want) || !strings.Contains(stderr.String(), "hint: ") {
				t.Errorf("exit %d, stderr %q; want exit %d, %q and a hint", code, stderr.String(), exitError, want)
			}
			if after := listRepo(t, c.repo); after != before {
				t.Errorf("written while locked:\n%s\nwas\n%s", after, before)
			}
		})
	}

	// Released while the timestamp job waits: it goes ahead.
	unlock, err := atomicfile.Lock(filepath.Join(dir, repoLockFile))
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(200*time.Millisecond, unlock)
	if out := d2cRun(t, timestamp...); !strings.Contains(out, "timestamp version 2 written") {
		t.Errorf("after the wait: %q", out)
	}
}

// TestUpdateTimestampRefusals: "update timestamp" on a repository it
// cannot sign for says why and what to do, and writes nothing.
func TestUpdateTimestampRefusals(t *testing.T) {
	dir, keys := newTestRepo(t, []byte("firmware"))
	key := func(role string) string { return filepath.Join(keys, role+".key") }
	bare := filepath.Join(t.TempDir(), "bare")
	d2cRun(t, "update", "root", "init", "--repo", bare, "--root-key", key("root"),
		"--release-pub", filepath.Join(keys, "release.pub"), "--timestamp-pub", filepath.Join(keys, "timestamp.pub"))
	nowhere := filepath.Join(t.TempDir(), "nowhere")
	for _, c := range []struct{ repo, key, err, hint string }{
		{nowhere, key("timestamp"), "repo: no update repository: stat " + nowhere,
			"create the repository with `d2c update root init --repo " + nowhere + "`"},
		{bare, key("timestamp"), "repo: no release in " + bare,
			"sign one with `d2c update release sign --repo " + bare + "`"},
		{dir, key("release"), "is not a timestamp key of root version 1",
			"trust a new key first with `d2c update root rotate --repo " + dir + " --timestamp-pub FILE`"},
	} {
		var before string
		if c.repo != nowhere {
			before = listRepo(t, c.repo)
		}
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), []string{"update", "timestamp", "--repo", c.repo, "--key", c.key}, &stdout, &stderr)
		if code != exitError || !strings.Contains(stderr.String(), c.err) || !strings.Contains(stderr.String(), "hint: ") ||
			!strings.Contains(stderr.String(), c.hint) {
			t.Errorf("%s: exit %d, stderr %q; want %q and the hint %q", c.repo, code, stderr.String(), c.err, c.hint)
		}
		if c.repo != nowhere && listRepo(t, c.repo) != before {
			t.Errorf("%s: written although refused", c.repo)
		}
	}
}

// listRepo lists the names, sizes and modification times of the files in
// dir, to tell whether a command wrote any.
func listRepo(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %d %s\n", path, info.Size(), info.ModTime().Format(time.RFC3339Nano))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// waitURL waits for the server to write its URL file, or to exit.
func waitURL(t *testing.T, path string, done <-chan int) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return strings.TrimSpace(string(b))
		}
		select {
		case code := <-done:
			t.Fatalf("update serve exited with %d before listening", code)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("update serve did not listen within 10s")
		}
	}
}

// TestUpdateServeRefusesNonLoopback checks the address guard, in both
// directions.
func TestUpdateServeRefusesNonLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "::1": true, "localhost": true, "127.1.2.3": true,
		"0.0.0.0": false, "": false, "::": false, "192.168.1.10": false, "example.com": false,
	} {
		if got := isLoopback(host); got != want {
			t.Errorf("isLoopback(%q) = %v", host, got)
		}
	}
}

// TestProgressBar checks the bar's drawing and its rate limit.
func TestProgressBar(t *testing.T) {
	var out bytes.Buffer
	now := time.Unix(1000, 0)
	p := &progressBar{w: &out, label: "image fw.bin", total: 4 << 20, start: now, now: func() time.Time { return now }}
	now = now.Add(time.Second)
	p.update(1 << 20) // drawn: the first update
	p.update(2 << 20) // not drawn: within 100 ms
	now = now.Add(time.Second)
	p.update(3 << 20) // drawn
	p.finish(4 << 20)
	lines := strings.Split(out.String(), "\r")
	if len(lines) != 4 || lines[0] != "" {
		t.Fatalf("drawings: %q", lines)
	}
	for i, want := range []string{
		"image fw.bin [#######                       ]  25%     1.0 MB/s",
		"image fw.bin [######################        ]  75%     1.6 MB/s",
		"image fw.bin [##############################] 100%     2.1 MB/s\n",
	} {
		if lines[i+1] != want {
			t.Errorf("drawing %d: %q, want %q", i, lines[i+1], want)
		}
	}
}

// TestUpdateHints checks that every update refusal a signing command can
// meet maps to a hint.
func TestUpdateHints(t *testing.T) {
	for _, sentinel := range []error{
		update.ErrRootVersionSkip, update.ErrExpired, update.ErrUnknownKey, update.ErrThreshold,
		update.ErrBadSignature, update.ErrSecurityCounter, update.ErrRollback, update.ErrMixAndMatch,
		update.ErrWrongHardware, update.ErrDigest, update.ErrMalformed, update.ErrTooLarge,
		update.ErrState, update.ErrLocked, update.ErrBusy, update.ErrNoTrial,
	} {
		if hintFor(fmt.Errorf("context: %w", sentinel)) == "" {
			t.Errorf("no hint for %v", sentinel)
		}
	}
	// The security counter is a rollback too: its own hint wins.
	if h := hintFor(update.ErrSecurityCounter); !strings.Contains(h, "--security-counter") {
		t.Errorf("hint for a security counter: %q", h)
	}
}

// TestParseAt checks the forms of --at.
func TestParseAt(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"now":                  now,
		"now+25h":              now.Add(25 * time.Hour),
		"now-1m":               now.Add(-time.Minute),
		"2031-05-06T07:08:09Z": time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC),
	} {
		if got, err := parseAt(in, now); err != nil || !got.Equal(want) {
			t.Errorf("parseAt(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "tomorrow", "now+", "now+x", "2031-05-06"} {
		if _, err := parseAt(in, now); err == nil {
			t.Errorf("parseAt(%q) accepted", in)
		}
	}
}

// TestUpdateVerifyReleaseCopy checks that "update verify" refuses a
// repository whose release.json, from which the timestamp is re-signed,
// is not the release the timestamp names: modified, missing, or a newer
// release whose publication stopped before its timestamp; and that the
// hint repairs each.
func TestUpdateVerifyReleaseCopy(t *testing.T) {
	dir, keys := newTestRepo(t, []byte("firmware"))
	relCopy, versioned := filepath.Join(dir, "release.json"), filepath.Join(dir, "3.release.json")
	verify := []string{"update", "verify", "--repo", dir, "--root", filepath.Join(dir, "1.root.json"), "--hardware-class", "hw"}
	d2cRun(t, verify...)
	refused := func(want ...string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), verify, &stdout, &stderr)
		for _, w := range want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("exit %d, stderr %q; want %q", code, stderr.String(), w)
			}
		}
		if code != exitError || stdout.Len() != 0 {
			t.Errorf("exit %d, stdout %q; want exit 1 and nothing", code, stdout.String())
		}
	}
	restore := "hint: restore it: cp " + versioned + " " + relCopy

	// Garbage, and a signed release with one byte changed.
	good, err := os.ReadFile(relCopy)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{[]byte("garbage"), append(bytes.Clone(good), '\n')} {
		if err := os.WriteFile(relCopy, b, 0o644); err != nil {
			t.Fatal(err)
		}
		refused(relCopy+" differs from "+versioned+", the release version 3 that timestamp.json names", restore)
	}
	if err := os.Remove(relCopy); err != nil {
		t.Fatal(err)
	}
	refused(relCopy+" is missing", restore)
	if err := os.WriteFile(relCopy, good, 0o644); err != nil {
		t.Fatal(err)
	}
	d2cRun(t, verify...)

	// Release 4 signed, but the timestamp naming release 3 still in place.
	oldTimestamp, err := os.ReadFile(filepath.Join(dir, "timestamp.json"))
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "fw4.bin")
	if err := os.WriteFile(img, []byte("firmware 4"), 0o644); err != nil {
		t.Fatal(err)
	}
	d2cRun(t, "update", "release", "sign", "--repo", dir, "--key", filepath.Join(keys, "release.key"),
		"--version", "4", "--security-counter", "1", "--hardware-class", "hw", "--image", img,
		"--timestamp-key", filepath.Join(keys, "timestamp.key"), "--progress=false")
	if err := os.WriteFile(filepath.Join(dir, "timestamp.json"), oldTimestamp, 0o644); err != nil {
		t.Fatal(err)
	}
	refused("differs from "+versioned, "hint: release.json holds release 4, which no timestamp names yet",
		"`d2c update timestamp --repo "+dir+" --key FILE`")
	d2cRun(t, "update", "timestamp", "--repo", dir, "--key", filepath.Join(keys, "timestamp.key"))
	if out := d2cRun(t, verify...); !strings.Contains(out, "release:   version 4 ") {
		t.Errorf("after update timestamp:\n%s", out)
	}
}
