package rewriter

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
)

// A chunk copied with the checksum it was read with is written byte for byte as one whose
// checksum is computed, and reads back with that checksum.
func TestOutputWriteChunkCRC(t *testing.T) {
	c := chunkenc.NewXORChunk()
	app, err := c.Appender()
	testutil.Ok(t, err)
	for i := int64(0); i < 120; i++ {
		app.Append(0, i*15_000, float64(i*i))
	}
	write := func(dir string, copied bool, crc uint32) (chunks.ChunkRef, []byte) {
		o, err := openOutput(dir, nil)
		testutil.Ok(t, err)
		var ref chunks.ChunkRef
		for range 3 {
			if copied {
				ref, err = o.writeChunkCRC(c, crc)
			} else {
				ref, err = o.writeChunk(c)
			}
			testutil.Ok(t, err)
		}
		testutil.Ok(t, o.close())
		b, err := os.ReadFile(filepath.Join(dir, "000001"))
		testutil.Ok(t, err)
		return ref, b
	}
	ref, fresh := write(filepath.Join(t.TempDir(), "fresh"), false, 0)

	dir := filepath.Join(t.TempDir(), "fresh")
	_, _ = write(dir, false, 0)
	cr, err := openChunkFiles(dir, chunkenc.NewPool())
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, cr.Close()) }()
	got, crc, err := cr.chunk(chunks.Meta{Ref: ref})
	testutil.Ok(t, err)
	testutil.Equals(t, c.Bytes(), got.Bytes())

	_, copied := write(filepath.Join(t.TempDir(), "copied"), true, crc)
	testutil.Equals(t, fresh, copied)

	// A wrong checksum is caught when the chunk is read again.
	bad := filepath.Join(t.TempDir(), "bad")
	_, _ = write(bad, true, crc+1)
	cb, err := openChunkFiles(bad, chunkenc.NewPool())
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, cb.Close()) }()
	_, _, err = cb.chunk(chunks.Meta{Ref: ref})
	testutil.NotOk(t, err)
}
