// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command token-reuse plays an attacker who got hold of a device's
// enrollment token after the device used it, and tries to enroll a machine
// of its own with it: before and after a registrar restart, and under
// another device ID. The registrar refuses each time and records nothing.
//
//	go run ./examples/attacks/token-reuse
package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/identity"
)

func main() { lab.Main(run) }

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("token-reuse", "a used enrollment token is presented again")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	n.Lab("fleet CA and EST registrar on %s", f.RegistrarURL())

	token, err := f.Token("cam-7")
	if err != nil {
		return err
	}
	cam, err := f.NewStore("cam-7", identity.StoreConfig{})
	if err != nil {
		return err
	}
	id, err := cam.Enroll(ctx, f.EST(), identity.EnrollRequest{DeviceID: "cam-7", Auth: identity.EnrollAuth{Token: token}})
	if err != nil {
		return err
	}
	serial := id.Certificate().SerialNumber
	n.Lab("the operator issued a one-time token for cam-7; cam-7 enrolled with it (certificate serial %x)", serial)
	n.Lab("tokens recorded as used by the registrar: %d", f.Tokens.Recorded())

	laptop, err := f.NewStore("attacker-laptop", identity.StoreConfig{})
	if err != nil {
		return err
	}
	attempt := func(deviceID string, want error, wantName string) error {
		_, err := laptop.Enroll(ctx, f.EST(), identity.EnrollRequest{DeviceID: deviceID, Auth: identity.EnrollAuth{Token: token}})
		if err == nil {
			return lab.Succeeded("the registrar issued the attacker a certificate for %s", deviceID)
		}
		if !errors.Is(err, want) {
			return fmt.Errorf("refused, but not with %v: %v", want, err)
		}
		n.D2C("the registrar refused: %v\n(errors.Is(err, identity.%s))", err, wantName)
		return nil
	}

	n.Section("1. the token again, for cam-7")
	n.Attacker("found cam-7's token in the installer app's history; enrolled its laptop as cam-7 with it")
	if err := attempt("cam-7", identity.ErrTokenReused, "ErrTokenReused"); err != nil {
		return err
	}
	n.Why("the token's ID (jti) was recorded as used when cam-7's certificate was issued; a token works once.")

	n.Section("2. the token again, after a registrar restart")
	if err := f.StartRegistrar(); err != nil {
		return err
	}
	n.Lab("the registrar restarted (now on %s) and reopened its used-token store from disk", f.RegistrarURL())
	n.Attacker("tried again, hoping the registrar forgot")
	if err := attempt("cam-7", identity.ErrTokenReused, "ErrTokenReused"); err != nil {
		return err
	}
	n.Why("each use is appended to a journal and fsynced before the certificate is sent, so it survives restarts\n" +
		"and power cuts (identity.FileUsedTokens).")

	n.Section("3. the token for another device ID")
	n.Attacker("presented cam-7's token as the credential of cam-8, a device that was never enrolled")
	if err := attempt("cam-8", identity.ErrNotAuthorized, "ErrNotAuthorized"); err != nil {
		return err
	}
	n.Why("a token is bound to one device ID (its sub claim): the registrar requires it to equal the EST user name\n" +
		"and the CN of the certificate request.")

	n.Section("what changed")
	if got := f.Tokens.Recorded(); got != 1 {
		return lab.Succeeded("the registrar recorded %d token uses, 1 was genuine", got)
	}
	if _, err := laptop.Current(); !errors.Is(err, identity.ErrNoIdentity) {
		return lab.Succeeded("the attacker's laptop holds an identity (%v)", err)
	}
	cur, err := cam.Current()
	if err != nil {
		return err
	}
	if cur.Certificate().SerialNumber.Cmp(serial) != 0 {
		return fmt.Errorf("cam-7's certificate changed")
	}
	n.D2C("tokens recorded as used: still %d; the attacker's laptop holds no certificate (identity.ErrNoIdentity);\n"+
		"cam-7 keeps its certificate %x", f.Tokens.Recorded(), serial)
	n.Why("every refusal is a 4xx answer that changes no state: a token is consumed only when a certificate is issued.")

	n.Stopped("the used token enrolled nothing, before or after a restart, under any name")
	return nil
}
