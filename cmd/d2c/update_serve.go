// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	updaterepo "github.com/d2c-iot/d2c/update/repo"
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
It never lists directories, never serves dot files (the lock, temporary files
of an interrupted write) or *.key files, and nothing outside DIR (a symbolic
link leading out is not followed). Metadata (*.json) is sent with
"Cache-Control: no-cache". Each request is logged on stderr. The server is
package update/repo's Handler, which a service can run itself.

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
		Handler:           updaterepo.Handler(dir, log),
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
