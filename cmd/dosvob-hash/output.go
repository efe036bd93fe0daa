package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/dosvob/dosvob/internal/blocksync"
)

// output writes dosvob-hash's messages to stderr: notes, progress and the
// summary line.
type output struct {
	w        io.Writer
	quiet    bool
	progress bool
}

// logf prints a note (such as what recovery did); --quiet does not hide it.
func (o output) logf(format string, args ...any) {
	fmt.Fprintf(o.w, name+": "+format+"\n", args...)
}

func (o output) summary(format string, args ...any) {
	if !o.quiet {
		o.logf(format, args...)
	}
}

// start begins a run. With progress on, a goroutine shows c's figures
// until the returned stop function is called; stop returns the elapsed time.
func (o output) start(kind string, c *blocksync.Counters) (stop func() time.Duration) {
	start := time.Now()
	if !o.progress {
		return func() time.Duration { return time.Since(start) }
	}
	p := &progressLine{w: o.w, start: start}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p.show(c.Blocks.Load(), c.Total.Load(), c.BytesRead.Load(), c.BytesSent.Load(), kind)
			}
		}
	}()
	return func() time.Duration {
		close(done)
		wg.Wait()
		p.finish()
		return time.Since(start)
	}
}

// progressLine shows one line of progress: on a terminal it is rewritten
// in place; elsewhere (a log) a new line is printed every few seconds.
type progressLine struct {
	w     io.Writer
	start time.Time
	last  time.Time
	shown bool
}

func (p *progressLine) show(blocks, total, read, sent uint64, kind string) {
	now := time.Now()
	tty := isTerminal(p.w)
	if !tty && now.Sub(p.last) < 5*time.Second {
		return
	}
	p.last = now
	el := now.Sub(p.start)
	eta := "?"
	if blocks > 0 && total >= blocks {
		eta = (time.Duration(float64(el) * float64(total-blocks) / float64(blocks))).Round(time.Second).String()
	}
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(blocks) / float64(total)
	}
	line := fmt.Sprintf("%s: %s block %d/%d (%.0f%%), %s read, %s/s", name, kind, blocks, total, pct, sizeString(read), rate(read, el))
	if sent > 0 {
		line += ", " + sizeString(sent) + " sent"
	}
	line += ", eta " + eta
	if tty {
		fmt.Fprintf(p.w, "\r%s\x1b[K", line)
		p.shown = true
	} else {
		fmt.Fprintln(p.w, line)
	}
}

func (p *progressLine) finish() {
	if p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.shown = false
	}
}

// sizeString formats a byte count with binary units.
func sizeString(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d %ciB", int64(v), "KMGTPE"[exp])
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[exp])
}

func rate(n uint64, d time.Duration) string {
	return sizeString(uint64(float64(n) / max(d.Seconds(), 1e-3)))
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
