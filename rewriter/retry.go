package rewriter

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/thanos-io/objstore"
)

// retryBucket retries bucket calls that failed for a reason that may pass (not "not found", not
// the caller's own cancellation), with exponential backoff. Uploads are retried only when their
// reader can be rewound, listings only when they had not yet passed an entry on.
type retryBucket struct {
	objstore.Bucket
	attempts int
	backoff  time.Duration
	logger   *slog.Logger
}

// maxBackoff caps the wait between two attempts.
const maxBackoff = 10 * time.Second

func (b *retryBucket) do(ctx context.Context, op, name string, call func() error) error {
	return b.doIf(ctx, op, name, call, func() bool { return true })
}

// doIf retries call while retryable says the call can be repeated.
func (b *retryBucket) doIf(ctx context.Context, op, name string, call func() error, retryable func() bool) error {
	wait := b.backoff
	for attempt := 1; ; attempt++ {
		err := call()
		if err == nil || attempt >= b.attempts || ctx.Err() != nil || b.IsObjNotFoundErr(errors.Cause(err)) || !retryable() {
			return err
		}
		b.logger.Warn("bucket call failed; retrying", "op", op, "object", name, "attempt", attempt, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, maxBackoff)
	}
}

func (b *retryBucket) Get(ctx context.Context, name string) (rc io.ReadCloser, err error) {
	err = b.do(ctx, "get", name, func() error {
		rc, err = b.Bucket.Get(ctx, name)
		return err
	})
	return rc, err
}

func (b *retryBucket) GetRange(ctx context.Context, name string, off, length int64) (rc io.ReadCloser, err error) {
	err = b.do(ctx, "get_range", name, func() error {
		rc, err = b.Bucket.GetRange(ctx, name, off, length)
		return err
	})
	return rc, err
}

func (b *retryBucket) Exists(ctx context.Context, name string) (ok bool, err error) {
	err = b.do(ctx, "exists", name, func() error {
		ok, err = b.Bucket.Exists(ctx, name)
		return err
	})
	return ok, err
}

func (b *retryBucket) Attributes(ctx context.Context, name string) (a objstore.ObjectAttributes, err error) {
	err = b.do(ctx, "attributes", name, func() error {
		a, err = b.Bucket.Attributes(ctx, name)
		return err
	})
	return a, err
}

func (b *retryBucket) Iter(ctx context.Context, dir string, f func(string) error, opts ...objstore.IterOption) error {
	passed := false
	return b.doIf(ctx, "iter", dir, func() error {
		return b.Bucket.Iter(ctx, dir, func(name string) error {
			passed = true
			return f(name)
		}, opts...)
	}, func() bool { return !passed })
}

func (b *retryBucket) Upload(ctx context.Context, name string, r io.Reader, opts ...objstore.ObjectUploadOption) error {
	s, ok := r.(io.Seeker)
	if !ok {
		return b.Bucket.Upload(ctx, name, r, opts...)
	}
	start, err := s.Seek(0, io.SeekCurrent)
	if err != nil {
		return b.Bucket.Upload(ctx, name, r, opts...)
	}
	var rewindErr error
	return b.doIf(ctx, "upload", name, func() error {
		return b.Bucket.Upload(ctx, name, r, opts...)
	}, func() bool {
		_, rewindErr = s.Seek(start, io.SeekStart)
		return rewindErr == nil
	})
}

func (b *retryBucket) Delete(ctx context.Context, name string) error {
	return b.do(ctx, "delete", name, func() error {
		return b.Bucket.Delete(ctx, name)
	})
}
