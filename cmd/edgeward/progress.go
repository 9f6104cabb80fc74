package main

import (
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// progress draws a one-line progress bar on a terminal while a large file is copied.
type progress struct {
	w     io.Writer
	total int64
	n     atomic.Int64
	start time.Time
	stop  chan struct{}
	fin   chan struct{}
}

func newProgress(w io.Writer, total int64) *progress {
	p := &progress{w: w, total: total, start: time.Now(), stop: make(chan struct{}), fin: make(chan struct{})}
	go p.loop()
	return p
}

func (p *progress) reader(r io.Reader) io.Reader { return &countingReader{r: r, n: &p.n} }

func (p *progress) loop() {
	defer close(p.fin)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			p.draw()
			fmt.Fprintln(p.w)
			return
		case <-t.C:
			p.draw()
		}
	}
}

func (p *progress) draw() {
	n := p.n.Load()
	frac := 0.0
	if p.total > 0 {
		frac = float64(n) / float64(p.total)
	}
	const width = 30
	bar := make([]byte, width)
	for i := range bar {
		if float64(i) < frac*width {
			bar[i] = '='
		} else {
			bar[i] = ' '
		}
	}
	rate := float64(n) / max(time.Since(p.start).Seconds(), 1e-3) / (1 << 20)
	fmt.Fprintf(p.w, "\r[%s] %5.1f%%  %s / %s  %.0f MiB/s ", bar, frac*100, human(n), human(p.total), rate)
}

func (p *progress) done() {
	close(p.stop)
	<-p.fin
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
