package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgeward/edgeward/repository"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Threshold signing for the targets, models and runtimes roles: 'edgeward role keys'
// changes a delegated role's keys and threshold; publish, retire and repo renew stage a
// change the keys at hand cannot sign alone; 'role show', 'role sign', 'role publish'
// and 'role discard' take it from there (docs/REPOSITORY.md).

// stagingKeyring is the key ring of a command that stages what it cannot sign alone.
func (f *repoFlags) stagingKeyring() *repository.KeyRing {
	kr := f.keyring()
	kr.Stage = true
	return kr
}

// printStaged says what was staged and what is missing, for the operator.
func printStaged(env *cliEnv, s *repository.Staged) {
	for _, r := range s.Roles {
		fmt.Fprintf(env.stdout, "staged %s (not published): %s\n", r.Path, r)
	}
	role := s.Roles[0].Role
	fmt.Fprintf(env.stdout, "the role's key holders review and sign it ('edgeward role sign --role %s --key THEIR.key', or a copy of the file with --proposal), then 'edgeward role publish --role %s'\n", role, role)
}

func cmdRoleKeys(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("role keys", env)
	rf.registerPassphrase(fs)
	rf.registerKeys(fs)
	role := fs.String("role", "", "models or runtimes")
	var add, revoke multi
	fs.Var(&add, "add-key", "a key holder's PUBLIC key file (KEY.pub from 'edgeward keys gen --role ROLE') to add to the role (repeatable)")
	fs.Var(&revoke, "revoke-key", "KEYID: remove a key from the role (repeatable; a unique prefix of the ID is enough)")
	threshold := fs.Int("threshold", 0, "signatures the role needs (default: unchanged)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	st, err := repo.Load(ctx)
	if err != nil {
		return err
	}
	ch := repository.DelegationChange{Role: *role, Threshold: *threshold}
	for _, p := range add {
		k, err := readPublicKey(p)
		if err != nil {
			return fmt.Errorf("--add-key: %w", err)
		}
		ch.AddKeys = append(ch.AddKeys, k)
	}
	var current []string
	if d := st.Targets[metadata.TARGETS].Signed.Delegations; d != nil {
		for _, dr := range d.Roles {
			if dr.Name == *role {
				current = dr.KeyIDs
			}
		}
	}
	for _, prefix := range revoke {
		var match []string
		for _, id := range current {
			if strings.HasPrefix(id, prefix) {
				match = append(match, id)
			}
		}
		if len(match) != 1 {
			return fmt.Errorf("--revoke-key %s: %d keys of %s match", prefix, len(match), *role)
		}
		ch.RevokeKeys = append(ch.RevokeKeys, match[0])
	}
	staged, err := repo.ChangeDelegation(ctx, ch, rf.stagingKeyring())
	if err != nil {
		return err
	}
	if staged != nil {
		printStaged(env, staged)
		return nil
	}
	fmt.Fprintf(env.stdout, "%s keys and threshold changed and published\n", *role)
	return nil
}

// stagedCopy reads the file a key holder signs or reviews away from the repository.
func stagedCopy(path string) (*metadata.Metadata[metadata.TargetsType], error) {
	return metadata.Targets().FromFile(path)
}

// describeStaged is repository.DescribeStaged of the staged version of role, or of the
// copy in proposal against the role version in current (else the repository's current
// version when the repository opens here).
func describeStaged(ctx context.Context, rf *repoFlags, role, proposal, current string) ([]string, error) {
	if proposal == "" {
		if current != "" {
			return nil, errors.New("--current needs --proposal")
		}
		repo, err := rf.open()
		if err != nil {
			return nil, err
		}
		sf, _, err := repo.Staged(ctx, role)
		if err != nil {
			return nil, err
		}
		return withOthers(repository.DescribeStaged(role, &sf.Current.Signed, &sf.Staged.Signed, repo.Now()), sf), nil
	}
	prop, err := stagedCopy(proposal)
	if err != nil {
		return nil, fmt.Errorf("--proposal: %w", err)
	}
	var cur *metadata.TargetsType
	if current != "" {
		c, err := stagedCopy(current)
		if err != nil {
			return nil, fmt.Errorf("--current: %w", err)
		}
		cur = &c.Signed
	}
	var sf *repository.StagedFile
	if repo, err := rf.open(); err == nil {
		if st, err := repo.Load(ctx); err == nil && st.Targets[role] != nil && cur == nil {
			cur = &st.Targets[role].Signed
		}
		if f, _, err := repo.Staged(ctx, role); err == nil && f.Staged.Signed.Version == prop.Signed.Version {
			sf = f
		}
	}
	return withOthers(repository.DescribeStaged(role, cur, &prop.Signed, time.Now()), sf), nil
}

// withOthers adds what the change publishes together with the role (sf nil: not known).
func withOthers(desc []string, sf *repository.StagedFile) []string {
	if sf == nil || len(sf.With) == 0 {
		return desc
	}
	desc = append(desc, "published together with:")
	for _, l := range sf.With {
		desc = append(desc, "  "+l)
	}
	return desc
}

func roleFlag(fs *flag.FlagSet) *string {
	return fs.String("role", "", "targets, models or runtimes")
}

func cmdRoleShow(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("role show", env)
	role := roleFlag(fs)
	proposal := fs.String("proposal", "", "a copy of the staged file (default: the repository's staged one)")
	current := fs.String("current", "", "a copy of the role's current version (N.ROLE.json from the repository's metadata), when away from the repository")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	desc, err := describeStaged(ctx, rf, *role, *proposal, *current)
	if err != nil {
		return err
	}
	for _, l := range desc {
		fmt.Fprintln(env.stdout, l)
	}
	return nil
}

func cmdRoleSign(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("role sign", env)
	rf.registerPassphrase(fs)
	rf.registerKeys(fs)
	role := roleFlag(fs)
	proposal := fs.String("proposal", "", "a copy of the staged file to sign away from the repository (default: the repository's staged one, signed in place)")
	current := fs.String("current", "", "a copy of the role's current version, to show what the staged one changes when away from the repository")
	server := fs.String("server", "", "sign the change staged on this server (its operator API: fetched, shown, signed here, sent back; a security admin's token)")
	var token string
	secretVar(fs, &token, "token", env.getenv("EDGEWARD_TOKEN"), "operator API token for --server ($EDGEWARD_TOKEN)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if len(rf.keys) != 1 {
		return errors.New("role sign needs exactly one --key")
	}
	if *server != "" {
		if *proposal != "" {
			return errors.New("--server signs the server's staged change: --proposal is for a copy at hand")
		}
		return roleSignRemote(ctx, env, rf, *role, *current, &opClient{server: *server, token: token, env: env})
	}
	// What is signed, first.
	desc, err := describeStaged(ctx, rf, *role, *proposal, *current)
	if err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, "signing:")
	for _, l := range desc {
		fmt.Fprintln(env.stdout, "  "+l)
	}
	key, err := rf.keyring().Load(rf.keys[0])
	if err != nil {
		return err
	}
	if *proposal == "" {
		repo, err := rf.open()
		if err != nil {
			return err
		}
		sf, err := repo.SignStaged(ctx, *role, key)
		if err != nil {
			return err
		}
		have, want := sf.Progress(nil)
		fmt.Fprintf(env.stdout, "signed %s with %s\n", sf.Path, key.ID()[:8])
		printProgress(env, *role, sf.Staged.Signed.Version, have, want)
		return nil
	}
	ids, err := repository.SignStagedFile(nil, *proposal, key, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "signed %s with %s; signatures now: %s\n", *proposal, key.ID()[:8], shortIDs(ids))
	// Counted against the role's keys when the repository is reachable from here;
	// otherwise 'role publish' counts them.
	md, err := stagedCopy(*proposal)
	if err != nil {
		return err
	}
	if repo, oerr := rf.open(); oerr == nil {
		if sf, _, err := repo.Staged(ctx, *role); err == nil && sf.Staged.Signed.Version == md.Signed.Version {
			have, want := sf.Progress(md)
			printProgress(env, *role, md.Signed.Version, have, want)
			return nil
		}
	}
	printProgress(env, *role, md.Signed.Version, len(ids), 0)
	return nil
}

// roleSignRemote signs the change of role staged on a server: it fetches the staged
// version, shows what it changes (against --current, or the role's current version as
// the server serves it), signs it with the key here and sends the signed copy back.
func roleSignRemote(ctx context.Context, env *cliEnv, rf *repoFlags, role, current string, c *opClient) error {
	api, err := c.api()
	if err != nil {
		return err
	}
	data, err := api.Staged(ctx, role)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "edgeward-sign-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	copyFile := filepath.Join(dir, "staged."+role+".json")
	if err := os.WriteFile(copyFile, data, 0o600); err != nil {
		return err
	}
	md, err := stagedCopy(copyFile)
	if err != nil {
		return fmt.Errorf("the server's staged %s: %w", role, err)
	}
	fetched := false
	if current == "" {
		// The version it replaces, as the server serves it to devices (for the review
		// only: what counts is what is signed).
		if cur, err := fetchMetadata(ctx, c, fmt.Sprintf("%d.%s.json", md.Signed.Version-1, role)); err == nil {
			current = filepath.Join(dir, "current."+role+".json")
			if err := os.WriteFile(current, cur, 0o600); err != nil {
				return err
			}
			fetched = true
		}
	}
	desc, err := describeStaged(ctx, rf, role, copyFile, current)
	if err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, "signing:")
	for _, l := range desc {
		fmt.Fprintln(env.stdout, "  "+l)
	}
	if fetched {
		// The server chose what it is compared with: a review that does not trust the
		// server compares it with a copy of its own (--current).
		fmt.Fprintf(env.stdout, "  (compared with v%d as %s serves it; --current FILE compares it with a copy you trust)\n", md.Signed.Version-1, c.server)
	}
	key, err := rf.keyring().Load(rf.keys[0])
	if err != nil {
		return err
	}
	if _, err := repository.SignStagedFile(nil, copyFile, key, time.Now()); err != nil {
		return err
	}
	signed, err := os.ReadFile(copyFile)
	if err != nil {
		return err
	}
	res, _, err := api.SignStaged(ctx, role, signed)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "signed %s v%d with %s on %s\n", role, res.Version, key.ID()[:8], c.server)
	fmt.Fprintln(env.stdout, repository.StagedRole{Role: role, Version: res.Version, SignedBy: make([]string, res.Signatures), Threshold: res.Threshold})
	if res.Threshold > 0 && res.Signatures >= res.Threshold {
		fmt.Fprintf(env.stdout, "ready: 'edgeward role publish --role %s --server %s' publishes it (a release manager's token)\n", role, c.server)
	}
	return nil
}

// fetchMetadata reads a metadata file the server serves to devices (/metadata/NAME).
func fetchMetadata(ctx context.Context, c *opClient, name string) ([]byte, error) {
	hc, err := operatorHTTP(c.env)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.server, "/")+"/metadata/"+name, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metadata/%s: %s", name, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, repository.ClientMaxRoleBytes))
}

func printProgress(env *cliEnv, role string, v int64, have, want int) {
	fmt.Fprintln(env.stdout, repository.StagedRole{Role: role, Version: v, SignedBy: make([]string, have), Threshold: want})
	if want > 0 && have >= want {
		fmt.Fprintf(env.stdout, "ready: 'edgeward role publish --role %s' publishes it\n", role)
	}
}

func cmdRolePublish(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("role publish", env)
	role := roleFlag(fs)
	var copies multi
	fs.Var(&copies, "proposal", "a copy of the staged file signed away from the repository: its signatures are added (repeatable)")
	server := fs.String("server", "", "publish the change staged on this server (its operator API; a release manager's token)")
	var token string
	secretVar(fs, &token, "token", env.getenv("EDGEWARD_TOKEN"), "operator API token for --server ($EDGEWARD_TOKEN)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *server != "" {
		if len(copies) > 0 {
			return errors.New("--server publishes with the signatures sent to the server ('edgeward role sign --server'): --proposal is for copies at hand")
		}
		api, err := (&opClient{server: *server, token: token, env: env}).api()
		if err != nil {
			return err
		}
		res, _, err := api.PublishStaged(ctx, *role)
		if err != nil {
			return err
		}
		for _, r := range res.Roles {
			fmt.Fprintf(env.stdout, "%s v%d published, signed by %s (%d needed)\n", r.Role, r.Version, shortIDs(r.SignedBy), r.Threshold)
		}
		return nil
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	res, err := repo.PublishStaged(ctx, *role, copies)
	if err != nil {
		return err
	}
	for _, r := range res.Roles {
		fmt.Fprintf(env.stdout, "%s v%d published, signed by %s (%d needed)\n", r.Role, r.Version, shortIDs(r.SignedBy), r.Threshold)
	}
	return nil
}

func cmdRoleDiscard(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("role discard", env)
	role := roleFlag(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	what, err := repo.DiscardStaged(ctx, *role)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "discarded the staged %s\n", what)
	return nil
}
