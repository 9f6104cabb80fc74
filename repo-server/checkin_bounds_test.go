package reposerver

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// postCheckIn runs decodeCheckIn on body and returns what it answered.
func postCheckIn(body []byte) (*httptest.ResponseRecorder, wire.CheckInRequest, bool) {
	r := httptest.NewRequest(http.MethodPost, wire.PathCheckIn, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	req, ok := decodeCheckIn(w, r)
	return w, req, ok
}

// repeatJSON is n copies of elem joined by commas.
func repeatJSON(elem string, n int) string {
	return strings.TrimSuffix(strings.Repeat(elem+",", n), ",")
}

// numberedMembers is n object members `"<prefix><i>":<value>`.
func numberedMembers(prefix, value string, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%s", fmt.Sprintf("%s%d", prefix, i), value)
	}
	return b.String()
}

// TestCheckInHugeAttrsIsRefusedCheaply: the hostile-client audit's check-in, an 8 MiB
// body whose attrs hold one array of four million zeros, is refused 413 naming attrs,
// and decoding it allocates a few times the body (reading it), not the ~35 times that
// decoding the array into []any cost before the attrs were bounded while decoding.
func TestCheckInHugeAttrsIsRefusedCheaply(t *testing.T) {
	body := []byte(`{"device_id":"dev1","attrs":{"a":[` + repeatJSON("0", 4_190_000) + `]},"evidence":{}}`)
	if len(body) > wire.MaxRequestBytes {
		t.Fatalf("test body of %d bytes is over the request limit", len(body))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	w, _, ok := postCheckIn(body)
	runtime.ReadMemStats(&after)
	// Reading the body costs about twice its size (the buffer grows as it arrives).
	alloc, limit := after.TotalAlloc-before.TotalAlloc, uint64(4*len(body))
	t.Logf("decoding a %d-byte check-in allocated %d bytes", len(body), alloc)
	if alloc > limit {
		t.Errorf("decoding a %d-byte check-in allocated %d bytes; want at most %d", len(body), alloc, limit)
	}
	if ok || w.Code != http.StatusRequestEntityTooLarge || !strings.Contains(w.Body.String(), "attrs") {
		t.Errorf("decodeCheckIn(huge attrs) = %v, %d %s; want 413 naming attrs", ok, w.Code, w.Body)
	}
}

// TestCheckInBounds: every collection of a check-in is refused 413, naming it, one
// element or byte over its bound, and accepted at its bound.
func TestCheckInBounds(t *testing.T) {
	report := `{"id":"r","kind":"model","name":"m","version":"1.0.0","outcome":"committed","at":"2026-01-02T03:04:05Z"}`
	event := `{"pcr":16,"kind":"model","name":"m","version":"1.0.0","sha256":"00"}`
	// attrs of exactly n bytes of JSON: {"k":"xxx…"}
	attrs := func(n int) string { return `{"k":"` + strings.Repeat("x", n-8) + `"}` }
	for _, tc := range []struct {
		field string
		at    string // the field's JSON at its bound
		over  string // one over
	}{
		{"attrs", `"attrs":` + attrs(fleet.MaxAttrsBytes), `"attrs":` + attrs(fleet.MaxAttrsBytes+1)},
		{"attrs", `"attrs":{"a":[` + repeatJSON("0", fleet.MaxAttrsBytes/2-4) + `]}`, `"attrs":{"a":[` + repeatJSON("0", fleet.MaxAttrsBytes) + `]}`},
		{"labels", `"labels":{` + numberedMembers("k", `""`, fleet.MaxLabels) + `}`, `"labels":{` + numberedMembers("k", `""`, fleet.MaxLabels+1) + `}`},
		{"slots", `"slots":{` + numberedMembers("k", `{}`, maxSlots) + `}`, `"slots":{` + numberedMembers("k", `{}`, maxSlots+1) + `}`},
		{"reports", `"reports":[` + repeatJSON(report, maxReports) + `]`, `"reports":[` + repeatJSON(report, maxReports+1) + `]`},
		{"evidence.ak_chain", `"evidence":{"ak_chain":[` + repeatJSON(`""`, maxAKChain) + `]}`, `"evidence":{"ak_chain":[` + repeatJSON(`""`, maxAKChain+1) + `]}`},
		{"evidence.quote.pcrs", `"evidence":{"quote":{"pcrs":{` + numberedMembers("", `""`, maxQuotePCRs) + `}}}`, `"evidence":{"quote":{"pcrs":{` + numberedMembers("", `""`, maxQuotePCRs+1) + `}}}`},
		{"evidence.log", `"evidence":{"log":[` + repeatJSON(event, eventlog.MaxEvents) + `]}`, `"evidence":{"log":[` + repeatJSON(event, eventlog.MaxEvents+1) + `]}`},
	} {
		if w, _, ok := postCheckIn([]byte(`{"device_id":"dev1",` + tc.at + `}`)); !ok {
			t.Errorf("decodeCheckIn(%s at its bound) = %d %s; want it accepted", tc.field, w.Code, w.Body)
		}
		w, _, ok := postCheckIn([]byte(`{"device_id":"dev1",` + tc.over + `}`))
		if ok || w.Code != http.StatusRequestEntityTooLarge || !strings.Contains(w.Body.String(), tc.field+":") {
			t.Errorf("decodeCheckIn(%s over its bound) = %v, %d %s; want 413 naming %s", tc.field, ok, w.Code, w.Body, tc.field)
		}
	}
}

// TestCheckInBoundedDecodingKeepsValues: the bounded decoders produce the values the
// default decoder does (nil for null, empty for empty, numbers as float64, nested
// values), and still refuse what it refuses: unknown members inside a bounded
// collection, duplicate names, numbers out of range, a mismatched kind.
func TestCheckInBoundedDecodingKeepsValues(t *testing.T) {
	_, req, ok := postCheckIn([]byte(`{"device_id":"dev1","attrs":{"n":1.5,"s":"\u00e9","b":true,"z":null,"o":{"a":[1,{"x":[]}]},"e":{}},
		"labels":{"a":"b"},"slots":{"model":{"name":"m","version":"1.0.0"}},"reports":[],
		"evidence":{"ak_chain":null,"quote":{"pcrs":{"16":"AAE="}},"log":[]}}`))
	if !ok {
		t.Fatal("decodeCheckIn refused a well-formed check-in")
	}
	wantAttrs := map[string]any{"n": 1.5, "s": "é", "b": true, "z": nil, "o": map[string]any{"a": []any{1.0, map[string]any{"x": []any{}}}}, "e": map[string]any{}}
	if !reflect.DeepEqual(req.Attrs, wantAttrs) {
		t.Errorf("attrs = %#v; want %#v", req.Attrs, wantAttrs)
	}
	if req.Labels["a"] != "b" || req.Slots["model"].Version != "1.0.0" || req.Reports == nil || len(req.Reports) != 0 ||
		req.Evidence.AKChain != nil || !bytes.Equal(req.Evidence.Quote.PCRs[16], []byte{0, 1}) || req.Evidence.Log == nil {
		t.Errorf("decoded %+v", req)
	}
	var viaJSON wire.CheckInRequest
	b, _ := json.Marshal(req)
	if err := json.Unmarshal(b, &viaJSON); err != nil || !reflect.DeepEqual(viaJSON.Attrs, req.Attrs) {
		t.Errorf("attrs do not survive encoding/json: %v", err)
	}
	for _, body := range []string{
		`{"device_id":"dev1","reports":[{"bogus":1}]}`,
		`{"device_id":"dev1","slots":{"model":{"bogus":1}}}`,
		`{"device_id":"dev1","labels":{"a":"b","a":"c"}}`,
		`{"device_id":"dev1","attrs":{"a":1,"a":2}}`,
		`{"device_id":"dev1","attrs":{"o":{"a":1,"a":2}}}`,
		`{"device_id":"dev1","attrs":{"a":1e400}}`,
		`{"device_id":"dev1","attrs":[]}`,
		`{"device_id":"dev1","reports":{}}`,
		`{"device_id":"dev1","labels":{"a":1}}`,
		`{"device_id":"dev1","evidence":{"quote":{"pcrs":{"x":""}}}}`,
		`{"device_id":"dev1","evidence":{"quote":{"pcrs":{"1":"","01":""}}}}`,
		`{"device_id":"dev1","attrs":{"a":[1,2}}`,
	} {
		if w, _, ok := postCheckIn([]byte(body)); ok || w.Code != http.StatusBadRequest {
			t.Errorf("decodeCheckIn(%s) = %v, %d %s; want 400", body, ok, w.Code, w.Body)
		}
	}
}

// TestCheckInBoundsCoverTheRequest: every map, slice (but []byte) and interface in
// wire.CheckInRequest, at any depth, has a bound in checkInBounds, so that a field added
// to the wire format cannot bring the unbounded decoding back unnoticed.
func TestCheckInBoundsCoverTheRequest(t *testing.T) {
	bounded := map[reflect.Type]bool{}
	for _, b := range checkInBounds {
		bounded[b.typ] = true
	}
	seen := map[reflect.Type]bool{}
	var walk func(path string, typ reflect.Type)
	walk = func(path string, typ reflect.Type) {
		if seen[typ] {
			return
		}
		seen[typ] = true
		switch typ.Kind() {
		case reflect.Pointer:
			walk(path, typ.Elem())
		case reflect.Struct:
			if typ.PkgPath() == "time" {
				return
			}
			for i := range typ.NumField() {
				if f := typ.Field(i); f.IsExported() {
					walk(path+"."+f.Name, f.Type)
				}
			}
		case reflect.Map, reflect.Interface, reflect.Slice, reflect.Array:
			if typ.Kind() == reflect.Slice && typ.Elem().Kind() == reflect.Uint8 {
				return
			}
			if !bounded[typ] {
				t.Errorf("%s (%v) has no bound in checkInBounds", path, typ)
				return
			}
			if typ.Kind() != reflect.Interface && typ.Elem().Kind() != reflect.Interface {
				walk(path+"[]", typ.Elem()) // the elements' own collections
			}
		}
	}
	walk("CheckInRequest", reflect.TypeFor[wire.CheckInRequest]())
}
