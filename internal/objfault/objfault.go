// Package objfault wraps an objstore.Bucket to make it misbehave on purpose, at chosen calls: it
// pauses a caller until the test lets it go on, returns errors, times out, cuts reads short and
// fails uploads, whole or after part of the object was written. Tests use it to prove what a
// worker leaves behind when the bucket fails or another worker runs in between.
package objfault

import (
	"bytes"
	"context"
	"io"
	"regexp"
	"sync"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/thanos-io/objstore"
)

// Op is a bucket operation.
type Op string

// The operations a Fault can choose.
const (
	OpGet        Op = "get"
	OpGetRange   Op = "get_range"
	OpUpload     Op = "upload"
	OpExists     Op = "exists"
	OpIter       Op = "iter"
	OpDelete     Op = "delete"
	OpAttributes Op = "attributes"
)

// Kind is what a Fault does to the call it chose.
type Kind string

// The kinds of faults.
const (
	// KindError fails the call without doing it.
	KindError Kind = "error"
	// KindTimeout holds the call until its context ends or Delay passes, then fails it with an
	// error that wraps context.DeadlineExceeded, without doing it.
	KindTimeout Kind = "timeout"
	// KindTruncate makes a read return its first Bytes bytes, then io.ErrUnexpectedEOF.
	KindTruncate Kind = "truncate"
	// KindPartialUpload writes the first Bytes bytes of the object, then fails the upload, as a
	// bucket whose uploads are not atomic does when the connection drops.
	KindPartialUpload Kind = "partial_upload"
	// KindPause holds the caller before the call (or after it, with After) until Resume.
	KindPause Kind = "pause"
)

// ErrInjected is the error of every injected failure.
var ErrInjected = errors.New("objfault: injected failure")

// Fault chooses calls by operation and object name and misbehaves on them.
type Fault struct {
	Op Op
	// Name, if set, must match the object name (the directory, for iter).
	Name *regexp.Regexp
	// Nth, if above zero, chooses only the Nth matching call (from 1); otherwise every one.
	Nth  int
	Kind Kind
	// Bytes is how much a truncated read returns or a partial upload writes.
	Bytes int64
	// Delay bounds a timeout; zero holds it until the call's context ends.
	Delay time.Duration
	// After pauses once the call returned rather than before it.
	After bool

	seen int
	// pause is set for KindPause.
	pause *Pause
}

// Pause is a point where a caller waits for the test.
type Pause struct {
	reached chan struct{}
	resume  chan struct{}
	once    sync.Once
	hit     sync.Once
}

// Reached is closed when a caller arrived at the pause.
func (p *Pause) Reached() <-chan struct{} { return p.reached }

// Resume lets the paused caller (and any later one) go on.
func (p *Pause) Resume() { p.once.Do(func() { close(p.resume) }) }

// Bucket is an objstore.Bucket that injects the faults added to it.
type Bucket struct {
	objstore.Bucket

	mu       sync.Mutex
	faults   []*Fault
	injected map[Kind]int
	calls    map[Op]int
}

// New wraps bkt; without faults it behaves as bkt.
func New(bkt objstore.Bucket) *Bucket {
	return &Bucket{Bucket: bkt, injected: map[Kind]int{}, calls: map[Op]int{}}
}

// Add adds a fault. For KindPause it returns the pause to wait on and resume; otherwise nil.
func (b *Bucket) Add(f Fault) *Pause {
	b.mu.Lock()
	defer b.mu.Unlock()
	fc := f
	if fc.Kind == KindPause {
		fc.pause = &Pause{reached: make(chan struct{}), resume: make(chan struct{})}
	}
	b.faults = append(b.faults, &fc)
	return fc.pause
}

// Clear removes every fault and lets every paused caller go on.
func (b *Bucket) Clear() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range b.faults {
		if f.pause != nil {
			f.pause.Resume()
		}
	}
	b.faults = nil
}

// Injected returns how many calls each kind of fault changed.
func (b *Bucket) Injected() map[Kind]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[Kind]int, len(b.injected))
	for k, n := range b.injected {
		out[k] = n
	}
	return out
}

// Calls returns how many calls of each operation the bucket saw.
func (b *Bucket) Calls() map[Op]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[Op]int, len(b.calls))
	for op, n := range b.calls {
		out[op] = n
	}
	return out
}

// match returns the fault that chooses this call, if any; the first added wins.
func (b *Bucket) match(op Op, name string) *Fault {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls[op]++
	var chosen *Fault
	for _, f := range b.faults {
		if f.Op != op || (f.Name != nil && !f.Name.MatchString(name)) {
			continue
		}
		f.seen++
		if f.Nth > 0 && f.seen != f.Nth {
			continue
		}
		if chosen == nil {
			chosen = f
		}
	}
	if chosen != nil {
		b.injected[chosen.Kind]++
	}
	return chosen
}

// wait holds the caller at a pause until it is resumed or ctx ends.
func wait(ctx context.Context, p *Pause) error {
	p.hit.Do(func() { close(p.reached) })
	select {
	case <-p.resume:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// before runs the fault's effect that comes before the call; it returns whether to pause after
// the call, and the error to fail the call with instead of doing it.
func before(ctx context.Context, f *Fault, op Op, name string) (pauseAfter bool, err error) {
	if f == nil {
		return false, nil
	}
	switch f.Kind {
	case KindError:
		return false, errors.Wrapf(ErrInjected, "%s %s", op, name)
	case KindTimeout:
		var timeout <-chan time.Time
		if f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-ctx.Done():
		case <-timeout:
		}
		return false, errors.Wrapf(context.DeadlineExceeded, "objfault: %s %s timed out", op, name)
	case KindPause:
		if f.After {
			return true, nil
		}
		return false, wait(ctx, f.pause)
	}
	return false, nil
}

// do runs call with the fault chosen for (op, name).
func (b *Bucket) do(ctx context.Context, op Op, name string, call func(f *Fault) error) error {
	f := b.match(op, name)
	pauseAfter, err := before(ctx, f, op, name)
	if err != nil {
		return err
	}
	err = call(f)
	if pauseAfter {
		if werr := wait(ctx, f.pause); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// Get implements objstore.Bucket.
func (b *Bucket) Get(ctx context.Context, name string) (rc io.ReadCloser, err error) {
	err = b.do(ctx, OpGet, name, func(f *Fault) error {
		rc, err = b.Bucket.Get(ctx, name)
		rc = truncate(rc, err, f)
		return err
	})
	return rc, err
}

// GetRange implements objstore.Bucket.
func (b *Bucket) GetRange(ctx context.Context, name string, off, length int64) (rc io.ReadCloser, err error) {
	err = b.do(ctx, OpGetRange, name, func(f *Fault) error {
		rc, err = b.Bucket.GetRange(ctx, name, off, length)
		rc = truncate(rc, err, f)
		return err
	})
	return rc, err
}

// Exists implements objstore.Bucket.
func (b *Bucket) Exists(ctx context.Context, name string) (ok bool, err error) {
	err = b.do(ctx, OpExists, name, func(*Fault) error {
		ok, err = b.Bucket.Exists(ctx, name)
		return err
	})
	return ok, err
}

// Attributes implements objstore.Bucket.
func (b *Bucket) Attributes(ctx context.Context, name string) (a objstore.ObjectAttributes, err error) {
	err = b.do(ctx, OpAttributes, name, func(*Fault) error {
		a, err = b.Bucket.Attributes(ctx, name)
		return err
	})
	return a, err
}

// Iter implements objstore.Bucket.
func (b *Bucket) Iter(ctx context.Context, dir string, fn func(string) error, opts ...objstore.IterOption) error {
	return b.do(ctx, OpIter, dir, func(*Fault) error {
		return b.Bucket.Iter(ctx, dir, fn, opts...)
	})
}

// IterWithAttributes implements objstore.Bucket.
func (b *Bucket) IterWithAttributes(ctx context.Context, dir string, fn func(objstore.IterObjectAttributes) error, opts ...objstore.IterOption) error {
	return b.do(ctx, OpIter, dir, func(*Fault) error {
		return b.Bucket.IterWithAttributes(ctx, dir, fn, opts...)
	})
}

// Upload implements objstore.Bucket.
func (b *Bucket) Upload(ctx context.Context, name string, r io.Reader, opts ...objstore.ObjectUploadOption) error {
	return b.do(ctx, OpUpload, name, func(f *Fault) error {
		if f == nil || f.Kind != KindPartialUpload {
			return b.Bucket.Upload(ctx, name, r, opts...)
		}
		head, err := io.ReadAll(io.LimitReader(r, f.Bytes))
		if err != nil {
			return err
		}
		if err := b.Bucket.Upload(ctx, name, bytes.NewReader(head), opts...); err != nil {
			return err
		}
		return errors.Wrapf(ErrInjected, "upload %s cut after %d bytes", name, len(head))
	})
}

// Delete implements objstore.Bucket.
func (b *Bucket) Delete(ctx context.Context, name string) error {
	return b.do(ctx, OpDelete, name, func(*Fault) error {
		return b.Bucket.Delete(ctx, name)
	})
}

// truncate cuts a reader short for a KindTruncate fault.
func truncate(rc io.ReadCloser, err error, f *Fault) io.ReadCloser {
	if err != nil || f == nil || f.Kind != KindTruncate {
		return rc
	}
	return &truncated{rc: rc, r: io.LimitReader(rc, f.Bytes)}
}

type truncated struct {
	rc io.ReadCloser
	r  io.Reader
}

func (t *truncated) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err == io.EOF {
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

func (t *truncated) Close() error { return t.rc.Close() }
