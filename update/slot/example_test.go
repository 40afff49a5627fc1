// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package slot_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/d2c-iot/d2c/update/slot"
)

// Directory slots for an application-level update: write the new version
// into the inactive slot, switch on trial, restart, confirm.
func ExampleDirSlots() {
	ctx := context.Background()
	base, err := os.MkdirTemp("", "slots")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(base)
	dir := filepath.Join(base, "app")

	// Once, at installation: slot a holds the factory version.
	if err := slot.InitDirSlots(dir, strings.NewReader("app v1")); err != nil {
		log.Fatal(err)
	}

	// At each start of the application.
	s, err := slot.OpenDirSlots(dir)
	if err != nil {
		log.Fatal(err)
	}
	booted, _ := s.Booted(ctx)
	fmt.Println("booted:", booted)

	// The agent installs an update into the other slot.
	img, err := s.Open(ctx, slot.Other(booted))
	if err != nil {
		log.Fatal(err)
	}
	io.WriteString(img, "app v2") // the verified download, in practice
	if err := img.Sync(); err != nil {
		log.Fatal(err)
	}
	img.Close()
	if err := s.Switch(ctx, slot.Other(booted), true); err != nil {
		log.Fatal(err)
	}

	// The application restarts from dir/current/image.
	s, _ = slot.OpenDirSlots(dir)
	b, _ := os.ReadFile(filepath.Join(dir, "current", "image"))
	booted, _ = s.Booted(ctx)
	_, trial, _ := s.Next(ctx)
	fmt.Printf("booted: %s (%s), trial: %v\n", booted, b, trial)

	// Its health check passed.
	if err := s.Confirm(ctx); err != nil {
		log.Fatal(err)
	}
	_, trial, _ = s.Next(ctx)
	fmt.Println("trial after Confirm:", trial)
	// Output:
	// booted: a
	// booted: b (app v2), trial: true
	// trial after Confirm: false
}
