package verify

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestReasonsCapKeepsSummaryLastAndNonceListed: past maxReasons the last reason counts
// the rest; Verify's sort keeps it last; a nonce or authentication code added after
// (verify.Check adds its nonce step's after Verify) is still listed as a reason of its
// own, before the summary, since callers act on those codes (found by review: the
// summary was overwritten in the middle of the sorted list and the nonce code lost).
func TestReasonsCapKeepsSummaryLastAndNonceListed(t *testing.T) {
	var v Verdict
	for i := range 81 {
		c := ArtifactUnexpected
		if i%2 == 1 {
			c = ArtifactMismatch
		}
		v.add(c, "reason %d", i)
	}
	if len(v.Reasons) != maxReasons || !strings.HasPrefix(v.Reasons[maxReasons-1].Detail, "18 more reasons not listed:") {
		t.Fatalf("%d reasons, last %v; want %d, the last counting 18 more", len(v.Reasons), v.Reasons[len(v.Reasons)-1], maxReasons)
	}
	v.sortReasons()
	last := v.Reasons[len(v.Reasons)-1]
	if !strings.HasPrefix(last.Detail, "18 more reasons not listed:") {
		t.Fatalf("after the sort the last reason is %v; want the summary", last)
	}
	if !slices.IsSortedFunc(v.Reasons[:len(v.Reasons)-1], func(a, b Reason) int { return strings.Compare(string(a.Code), string(b.Code)) }) {
		t.Error("the listed reasons are not sorted")
	}
	v.add(NonceUnknownOrReused, "nonce %x", []byte{1})
	v.add(ArtifactMismatch, "one more")
	n := len(v.Reasons)
	if v.Reasons[n-2].Code != NonceUnknownOrReused || !strings.HasPrefix(v.Reasons[n-1].Detail, "19 more reasons not listed:") {
		t.Fatalf("after a nonce reason and one more: %v, %v; want the nonce listed, then the summary of 19", v.Reasons[n-2], v.Reasons[n-1])
	}
	if got := fmt.Sprint(v.Reasons[n-1]); !strings.Contains(got, "×") {
		t.Errorf("summary %q names no counts", got)
	}
}
