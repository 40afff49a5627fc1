package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"strings"
	"time"
)

// HTTP server bounds for "update serve". Requests are bodiless GETs;
// responses may be whole images, so there is no write timeout.
const (
	repoReadHeaderTimeout = 10 * time.Second
	repoIdleTimeout       = 60 * time.Second
	repoMaxHeaderBytes    = 16 << 10
	repoShutdownTimeout   = 5 * time.Second
)

func updateServeCommand() *command {
	return &command{
		path:    "update serve",
		summary: "serve a repository over plain HTTP for development",
		usage:   "--repo DIR [--listen ADDR] [--url-file FILE] [--dev-any-address]",
		details: `
Serves the files of the repository in DIR over plain HTTP, GET and HEAD only,
with byte ranges (devices resume interrupted downloads with Range requests).
It never lists directories and never serves dot files (temporary files of an
interrupted write) or *.key files. Metadata (*.json) is sent with
"Cache-Control: no-cache". Each request is logged on stderr.

It is for development and tests: production repositories are served over
HTTPS by a web server, an object store or a CDN (the metadata is signed, so
any of them will do). A device fetches over plain http only with an explicit
update.AgentConfig.Client.

It listens on a loopback address unless --dev-any-address is given. Once
listening it prints the repository URL on stdout, and writes it to
--url-file if given (useful with --listen 127.0.0.1:0, which picks a free
port; the file is removed on exit). It stops on SIGINT or SIGTERM.`,
		example: `d2c update serve --repo /srv/updates/fleet --listen 127.0.0.1:8080`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			repo := fl.String("repo", "", "repository directory (required)")
			listen := fl.String("listen", "127.0.0.1:8080", "TCP address to listen on, host:port")
			urlFile := fl.String("url-file", "", "file to write the repository URL to once listening")
			anyAddr := fl.Bool("dev-any-address", false, "allow a non-loopback --listen address (plain HTTP on the network)")
			return func(ctx context.Context, s streams) error {
				if *repo == "" {
					return usageErrorf("--repo is required")
				}
				host, _, err := net.SplitHostPort(*listen)
				if err != nil {
					return usageErrorf("--listen %q: %v", *listen, err)
				}
				if !isLoopback(host) && !*anyAddr {
					return withHint(fmt.Errorf("refusing to serve plain HTTP on %s, which is not a loopback address", *listen),
						"use --listen 127.0.0.1:PORT, or add --dev-any-address for a development network; "+
							"production repositories are served over HTTPS (web server, object store or CDN)")
				}
				if st, err := os.Stat(*repo); err != nil {
					return err
				} else if !st.IsDir() {
					return usageErrorf("--repo %s is not a directory", *repo)
				}
				return serveRepo(ctx, s, *repo, *listen, *urlFile)
			}
		},
	}
}

// isLoopback reports whether host (from host:port) only reaches this
// machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// serveRepo serves dir until ctx is done, then shuts down gracefully.
func serveRepo(ctx context.Context, s streams, dir, listen, urlFile string) error {
	log := slog.New(slog.NewTextHandler(s.stderr, nil))
	srv := &http.Server{
		Handler:           repoHandler(dir, log),
		ReadHeaderTimeout: repoReadHeaderTimeout,
		IdleTimeout:       repoIdleTimeout,
		MaxHeaderBytes:    repoMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return serveHTTP(ctx, srv, serveOptions{
		name: "repository server", log: log, listen: listen, urlFile: urlFile,
		shutdownTimeout: repoShutdownTimeout,
		announce: func(addr net.Addr) string {
			url := "http://" + addr.String() + "/"
			fmt.Fprintf(s.stdout, "serving %s at %s\n", dir, url)
			fmt.Fprintf(s.stderr, "warning: development server, plain HTTP: production repositories are served over HTTPS "+
				"(a web server, object store or CDN)\n")
			log.Info("repository listening", "url", url, "dir", dir)
			return url
		},
	})
}

// repoHandler serves the files of dir: GET and HEAD, ranges through
// http.ServeContent (inside http.FileServer), no listings, no dot files,
// no keys.
func repoHandler(dir string, log *slog.Logger) http.Handler {
	files := http.FileServer(http.Dir(dir))
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
		p := path.Clean("/" + r.URL.Path)
		if strings.HasSuffix(r.URL.Path, "/") || hiddenPath(p) {
			http.NotFound(lw, r)
			return
		}
		if strings.HasSuffix(p, ".json") {
			lw.Header().Set("Cache-Control", "no-cache")
		}
		files.ServeHTTP(lw, r)
	})
}

// hiddenPath reports whether a clean URL path names a dot file (or one
// inside a dot directory) or a private key.
func hiddenPath(p string) bool {
	for seg := range strings.SplitSeq(p, "/") {
		if strings.HasPrefix(seg, ".") {
			return true
		}
	}
	return strings.HasSuffix(p, ".key")
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
