package rewriter

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// A block rewritten from the bucket, its chunks streamed from the objects, comes out byte for byte
// as the same block rewritten from a local copy: with the default read-ahead and gap streaming,
// and with a new request at every gap (the chunks of a dropped series), and from a checkpoint.
func TestRewriteFromBucketIsRewriteFromDir(t *testing.T) {
	ctx := context.Background()
	meta, src, bkt := uploadedRequestsBlock(t)

	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(t0) }))
	s1, e1 := int64(tombstones.BeginningOfTime), t0+7_200_000
	whole, err := store.Build(tombstones.Spec{Selectors: []string{`{user_id=~"1[0-9]|5."}`}, Start: &s1, End: &e1})
	testutil.Ok(t, err)
	s2, e2 := t0+1_800_000, t0+4_800_000
	part, err := store.Build(tombstones.Spec{Selectors: []string{`{status="204"}`}, Start: &s2, End: &e2})
	testutil.Ok(t, err)
	applied := []*tombstones.Tombstone{whole, part}
	ix, err := tombstones.NewIndex(applied, nil)
	testutil.Ok(t, err)
	newDeleter := func(batch int) *deleter {
		return &deleter{logger: slog.New(slog.DiscardHandler), limits: Limits{BatchSeries: batch}, ix: ix, applied: applied,
			ext: meta.ExternalLabels(), progress: func(int, int64) {}}
	}

	want := filepath.Join(t.TempDir(), "out")
	st, _, err := newDeleter(100).rewrite(ctx, src, want, nil)
	testutil.Ok(t, err)
	testutil.Assert(t, st.seriesDropped > 0 && st.chunksRewritten > 0, "the deletions drop series and cut chunks: %+v", st)

	segments, err := chunkObjects(ctx, bkt, meta.ULID)
	testutil.Ok(t, err)
	testutil.Assert(t, len(segments) > 0)
	index := filepath.Join(t.TempDir(), "index")
	testutil.Ok(t, block.DownloadIndex(ctx, bkt, meta.ULID, index))
	for _, tc := range []struct {
		name        string
		skipThrough int64
	}{{"read ahead, gaps streamed through", objectSkipThrough}, {"a new request at every gap", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			source := blockSource{index: index, chunks: func(sequential bool) (*chunkFiles, error) {
				c, err := bucketSource(ctx, bkt, index, segments).chunks(sequential)
				for _, s := range c.segs {
					s.skipThrough = min(s.skipThrough, tc.skipThrough)
				}
				return c, err
			}}
			got := filepath.Join(t.TempDir(), "out")
			gst, _, err := newDeleter(100).rewriteFrom(ctx, source, got, nil)
			testutil.Ok(t, err)
			testutil.Equals(t, st, gst)
			sameFiles(t, want, got)

			// Stopped at the deadline after the first batch and resumed: the same bytes again.
			resumed := filepath.Join(t.TempDir(), "out")
			d := newDeleter(700)
			d.limits.Deadline = time.Now().Add(-time.Second)
			_, cp, err := d.rewriteFrom(ctx, source, resumed, nil)
			testutil.Assert(t, errors.Is(err, ErrBudget) && cp != nil, "want a checkpoint at the deadline, got %v", err)
			rst, _, err := newDeleter(700).rewriteFrom(ctx, source, resumed, cp)
			testutil.Ok(t, err)
			testutil.Equals(t, st, rst)
			sameFiles(t, want, resumed)
		})
	}
}

// sameFiles fails unless the directories hold the same files with the same bytes.
func sameFiles(t *testing.T, want, got string) {
	t.Helper()
	files := func(dir string) map[string][]byte {
		m := map[string][]byte{}
		testutil.Ok(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			m[rel] = b
			return err
		}))
		return m
	}
	w, g := files(want), files(got)
	testutil.Equals(t, len(w), len(g), "files")
	for name, b := range w {
		testutil.Assert(t, bytes.Equal(b, g[name]), "%s differs: %d bytes vs %d", name, len(g[name]), len(b))
	}
}

// failingReader gives n bytes, then err.
type failingReader struct {
	n   int
	err error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := min(len(p), r.n)
	for i := range p[:k] {
		p[i] = byte(i)
	}
	r.n -= k
	return k, nil
}

func (r *failingReader) Close() error { return nil }

// The read-ahead gives every byte of the stream, then its end or its error; it can be closed
// before its end.
func TestReadAhead(t *testing.T) {
	for _, tc := range []struct {
		n   int
		err error
	}{{0, io.EOF}, {5, io.EOF}, {3*readAheadBuffer + 17, io.EOF}, {2*readAheadBuffer + 1, io.ErrClosedPipe}} {
		a := newReadAhead(&failingReader{n: tc.n, err: tc.err}, nil)
		b, err := io.ReadAll(a)
		testutil.Equals(t, tc.n, len(b))
		if tc.err == io.EOF {
			testutil.Ok(t, err)
			testutil.Ok(t, a.Close())
		} else {
			testutil.Equals(t, tc.err, err)
			testutil.Equals(t, tc.err, a.Close())
		}
	}
	a := newReadAhead(&failingReader{n: 100 * readAheadBuffer, err: io.EOF}, nil)
	_, err := io.ReadFull(a, make([]byte, 10))
	testutil.Ok(t, err)
	testutil.Ok(t, a.Close())

	// Discard and ReadByte across the buffers.
	data := make([]byte, 3*readAheadBuffer)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	a = newReadAhead(io.NopCloser(bytes.NewReader(data)), nil)
	pos := 0
	for _, skip := range []int{0, 3, readAheadBuffer - 4, 1, readAheadBuffer + 17} {
		n, err := a.Discard(skip)
		testutil.Ok(t, err)
		testutil.Equals(t, skip, n)
		pos += skip
		c, err := a.ReadByte()
		testutil.Ok(t, err)
		testutil.Equals(t, data[pos], c)
		pos++
	}
	n, err := a.Discard(len(data))
	testutil.Equals(t, io.EOF, err)
	testutil.Equals(t, len(data)-pos, n)
	testutil.Ok(t, a.Close())
}

// stallingBucket's range reads give n bytes, then stall: until the read's context is cancelled,
// or, when ignoreCancel is set, until release is closed. stalled gets a value at each stall.
type stallingBucket struct {
	objstore.Bucket
	n            int
	ignoreCancel bool
	stalled      chan struct{}
	release      chan struct{}
}

func (b *stallingBucket) GetRange(ctx context.Context, _ string, _, _ int64) (io.ReadCloser, error) {
	return &stallingReader{ctx: ctx, left: b.n, b: b}, nil
}

type stallingReader struct {
	ctx  context.Context
	left int
	b    *stallingBucket
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if r.left > 0 {
		n := min(len(p), r.left)
		clear(p[:n])
		r.left -= n
		return n, nil
	}
	r.b.stalled <- struct{}{}
	cancelled := r.ctx.Done()
	if r.b.ignoreCancel {
		cancelled = nil
	}
	select {
	case <-cancelled:
		return 0, r.ctx.Err()
	case <-r.b.release:
		return 0, io.EOF
	case <-time.After(time.Minute):
		return 0, errors.New("a stalled read was never cancelled")
	}
}

func (r *stallingReader) Close() error { return nil }

// Closing a segment whose read-ahead waits on a stalled bucket read cancels that read and
// returns at once, without its cancellation as an error; a read that ignores the cancellation
// holds Close no longer than readAheadCloseWait.
func TestReadAheadCloseCancelsAStalledRead(t *testing.T) {
	for _, ignore := range []bool{false, true} {
		bkt := &stallingBucket{Bucket: objstore.NewInMemBucket(), n: 10, ignoreCancel: ignore,
			stalled: make(chan struct{}, 1), release: make(chan struct{})}
		c := openObjectChunks(context.Background(), bkt, []string{"b/chunks/000001"}, rawPool{chunkenc.NewPool()}, true)
		testutil.Ok(t, c.segs[0].seek(0, chunkReadBuffer))
		select {
		case <-bkt.stalled:
		case <-time.After(10 * time.Second):
			t.Fatal("the read-ahead never read")
		}
		start := time.Now()
		testutil.Ok(t, c.Close())
		took := time.Since(start)
		if ignore {
			testutil.Assert(t, took >= readAheadCloseWait && took < readAheadCloseWait+5*time.Second, "Close took %v", took)
			close(bkt.release)
			continue
		}
		testutil.Assert(t, took < readAheadCloseWait/2, "Close took %v with the read cancelled", took)
	}
}

// failingWriter takes n bytes, then fails.
type failingWriter struct {
	bytes.Buffer
	n int
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.Len()+len(p) > w.n {
		return 0, io.ErrShortWrite
	}
	return w.Buffer.Write(p)
}

// The write-behind writes every byte in order by Flush, and a failed background write comes back
// from a later Write or Flush.
func TestWriteBehind(t *testing.T) {
	var want bytes.Buffer
	w := &failingWriter{n: 1 << 30}
	b := newWriteBehind(w)
	for i := range 5000 {
		p := bytes.Repeat([]byte{byte(i)}, i%1500)
		want.Write(p)
		_, err := b.Write(p)
		testutil.Ok(t, err)
		if i%1000 == 999 {
			testutil.Ok(t, b.Flush())
			testutil.Equals(t, want.Len(), w.Len())
		}
	}
	testutil.Ok(t, b.Close())
	testutil.Assert(t, bytes.Equal(want.Bytes(), w.Bytes()))

	f := newWriteBehind(&failingWriter{n: writeBehindBuffer + 10})
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		_, err = f.Write(make([]byte, writeBehindBuffer))
		if err == nil {
			err = f.Flush()
		}
	}
	testutil.Equals(t, io.ErrShortWrite, err)
	testutil.Equals(t, io.ErrShortWrite, f.Close())
}

// A chunk read from a segment and written back as its record gives the same segment bytes as
// the chunk written anew.
func TestWriteRecordIsWriteChunk(t *testing.T) {
	c := chunkenc.NewXORChunk()
	app, err := c.Appender()
	testutil.Ok(t, err)
	for i := int64(0); i < 120; i++ {
		app.Append(0, i*15_000, float64(i)*1.5)
	}
	fresh := filepath.Join(t.TempDir(), "fresh")
	o, err := openOutput(fresh, nil)
	testutil.Ok(t, err)
	var refs []chunks.ChunkRef
	for range 3 {
		ref, err := o.writeChunk(c)
		testutil.Ok(t, err)
		refs = append(refs, ref)
	}
	testutil.Ok(t, o.close())

	cr, err := openChunkFiles(fresh, chunkenc.NewPool())
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, cr.Close()) }()
	copied := filepath.Join(t.TempDir(), "copied")
	w, err := openOutput(copied, nil)
	testutil.Ok(t, err)
	for _, ref := range refs {
		got, _, err := cr.chunk(chunks.Meta{Ref: ref})
		testutil.Ok(t, err)
		r, err := w.writeRecord(cr.record, len(got.Bytes()))
		testutil.Ok(t, err)
		testutil.Equals(t, ref, r)
	}
	testutil.Ok(t, w.close())
	want, err := os.ReadFile(filepath.Join(fresh, "000001"))
	testutil.Ok(t, err)
	got, err := os.ReadFile(filepath.Join(copied, "000001"))
	testutil.Ok(t, err)
	testutil.Assert(t, bytes.Equal(want, got), "segments differ")
}

// uploadedRequestsBlock writes a 2h block of 3,000 http_requests_total series (30 instances, 100
// users, 7 statuses, every 15s) and uploads it to a new in-memory bucket.
func uploadedRequestsBlock(t *testing.T) (*block.Meta, string, objstore.Bucket) {
	t.Helper()
	var series []labels.Labels
	for i := range 3000 {
		series = append(series, labels.FromStrings("__name__", "http_requests_total", "instance", fmt.Sprintf("i-%d", i%30),
			"user_id", fmt.Sprint(i/30), "status", fmt.Sprint(200+i%7)))
	}
	meta, src, err := synth.Write(context.Background(), t.TempDir(), synth.Block{Series: series, MinTime: t0, MaxTime: t0 + 7_200_000, Step: 15_000})
	testutil.Ok(t, err)
	bkt := objstore.NewInMemBucket()
	testutil.Ok(t, block.Upload(context.Background(), bkt, src, meta))
	return meta, src, bkt
}
