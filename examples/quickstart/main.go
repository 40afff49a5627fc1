// Command quickstart runs the whole d2c loop on this machine, narrated, with
// nothing to install or configure: a fleet CA, a one-time enrollment token,
// an EST registrar over HTTPS on 127.0.0.1, a device that generates its own
// key and enrolls, renews its certificate, and a reused token refused.
//
//	go run ./examples/quickstart [--keep]
//
// Later parts of the SDK (telemetry, updates) join the loop as they land.
package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/identity"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// narrator prints numbered steps (Step) and their details (Say).
type narrator struct {
	w    io.Writer
	step int
}

func (n *narrator) Step(format string, a ...any) {
	n.step++
	fmt.Fprintf(n.w, "\n[%d] %s\n", n.step, fmt.Sprintf(format, a...))
}

func (n *narrator) Say(format string, a ...any) { fmt.Fprintf(n.w, "    "+format+"\n", a...) }

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("quickstart", flag.ContinueOnError)
	fs.SetOutput(out)
	keep := fs.Bool("keep", false, "keep the temporary directory with the CA and device state")
	if err := fs.Parse(args); err != nil {
		return err
	}
	start := time.Now()
	dir, err := os.MkdirTemp("", "d2c-quickstart-")
	if err != nil {
		return err
	}
	if *keep {
		defer fmt.Fprintf(out, "\nState kept in %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	n := &narrator{w: out}
	fmt.Fprintln(out, "d2c quickstart: a device gets its own certified identity, with no shared secret.")

	// 1. The fleet CA.
	caDir := filepath.Join(dir, "cloud", "ca")
	ca, err := identity.InitCA(caDir, identity.CAConfig{Fleet: "Quickstart Fleet"})
	if err != nil {
		return err
	}
	fp := sha256.Sum256(ca.Root().Raw)
	n.Step("Cloud: created the fleet CA")
	n.Say("root:    %s (key to be kept offline)", ca.Root().Subject.CommonName)
	n.Say("issuing: %s (signs device certificates)", ca.Issuing().Subject.CommonName)
	n.Say("root fingerprint (SHA-256): %x", fp)

	// 2. The registrar.
	tokenKey, err := identity.ReadKeyFile(filepath.Join(caDir, identity.CATokenKeyFile))
	if err != nil {
		return err
	}
	used, err := identity.OpenUsedTokens(filepath.Join(dir, "cloud", "used-tokens.state"), nil)
	if err != nil {
		return err
	}
	reg, err := identity.NewRegistrar(identity.RegistrarConfig{CA: ca, TokenKeys: []crypto.PublicKey{tokenKey.Public()}, UsedTokens: used})
	if err != nil {
		return err
	}
	srvKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return err
	}
	srvCert, err := ca.IssueServer(srvKey.Public(), "127.0.0.1")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: reg, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: reg.TLSConfig(tls.Certificate{Certificate: [][]byte{srvCert.Raw, ca.Issuing().Raw}, PrivateKey: srvKey})}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()
	url := "https://" + ln.Addr().String()
	n.Step("Cloud: EST registrar (RFC 7030) listening on %s, TLS 1.3", url)

	// 3. A token for one device.
	const deviceID = "sensor-0001"
	token, err := identity.TokenIssuer{Key: tokenKey, TTL: 15 * time.Minute}.Issue(deviceID)
	if err != nil {
		return err
	}
	n.Step("Operator: issued a one-time enrollment token for %q", deviceID)
	n.Say("a signed JWT, valid 15 minutes, usable once (%d bytes)", len(token))

	// 4. The device enrolls.
	store, err := identity.OpenStore(filepath.Join(dir, "device"), identity.StoreConfig{})
	if err != nil {
		return err
	}
	est := identity.ESTClient{URL: url, BootstrapFingerprint: fp[:]}
	id, err := store.Enroll(ctx, est, identity.EnrollRequest{DeviceID: deviceID, Auth: identity.EnrollAuth{Token: token}})
	if err != nil {
		return err
	}
	leaf := id.Certificate()
	n.Step("Device: generated its own key and enrolled over EST")
	n.Say("trusted the registrar only after checking the root fingerprint")
	n.Say("certificate: CN=%s, %s", leaf.Subject.CommonName, leaf.URIs[0])
	n.Say("serial %x, valid until %s", leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.DateOnly))
	n.Say("private key: generated on the device, stored with mode 0600, never sent anywhere")

	// 5. An attacker replays the token.
	attacker, err := identity.OpenStore(filepath.Join(dir, "attacker"), identity.StoreConfig{})
	if err != nil {
		return err
	}
	_, err = attacker.Enroll(ctx, est, identity.EnrollRequest{DeviceID: deviceID, Auth: identity.EnrollAuth{Token: token}})
	n.Step("Attacker: replayed the same token from another machine")
	if !errors.Is(err, identity.ErrTokenReused) {
		return fmt.Errorf("token replay was not refused as reused: %v", err)
	}
	n.Say("refused: %v", errors.Unwrap(err))

	// 6. Renewal.
	renewed, err := store.Renew(ctx, est, identity.RenewOptions{})
	if err != nil {
		return err
	}
	n.Step("Device: renewed its certificate with a new key (EST simplereenroll)")
	n.Say("new serial %x; old key and certificate removed only after the new pair verified", renewed.Certificate().SerialNumber)

	// 7. Revocation.
	if err := ca.Revoke(renewed.Certificate(), 1); err != nil {
		return err
	}
	crl, err := ca.CRL()
	if err != nil {
		return err
	}
	_, err = store.Renew(ctx, est, identity.RenewOptions{})
	n.Step("Cloud: revoked the device (say it was stolen) and published a CRL (%d bytes)", len(crl))
	if !errors.Is(err, identity.ErrRevoked) {
		return fmt.Errorf("revoked device was not refused: %v", err)
	}
	n.Say("the revoked device's renewal is refused: %v", errors.Unwrap(err))

	fmt.Fprintf(out, "\nDone in %s.\n", time.Since(start).Round(time.Millisecond))
	return nil
}
