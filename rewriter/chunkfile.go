package rewriter

import (
	"bufio"
	"encoding/binary"
	stderrors "errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
)

// chunkFiles reads a block's chunks through a buffered reader per segment rather than a memory
// map, so that streaming a large block keeps only the chunks at hand resident. Series are read in
// index order, which is the order their chunks were written in: reads are mostly sequential and
// cost one system call per buffer, not per chunk.
type chunkFiles struct {
	segs []*segment
	pool chunkenc.Pool
	// arena holds the bytes of the chunks read since the last reset: one series' chunks share it
	// instead of each allocating.
	arena []byte
	// out are the chunks handed out since the last reset, which gives them back to the pool.
	out []chunkenc.Chunk
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

type segment struct {
	f   *os.File
	r   *bufio.Reader
	pos int64 // The file offset of r's next byte.
}

const chunkReadBuffer = 1 << 20

func openChunkFiles(dir string, pool chunkenc.Pool) (*chunkFiles, error) {
	names, err := filepath.Glob(filepath.Join(dir, "[0-9][0-9][0-9][0-9][0-9][0-9]"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	c := &chunkFiles{pool: pool}
	for _, n := range names {
		f, err := os.Open(n)
		if err != nil {
			_ = c.Close()
			return nil, errors.Wrap(err, "open chunk segment")
		}
		c.segs = append(c.segs, &segment{f: f, r: bufio.NewReaderSize(f, chunkReadBuffer)})
	}
	return c, nil
}

// seek positions the segment's reader at off, within the buffer when it can.
func (s *segment) seek(off int64) error {
	if off == s.pos {
		return nil
	}
	if ahead := off - s.pos; ahead > 0 && ahead <= int64(s.r.Buffered()) {
		_, err := s.r.Discard(int(ahead))
		s.pos = off
		return err
	}
	if _, err := s.f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	s.r.Reset(s.f)
	s.pos = off
	return nil
}

// chunk reads the chunk a meta points at and checks its CRC, which it returns: a chunk copied as
// it is keeps it.
func (c *chunkFiles) chunk(m chunks.Meta) (chunkenc.Chunk, uint32, error) {
	seq, off := chunks.BlockChunkRef(m.Ref).Unpack()
	if seq >= len(c.segs) {
		return nil, 0, errors.Newf("chunk ref %d: segment %d of %d", m.Ref, seq+1, len(c.segs))
	}
	s := c.segs[seq]
	if err := s.seek(int64(off)); err != nil {
		return nil, 0, errors.Wrapf(err, "seek in %s", s.f.Name())
	}
	length, err := binary.ReadUvarint(s.r)
	if err != nil {
		return nil, 0, errors.Wrapf(err, "read chunk header in %s at %d", s.f.Name(), off)
	}
	n := chunks.ChunkEncodingSize + int(length) + crc32.Size
	if cap(c.arena)-len(c.arena) < n {
		// A new arena: chunks read earlier keep the old one.
		c.arena = make([]byte, 0, max(n, 1<<20))
	}
	body := c.arena[len(c.arena) : len(c.arena)+n]
	c.arena = c.arena[:len(c.arena)+n]
	if _, err := io.ReadFull(s.r, body); err != nil {
		return nil, 0, errors.Wrapf(err, "read chunk in %s at %d", s.f.Name(), off)
	}
	s.pos = int64(off) + int64(uvarintSize(length)) + int64(len(body))
	data := body[:len(body)-crc32.Size]
	crc := binary.BigEndian.Uint32(body[len(data):])
	if crc32.Checksum(data, castagnoli) != crc {
		return nil, 0, errors.Newf("chunk in %s at %d: checksum mismatch", s.f.Name(), off)
	}
	chk, err := c.pool.Get(chunkenc.Encoding(data[0]), data[1:])
	if err != nil {
		return nil, 0, errors.Wrapf(err, "chunk in %s at %d", s.f.Name(), off)
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
		errs = append(errs, s.f.Close())
	}
	return stderrors.Join(errs...)
}
