// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// D2c is the operator tool of a d2c fleet: it runs the fleet certificate
// authority, issues enrollment tokens, serves the EST registrar, configures
// or runs the MQTT broker, shows verified telemetry live, enrolls, renews
// and inspects device identities, updates devices, and signs, checks and
// serves update repositories.
//
// Usage:
//
//	d2c <command> [flags]
//
// The commands are:
//
//	ca init              create a fleet CA (root, issuing CA, token key)
//	ca server-cert       issue a TLS server certificate for a broker or registrar
//	ca service-cert      issue a client certificate for a cloud service
//	ca revoke            revoke a certificate issued by the fleet CA
//	ca crl               write a fresh certificate revocation list (PEM)
//	token issue          sign a one-time enrollment token for a device
//	registrar serve      serve the EST registrar over TLS 1.3
//	broker config        write mosquitto.conf and its ACL for the fleet
//	dev broker           run an embedded MQTT broker for development
//	tail                 print verified telemetry live, as a cloud service
//	fleet affected       list the devices running a release whose SBOM names a component
//	device enroll        enroll a device with a token
//	device renew         renew a device certificate
//	device show          show a device's current identity
//	device update        check for an update and install it; confirm, roll back, status
//	update keys gen      generate a signing key for an update role
//	update root init     create the first root of an update repository
//	update root rotate   sign the next root version (rotate keys, extend expiry)
//	update release sign  sign a release and a fresh timestamp into a repository
//	update timestamp     re-sign a fresh timestamp for the current release
//	update verify        verify a repository exactly as a device would
//	update serve         serve a repository over plain HTTP for development
//	rollout start        start a campaign: offer a release to the fleet phase by phase
//	rollout status       show a campaign's phases and its devices
//	rollout pause        pause a running campaign
//	rollout resume       resume a paused campaign
//	rollout abort        abort a campaign: no device that has not started the release starts it
//	audit verify         check a device's audit log: its hash chain, and the heads it signed
//	audit show           list the records of a device's audit log
//	version              print d2c's version, the revision it was built from, and its platform
//	completion bash|zsh|fish  print a shell completion script
//
// Run "d2c <command> --help" for a command's flags and an example.
//
// Every flag can also be given by an environment variable,
// D2C_<COMMAND>_<FLAG>, or a line "<command>.<flag> = <value>" of the
// configuration file ($D2C_CLI_CONFIG, or ~/.config/d2c/config); the command
// line wins, then the environment, then the file. Secrets (--token) are
// never read from either. Run "d2c help environment" for the details.
//
// Exit status: 0 on success, 1 when a command fails (the error is followed
// by a "hint:" line saying what to do), 2 on a usage error.
//
// Nothing here prints a private key or a token, except "token issue", which
// prints the token it signs, alone on stdout.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"
)

// The CLI library: the standard flag package, kept on purpose (issue 14,
// item 3). Weighed against what the module proxy serves:
//
//   - cobra (spf13/cobra, with pflag), as kubectl and step use: GNU flags,
//     help, "did you mean" and completion, but every command rewritten onto
//     cobra.Command and pflag, and its completion calls back into the
//     binary (d2c __complete) where ours is a static script generated from
//     the command table (completion.go). No env or config file of its own
//     (that is viper, another dependency).
//   - kong: commands as structs with env tags and config resolvers; the
//     same rewrite of every command, and its env tags are per field, not
//     per command path.
//   - ff/v3: env and config files over flag.FlagSet, the closest fit, but
//     one unqualified config file per FlagSet (no "device.show.store"), and it
//     sets values through FlagSet.Set, so flags from the environment would
//     look given on the command line to the commands that tell modes apart
//     with fs.Visit (tail, update release sign); nor does it refuse secrets.
//
// What they would bring is here in less than they would take to adopt:
// dispatch and unknown-command suggestions in run, GNU-style flag errors in
// flagError, the environment and the configuration file in config.go, and
// completion generated from the same table. Revisit if commands take
// positional arguments or nested flag groups.

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// streams are where a command writes: results on stdout, progress,
// warnings and errors on stderr.
type streams struct {
	stdout, stderr io.Writer
}

// command is one "d2c <group> <name>" subcommand.
type command struct {
	path    string // "ca init"
	summary string // one line: the command's purpose
	usage   string // the synopsis after "d2c <path>"
	details string // paragraphs after the flags, may be empty
	example string // one or more example invocations
	// flags registers the command's flags on fs and returns the function
	// that runs it once the flags are parsed.
	flags func(fs *flag.FlagSet) func(ctx context.Context, s streams) error
}

// commands lists every command, in the order help shows them.
func commands() []*command {
	return append([]*command{
		caInitCommand(),
		caServerCertCommand(),
		caServiceCertCommand(),
		caRevokeCommand(),
		caCRLCommand(),
		tokenIssueCommand(),
		registrarServeCommand(),
		cloudServeCommand(),
		brokerConfigCommand(),
		devBrokerCommand(),
		tailCommand(),
		fleetAffectedCommand(),
		deviceEnrollCommand(),
		deviceRenewCommand(),
		deviceShowCommand(),
		deviceUpdateCommand(),
		updateKeysGenCommand(),
		updateRootInitCommand(),
		updateRootRotateCommand(),
		updateReleaseSignCommand(),
		updateTimestampCommand(),
		updateVerifyCommand(),
		updateServeCommand(),
	}, slices.Concat(rolloutCommands(), auditCommands(), []*command{versionCommand()}, completionCommands())...)
}

// run is the whole CLI: it parses args (without the program name), runs
// the command they name and returns the exit status. main calls it with a
// context cancelled on SIGINT or SIGTERM; tests call it directly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	s := streams{stdout: stdout, stderr: stderr}
	cmds := commands()
	if len(args) == 0 {
		printCommandList(stderr, cmds, "")
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if len(args) == 2 && args[0] == "help" && args[1] == "environment" {
			printEnvironmentHelp(stdout)
			return exitOK
		}
		if len(args) > 1 && args[0] == "help" {
			return run(ctx, slices.Concat(args[1:], []string{"--help"}), stdout, stderr)
		}
		printCommandList(stdout, cmds, "")
		return exitOK
	case "--version":
		args = append([]string{"version"}, args[1:]...)
	}
	// The command whose path (one or more words) args start with; the
	// longest wins.
	var match *command
	for _, c := range cmds {
		w := strings.Fields(c.path)
		if len(w) <= len(args) && slices.Equal(w, args[:len(w)]) &&
			(match == nil || len(w) > len(strings.Fields(match.path))) {
			match = c
		}
	}
	if match != nil {
		return runCommand(ctx, match, args[len(strings.Fields(match.path)):], s)
	}
	// Otherwise args name a group ("ca", "update root"), perhaps followed
	// by a help flag, or an unknown command.
	words, help := args, false
	if i := slices.IndexFunc(args, isHelpFlag); i > 0 {
		words, help = args[:i], true
	}
	if i := slices.IndexFunc(words, func(w string) bool { return strings.HasPrefix(w, "-") }); i >= 0 {
		words = words[:i] // "d2c ca --ca x": the flags are not command words
	}
	if len(words) == 0 { // "d2c --verison"
		name := strings.TrimLeft(args[0], "-")
		fmt.Fprintf(stderr, "d2c: unknown flag --%s\n", name)
		if sug := nearest(name, []string{"help", "version"}); sug != "" {
			fmt.Fprintf(stderr, "did you mean --%s?\n", sug)
		}
		fmt.Fprint(stderr, "Run 'd2c help' for the list of commands.\n")
		return exitUsage
	}
	if inGroup := commandsUnder(cmds, words); len(inGroup) > 0 {
		group := strings.Join(words, " ")
		if help {
			printCommandList(stdout, inGroup, group)
			return exitOK
		}
		printCommandList(stderr, inGroup, group)
		return exitUsage
	}
	// An unknown command: name it, suggest the nearest one, and point at
	// the list rather than print it.
	k := len(words) - 1 // the longest known group before the unknown word
	for k > 0 && len(commandsUnder(cmds, words[:k])) == 0 {
		k--
	}
	fmt.Fprintf(stderr, "d2c: unknown command %q\n", strings.Join(words[:k+1], " "))
	if sug := suggestCommand(cmds, words[:k+1]); sug != "" {
		// "updte root init": suggest the whole command if the rest fits.
		if whole := append(strings.Fields(sug), words[k+1:]...); len(whole) > k+1 &&
			slices.ContainsFunc(cmds, func(c *command) bool { return c.path == strings.Join(whole, " ") }) {
			sug = strings.Join(whole, " ")
		}
		fmt.Fprintf(stderr, "did you mean %q?\n", sug)
	}
	if k == 0 {
		fmt.Fprint(stderr, "Run 'd2c help' for the list of commands.\n")
	} else {
		fmt.Fprintf(stderr, "Run 'd2c %s --help' for its commands.\n", strings.Join(words[:k], " "))
	}
	return exitUsage
}

// suggestCommand returns the command or group nearest to words (as many
// words long), or "" if none is near enough to be what was meant.
func suggestCommand(cmds []*command, words []string) string {
	var names []string
	for _, c := range cmds {
		if w := strings.Fields(c.path); len(w) >= len(words) {
			names = append(names, strings.Join(w[:len(words)], " "))
		}
	}
	if len(words) == 1 {
		names = append(names, "help")
	}
	return nearest(strings.Join(words, " "), names)
}

// nearest returns the name in names closest to s by edit distance, if it
// is close enough to be a typo of s (at most 2 edits, and fewer than half
// of s); otherwise the only name that s, 3 letters or more, begins
// ("--hardware" for --hardware-class); otherwise "".
func nearest(s string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(s, n); d < bestD && 2*d < len(s) {
			best, bestD = n, d
		}
	}
	if best == "" && len(s) >= 3 {
		for _, n := range names {
			if strings.HasPrefix(n, s) {
				if best != "" {
					return ""
				}
				best = n
			}
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, counting a
// transposition of two neighbours as one edit ("inti" for "init").
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// commandsUnder returns the commands whose path starts with the words
// of group.
func commandsUnder(cmds []*command, group []string) []*command {
	var in []*command
	for _, c := range cmds {
		if w := strings.Fields(c.path); len(w) > len(group) && slices.Equal(w[:len(group)], group) {
			in = append(in, c)
		}
	}
	return in
}

// isHelpFlag reports whether a, after a group name, asks for help.
func isHelpFlag(a string) bool {
	return a == "-h" || a == "-help" || a == "--help" || a == "help"
}

// runCommand parses the flags of c, fills in those not given from the
// environment and the configuration file, runs c and reports its error.
func runCommand(ctx context.Context, c *command, args []string, s streams) int {
	fs := flag.NewFlagSet("d2c "+c.path, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors and help are printed below
	fs.Usage = func() {}
	runFn := c.flags(fs)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(s.stdout, c, fs)
		return exitOK
	}
	if err != nil {
		err = flagError(err, fs)
	} else if fs.NArg() > 0 {
		err = usageErrorf("unexpected argument %q (all inputs are flags)", fs.Arg(0))
	} else if err = applyDefaults(c, fs, os.LookupEnv); err == nil {
		err = runFn(ctx, s)
	}
	if err == nil {
		return exitOK
	}
	if ue := (*usageError)(nil); errors.As(err, &ue) {
		fmt.Fprintf(s.stderr, "d2c: %s: %v\n", c.path, ue)
		if ue.suggest != "" {
			fmt.Fprintf(s.stderr, "did you mean %s?\n", ue.suggest)
		}
		fmt.Fprintf(s.stderr, "usage: d2c %s\nRun 'd2c %s --help' for details.\n",
			strings.TrimSpace(c.path+" "+c.usage), c.path)
		return exitUsage
	}
	fmt.Fprintf(s.stderr, "d2c: %s: %v\n", c.path, err)
	if h := hintFor(err); h != "" {
		fmt.Fprintf(s.stderr, "hint: %s\n", h)
	}
	return exitError
}

// flagError rewrites an error of the flag package in the GNU style of the
// rest of d2c (--name, never -name), with the nearest flag for an unknown
// one. The flag package's messages are stable: Go keeps them for
// compatibility.
func flagError(err error, fs *flag.FlagSet) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		ue := &usageError{msg: "unknown flag --" + name}
		if n, ok := renamedFlags[strings.TrimPrefix(fs.Name(), "d2c ")][name]; ok {
			ue.msg += " (renamed --" + n + ")"
		} else if n := nearest(name, append(names, "help")); n != "" {
			ue.suggest = "--" + n
		}
		return ue
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return usageErrorf("flag --%s needs a value", name)
	}
	// invalid value "x" for flag -name: reason, and for a bool flag
	// invalid boolean value "x" for -name: reason.
	for _, p := range []string{" for flag -", " for -"} {
		if before, after, ok := strings.Cut(msg, p); ok && strings.HasPrefix(before, "invalid ") {
			return usageErrorf("%s for --%s", before, after)
		}
	}
	return &usageError{msg: msg}
}

// usageError is a mistake in how a command was invoked: exit status 2,
// with the usage line.
type usageError struct {
	msg     string
	suggest string // what was probably meant ("--store"), or ""
}

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// printCommandList prints the commands (of one group, if group is set).
func printCommandList(w io.Writer, cmds []*command, group string) {
	if group == "" {
		fmt.Fprint(w, "d2c is the operator tool of a d2c fleet: fleet CA, enrollment tokens,\nEST registrar, broker, telemetry, device identities and updates, update\nrepositories.\n\n")
		fmt.Fprint(w, "Usage:\n  d2c <command> [flags]\n\nCommands:\n")
	} else {
		fmt.Fprintf(w, "Usage:\n  d2c %s <command> [flags]\n\nCommands:\n", group)
	}
	width := 17
	for _, c := range cmds {
		width = max(width, len(c.path)+1)
	}
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-*s %s\n", width, c.path, c.summary)
	}
	fmt.Fprint(w, "\nRun 'd2c <command> --help' for a command's flags and an example, e.g.\n  d2c ca init --help\n")
	if group == "" {
		fmt.Fprint(w, "Flags can also come from D2C_<COMMAND>_<FLAG> variables and a configuration\nfile: run 'd2c help environment'.\n")
	}
}

// printHelp prints a command's purpose, usage, flags with defaults,
// details and example.
func printHelp(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "d2c %s: %s\n\nUsage:\n  %s\n", c.path, c.summary, strings.TrimSpace("d2c "+c.path+" "+c.usage))
	var flags []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) { flags = append(flags, f) })
	if len(flags) > 0 {
		sort.Slice(flags, func(i, j int) bool { return flags[i].Name < flags[j].Name })
		fmt.Fprint(w, "\nFlags:\n")
		for _, f := range flags {
			typ, usage := flag.UnquoteUsage(f)
			if typ == "value" { // a repeatable stringList
				typ = "string"
			}
			fmt.Fprintf(w, "  --%s", f.Name)
			if typ != "" {
				fmt.Fprintf(w, " %s", typ)
			}
			fmt.Fprintf(w, "\n      %s", usage)
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "[]" {
				fmt.Fprintf(w, " (default %q)", f.DefValue)
			}
			fmt.Fprintln(w)
		}
		example := flags[0].Name
		if _, secret := noDefaultFlags[example]; secret && len(flags) > 1 {
			example = flags[1].Name
		}
		fmt.Fprintf(w, "\nFlags also come from %s variables (%s)\nand \"%s\" lines of the configuration file: 'd2c help environment'.\n",
			envName(c.path, "<FLAG>"), envName(c.path, example), configKey(c.path, "<flag> = value"))
		for _, f := range flags {
			if instead, ok := noDefaultFlags[f.Name]; ok {
				fmt.Fprintf(w, "Not --%s, a secret: use %s.\n", f.Name, instead)
			}
		}
	}
	if c.details != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.details))
	}
	fmt.Fprintf(w, "\nExample:\n%s\n", indent(strings.TrimSpace(c.example)))
}

func indent(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return strings.Join(lines, "\n")
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	*l = append(*l, v)
	return nil
}
