package rewriter

import "io"

// writeBehind buffers writes to w and hands each full buffer to a goroutine that writes it while
// the next one fills: the copy into the page cache (or the disk) runs beside the rewrite. Errors
// of the background writes come back from the next Write or Flush.
type writeBehind struct {
	w    io.Writer
	buf  []byte
	full chan []byte
	free chan []byte
	// errs has the background writer's first error, once; closing full stops it.
	errs chan error
	err  error
	// buffers is how many buffers there are: buf, those in full or being written, those in free.
	buffers int
}

const (
	writeBehindBuffer = 1 << 20
	writeBehindDepth  = 2
)

func newWriteBehind(w io.Writer) *writeBehind {
	b := &writeBehind{w: w, buf: make([]byte, 0, writeBehindBuffer), full: make(chan []byte, writeBehindDepth),
		free: make(chan []byte, writeBehindDepth+1), errs: make(chan error, 1), buffers: 1}
	go b.drain()
	return b
}

// drain writes the buffers handed over, in order, and gives them back; after an error it only
// gives them back.
func (b *writeBehind) drain() {
	var err error
	for p := range b.full {
		if err == nil {
			if _, err = b.w.Write(p); err != nil {
				b.errs <- err
			}
		}
		b.free <- p[:0]
	}
}

func (b *writeBehind) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if b.err != nil {
			return n, b.err
		}
		if len(b.buf) == cap(b.buf) {
			b.handOver()
			continue
		}
		c := copy(b.buf[len(b.buf):cap(b.buf)], p)
		b.buf = b.buf[:len(b.buf)+c]
		p, n = p[c:], n+c
	}
	return n, b.err
}

// handOver gives the buffer to the background writer and takes a free one, a new one while there
// are fewer than writeBehindDepth+1.
func (b *writeBehind) handOver() {
	if len(b.buf) == 0 {
		return
	}
	b.full <- b.buf
	select {
	case b.buf = <-b.free:
	default:
		if b.buffers <= writeBehindDepth {
			b.buf = make([]byte, 0, writeBehindBuffer)
			b.buffers++
		} else {
			b.buf = <-b.free
		}
	}
	b.checkErr()
}

func (b *writeBehind) checkErr() {
	select {
	case err := <-b.errs:
		b.err = err
	default:
	}
}

// Flush writes everything buffered and waits until it is written.
func (b *writeBehind) Flush() error {
	if b.err != nil {
		return b.err
	}
	b.handOver()
	// Every other buffer back in free means every one handed over is written.
	back := make([][]byte, 0, b.buffers-1)
	for range b.buffers - 1 {
		back = append(back, <-b.free)
	}
	for _, p := range back {
		b.free <- p
	}
	b.checkErr()
	return b.err
}

// Close flushes and stops the background writer; w is not closed.
func (b *writeBehind) Close() error {
	err := b.Flush()
	close(b.full)
	return err
}
