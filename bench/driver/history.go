package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
)

// Every full (not -quick) run of a section is kept in bench/history/<section>-<time>.json;
// results.json holds, per section, the median over the last historyRuns runs of every
// number (per row: same model/system/size/…), so one burst of load on the shared machine
// does not decide a figure. Ranges ([2]float64) widen to cover every run.
const historyRuns = 3

type historyEntry struct {
	Section string          `json:"section"`
	Run     RunInfo         `json:"run"`
	Result  json.RawMessage `json:"result"`
}

func saveHistory(dir, section string, run RunInfo, result any) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.Marshal(result)
	if err != nil {
		return err
	}
	e, _ := json.MarshalIndent(historyEntry{Section: section, Run: run, Result: b}, "", "  ")
	name := fmt.Sprintf("%s-%s.json", section, strings.NewReplacer(":", "", "-", "").Replace(run.At))
	return os.WriteFile(filepath.Join(dir, name), append(e, '\n'), 0o644)
}

// loadHistory returns the last n runs of section, oldest first.
func loadHistory(dir, section string, n int) ([]historyEntry, error) {
	files, _ := filepath.Glob(filepath.Join(dir, section+"-*.json"))
	slices.Sort(files)
	if len(files) > n {
		files = files[len(files)-n:]
	}
	var out []historyEntry
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var e historyEntry
		if err := json.Unmarshal(b, &e); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// aggregate decodes each entry's result into a new *T and merges them into one: the
// median of every float64, the envelope of every [2]float64, the first of anything
// else; slices of structs are matched by their string and int fields (the row's key).
func aggregate[T any](entries []historyEntry) (*T, error) {
	var vals []reflect.Value
	for _, e := range entries {
		v := new(T)
		if err := json.Unmarshal(e.Result, v); err != nil {
			return nil, err
		}
		vals = append(vals, reflect.ValueOf(v).Elem())
	}
	if len(vals) == 0 {
		return nil, nil
	}
	out := new(T)
	merge(reflect.ValueOf(out).Elem(), vals)
	return out, nil
}

func merge(dst reflect.Value, srcs []reflect.Value) {
	switch dst.Kind() {
	case reflect.Float64:
		var xs []float64
		for _, s := range srcs {
			xs = append(xs, s.Float())
		}
		dst.SetFloat(median(xs))
	case reflect.Array:
		if dst.Len() == 2 && dst.Type().Elem().Kind() == reflect.Float64 {
			lo, hi, first := 0.0, 0.0, true
			for _, s := range srcs {
				a, b := s.Index(0).Float(), s.Index(1).Float()
				if a == 0 && b == 0 {
					continue // not recorded in that run
				}
				if first || a < lo {
					lo = a
				}
				if first || b > hi {
					hi = b
				}
				first = false
			}
			dst.Index(0).SetFloat(lo)
			dst.Index(1).SetFloat(hi)
			return
		}
		dst.Set(srcs[len(srcs)-1])
	case reflect.Struct:
		for i := range dst.NumField() {
			if !dst.Type().Field(i).IsExported() {
				continue
			}
			var fs []reflect.Value
			for _, s := range srcs {
				fs = append(fs, s.Field(i))
			}
			merge(dst.Field(i), fs)
		}
	case reflect.Pointer:
		var ps []reflect.Value
		for _, s := range srcs {
			if !s.IsNil() {
				ps = append(ps, s.Elem())
			}
		}
		if len(ps) == 0 {
			return
		}
		dst.Set(reflect.New(dst.Type().Elem()))
		merge(dst.Elem(), ps)
	case reflect.Slice:
		latest := srcs[len(srcs)-1]
		elem := dst.Type().Elem()
		isRow := elem.Kind() == reflect.Struct || (elem.Kind() == reflect.Pointer && elem.Elem().Kind() == reflect.Struct)
		if !isRow {
			dst.Set(latest)
			return
		}
		// Rows in the latest run's order; rows only in older runs are dropped.
		out := reflect.MakeSlice(dst.Type(), latest.Len(), latest.Len())
		for i := range latest.Len() {
			k := rowKey(latest.Index(i))
			var same []reflect.Value
			for _, s := range srcs {
				for j := range s.Len() {
					if rowKey(s.Index(j)) == k {
						same = append(same, s.Index(j))
						break
					}
				}
			}
			merge(out.Index(i), same)
		}
		dst.Set(out)
	default:
		dst.Set(srcs[len(srcs)-1])
	}
}

// rowKey is a row's identity: its string and int fields.
func rowKey(v reflect.Value) string {
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	var b strings.Builder
	for i := range v.NumField() {
		if !v.Type().Field(i).IsExported() {
			continue
		}
		switch f := v.Field(i); f.Kind() {
		case reflect.String:
			if !strings.HasSuffix(v.Type().Field(i).Name, "Note") && v.Type().Field(i).Name != "SimTimeTo100" {
				fmt.Fprintf(&b, "%s|", f.String())
			}
		case reflect.Int, reflect.Int64:
			if n := v.Type().Field(i).Name; n == "Concurrency" || n == "SizeMiB" || n == "Devices" {
				fmt.Fprintf(&b, "%d|", f.Int())
			}
		}
	}
	return b.String()
}
