// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package slot_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/d2c-iot/d2c/update/slot"
)

// fakeFW writes fw_printenv and fw_setenv scripts that keep the environment
// in a name=value file and log each fw_setenv call's arguments.
func fakeFW(t *testing.T, initial string) (env slot.FWEnv, envFile, logFile string) {
	t.Helper()
	dir := t.TempDir()
	envFile, logFile = filepath.Join(dir, "env"), filepath.Join(dir, "setenv.log")
	if err := os.WriteFile(envFile, []byte(initial), 0o600); err != nil {
		t.Fatal(err)
	}
	printenv := `#!/bin/sh
ENV='` + envFile + `'
[ "$1" = "-c" ] && shift 2
if [ "$1" = "-n" ]; then
	l=$(grep "^$2=" "$ENV") || { echo "## Error: \"$2\" not defined" >&2; exit 1; }
	printf '%s\n' "${l#*=}"; exit 0
fi
[ $# -eq 0 ] && { cat "$ENV"; exit 0; }
rc=0
for n in "$@"; do
	if l=$(grep "^$n=" "$ENV"); then printf '%s\n' "$l"; else echo "## Error: \"$n\" not defined" >&2; rc=1; fi
done
exit $rc
`
	setenv := `#!/bin/sh
ENV='` + envFile + `'
echo "$@" >> '` + logFile + `'
[ "$1" = "-c" ] && shift 2
if [ "$1" = "-s" ]; then script="$2"; else script="$ENV.script"; printf '%s %s\n' "$1" "$2" > "$script"; fi
awk -v script="$script" '
BEGIN { while ((getline line < script) > 0) {
	if (line ~ /^#/ || line == "") continue
	n = line; sub(/[ \t].*/, "", n)
	v = ""; if (line ~ /[ \t]/) { v = line; sub(/^[^ \t]+[ \t]+/, "", v) }
	upd[n] = v; has[n] = 1 } }
{ n = $0; sub(/=.*/, "", n); if (n in has) next; print }
END { for (n in has) if (upd[n] != "") print n "=" upd[n] }' "$ENV" > "$ENV.new" && mv "$ENV.new" "$ENV"
`
	env = slot.FWEnv{Printenv: filepath.Join(dir, "fw_printenv"), Setenv: filepath.Join(dir, "fw_setenv")}
	if err := os.WriteFile(env.Printenv, []byte(printenv), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(env.Setenv, []byte(setenv), 0o700); err != nil {
		t.Fatal(err)
	}
	return env, envFile, logFile
}

func TestFWEnvGetSet(t *testing.T) {
	ctx := context.Background()
	env, _, logFile := fakeFW(t, "bootcmd=run a; run b\nboot_part=a\nbootlimit=3\n")
	got, err := env.Get(ctx, "boot_part", "bootcmd", "missing")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["boot_part"] != "a" || got["bootcmd"] != "run a; run b" {
		t.Fatalf("Get = %v", got)
	}
	if err := env.Set(ctx, map[string]string{"boot_part": "b", "upgrade_available": "1", "bootlimit": ""}); err != nil {
		t.Fatal(err)
	}
	got, err = env.Get(ctx, "boot_part", "upgrade_available", "bootlimit")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["boot_part"] != "b" || got["upgrade_available"] != "1" {
		t.Fatalf("after Set: %v", got)
	}
	log, _ := os.ReadFile(logFile)
	if lines := strings.Split(strings.TrimSpace(string(log)), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "-s ") {
		t.Fatalf("fw_setenv calls %q, want one -s call", lines)
	}
}

func TestFWEnvRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	env, _, _ := fakeFW(t, "boot_part=a\n")
	for _, n := range []string{"", "a=b", "a b", "-n", "x\ny"} {
		if _, err := env.Get(ctx, n); err == nil {
			t.Errorf("Get(%q) accepted", n)
		}
		if err := env.Set(ctx, map[string]string{n: "1"}); err == nil {
			t.Errorf("Set(%q) accepted", n)
		}
	}
	for _, v := range []string{"a\nb=c", " lead", "nul\x00"} {
		if err := env.Set(ctx, map[string]string{"x": v}); err == nil {
			t.Errorf("Set(x=%q) accepted", v)
		}
	}
}

// TestFWEnvStrictParse: output that is not name=value for the names asked
// for, repeated names, or an unexpected error are refused.
func TestFWEnvStrictParse(t *testing.T) {
	ctx := context.Background()
	for name, script := range map[string]string{
		"no equals":   `printf 'boot_part\n'`,
		"other name":  `printf 'boot_part=a\nbootcmd=evil\n'`,
		"twice":       `printf 'boot_part=a\nboot_part=b\n'`,
		"no newline":  `printf 'boot_part=a'`,
		"other error": `echo "Cannot read environment" >&2; exit 1`,
		"too long":    `printf 'boot_part='; head -c 300000 /dev/zero | tr '\0' x; echo`,
	} {
		p := filepath.Join(t.TempDir(), "fw_printenv")
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o700); err != nil {
			t.Fatal(err)
		}
		got, err := slot.FWEnv{Printenv: p}.Get(ctx, "boot_part")
		if err == nil {
			t.Errorf("%s: accepted (%d variables)", name, len(got))
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func TestFWEnvToolMissing(t *testing.T) {
	ctx := context.Background()
	missing := slot.FWEnv{
		Printenv: filepath.Join(t.TempDir(), "fw_printenv"),
		Setenv:   "d2c-no-such-fw_setenv",
	}
	if _, err := missing.Get(ctx, "boot_part"); !errors.Is(err, slot.ErrToolMissing) {
		t.Errorf("Get with a missing fw_printenv = %v", err)
	}
	if err := missing.Set(ctx, map[string]string{"boot_part": "a"}); !errors.Is(err, slot.ErrToolMissing) {
		t.Errorf("Set with a missing fw_setenv = %v", err)
	}
}

// TestUBootWithFWEnv runs the trial-and-confirm cycle through the tools:
// each switch and each confirmation is one fw_setenv -s call.
func TestUBootWithFWEnv(t *testing.T) {
	ctx := context.Background()
	env, envFile, logFile := fakeFW(t, "boot_part=a\nbootlimit=3\n")
	u := newUBoot(t, env)
	wantBooted(t, u, "a")
	writeImage(t, u, "b", "v2")
	if err := u.Switch(ctx, "b", true); err != nil {
		t.Fatal(err)
	}
	wantNext(t, u, "b", true)
	b, _ := os.ReadFile(envFile)
	if !strings.Contains(string(b), "bootcount=0\n") || !strings.Contains(string(b), "upgrade_available=1\n") {
		t.Fatalf("environment after Switch:\n%s", b)
	}
	u = newUBoot(t, env) // reboot
	wantBooted(t, u, "b")
	if err := u.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	wantNext(t, u, "b", false)
	log, _ := os.ReadFile(logFile)
	if n := strings.Count(string(log), "-s "); n != 2 {
		t.Fatalf("%d fw_setenv -s calls, want 2:\n%s", n, log)
	}
}
