// Command quickstart runs the whole d2c loop on this machine, narrated, with
// nothing to install or configure: a fleet CA, a one-time enrollment token,
// an EST registrar over HTTPS on 127.0.0.1, a device that generates its own
// key, enrolls and renews, a reused token refused; an embedded MQTT v5
// broker with mutual TLS and per-device ACLs, signed and encrypted
// telemetry verified by the cloud, a signed command obeyed and its replay
// refused; and finally the device revoked.
//
//	go run ./examples/quickstart [--keep]
//
// Then updates: a release signed by the vendor, downloaded over HTTPS into
// the device's other slot, booted on trial and confirmed, each result
// reported to the cloud as signed telemetry; and a rollback refused.
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/d2c-iot/d2c/examples/internal/narrate"
	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/transport"
	"github.com/d2c-iot/d2c/transport/devbroker"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

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
	n := narrate.New(out)
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

	// 7-10. Telemetry and commands over MQTT v5 with mutual TLS.
	if err := telemetry(ctx, n, ca, store); err != nil {
		return err
	}

	// 11. Revocation.
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

// telemetry runs the transport part of the loop: an embedded broker with
// mutual TLS and the generated ACL, a cloud verifier, the device publishing
// signed and encrypted readings, and a signed command.
func telemetry(ctx context.Context, n *narrate.Narrator, ca *identity.CA, store *identity.Store) error {
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	brokerCert, err := tlsCert(ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueServer(pub, "127.0.0.1") })
	if err != nil {
		return err
	}
	services := []transport.ServiceRights{
		{Name: "verifier", Read: []string{transport.AllUp}},
		{Name: "commander", Write: []string{transport.TopicPrefix + "+/down/cmd"}},
	}
	broker, err := devbroker.Start(ctx, devbroker.Config{Certificate: brokerCert, ClientRoots: roots, Services: services, Revocation: ca})
	if err != nil {
		return err
	}
	defer broker.Close()
	n.Step("Cloud: MQTT v5 broker on %s: TLS 1.3, client certificates required, each device confined to d2c/v1/dev/<its id>/", broker.Addr())

	// The cloud: a verifier that knows the device's certificate, and a key
	// that telemetry is encrypted to.
	id, err := store.Current()
	if err != nil {
		return err
	}
	certs := &transport.MemoryCertificates{}
	certs.Add(id.Chain...)
	cloudKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	verifier, err := transport.NewVerifier(transport.VerifierConfig{Certificates: certs, DecryptionKey: cloudKey,
		Policy: identity.DeviceCertPolicy{Roots: roots, Revocations: ca}, RequireEncryption: true})
	if err != nil {
		return err
	}
	received := make(chan transport.Record, 16)
	svc := func(name string, v *transport.Verifier) (*transport.Cloud, error) {
		cert, err := tlsCert(ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueService(pub, name) })
		if err != nil {
			return nil, err
		}
		c, err := transport.DialCloud(ctx, transport.CloudConfig{Broker: broker.Addr(), Certificate: cert, Roots: roots, Verifier: v,
			OnRecord: func(_ context.Context, r transport.Record) { received <- r }})
		if err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return c, c.AwaitConnection(wctx)
	}
	cloud, err := svc("verifier", verifier)
	if err != nil {
		return err
	}
	defer cloud.Close(context.Background())
	commander, err := svc("commander", nil)
	if err != nil {
		return err
	}
	defer commander.Close(context.Background())
	time.Sleep(100 * time.Millisecond) // let the subscription settle

	// The device.
	cmdKey, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return err
	}
	commands := make(chan transport.Command, 1)
	dev, err := transport.Dial(ctx, transport.ClientConfig{Broker: broker.Addr(), Store: store,
		Encryption:  &transport.Encryption{CloudKey: &cloudKey.PublicKey},
		CommandKeys: []crypto.PublicKey{cmdKey.Public()},
		OnCommand:   func(_ context.Context, c transport.Command) { commands <- c }})
	if err != nil {
		return err
	}
	defer dev.Close(context.Background())
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := dev.AwaitConnection(wctx); err != nil { // connected, and subscribed to its commands
		return fmt.Errorf("device connection: %w", err)
	}
	for i, temp := range []string{"21.5", "21.7", "22.0"} {
		body := fmt.Sprintf(`{"celsius":%s}`, temp)
		if err := dev.Publish(ctx, "temperature", transport.Reading{Time: time.Now(), Body: []byte(body)}); err != nil {
			return err
		}
		if i == 0 {
			n.Step("Device: published readings: CBOR record, signed with its key (JWS), encrypted to the cloud (JWE),")
			n.Say("stored on disk before Publish returns, removed only after the broker's PUBACK")
		}
	}
	n.Step("Cloud: verified each reading (signature by the device's certificate, topic, sequence)")
	for range 3 {
		select {
		case r := <-received:
			n.Say("%s/%s boot %d seq %d: %s", r.Device, r.Stream, r.Boot, r.Seq, r.Readings[0].Body)
		case <-time.After(10 * time.Second):
			return errors.New("telemetry did not arrive")
		}
	}
	st := verifier.Stats()
	n.Say("the broker only ever saw ciphertext; accepted %d, refused %d", st.Accepted, st.Refused)

	// A signed command.
	signer := &transport.CommandSigner{Key: cmdKey, TTL: time.Minute}
	env, err := signer.Sign(transport.Command{Device: id.DeviceID, Name: "set-interval", Body: []byte("60s")})
	if err != nil {
		return err
	}
	if err := commander.SendCommand(ctx, id.DeviceID, env); err != nil {
		return err
	}
	select {
	case c := <-commands:
		n.Step("Device: obeyed a command signed by the fleet's command key: %s %s (expires %s)", c.Name, c.Body, c.Expires.Format(time.TimeOnly))
	case <-time.After(10 * time.Second):
		return errors.New("command did not arrive")
	}
	// The same command replayed through the broker is refused.
	if err := commander.SendCommand(ctx, id.DeviceID, env); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for dev.Stats().CommandsRefused == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if dev.Stats().CommandsRefused == 0 {
		return errors.New("replayed command was not refused")
	}
	n.Say("the same command replayed: refused (its ID is not above the last one run)")
	return updates(ctx, n, ca, roots, store, dev, received)
}

// updates runs the update part of the loop: release keys and a root pinned
// in the device, a signed release served over HTTPS, the device's agent
// installing it into its other slot, booting it on trial and confirming it,
// every result reported to the cloud as signed telemetry; then a rollback
// refused.
func updates(ctx context.Context, n *narrate.Narrator, ca *identity.CA, roots *x509.CertPool, store *identity.Store, dev *transport.Client, received <-chan transport.Record) error {
	dir := filepath.Dir(store.Dir())
	var rootKey, relKey, tsKey crypto.Signer
	root := &update.Root{Version: 1, Expires: time.Now().Add(365 * 24 * time.Hour)}
	for role, k := range map[update.Role]*crypto.Signer{update.RoleRoot: &rootKey, update.RoleRelease: &relKey, update.RoleTimestamp: &tsKey} {
		key, err := identity.GenerateKey(identity.ECDSAP256)
		if err != nil {
			return err
		}
		*k = key
		if err := root.SetRole(role, 1, key.Public()); err != nil {
			return err
		}
	}
	pinned, err := root.Sign(rootKey)
	if err != nil {
		return err
	}
	repo := &repository{files: map[string][]byte{"1.root.json": pinned}}
	publish := func(version uint64, image []byte) error {
		art, err := update.NewArtifact("firmware", fmt.Sprintf("firmware-%d.bin", version), bytes.NewReader(image), nil)
		if err != nil {
			return err
		}
		rel := &update.Release{Version: version, SecurityCounter: version, HardwareClass: "quickstart-sensor",
			Artifacts: []update.Artifact{art}, Expires: time.Now().Add(30 * 24 * time.Hour)}
		rb, err := rel.Sign(relKey)
		if err != nil {
			return err
		}
		repo.stamps++
		ts, err := update.NewTimestamp(repo.stamps, time.Now().Add(24*time.Hour), rb)
		if err != nil {
			return err
		}
		tb, err := ts.Sign(tsKey)
		if err != nil {
			return err
		}
		repo.put(map[string][]byte{art.URI: image, fmt.Sprintf("%d.release.json", version): rb, "timestamp.json": tb})
		return nil
	}
	firmware := func(v int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("sensor firmware v%d\n", v)), 20_000) }
	if err := publish(2, firmware(2)); err != nil {
		return err
	}
	repoCert, err := tlsCert(ca, func(pub crypto.PublicKey) (*x509.Certificate, error) { return ca.IssueServer(pub, "127.0.0.1") })
	if err != nil {
		return err
	}
	srv := httptest.NewUnstartedServer(repo)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{repoCert}, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	defer srv.Close()
	n.Step("Vendor: signed release 2 with the release key, a timestamp with the online key; root v1 pinned in the device")
	n.Say("repository %s (HTTPS): 1.root.json, 2.release.json, timestamp.json, firmware-2.bin", srv.URL)

	slots := filepath.Join(dir, "slots")
	if err := slot.InitDirSlots(nil, slots, bytes.NewReader(firmware(1))); err != nil {
		return err
	}
	var agent *update.Agent
	boot := func() (update.Status, error) { // the device software (re)starts
		if agent != nil {
			agent.Close()
		}
		s, err := slot.OpenDirSlots(nil, slots)
		if err != nil {
			return update.Status{}, err
		}
		agent, err = update.NewAgent(ctx, update.AgentConfig{Dir: filepath.Join(dir, "update"), Root: pinned,
			HardwareClass: "quickstart-sensor", Slots: s, Clock: store.Clock(),
			Source: &update.HTTPSource{BaseURL: srv.URL + "/", Client: httpsClient(roots)}, Client: httpsClient(roots),
			Report: update.TelemetryReporter(dev, nil)})
		if err != nil {
			return update.Status{}, err
		}
		return agent.Start(ctx)
	}
	defer func() {
		if agent != nil {
			agent.Close()
		}
	}()
	if _, err := boot(); err != nil {
		return err
	}
	installed, err := agent.Update(ctx)
	if err != nil || !installed {
		return fmt.Errorf("update: installed %v, %v", installed, err)
	}
	n.Step("Device: verified root → timestamp → release 2, downloaded it into slot b while hashing, switched on trial")
	st, err := boot()
	if err != nil {
		return err
	}
	n.Say("restarted into slot b: on trial, start %d of 3", st.Starts)
	if err := agent.Confirm(ctx); err != nil {
		return err
	}
	n.Say("health check passed → Confirm: running release %d; the anti-rollback floor rose to %d", agent.Status().Installed.Version,
		agent.Status().Installed.SecurityCounter)
	if err := cloudEvents(n, received, 2); err != nil {
		return err
	}

	// An attacker with the online timestamp key re-serves release 1.
	if err := publish(1, firmware(1)); err != nil {
		return err
	}
	_, err = agent.Update(ctx)
	if !errors.Is(err, update.ErrRollback) {
		return fmt.Errorf("rollback was not refused: %v", err)
	}
	n.Step("Attacker: served the older, validly signed release 1 with a fresh timestamp")
	n.Say("refused: %v", err)
	return cloudEvents(n, received, 1)
}

// cloudEvents prints the next want update results the cloud verified.
func cloudEvents(n *narrate.Narrator, received <-chan transport.Record, want int) error {
	for range want {
		select {
		case r := <-received:
			if r.Stream != update.ReportStream {
				continue
			}
			var res update.Result
			if err := json.Unmarshal(r.Readings[0].Body, &res); err != nil {
				return err
			}
			if res.Event == "refused" {
				n.Say("cloud, verified from the device: update refused: %s", res.Reason)
				continue
			}
			n.Say("cloud, verified from the device: update %s, release %d", res.Event, res.Version)
		case <-time.After(10 * time.Second):
			return errors.New("the update result did not reach the cloud")
		}
	}
	return nil
}

// httpsClient trusts only the fleet's roots.
func httpsClient(roots *x509.CertPool) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}}}
}

// repository serves update metadata and images.
type repository struct {
	mu     sync.Mutex
	files  map[string][]byte
	stamps uint64
}

func (r *repository) put(files map[string][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	maps.Copy(r.files, files)
}

func (r *repository) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	b, ok := r.files[strings.TrimPrefix(req.URL.Path, "/")]
	r.mu.Unlock()
	if !ok {
		http.NotFound(w, req)
		return
	}
	http.ServeContent(w, req, req.URL.Path, time.Time{}, bytes.NewReader(b))
}

// tlsCert issues a certificate for a fresh key and returns it as a TLS
// certificate with the issuing CA.
func tlsCert(ca *identity.CA, issue func(crypto.PublicKey) (*x509.Certificate, error)) (tls.Certificate, error) {
	k, err := identity.GenerateKey(identity.ECDSAP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	c, err := issue(k.Public())
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw, ca.Issuing().Raw}, PrivateKey: k}, nil
}
