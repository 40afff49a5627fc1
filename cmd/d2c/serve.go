// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
)

// serveOptions say how [serveHTTP] runs a server.
type serveOptions struct {
	name            string       // the server in log lines: "registrar"
	log             *slog.Logger // where "<name> shutting down" and "<name> stopped" go
	listen          string       // TCP address, host:port
	tls             bool         // serve TLS with the server's TLSConfig
	urlFile         string       // gets the URL once listening, removed on return; "" for none
	shutdownTimeout time.Duration
	// announce is called once the server listens on addr: it tells the
	// operator and returns the server's URL.
	announce func(addr net.Addr) string
}

// serveHTTP listens and serves srv until ctx is done (SIGINT, SIGTERM),
// then shuts it down gracefully: requests in flight get o.shutdownTimeout
// to finish before their connections are closed. The serve commands share
// it.
func serveHTTP(ctx context.Context, srv *http.Server, o serveOptions) error {
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() {
		if o.tls {
			served <- srv.ServeTLS(ln, "", "")
		} else {
			served <- srv.Serve(ln)
		}
	}()

	url := o.announce(ln.Addr())
	if o.urlFile != "" {
		if err := atomicfile.WriteFile(nil, o.urlFile, []byte(url+"\n")); err != nil {
			_ = srv.Close()
			return err
		}
		defer os.Remove(o.urlFile)
	}

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	o.log.Info(o.name + " shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	if err != nil {
		_ = srv.Close()
	}
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	o.log.Info(o.name + " stopped")
	return nil
}
