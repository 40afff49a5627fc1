// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/identity"
	"github.com/d2c-iot/d2c/internal/testpki"
)

// d2cEnv runs the CLI in process with only the environment in env (and
// no configuration file unless env names one), and returns its exit
// status and outputs.
func d2cEnv(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	c := matchCommand(t, args)
	fs := flag.NewFlagSet(c.path, flag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	runFn := c.flags(fs)
	rest := args[len(strings.Fields(c.path)):]
	var o, e bytes.Buffer
	s := streams{stdout: &o, stderr: &e}
	err := fs.Parse(rest)
	if err == nil {
		err = applyDefaults(c, fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	}
	if err == nil {
		err = runFn(t.Context(), s)
	}
	if err != nil {
		e.WriteString(err.Error())
		if _, ok := err.(*usageError); ok {
			return exitUsage, o.String(), e.String()
		}
		return exitError, o.String(), e.String()
	}
	return exitOK, o.String(), e.String()
}

func matchCommand(t *testing.T, args []string) *command {
	t.Helper()
	var match *command
	for _, c := range commands() {
		w := strings.Fields(c.path)
		if len(w) <= len(args) && strings.Join(args[:len(w)], " ") == c.path &&
			(match == nil || len(w) > len(strings.Fields(match.path))) {
			match = c
		}
	}
	if match == nil {
		t.Fatalf("no command in %q", args)
	}
	return match
}

// TestFlagDefaults checks the precedence of flag sources: the command
// line, then D2C_<COMMAND>_<FLAG>, then the configuration file, then the
// default; and that the file refuses what it should, with file:line.
func TestFlagDefaults(t *testing.T) {
	tmp := t.TempDir()
	cfg := filepath.Join(tmp, "config")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// "version --json" is a bool flag whose effect shows in the output.
	isJSON := func(stdout string) bool { return strings.HasPrefix(stdout, "{") }
	env := map[string]string{"D2C_CLI_CONFIG": cfg}

	write("# defaults\n\nversion.json = true\n")
	if _, out, _ := d2cEnv(t, env, "version"); !isJSON(out) {
		t.Errorf("the configuration file's version.json = true is ignored:\n%s", out)
	}
	env["D2C_VERSION_JSON"] = "false"
	if _, out, _ := d2cEnv(t, env, "version"); isJSON(out) {
		t.Error("the environment does not override the configuration file")
	}
	if _, out, _ := d2cEnv(t, env, "version", "--json"); !isJSON(out) {
		t.Error("the command line does not override the environment")
	}
	delete(env, "D2C_VERSION_JSON")
	write("")
	if _, out, _ := d2cEnv(t, env, "version"); isJSON(out) {
		t.Error("the default is not false")
	}

	// A repeatable flag takes one line per value, and the command line
	// replaces them rather than adds to them: here, "audit verify --head"
	// without --cert is refused, which shows the file was read.
	write("audit.verify.head = a.jws\naudit.verify.head = b.jws\n")
	if code, _, stderr := d2cEnv(t, env, "audit", "verify", "--log", tmp); code != exitUsage || !strings.Contains(stderr, "--head and --cert go together") {
		t.Errorf("audit verify with heads from the file: exit %d, %s", code, stderr)
	}

	for _, tc := range []struct{ file, want string }{
		{"\n# comment\ndevice.show.stroe = x\n", `config:3: unknown key "device.show.stroe": no command has this flag (did you mean "device.show.store"?)`},
		{"ca.init.dir = x\n", `config:1: unknown key "ca.init.dir": no command has this flag (renamed ca.init.ca)`},
		{"dir = x\n", `config:1: unknown key "dir"`},
		{"token.issue.ttl = soon\n", `config:1: invalid value "soon" for token.issue.ttl`},
		{"version.json = maybe\n", `config:1: invalid value "maybe" for version.json`},
		{"device.show.store\n", `config:1: want "command.flag = value"`},
		{"device.enroll.token = eyJ...\n", `config:1: device.enroll.token: --token is a secret`},
	} {
		write(tc.file)
		// Any command refuses a bad file, not only the one the line is for.
		code, _, stderr := d2cEnv(t, env, "version")
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("file %q: exit %d, %q; want %q", tc.file, code, stderr, tc.want)
		}
	}
	write("")

	// Bad values and secrets in the environment.
	code, _, stderr := d2cEnv(t, map[string]string{"D2C_TOKEN_ISSUE_TTL": "soon"}, "token", "issue")
	if code != exitUsage || !strings.Contains(stderr, `invalid value "soon" for --ttl in the environment (D2C_TOKEN_ISSUE_TTL)`) {
		t.Errorf("bad env value: exit %d, %s", code, stderr)
	}
	code, _, stderr = d2cEnv(t, map[string]string{"D2C_DEVICE_ENROLL_TOKEN": "eyJsecret"}, "device", "enroll")
	if code != exitUsage || !strings.Contains(stderr, "--token is a secret") || strings.Contains(stderr, "eyJsecret") {
		t.Errorf("token from the environment: exit %d, %s", code, stderr)
	}

	// A file others can write is refused.
	if err := os.Chmod(cfg, 0o622); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := d2cEnv(t, env, "version"); code != exitError || !strings.Contains(stderr, "writable by other users") {
		t.Errorf("a group-writable file: exit %d, %s", code, stderr)
	}
	if err := os.Chmod(cfg, 0o644); err != nil {
		t.Fatal(err)
	}

	// $D2C_CLI_CONFIG must exist; the default file need not.
	if code, _, _ := d2cEnv(t, map[string]string{"D2C_CLI_CONFIG": filepath.Join(tmp, "none")}, "version"); code != exitError {
		t.Errorf("a missing $D2C_CLI_CONFIG: exit %d", code)
	}
	if code, _, _ := d2cEnv(t, map[string]string{"HOME": tmp}, "version"); code != exitOK {
		t.Errorf("no ~/.config/d2c/config: exit %d", code)
	}
	if err := os.MkdirAll(filepath.Join(tmp, "xdg", "d2c"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "xdg", "d2c", "config"), []byte("version.json = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, out, _ := d2cEnv(t, map[string]string{"HOME": tmp, "XDG_CONFIG_HOME": filepath.Join(tmp, "xdg")}, "version"); !isJSON(out) {
		t.Error("$XDG_CONFIG_HOME/d2c/config is not read")
	}
}

// TestEnvNamesAreUnique checks that no two flags of the command table
// share an environment variable ("a b" --c-d and "a b c" --d would), and
// that none is another program's.
func TestEnvNamesAreUnique(t *testing.T) {
	seen := map[string]string{}
	for _, c := range commands() {
		fs := flag.NewFlagSet(c.path, flag.ContinueOnError)
		c.flags(fs)
		fs.VisitAll(func(f *flag.Flag) {
			n := envName(c.path, f.Name)
			if prev, ok := seen[n]; ok {
				t.Errorf("%s names both %s and %s --%s", n, prev, c.path, f.Name)
			}
			seen[n] = c.path + " --" + f.Name
		})
	}
	// Nor the variables of the cloud service's configuration and of the
	// device program (examples/device: D2C_<FLAG>), which may be set where
	// d2c runs.
	others := []string{"D2C_CLI_CONFIG", "D2C_CONFIG"}
	for _, e := range cloudEnv {
		others = append(others, e.name)
	}
	src, err := os.ReadFile("../../examples/device/main.go")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`fl\.[A-Za-z]+\((?:&[\w.]+, )?"([a-z0-9-]+)"`).FindAllSubmatch(src, -1)
	if len(m) < 15 {
		t.Fatalf("found %d flags of examples/device: the pattern broke?", len(m))
	}
	for _, f := range m {
		others = append(others, "D2C_"+strings.ToUpper(strings.ReplaceAll(string(f[1]), "-", "_")))
	}
	for _, n := range others {
		if prev, ok := seen[n]; ok {
			t.Errorf("%s, a variable of another program, also names %s", n, prev)
		}
	}
	if got := envName("device update", "repo-url"); got != "D2C_DEVICE_UPDATE_REPO_URL" {
		t.Errorf("envName: %s", got)
	}
}

// TestEnvDoesNotLookGiven checks that a flag from the environment is a
// default, not a flag given on the command line: commands that tell modes
// apart by the flags given (tail --db) still work.
func TestEnvDoesNotLookGiven(t *testing.T) {
	env := map[string]string{"D2C_TAIL_BROKER": "127.0.0.1:1"}
	code, _, stderr := d2cEnv(t, env, "tail", "--db", "sqlite:"+filepath.Join(t.TempDir(), "none.db"), "--since", "bogus")
	if strings.Contains(stderr, "drop --broker") {
		t.Errorf("tail --db with D2C_TAIL_BROKER: exit %d, %s", code, stderr)
	}
}

// TestSuggestions checks the "did you mean" of unknown commands and flags.
func TestSuggestions(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ca", "int"}, `did you mean "ca init"?`},
		{[]string{"tial"}, `did you mean "tail"?`},
		{[]string{"hepl"}, `did you mean "help"?`},
		{[]string{"updte", "root", "init"}, `did you mean "update root init"?`},
		{[]string{"update", "rot", "init"}, `did you mean "update root init"?`},
		{[]string{"update", "rot"}, `did you mean "update root"?`},
		{[]string{"device", "shwo", "--store", "x"}, `did you mean "device show"?`},
		{[]string{"--verison"}, "d2c: unknown flag --verison\ndid you mean --version?\n"},
		{[]string{"device", "show", "--stroe", "x"}, "d2c: device show: unknown flag --stroe\ndid you mean --store?\n"},
		{[]string{"update", "verify", "--jsno"}, "did you mean --json?"},
		{[]string{"update", "verify", "--hardware", "x"}, "did you mean --hardware-class?"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(t.Context(), tc.args, &stdout, &stderr); code != exitUsage {
			t.Errorf("d2c %s: exit %d", strings.Join(tc.args, " "), code)
		}
		if !strings.Contains(stderr.String(), tc.want) || strings.Contains(stderr.String(), "Commands:") {
			t.Errorf("d2c %s:\n%s\nwant %q", strings.Join(tc.args, " "), stderr.String(), tc.want)
		}
	}
	// Too far from anything: no suggestion.
	var stderr bytes.Buffer
	run(t.Context(), []string{"device", "show", "--xyzzy"}, &bytes.Buffer{}, &stderr)
	if strings.Contains(stderr.String(), "did you mean") {
		t.Errorf("a suggestion for --xyzzy:\n%s", stderr.String())
	}
	for _, tc := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"init", "init", 0}, {"int", "init", 1}, {"inti", "init", 1}, {"kitten", "sitting", 3}, {"", "abc", 3}} {
		if d := editDistance(tc.a, tc.b); d != tc.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, d, tc.d)
		}
	}
}

// TestVersion checks "d2c version" and its JSON.
func TestVersion(t *testing.T) {
	var v map[string]any
	if err := json.Unmarshal([]byte(d2cRun(t, "version", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "modified", "go", "os", "arch"} {
		if _, ok := v[k]; !ok {
			t.Errorf("version --json lacks %q: %v", k, v)
		}
	}
	if v["version"] == "" || !strings.HasPrefix(v["go"].(string), "go") {
		t.Errorf("version --json: %v", v)
	}
	out := d2cRun(t, "--version")
	if !regexp.MustCompile(`(?m)^d2c \S+\n(?s:.*)^go: +go`).MatchString(out) {
		t.Errorf("d2c --version:\n%s", out)
	}
}

// TestDeviceShowJSON enrolls a device against an in-process registrar and
// parses "device show --json".
func TestDeviceShowJSON(t *testing.T) {
	tmp := t.TempDir()
	caDir := filepath.Join(tmp, "ca")
	ca, err := identity.InitCA(caDir, identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tokenPub, err := identity.ReadPublicKeyFile(filepath.Join(caDir, identity.CATokenPublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	srv := testpki.Registrar(t, ca, tokenPub, filepath.Join(tmp, "used.state"))
	tokenFile := filepath.Join(tmp, "token")
	if err := os.WriteFile(tokenFile, []byte(d2cRun(t, "token", "issue", "--ca", caDir, "--device", "sensor-7")), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(tmp, "dev")
	d2cRun(t, "device", "enroll", "--store", dev, "--url", srv.URL, "--device", "sensor-7",
		"--token-file", tokenFile, "--fingerprint", fingerprint(ca.Root()))

	var got struct {
		Device     string  `json:"device"`
		Generation *uint64 `json:"generation"`
		Serial     string  `json:"serial"`
		KeyType    string  `json:"key_type"`
		Issuer     string  `json:"issuer"`
		NotBefore  string  `json:"not_before"`
		NotAfter   string  `json:"not_after"`
		Status     string  `json:"status"`
		TimeFloor  *string `json:"time_floor"`
	}
	out := d2cRun(t, "device", "show", "--store", dev, "--json")
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("device show --json: %v\n%s", err, out)
	}
	if got.Device != "sensor-7" || got.Generation == nil || !regexp.MustCompile(`^[0-9a-f]+$`).MatchString(got.Serial) ||
		got.KeyType == "" || got.Issuer == "" || got.Status != "valid" || got.TimeFloor == nil {
		t.Errorf("device show --json: %+v\n%s", got, out)
	}
	if !strings.HasSuffix(got.NotAfter, "Z") || !strings.HasSuffix(got.NotBefore, "Z") {
		t.Errorf("times not RFC 3339 UTC: %s", out)
	}

	// The same store from the environment.
	code, out, _ := d2cEnv(t, map[string]string{"D2C_DEVICE_SHOW_STORE": dev}, "device", "show")
	if code != exitOK || !strings.Contains(out, "device:      sensor-7") {
		t.Errorf("D2C_DEVICE_SHOW_STORE: exit %d\n%s", code, out)
	}
}

// TestUpdateVerifyJSON parses "update verify --json".
func TestUpdateVerifyJSON(t *testing.T) {
	repo, _ := newTestRepo(t, []byte("firmware 3"))
	out := d2cRun(t, "update", "verify", "--repo", repo, "--root", filepath.Join(repo, "root.json"),
		"--hardware-class", "hw", "--installed-version", "2", "--json")
	var got verifyReport
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("update verify --json: %v\n%s", err, out)
	}
	if got.Root.Version != 1 || got.Root.PinnedVersion != 1 || got.Release.Version != 3 || got.Release.HardwareClass != "hw" ||
		got.Release.SecurityCounter != 1 || got.Artifact.Length != int64(len("firmware 3")) || len(got.Artifact.SHA256) != 64 ||
		got.Artifact.CheckedFile == nil || got.InstalledVersion != 2 || !got.Installs {
		t.Errorf("update verify --json: %+v\n%s", got, out)
	}
	// The field names are the documented ones.
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"root.expires", "timestamp.version", "release.expires", "artifact.uri", "artifact.checked_file"} {
		obj, field, _ := strings.Cut(k, ".")
		if m, _ := raw[obj].(map[string]any); m == nil || m[field] == nil {
			t.Errorf("update verify --json lacks %s:\n%s", k, out)
		}
	}
}
