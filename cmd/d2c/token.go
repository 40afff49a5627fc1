// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/d2c-iot/d2c/identity"
)

func tokenIssueCommand() *command {
	return &command{
		path:    "token issue",
		summary: "sign a one-time enrollment token for a device",
		usage:   "--ca DIR --device ID [--ttl DURATION]",
		details: `
Signs an enrollment token (a JWT bound to one device ID, single use) with the
fleet token key, DIR/token.key, and prints it alone on stdout, so that
$(d2c token issue ...) captures it. Everything else goes to stderr.

A token is a bearer credential until it is used or expires: deliver it to its
device over a channel you trust (factory line, installer app), and prefer
files (device enroll --token-file) to command lines, which other users of the
machine can see.`,
		example: `d2c token issue --ca /srv/d2c/ca --device sensor-0042 --ttl 30m > sensor-0042.token
d2c device enroll --store /var/lib/d2c --url https://est.example.com:8443 \
    --device sensor-0042 --token-file sensor-0042.token --fingerprint "$(cat /srv/d2c/ca/root.sha256)"`,
		flags: func(fl *flag.FlagSet) func(context.Context, streams) error {
			dir := fl.String("ca", "", "fleet CA directory holding token.key (required)")
			device := fl.String("device", "", "device ID the token enrolls (required)")
			ttl := fl.Duration("ttl", identity.DefaultTokenTTL, fmt.Sprintf("token lifetime, at most %v", identity.MaxTokenTTL))
			return func(ctx context.Context, s streams) error {
				if *dir == "" || *device == "" {
					return usageErrorf("--ca and --device are required")
				}
				if *ttl <= 0 || *ttl > identity.MaxTokenTTL {
					return usageErrorf("--ttl %v: want more than 0 and at most %v", *ttl, identity.MaxTokenTTL)
				}
				if err := identity.ValidateDeviceID(*device); err != nil {
					return err
				}
				key, err := identity.ReadKeyFile(filepath.Join(*dir, identity.CATokenKeyFile))
				if errors.Is(err, fs.ErrNotExist) {
					return withHint(err, fmt.Sprintf("no token key in %s: check --ca, which is the directory given to `d2c ca init`", *dir))
				}
				if err != nil {
					return err
				}
				now := time.Now()
				tok, err := identity.TokenIssuer{Key: key, TTL: *ttl, Time: func() time.Time { return now }}.Issue(*device)
				if err != nil {
					return err
				}
				fmt.Fprintln(s.stdout, tok)
				fmt.Fprintf(s.stderr, "enrollment token for %s, single use, valid until %s\n",
					*device, now.Add(*ttl).UTC().Format(time.RFC3339))
				return nil
			}
		},
	}
}
