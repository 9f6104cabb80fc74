package policy

import (
	"fmt"
	"strings"

	"github.com/edgeward/edgeward/internal/artifact"
)

// Range is a set of semantic versions: comparators that must all hold, written
// ">=1.2.0 <2.0.0" (spaces or commas between them). A bare version means "=". The zero
// Range contains every version, including the empty (unknown) one.
type Range struct {
	text    string
	clauses []clause
}

type clause struct {
	op string // one of = != < <= > >=
	v  artifact.Version
}

// ParseRange parses a version range.
func ParseRange(s string) (Range, error) {
	r := Range{text: strings.TrimSpace(s)}
	for f := range strings.FieldsFuncSeq(s, func(c rune) bool { return c == ' ' || c == ',' || c == '\t' }) {
		op := ""
		for _, o := range []string{">=", "<=", "!=", "==", ">", "<", "="} {
			if strings.HasPrefix(f, o) {
				op = o
				break
			}
		}
		vs := strings.TrimPrefix(f, op)
		if op == "" || op == "==" {
			op = "="
		}
		if vs == "" {
			return Range{}, fmt.Errorf("version range %q: %q has no version after it", s, f)
		}
		v, err := artifact.ParseVersion(vs)
		if err != nil {
			return Range{}, fmt.Errorf("version range %q: %w", s, err)
		}
		r.clauses = append(r.clauses, clause{op, v})
	}
	return r, nil
}

// String returns the range as written.
func (r Range) String() string { return r.text }

// IsZero reports whether r is the empty range (matches everything).
func (r Range) IsZero() bool { return len(r.clauses) == 0 }

// Contains reports whether version s is in r. An unparsable or empty s is in the zero
// Range only.
func (r Range) Contains(s string) bool {
	if len(r.clauses) == 0 {
		return true
	}
	v, err := artifact.ParseVersion(s)
	if err != nil {
		return false
	}
	for _, c := range r.clauses {
		n := v.Compare(c.v)
		ok := false
		switch c.op {
		case "=":
			ok = n == 0
		case "!=":
			ok = n != 0
		case "<":
			ok = n < 0
		case "<=":
			ok = n <= 0
		case ">":
			ok = n > 0
		case ">=":
			ok = n >= 0
		}
		if !ok {
			return false
		}
	}
	return true
}
