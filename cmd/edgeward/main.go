// Command edgeward is the operator CLI and the server of Edgeward.
//
//	edgeward repo init DIR            create a TUF repository (2-of-3 root by default)
//	edgeward repo status              versions, expiry and targets of a repository
//	edgeward keys gen --role R        make a key on this machine (for a root ceremony)
//	edgeward keys passwd KEYFILE      change a key file's passphrase
//	edgeward keys rotate --role R     replace the timestamp, snapshot, models or runtimes key
//	edgeward root propose|sign|publish  change the root without gathering its keys
//	edgeward publish --kind K --name N --version V FILE   publish a model, probe set or runtime
//	edgeward audit export|verify|prove|pubkey|witness  the transparency log, verifiable offline
//	edgeward server                   serve the repository, the device and operator APIs, the dashboard (/ui)
//	edgeward rollout create|status|pause|resume|abort|approve   staged rollouts (--server)
//	edgeward devices list|show|quarantine|release|decommission|label   the fleet (--server)
//	edgeward token create|list|revoke operator API tokens
//	edgeward demo                     run the demonstration scenario
//	edgeward demo models              write the demo's example models and probe sets
//	edgeward version                  version, commit and Go version (also --version)
//	edgeward completion bash|zsh      shell completion (commands from this list, flags from --help)
//
// The repository directory is --repo, or $EDGEWARD_REPO, or ./edgeward-repo. Passphrases
// for offline keys come from --passphrase-file, $EDGEWARD_PASSPHRASE or a prompt.
// Commands that use a server's operator API take --server and --token, or
// $EDGEWARD_SERVER and $EDGEWARD_TOKEN.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/internal/buildinfo"
	"github.com/edgeward/edgeward/internal/completion"
	"github.com/edgeward/edgeward/internal/tlshint"
)

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *cliEnv, args []string) error
}

func commands() []command {
	return []command{
		{"repo init", "create a repository: edgeward repo init DIR", cmdRepoInit},
		{"repo status", "show a repository's roles, versions, expiry and targets", cmdRepoStatus},
		{"repo renew", "re-sign offline roles before they expire: --role targets|models|runtimes (repeatable)", cmdRepoRenew},
		{"keys gen", "generate a key file on this machine", cmdKeysGen},
		{"keys passwd", "re-encrypt a key file under a new passphrase: edgeward keys passwd KEYFILE", cmdKeysPasswd},
		{"keys kek", "write a key-encryption key for encrypted targets: --out FILE", cmdKeysKEK},
		{"keys rotate", "replace the key of timestamp, snapshot, models or runtimes", cmdKeysRotate},
		{"keys rotate-content", "re-encrypt an encrypted version under a new content key: --kek FILE --name N --version V", cmdKeysRotateContent},
		{"keys rotate-kek", "seal every content key under a new key-encryption key: --kek OLD --new-kek NEW", cmdKeysRotateKEK},
		{"root propose", "stage a new root version", cmdRootPropose},
		{"root show", "what the staged (or --proposal) root is and changes, key by key: review it before signing", cmdRootShow},
		{"root sign", "add one signature to the staged root (it says first what the root changes)", cmdRootSign},
		{"root publish", "publish the staged root once old and new thresholds are met", cmdRootPublish},
		{"role keys", "change a delegated role's keys and threshold: --role models|runtimes [--add-key PUB] [--revoke-key ID] [--threshold N]", cmdRoleKeys},
		{"role show", "what the staged change of a role (targets, models, runtimes) is and changes: review it before signing", cmdRoleShow},
		{"role sign", "add one signature to a role's staged change: --role R --key KEY [--proposal COPY]", cmdRoleSign},
		{"role publish", "publish a role's staged change once its threshold is met: --role R [--proposal COPY]", cmdRolePublish},
		{"role discard", "discard a role's staged change: --role R", cmdRoleDiscard},
		{"publish", "publish a model, probe set or runtime", cmdPublish},
		{"retire", "remove old versions from the targets metadata (contents kept for --grace): --kind K --name N (--version V | --keep N)", cmdRetire},
		{"audit export", "export the audit log (JSON Lines with signed checkpoints)", cmdAuditExport},
		{"audit verify", "verify an audit export or proof offline: FILE --key KEY [--witness KEY --quorum N] --state FILE", cmdAuditVerify},
		{"audit prove", "one record with its inclusion proof: edgeward audit prove SEQ [--state FILE]", cmdAuditProve},
		{"audit witness", "cosign the audit checkpoints of logs you witness: --name N --key FILE --state FILE --log KEY", cmdAuditWitness},
		{"audit move-key", "move the audit checkpoint key out of the data directory: --to FILE", cmdAuditMoveKey},
		{"audit pubkey", "print the audit log's verifier key (note format; --pem for PEM)", cmdAuditPubkey},
		{"attest learn", "draft the boot and runtime (IMA) policy from a reference device's last trusted verdict: EXPORT --device ID", cmdAttestLearn},
		{"server", "serve the repository over HTTP", cmdServer},
		{"token create", "issue an operator API token: --name N --role R [--server URL]", cmdTokenCreate},
		{"token list", "list operator tokens (no secrets): --server URL", cmdTokenList},
		{"token revoke", "revoke an operator token: edgeward token revoke ID --server URL", cmdTokenRevoke},
		{"rollout create", "create a staged rollout: --id ID --name N --version V [--waves 1:30m,10:1h,100]", cmdRolloutCreate},
		{"rollout status", "rollouts and fleet KPIs, or one rollout's waves, KPIs and events: [ID]", cmdRolloutStatus},
		{"rollout pause", "pause a rollout: ID [--reason TEXT]", rolloutActionCmd("pause")},
		{"rollout resume", "resume a paused rollout: ID", rolloutActionCmd("resume")},
		{"rollout abort", "abort a rollout: no device is offered its target any more; devices that committed it keep it (anti-rollback): ID [--reason TEXT]", rolloutActionCmd("abort")},
		{"rollout approve", "approve a rollout's next wave: ID [--wave N]", rolloutActionCmd("approve")},
		{"devices list", "list devices: slots, verdict, quarantine, last check-in", cmdDevicesList},
		{"devices show", "a device with its attestation and install history: ID", cmdDevicesShow},
		{"devices quarantine", "stop giving a device new versions: ID [--reason TEXT]", deviceActionCmd("quarantine")},
		{"devices release", "release a quarantined device: ID", deviceActionCmd("release")},
		{"devices decommission", "take a device out of service for good (its check-ins are refused): ID [--reason TEXT]", deviceActionCmd("decommission")},
		{"devices clear-failed", "offer a device the versions that failed on it again: ID [--kind model|runtime] (default both)", cmdDevicesClearFailed},
		{"devices label", "set a device's labels: ID key=value… [--replace]", cmdDevicesLabel},
		{"completion", "print a shell completion script: edgeward completion bash|zsh", cmdCompletion},
		{"demo models", "write the demo's example models and probe sets: [--out DIR]", cmdDemoModels},
		{"demo", "run the demonstration scenario", cmdDemo},
	}
}

// cliEnv is what commands read from the outside world; tests replace it.
type cliEnv struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := &cliEnv{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	if err := run(ctx, env, os.Args[1:]); err != nil {
		err = tlshint.Explain(err, "trust it with EDGEWARD_SERVER_CA=FILE (the server's DIR/tls/server.pem, or the CA that issued its certificate)")
		fmt.Fprintf(os.Stderr, "edgeward: %v\n", err)
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) > 0 && (args[0] == "version" || args[0] == "--version" || args[0] == "-version") {
		fmt.Fprintln(env.stdout, buildinfo.Read().Line("edgeward"))
		return nil
	}
	for _, c := range commands() {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == c.name {
			err := c.run(ctx, env, args[len(words):])
			if errors.Is(err, flag.ErrHelp) && helpAsked(args[len(words):]) {
				return nil // the flag set printed the command's flags
			}
			return err
		}
	}
	// A group's word alone or with -h ("edgeward keys --help"): its commands, on
	// standard output (it printed "unknown command" before).
	if len(args) > 0 && (len(args) == 1 || helpAsked(args[1:2])) {
		var group []command
		for _, c := range commands() {
			if first, _, ok := strings.Cut(c.name, " "); ok && first == args[0] {
				group = append(group, c)
			}
		}
		if len(group) > 0 {
			fmt.Fprintf(env.stdout, "usage: edgeward %s <command> [flags] [args]\n", args[0])
			for _, c := range group {
				fmt.Fprintf(env.stdout, "  %-18s %s\n", c.name, c.summary)
			}
			fmt.Fprintln(env.stdout, "every command prints its flags with -h or --help")
			if len(args) == 1 {
				return fmt.Errorf("%s: which command? %w", args[0], flag.ErrHelp)
			}
			return nil
		}
	}
	usage(env.stderr)
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		return nil
	}
	return fmt.Errorf("unknown command %q: %w", strings.Join(args, " "), flag.ErrHelp)
}

// helpAsked says whether args ask for a command's help (-h, --help) before a "--".
func helpAsked(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: edgeward <command> [flags] [args]")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-18s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-18s %s\n", "version", "print the version, commit and Go version (also --version)")
	fmt.Fprintln(w, "every command prints its flags with -h or --help")
}

// parse parses flags that may come before, between or after positional arguments and
// returns the positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, explainFlagError(fs, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// cmdCompletion prints the completion script of a shell: the command words come from
// commands(), the flags of each from its --help when completing.
func cmdCompletion(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet("completion", env)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: edgeward completion bash|zsh (e.g. source <(edgeward completion bash))")
	}
	names := []string{"version"}
	for _, c := range commands() {
		names = append(names, c.name)
	}
	return completion.Write(env.stdout, pos[0], "edgeward", names)
}

// badValueRE matches the flag package's error for a value its flag cannot parse.
var badValueRE = regexp.MustCompile(`^invalid value "(.*)" for flag -([^:]+): `)

// explainFlagError adds to the flag package's error for a duration it could not parse
// what a duration looks like: it said only "parse error" ('--ttl 30d', found from
// outside, 2 Dec).
func explainFlagError(fs *flag.FlagSet, err error) error {
	m := badValueRE.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	f := fs.Lookup(m[2])
	if f == nil {
		return err
	}
	if g, ok := f.Value.(flag.Getter); ok {
		if _, isDuration := g.Get().(time.Duration); isDuration {
			return fmt.Errorf("--%s %q: want a duration such as 90s, 30m or 720h (units ms, s, m, h; a day is 24h)", m[2], m[1])
		}
	}
	return err
}
