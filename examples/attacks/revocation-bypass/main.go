// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command revocation-bypass plays a device owner (or a thief with its
// backups) who keeps every key: the device enrolls and renews twice, a copy
// of its identity store taken before each renewal; the operator revokes the
// two newest certificates; the device renews with its first certificate,
// which nobody revoked. With the fleet's registry (cloud/store) behind the
// registrar, the renewal is refused: a renewal supersedes the certificate
// that authenticated it.
//
//	go run ./examples/attacks/revocation-bypass
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/d2c-iot/d2c/cloud/store"
	"github.com/d2c-iot/d2c/examples/attacks/internal/lab"
	"github.com/d2c-iot/d2c/identity"
)

func main() { lab.Main(run) }

func run(ctx context.Context, out io.Writer) error {
	n := lab.NewNarrator(out)
	n.Title("revocation-bypass", "a device renews with an old certificate after its newest ones were revoked")

	f, err := lab.NewFleet(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	dbPath := filepath.Join(f.Dir, "cloud", "fleet.db")
	registry, err := store.Open(ctx, store.Config{URL: "sqlite:" + dbPath})
	if err != nil {
		return err
	}
	defer registry.Close()
	est, err := f.StartRegistryRegistrar(registry)
	if err != nil {
		return err
	}
	n.Lab("fleet CA; EST registrar on %s recording every certificate it issues in the fleet's registry\n"+
		"(cloud/store, SQLite %s, set as identity.RegistrarConfig.Registry)", est.URL, filepath.Base(dbPath))

	n.Section("1. a device that keeps every key")
	token, err := f.Token("pump-3")
	if err != nil {
		return err
	}
	pump, err := f.NewStore("pump-3", identity.StoreConfig{})
	if err != nil {
		return err
	}
	if _, err := pump.Enroll(ctx, est, identity.EnrollRequest{DeviceID: "pump-3", Auth: identity.EnrollAuth{Token: token}}); err != nil {
		return err
	}
	// copies[i] holds certificate i+1 and its key: the store copied just
	// before each renewal, and the device's own store for the newest.
	var copies []*identity.Store
	for i := 1; i <= 2; i++ {
		c, err := f.CopyStore(pump, fmt.Sprintf("pump-3-copy-%d", i))
		if err != nil {
			return err
		}
		copies = append(copies, c)
		if _, err := pump.Renew(ctx, est, identity.RenewOptions{}); err != nil {
			return err
		}
	}
	copies = append(copies, pump)
	var serials []string
	for _, c := range copies {
		id, err := c.Current()
		if err != nil {
			return err
		}
		serials = append(serials, fmt.Sprintf("%x", id.Certificate().SerialNumber))
	}
	n.Lab("pump-3 enrolled (certificate 1, serial %s) and renewed twice (certificates 2 and 3, serials %s and %s)",
		serials[0], serials[1], serials[2])
	n.Attacker("copied pump-3's identity store before each renewal: it holds the keys of certificates 1, 2 and 3,\n" +
		"where pump-3 itself kept only the newest")

	n.Section("2. the operator revokes the two newest certificates")
	for i := 1; i <= 2; i++ {
		id, err := copies[i].Current()
		if err != nil {
			return err
		}
		if err := registry.Revoke(ctx, id.Certificate().SerialNumber, store.ReasonKeyCompromise); err != nil {
			return err
		}
	}
	n.Lab("the operator revoked certificates 2 and 3 in the registry, reason keyCompromise\n"+
		"(d2c ca revoke --db sqlite:%s --serial %s, then --serial %s)", filepath.Base(dbPath), serials[1], serials[2])

	renew := func(c *identity.Store, want error, wantName string) error {
		before, err := c.Current()
		if err != nil {
			return err
		}
		renewed, err := c.Renew(ctx, est, identity.RenewOptions{})
		if err == nil {
			return lab.Succeeded("the registrar renewed serial %x: pump-3's keys hold a fresh certificate, serial %x, valid until %s",
				before.Certificate().SerialNumber, renewed.Certificate().SerialNumber, renewed.Certificate().NotAfter.Format("2006-01-02"))
		}
		if !errors.Is(err, want) {
			return fmt.Errorf("refused, but not with %v: %v", want, err)
		}
		if after, err := c.Current(); err != nil || after.Generation != before.Generation {
			return fmt.Errorf("a refused renewal changed the copy's identity (%v)", err)
		}
		n.D2C("the registrar refused: %v\n(errors.Is(err, identity.%s))", err, wantName)
		return nil
	}

	n.Section("3. renewal with the first certificate")
	n.Attacker("restored the copy holding certificate 1, which nobody revoked, and asked the registrar to renew it\n" +
		"(EST simplereenroll, authenticated by certificate 1)")
	if err := renew(copies[0], identity.ErrSuperseded, "ErrSuperseded"); err != nil {
		return err
	}
	n.Why("a renewal supersedes the certificate that authenticated it. When certificate 1 renewed, the registry\n" +
		"recorded certificate 2 as its successor, in the transaction that recorded certificate 2; from then on\n" +
		"only pump-3's newest certificate may renew. Certificate 1 needs no revocation to lose that right: a\n" +
		"copy of an old key is worth nothing at the registrar once the device has moved on. (The one exception:\n" +
		"for an hour after a renewal, the certificate it replaced may renew again if its successor is valid\n" +
		"and has not renewed itself: a device that lost the registrar's answer. Certificate 2 is revoked.)")

	n.Section("4. renewal with the revoked certificates")
	n.Attacker("tried the copies holding certificates 2 and 3")
	for _, c := range copies[1:] {
		if err := renew(c, identity.ErrRevoked, "ErrRevoked"); err != nil {
			return err
		}
	}
	n.Why("the registrar checks the revocation of the certificate that authenticates a renewal in the registry,\n" +
		"before anything is issued.")

	n.Section("5. what certificate 1 can still do, and the operator's whole answer")
	chains, err := registry.DeviceCertificates(ctx, "pump-3")
	if err != nil {
		return err
	}
	n.D2C("the registry still lists %d certificate of pump-3 for verifying telemetry: serial %x (superseded, not revoked)",
		len(chains), chains[0][0].SerialNumber)
	n.Why("a superseded certificate still verifies envelopes, so that readings signed just before a renewal are\n" +
		"not lost; it is on no CRL either. Until it expires, key 1 still signs envelopes that a verifier reading\n" +
		"the registry accepts. To cut off every key a device ever held, revoke the device, not its newest\n" +
		"certificates.")
	revoked, err := registry.RevokeDevice(ctx, "pump-3", store.ReasonKeyCompromise)
	if err != nil {
		return err
	}
	n.Lab("the operator revoked the device: %d more certificate revoked (d2c ca revoke --db ... --device pump-3)", revoked)
	n.Attacker("tried certificate 1 again")
	if err := renew(copies[0], identity.ErrRevoked, "ErrRevoked"); err != nil {
		return err
	}
	if _, err := registry.DeviceCertificates(ctx, "pump-3"); !errors.Is(err, identity.ErrRevoked) {
		return lab.Succeeded("the registry still lists a certificate of pump-3 for verifying telemetry (%v)", err)
	}
	n.D2C("the registry lists no certificate of pump-3 any more, and says why (identity.ErrRevoked): none of its\n" +
		"keys renews, and none signs a reading the verifier accepts")

	n.Stopped("none of the kept certificates renewed: the first was superseded, the others revoked")
	return nil
}
