package rewriter

import (
	"bufio"
	"context"
	"encoding/binary"
	stderrors "errors"
	"hash/crc32"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
)

// chunkFiles reads a block's chunk segments as streams, from local files or straight from the
// bucket's objects, rather than through a memory map, so that streaming a large block keeps only
// the chunks at hand resident and needs no local copy of them. Series are read in index order,
// which is the order their chunks were written in: reads are mostly sequential, and a sequential
// reader reads ahead in the background while the chunks before are rewritten.
type chunkFiles struct {
	segs []*segment
	pool chunkenc.Pool
	// sequential readers read ahead and stream through a forward gap; random ones read little
	// past the chunk asked for.
	sequential bool
	// arena holds the bytes of the chunks read since the last reset: one series' chunks share it
	// instead of each allocating.
	arena []byte
	// out are the chunks handed out since the last reset, which gives them back to the pool.
	out []chunkenc.Chunk
	// last is the segment read last; a sequential reader closes the streams of those before it.
	last int
	// record is the last chunk read as its segment stores it (length, encoding, data,
	// checksum), in the arena: a chunk copied as it is is written as these bytes.
	record []byte
}

// reset lets the arena and the chunks read since the last reset be reused; those chunks must no
// longer be used.
func (c *chunkFiles) reset() {
	c.arena = c.arena[:0]
	for i, chk := range c.out {
		_ = c.pool.Put(chk) // Only a chunk of an unknown encoding fails, and it holds nothing.
		c.out[i] = nil
	}
	c.out = c.out[:0]
}

// release gives the chunks read since the last reset or release back to the pool; their bytes
// stay where they are in the arena, for a writer to use.
func (c *chunkFiles) release() {
	for i, chk := range c.out {
		_ = c.pool.Put(chk)
		c.out[i] = nil
	}
	c.out = c.out[:0]
}

// segment is one chunk segment: open starts a stream of its bytes from an offset.
type segment struct {
	name string
	open func(off int64) (io.ReadCloser, error)
	// skipThrough is the longest forward gap read through rather than reopened at its end.
	skipThrough int64
	rc          io.ReadCloser
	r           chunkReader
	pos         int64 // The offset of r's next byte.
}

// chunkReader is what a segment reads chunks through: a bufio.Reader, or a readAhead, which
// needs none.
type chunkReader interface {
	io.Reader
	io.ByteReader
	Discard(n int) (int, error)
	Buffered() int
}

const (
	chunkReadBuffer = 1 << 20
	// randomReadBuffer is a random reader's buffer: a chunk is rarely longer.
	randomReadBuffer = 4 << 10
	// objectSkipThrough is how far a sequential reader of an object streams through bytes it
	// does not need (the chunks of dropped series) rather than starting a new request.
	objectSkipThrough = 8 << 20
)

// openChunkFiles opens the segments of a block's chunks directory for sequential reading.
func openChunkFiles(dir string, pool chunkenc.Pool) (*chunkFiles, error) {
	return openLocalChunks(dir, pool, true)
}

// openLocalChunks opens the segments in dir.
func openLocalChunks(dir string, pool chunkenc.Pool, sequential bool) (*chunkFiles, error) {
	names, err := filepath.Glob(filepath.Join(dir, "[0-9][0-9][0-9][0-9][0-9][0-9]"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	c := &chunkFiles{pool: pool, sequential: sequential}
	for _, n := range names {
		c.segs = append(c.segs, &segment{name: n, open: func(off int64) (io.ReadCloser, error) {
			f, err := os.Open(n)
			if err != nil {
				return nil, errors.Wrap(err, "open chunk segment")
			}
			if _, err := f.Seek(off, io.SeekStart); err != nil {
				return nil, stderrors.Join(err, f.Close())
			}
			return f, nil
		}})
	}
	return c, nil
}

// chunkObjects lists a block's chunk segments in the bucket, in order.
func chunkObjects(ctx context.Context, bkt objstore.BucketReader, id ulid.ULID) ([]string, error) {
	var names []string
	if err := bkt.Iter(ctx, path.Join(id.String(), block.ChunksDirname)+"/", func(name string) error {
		if base := path.Base(name); len(base) == 6 && strings.Trim(base, "0123456789") == "" {
			names = append(names, name)
		}
		return nil
	}); err != nil {
		return nil, errors.Wrapf(err, "list chunks of block %s", id)
	}
	sort.Strings(names)
	return names, nil
}

// openObjectChunks reads the segments names (chunkObjects) from the bucket.
func openObjectChunks(ctx context.Context, bkt objstore.BucketReader, names []string, pool chunkenc.Pool, sequential bool) *chunkFiles {
	c := &chunkFiles{pool: pool, sequential: sequential}
	for _, n := range names {
		s := &segment{name: n, open: func(off int64) (io.ReadCloser, error) {
			if !sequential {
				rc, err := bkt.GetRange(ctx, n, off, -1)
				return rc, errors.Wrapf(err, "get %s", n)
			}
			// The read-ahead's stream has its own context: closing the read-ahead cancels the
			// read in flight rather than waiting for it.
			sctx, cancel := context.WithCancel(ctx)
			rc, err := bkt.GetRange(sctx, n, off, -1)
			if err != nil {
				cancel()
				return nil, errors.Wrapf(err, "get %s", n)
			}
			return newReadAhead(rc, cancel), nil
		}}
		if sequential {
			s.skipThrough = objectSkipThrough
		}
		c.segs = append(c.segs, s)
	}
	return c
}

// seek positions the segment's reader at off: within the buffer or by streaming through a short
// gap when it can, or else by a new stream from off.
func (s *segment) seek(off int64, size int) error {
	if s.rc != nil && off == s.pos {
		return nil
	}
	if ahead := off - s.pos; s.rc != nil && ahead > 0 && (ahead <= int64(s.r.Buffered()) || ahead <= s.skipThrough) {
		n, err := s.r.Discard(int(ahead))
		s.pos += int64(n)
		if err != nil {
			_ = s.close()
		}
		return err
	}
	if err := s.close(); err != nil {
		return err
	}
	rc, err := s.open(off)
	if err != nil {
		return err
	}
	s.rc = rc
	if r, ok := rc.(chunkReader); ok {
		s.r = r
	} else {
		s.r = bufio.NewReaderSize(rc, size)
	}
	s.pos = off
	return nil
}

// close ends the segment's stream, if any.
func (s *segment) close() error {
	if s.rc == nil {
		return nil
	}
	err := s.rc.Close()
	s.rc, s.r = nil, nil
	s.pos = -1
	return err
}

// chunk reads the chunk a meta points at and checks its CRC, which it returns: a chunk copied as
// it is keeps it.
func (c *chunkFiles) chunk(m chunks.Meta) (chunkenc.Chunk, uint32, error) {
	seq, off := chunks.BlockChunkRef(m.Ref).Unpack()
	if seq >= len(c.segs) {
		return nil, 0, errors.Newf("chunk ref %d: segment %d of %d", m.Ref, seq+1, len(c.segs))
	}
	if c.sequential && seq > c.last {
		// The streams of earlier segments are done with.
		for _, s := range c.segs[c.last:seq] {
			if err := s.close(); err != nil {
				return nil, 0, errors.Wrapf(err, "close %s", s.name)
			}
		}
		c.last = seq
	}
	s := c.segs[seq]
	size := chunkReadBuffer
	if !c.sequential {
		size = randomReadBuffer
	}
	if err := s.seek(int64(off), size); err != nil {
		return nil, 0, errors.Wrapf(err, "seek in %s", s.name)
	}
	length, err := binary.ReadUvarint(s.r)
	if err != nil {
		_ = s.close() // Where the stream stopped is unknown: the next read starts a new one.
		return nil, 0, errors.Wrapf(err, "read chunk header in %s at %d", s.name, off)
	}
	hl := uvarintSize(length)
	n := chunks.ChunkEncodingSize + int(length) + crc32.Size
	if cap(c.arena)-len(c.arena) < hl+n {
		// A new arena: chunks read earlier keep the old one.
		c.arena = make([]byte, 0, max(hl+n, 1<<20))
	}
	// The record as the segment holds it: the length (encoded again, the same bytes), then
	// encoding, data and checksum as read.
	start := len(c.arena)
	c.arena = binary.AppendUvarint(c.arena, length)
	body := c.arena[start+hl : start+hl+n]
	c.arena = c.arena[:start+hl+n]
	c.record = c.arena[start : start+hl+n : start+hl+n]
	if _, err := io.ReadFull(s.r, body); err != nil {
		_ = s.close()
		return nil, 0, errors.Wrapf(err, "read chunk in %s at %d", s.name, off)
	}
	s.pos = int64(off) + int64(hl) + int64(len(body))
	data := body[:len(body)-crc32.Size]
	crc := binary.BigEndian.Uint32(body[len(data):])
	if crc32.Checksum(data, castagnoli) != crc {
		return nil, 0, errors.Newf("chunk in %s at %d: checksum mismatch", s.name, off)
	}
	chk, err := c.pool.Get(chunkenc.Encoding(data[0]), data[1:])
	if err != nil {
		return nil, 0, errors.Wrapf(err, "chunk in %s at %d", s.name, off)
	}
	c.out = append(c.out, chk)
	return chk, crc, nil
}

func uvarintSize(x uint64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], x)
}

func (c *chunkFiles) Close() error {
	var errs []error
	for _, s := range c.segs {
		errs = append(errs, s.close())
	}
	return stderrors.Join(errs...)
}

// readAhead reads a stream ahead of its reader, in the background, a few buffers at a time: the
// next bytes arrive (from the page cache, the disk or the network) while the last ones are
// rewritten.
type readAhead struct {
	full chan []byte // Read buffers, in order; closed after the last.
	free chan []byte
	done chan struct{}
	// cancel cancels the stream's context, and with it a read in flight.
	cancel context.CancelFunc
	// ended receives the reading goroutine's error once it has stopped: nil at the stream's end.
	ended chan error
	buf   []byte // The buffer cur is in.
	cur   []byte
	err   error
	// stopped is the error ended gave, once it has.
	stopped bool
	endErr  error
	closed  bool
}

const (
	readAheadBuffer = 1 << 20
	readAheadDepth  = 3
	// readAheadCloseWait is how long Close waits for a read in flight to end once cancelled: a
	// stream that ignores its context's cancellation is left to end in the background.
	readAheadCloseWait = time.Second
)

// newReadAhead reads rc ahead; cancel, which may be nil, cancels the context rc reads under.
func newReadAhead(rc io.ReadCloser, cancel context.CancelFunc) *readAhead {
	if cancel == nil {
		cancel = func() {}
	}
	a := &readAhead{full: make(chan []byte, readAheadDepth), free: make(chan []byte, readAheadDepth+1),
		done: make(chan struct{}), ended: make(chan error, 1), cancel: cancel}
	for range readAheadDepth + 1 {
		a.free <- make([]byte, readAheadBuffer)
	}
	go a.fill(rc)
	return a
}

// fill reads rc into free buffers until its end, an error or Close.
func (a *readAhead) fill(rc io.ReadCloser) {
	var err error
	defer func() {
		close(a.full)
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		a.ended <- err
	}()
	for {
		var b []byte
		select {
		case b = <-a.free:
		case <-a.done:
			return
		}
		n, rerr := io.ReadFull(rc, b)
		if n > 0 {
			select {
			case a.full <- b[:n]:
			case <-a.done:
				return
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return
		}
		if rerr != nil {
			err = rerr
			return
		}
	}
}

// stop waits for the reading goroutine's end and returns its error.
func (a *readAhead) stop() error {
	if !a.stopped {
		a.endErr, a.stopped = <-a.ended, true
	}
	return a.endErr
}

func (a *readAhead) Read(p []byte) (int, error) {
	if err := a.next(); err != nil {
		return 0, err
	}
	n := copy(p, a.cur)
	a.cur = a.cur[n:]
	return n, nil
}

func (a *readAhead) ReadByte() (byte, error) {
	if err := a.next(); err != nil {
		return 0, err
	}
	c := a.cur[0]
	a.cur = a.cur[1:]
	return c, nil
}

// Discard skips the next n bytes.
func (a *readAhead) Discard(n int) (int, error) {
	done := 0
	for done < n {
		if err := a.next(); err != nil {
			return done, err
		}
		k := min(n-done, len(a.cur))
		a.cur, done = a.cur[k:], done+k
	}
	return done, nil
}

// Buffered is how many bytes can be read without waiting for the stream.
func (a *readAhead) Buffered() int { return len(a.cur) }

// next makes cur hold the next bytes of the stream, unless it is at its end or failed.
func (a *readAhead) next() error {
	for len(a.cur) == 0 {
		if a.err != nil {
			return a.err
		}
		if a.buf != nil {
			a.free <- a.buf[:cap(a.buf)]
			a.buf, a.cur = nil, nil
		}
		b, ok := <-a.full
		if !ok {
			if a.err = a.stop(); a.err == nil {
				a.err = io.EOF
			}
			continue
		}
		a.buf, a.cur = b, b
	}
	return nil
}

// Close stops the reading, cancels the read in flight and closes the stream. It waits for the
// read in flight at most readAheadCloseWait. The stream's error is returned unless it is the
// cancellation: the bytes not read are not wanted.
func (a *readAhead) Close() error {
	if a.closed {
		return nil
	}
	a.closed = true
	close(a.done)
	a.cancel()
	if !a.stopped {
		t := time.NewTimer(readAheadCloseWait)
		defer t.Stop()
		select {
		case a.endErr = <-a.ended:
			a.stopped = true
		case <-t.C:
			return nil
		}
	}
	if errors.Is(a.endErr, context.Canceled) {
		return nil
	}
	return a.endErr
}
