package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	var b bytes.Buffer
	l, err := New(&b, JSON)
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hello", "k", 1)
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil || m["msg"] != "hello" {
		t.Errorf("json log line %q: %v", b.String(), err)
	}
	b.Reset()
	if l, err = New(&b, Text); err != nil {
		t.Fatal(err)
	}
	l.Info("hello", "k", 1)
	if !strings.Contains(b.String(), "msg=hello k=1") {
		t.Errorf("text log line %q", b.String())
	}
	if _, err := New(&b, "xml"); err == nil || !strings.Contains(err.Error(), "want json or text") {
		t.Errorf("New(xml) = %v; want an error naming the formats", err)
	}
}
