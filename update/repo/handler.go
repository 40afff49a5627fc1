// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package repo

import (
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path"
	"strings"
	"time"
)

// Handler serves the files of the repository in dir as devices fetch them
// ([update.HTTPSource]): GET and HEAD only, with byte ranges (devices
// resume interrupted downloads with Range requests) and conditional
// requests, through [http.ServeContent]. Metadata (*.json) is sent with
// "Cache-Control: no-cache", so that a cache in between revalidates the
// timestamp instead of serving a stale one.
//
// It never lists a directory, never serves a dot file (the lock, the
// temporary files of an interrupted write) or a *.key file, and nothing
// outside dir: a path with a ".." segment is refused and a symbolic link
// leading out of dir is not followed ([os.Root]). Each request is logged
// to log at level Info (nil: no logging).
//
// Handler adds no TLS and no authentication: the metadata is signed, so
// any server will do, but devices fetch over HTTPS; serve it with
// [http.Server.ListenAndServeTLS] or behind a web server, an object store
// or a CDN.
func Handler(dir string, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		lw := &loggingWriter{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			log.Info("request", "method", r.Method, "path", r.URL.Path, "range", r.Header.Get("Range"),
				"status", lw.status, "bytes", lw.n, "remote", r.RemoteAddr, "duration", time.Since(start).Round(time.Microsecond))
		}()
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			lw.Header().Set("Allow", "GET, HEAD")
			http.Error(lw, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name, status := fileName(r.URL.Path)
		if status != http.StatusOK {
			http.Error(lw, http.StatusText(status), status)
			return
		}
		serveFile(lw, r, dir, name, log)
	})
}

// fileName returns the name, relative to the repository, that a URL path
// names, or the status refusing it: 400 for a path that is not absolute
// or climbs with "..", 404 for a directory (no listings), a dot file or a
// key.
func fileName(urlPath string) (string, int) {
	if !strings.HasPrefix(urlPath, "/") {
		return "", http.StatusBadRequest
	}
	for seg := range strings.SplitSeq(urlPath, "/") {
		if seg == ".." {
			return "", http.StatusBadRequest
		}
	}
	if strings.HasSuffix(urlPath, "/") {
		return "", http.StatusNotFound
	}
	p := path.Clean(urlPath)
	for seg := range strings.SplitSeq(p, "/") {
		if strings.HasPrefix(seg, ".") {
			return "", http.StatusNotFound
		}
	}
	if strings.HasSuffix(p, ".key") {
		return "", http.StatusNotFound
	}
	return p[1:], http.StatusOK
}

// serveFile serves the regular file name of dir, opened through os.Root
// so that nothing outside dir is reached.
func serveFile(w http.ResponseWriter, r *http.Request, dir, name string, log *slog.Logger) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		log.Error("repository unreadable", "dir", dir, "err", err)
		http.Error(w, http.StatusText(http.StatusServiceUnavailable), http.StatusServiceUnavailable)
		return
	}
	defer root.Close()
	// Stat before opening: opening a FIFO would block.
	if st, err := root.Stat(name); err != nil || !st.Mode().IsRegular() {
		notFound(w, r, err, log)
		return
	}
	f, err := root.Open(name)
	if err != nil {
		notFound(w, r, err, log)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		notFound(w, r, err, log)
		return
	}
	if strings.HasSuffix(name, ".json") {
		w.Header().Set("Cache-Control", "no-cache")
	}
	http.ServeContent(w, r, st.Name(), st.ModTime(), f)
}

// notFound answers 404; an error other than a missing file (a link out
// of the repository, an I/O error) is logged.
func notFound(w http.ResponseWriter, r *http.Request, err error, log *slog.Logger) {
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("file not served", "path", r.URL.Path, "err", err)
	}
	http.NotFound(w, r)
}

// loggingWriter records the status and size of a response.
type loggingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *loggingWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *loggingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *loggingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
