package repository

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// KeyRing finds the private keys an operation needs, among key files named explicitly
// and key files in directories, and decrypts them with a passphrase asked for at most
// once. It never writes a key. Not safe for concurrent use.
type KeyRing struct {
	// Files are key files given explicitly (e.g. --key). A missing one is an error.
	Files []string
	// Dirs are searched for *.key files, besides the repository's own key directories.
	Dirs []string
	// Passphrase returns the passphrase for encrypted keys. nil: encrypted keys cannot
	// be used.
	Passphrase func() ([]byte, error)
	// Roles, if set, are the only roles Find opens keys for: any other role is
	// refused with ErrRoleNotHeld before a key file is read or decrypted. An online
	// process (edgeward server --sign-delegated) names the delegated and online roles,
	// so that an offline key lying in a directory it searches (the targets key in
	// DIR/keys/offline, sharing the passphrase) is never decrypted in its memory.
	Roles []string
	// Stage, when set, lets a change to the targets, models or runtimes role whose
	// threshold is above 1 and above the keys found here be staged for the role's other
	// key holders (DIR/staged/ROLE/N.ROLE.json, signed by the keys found), instead of
	// failing: they add their signatures with SignStagedFile and PublishStaged makes it
	// current. Unset (the server), such a change fails with ErrNeedsSignatures. A role
	// whose threshold is 1 is never staged: a missing key fails the change as before.
	Stage bool

	pass []byte
}

// DelegatedAndOnlineRoles are the roles an online signer may hold: the delegated
// models and runtimes roles and the online snapshot and timestamp roles. Root and
// the top-level targets role stay offline.
func DelegatedAndOnlineRoles() []string {
	return []string{RoleModels, RoleRuntimes, metadata.SNAPSHOT, metadata.TIMESTAMP}
}

// ErrRoleNotHeld is returned by Find for a role outside KeyRing.Roles.
var ErrRoleNotHeld = errors.New("this key ring does not sign for the role")

type keyCandidate struct {
	path string
	data []byte
}

// Find returns threshold keys among ids, or an error saying which are missing.
func (kr *KeyRing) Find(role string, ids []string, threshold int, dirs []string) ([]*Key, error) {
	if len(kr.Roles) > 0 && !slices.Contains(kr.Roles, role) {
		return nil, fmt.Errorf("%w %s (it signs only for %s): sign with 'edgeward' on the repository, where the offline keys are", ErrRoleNotHeld, role, strings.Join(kr.Roles, ", "))
	}
	cands, err := kr.candidates(dirs)
	if err != nil {
		return nil, err
	}
	var out []*Key
	var damaged []string
	seen := map[string]bool{}
	for _, c := range cands {
		_, id, _, err := PeekKey(c.data)
		if err != nil {
			damaged = append(damaged, fmt.Sprintf("%s (%v)", c.path, err))
			continue
		}
		if !slices.Contains(ids, id) || seen[id] {
			continue
		}
		k, err := kr.open(c)
		if err != nil {
			return nil, err
		}
		seen[id] = true
		out = append(out, k)
		if len(out) == threshold {
			return out, nil
		}
	}
	short := make([]string, len(ids))
	for i, id := range ids {
		short[i] = id[:min(8, len(id))]
	}
	where := append(append([]string{}, kr.Files...), append(kr.Dirs, dirs...)...)
	msg := fmt.Sprintf("role %s needs %d of its keys [%s]; found %d in %s (name key files with --key)",
		role, threshold, strings.Join(short, " "), len(out), strings.Join(where, ", "))
	if len(damaged) > 0 {
		// Said, not skipped in silence: a truncated or damaged key file read as "found
		// 0", with nothing to say which file to restore (found from outside, 2 Dec).
		msg += "; these files could not be read as keys (damaged or truncated? restore them from their backup): " + strings.Join(damaged, "; ")
	}
	return nil, &KeysShortError{Role: role, Threshold: threshold, Found: out, msg: msg}
}

// KeysShortError is Find's error when fewer of a role's keys than its threshold are at
// hand (none unreadable by the passphrase: that is another error). Found holds the
// keys that are, opened: a change to a role whose threshold is above 1 is staged,
// signed by them, for the role's other key holders (see KeyRing.Stage).
type KeysShortError struct {
	Role      string
	Threshold int
	Found     []*Key
	msg       string
}

func (e *KeysShortError) Error() string { return e.msg }

// Load decrypts one explicit key file.
func (kr *KeyRing) Load(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	return kr.open(keyCandidate{path, data})
}

func (kr *KeyRing) open(c keyCandidate) (*Key, error) {
	k, err := ParseKey(c.data, nil)
	if err == nil {
		return k, nil
	}
	if kr.Passphrase == nil {
		return nil, fmt.Errorf("key %s: %w", c.path, err)
	}
	if kr.pass == nil {
		p, perr := kr.Passphrase()
		if perr != nil {
			return nil, fmt.Errorf("passphrase: %w", perr)
		}
		kr.pass = p
	}
	k, err = ParseKey(c.data, kr.pass)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", c.path, err)
	}
	return k, nil
}

func (kr *KeyRing) candidates(dirs []string) ([]keyCandidate, error) {
	var out []keyCandidate
	for _, f := range kr.Files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("key file: %w", err)
		}
		out = append(out, keyCandidate{f, data})
	}
	for _, d := range append(append([]string{}, kr.Dirs...), dirs...) {
		matches, err := filepath.Glob(filepath.Join(d, "*.key"))
		if err != nil {
			return nil, err
		}
		for _, m := range matches {
			data, err := os.ReadFile(m)
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					continue
				}
				return nil, fmt.Errorf("key file: %w", err)
			}
			out = append(out, keyCandidate{m, data})
		}
	}
	return out, nil
}
