package objfault

import (
	"bytes"
	"context"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/efficientgo/core/testutil"
	"github.com/thanos-io/objstore"
)

func TestFaults(t *testing.T) {
	ctx := context.Background()
	inner := objstore.NewInMemBucket()
	b := New(inner)
	testutil.Ok(t, b.Upload(ctx, "a/1", strings.NewReader("0123456789")))
	testutil.Ok(t, b.Upload(ctx, "a/2", strings.NewReader("abcdefghij")))

	// An error at the second get of a/ only.
	b.Add(Fault{Op: OpGet, Name: regexp.MustCompile(`^a/`), Nth: 2, Kind: KindError})
	rc, err := b.Get(ctx, "a/1")
	testutil.Ok(t, err)
	testutil.Ok(t, rc.Close())
	_, err = b.Get(ctx, "a/2")
	testutil.Assert(t, errors.Is(err, ErrInjected), "%v", err)
	rc, err = b.Get(ctx, "a/2")
	testutil.Ok(t, err)
	got, err := io.ReadAll(rc)
	testutil.Ok(t, err)
	testutil.Equals(t, "abcdefghij", string(got))

	// A truncated read ends in io.ErrUnexpectedEOF after its bytes.
	b.Clear()
	b.Add(Fault{Op: OpGet, Name: regexp.MustCompile(`^a/1$`), Kind: KindTruncate, Bytes: 4})
	rc, err = b.Get(ctx, "a/1")
	testutil.Ok(t, err)
	got, err = io.ReadAll(rc)
	testutil.Equals(t, io.ErrUnexpectedEOF, err)
	testutil.Equals(t, "0123", string(got))

	// A partial upload leaves the head of the object and fails.
	b.Add(Fault{Op: OpUpload, Name: regexp.MustCompile(`^a/3$`), Kind: KindPartialUpload, Bytes: 3})
	err = b.Upload(ctx, "a/3", bytes.NewReader([]byte("xyzxyz")))
	testutil.Assert(t, errors.Is(err, ErrInjected), "%v", err)
	testutil.Equals(t, []byte("xyz"), inner.Objects()["a/3"])

	// A timeout waits for the context and wraps context.DeadlineExceeded; nothing was deleted.
	b.Add(Fault{Op: OpDelete, Kind: KindTimeout})
	tctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	err = b.Delete(tctx, "a/2")
	testutil.Assert(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
	_, ok := inner.Objects()["a/2"]
	testutil.Assert(t, ok)

	// A pause after an upload holds the caller once the object is written.
	p := b.Add(Fault{Op: OpUpload, Name: regexp.MustCompile(`^b/`), Kind: KindPause, After: true})
	done := make(chan error)
	go func() { done <- b.Upload(ctx, "b/1", strings.NewReader("x")) }()
	select {
	case <-p.Reached():
	case <-time.After(10 * time.Second):
		t.Fatal("the upload never reached its pause")
	}
	_, ok = inner.Objects()["b/1"]
	testutil.Assert(t, ok, "the pause after an upload came before it")
	select {
	case err := <-done:
		t.Fatalf("the upload returned while paused: %v", err)
	default:
	}
	p.Resume()
	testutil.Ok(t, <-done)

	testutil.Equals(t, 4, b.Calls()[OpGet])
	testutil.Equals(t, map[Kind]int{KindError: 1, KindTruncate: 1, KindPartialUpload: 1, KindTimeout: 1, KindPause: 1}, b.Injected())
}
