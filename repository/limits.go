package repository

import (
	"errors"
	"fmt"
)

// ErrTooLarge is returned when a change would make metadata larger than the repository
// allows (Limits): every device downloads that metadata, and a TUF client refuses a
// role past its own bound (go-tuf: 5,000,000 bytes), which would stop every update.
var ErrTooLarge = errors.New("metadata too large")

// Limits bound what publishing may add to the metadata devices download. They are
// repository settings (edgeward-repo.json, "limits"), so the CLI and the server enforce
// the same ones. A zero field means its default.
type Limits struct {
	// MaxCustomBytes bounds one target's custom metadata (its JSON, Edgeward's fields
	// and the publisher's extra ones). 0: DefaultMaxCustomBytes.
	MaxCustomBytes int `json:"max_custom_bytes,omitempty"`
	// MaxRoleBytes bounds the signed metadata file of one targets role (targets.json,
	// models.json, runtimes.json). A change that makes a role larger than this is
	// refused; one that shrinks it (retire) is not. 0: DefaultMaxRoleBytes. It may not
	// exceed the devices' bound (ClientMaxRoleBytes, updater.TUFConfig.MaxTargetsBytes),
	// or devices would stop updating before publishing stops.
	MaxRoleBytes int `json:"max_role_bytes,omitempty"`
}

// Defaults of Limits.
const (
	DefaultMaxCustomBytes = 4 << 10
	DefaultMaxRoleBytes   = 2 << 20
	// ClientMaxRoleBytes is the bound the devices' TUF client (go-tuf) puts on a
	// targets role by default; Limits.MaxRoleBytes may not exceed it.
	ClientMaxRoleBytes = 5_000_000
)

func (l Limits) withDefaults() Limits {
	if l.MaxCustomBytes <= 0 {
		l.MaxCustomBytes = DefaultMaxCustomBytes
	}
	if l.MaxRoleBytes <= 0 {
		l.MaxRoleBytes = DefaultMaxRoleBytes
	}
	return l
}

func (l Limits) validate() error {
	if l.MaxRoleBytes > ClientMaxRoleBytes {
		return fmt.Errorf("limits: max_role_bytes %d is above the %d bytes devices accept: they would stop updating", l.MaxRoleBytes, ClientMaxRoleBytes)
	}
	if l.MaxCustomBytes > l.MaxRoleBytes {
		return fmt.Errorf("limits: max_custom_bytes %d is above max_role_bytes %d", l.MaxCustomBytes, l.MaxRoleBytes)
	}
	return nil
}

// Limits is the repository's bounds on metadata, with defaults filled in.
func (r *Repo) Limits() Limits { return r.limits }
