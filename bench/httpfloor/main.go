// Command httpfloor is the transport floor of the inference benchmark: a Go net/http
// server in its own process that reads an infer request and answers a canned response
// without decoding it or running a model. Its latency is what loopback HTTP between two
// processes costs on the machine, which no inference server can go under.
//
// With FILE it is also the floor of the metadata-serving comparison: GET
// /metadata/timestamp.json answers FILE's bytes, read once, through http.ServeContent
// with a fixed ETag (so If-None-Match gets 304): Go's net/http without a handler's work.
//
//	httpfloor PORT [FILE]
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

const canned = `{"model_name":"floor","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[0]}]}`

func main() {
	if len(os.Args) != 2 && len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: httpfloor PORT [FILE]")
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/health/ready", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("POST /v2/models/{model}/infer", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, canned)
	})
	if len(os.Args) == 3 {
		data, err := os.ReadFile(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "httpfloor:", err)
			os.Exit(1)
		}
		sum := sha256.Sum256(data)
		etag := `"` + hex.EncodeToString(sum[:16]) + `"`
		mod := time.Now()
		mux.HandleFunc("GET /metadata/timestamp.json", func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("Content-Type", "application/json")
			h.Set("ETag", etag)
			h.Set("Cache-Control", "no-cache")
			http.ServeContent(w, r, "", mod, bytes.NewReader(data))
		})
	}
	if err := http.ListenAndServe("127.0.0.1:"+os.Args[1], mux); err != nil {
		fmt.Fprintln(os.Stderr, "httpfloor:", err)
		os.Exit(1)
	}
}
