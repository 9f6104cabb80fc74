package reference

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	good := strings.Repeat("ab", 32)
	tests := []struct {
		name string
		b    Boot
		ok   bool
	}{
		{"empty", Boot{}, true},
		{"all set", Boot{Hardware: []string{"x86_64"}, SecureBoot: true, BootApplications: []string{good}, Forbidden: []string{good}, PCRs: map[int][]string{0: {good}, 7: {good}}}, true},
		{"upper case digest", Boot{BootApplications: []string{strings.ToUpper(good)}}, false},
		{"short digest", Boot{Forbidden: []string{"abcd"}}, false},
		{"not hex", Boot{BootApplications: []string{strings.Repeat("zz", 32)}}, false},
		{"PCR 8", Boot{PCRs: map[int][]string{8: {good}}}, false},
		{"PCR without values", Boot{PCRs: map[int][]string{0: {}}}, false},
		{"empty hardware", Boot{Hardware: []string{""}}, false},
	}
	for _, tc := range tests {
		err := tc.b.Validate()
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%s: Validate() = %v; want ok %v", tc.name, err, tc.ok)
		}
	}
}

func TestSelect(t *testing.T) {
	list := []Boot{{Hardware: []string{"aarch64"}, SecureBoot: true}, {Hardware: []string{"x86_64", "riscv64"}}, {}}
	for hw, want := range map[string]int{"aarch64": 0, "riscv64": 1, "x86_64": 1, "mips": 2} {
		if got := Select(list, hw); got != &list[want] {
			t.Errorf("Select(%q) = %+v; want entry %d", hw, got, want)
		}
	}
	if got := Select(list[:2], "mips"); got != nil {
		t.Errorf("Select(no catch-all, mips) = %+v; want nil", got)
	}
}

func TestLearn(t *testing.T) {
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	got := Learn(BootState{SecureBoot: true, BootApplications: []string{b, a, b}, PCRs: map[int]string{0: a, 4: b}}, "x86_64")
	if !got.SecureBoot || strings.Join(got.BootApplications, ",") != a+","+b || got.Hardware[0] != "x86_64" || len(got.PCRs) != 1 || got.PCRs[0][0] != a {
		t.Fatalf("Learn = %+v", got)
	}
	if err := got.Validate(); err != nil {
		t.Fatal(err)
	}
}
