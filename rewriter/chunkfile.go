package rewriter

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	stderrors "errors"
	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
)

// chunkFiles reads a block's chunks with positioned reads rather than a memory map, so that
// streaming a large block keeps only the chunks at hand resident.
type chunkFiles struct {
	files []*os.File
	pool  chunkenc.Pool
	hdr   [binary.MaxVarintLen32 + chunks.ChunkEncodingSize]byte
}

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
		c.files = append(c.files, f)
	}
	return c, nil
}

// chunk reads the chunk a meta points at.
func (c *chunkFiles) chunk(m chunks.Meta) (chunkenc.Chunk, error) {
	seq, off := chunks.BlockChunkRef(m.Ref).Unpack()
	if seq >= len(c.files) {
		return nil, errors.Newf("chunk ref %d: segment %d of %d", m.Ref, seq+1, len(c.files))
	}
	f := c.files[seq]
	n, err := f.ReadAt(c.hdr[:], int64(off))
	if err != nil && !(err == io.EOF && n > 0) {
		return nil, errors.Wrapf(err, "read chunk header in %s at %d", f.Name(), off)
	}
	length, ln := binary.Uvarint(c.hdr[:n])
	if ln <= 0 || ln >= n {
		return nil, errors.Newf("corrupt chunk header in %s at %d", f.Name(), off)
	}
	enc := chunkenc.Encoding(c.hdr[ln])
	data := make([]byte, length)
	if _, err := f.ReadAt(data, int64(off)+int64(ln)+chunks.ChunkEncodingSize); err != nil {
		return nil, errors.Wrapf(err, "read chunk of %d bytes in %s at %d", length, f.Name(), off)
	}
	chk, err := c.pool.Get(enc, data)
	if err != nil {
		return nil, errors.Wrap(err, fmt.Sprintf("chunk in %s at %d", f.Name(), off))
	}
	return chk, nil
}

func (c *chunkFiles) Close() error {
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	return stderrors.Join(errs...)
}
