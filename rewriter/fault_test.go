package rewriter

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/objfault"
	"github.com/lethe-project/lethe/tombstones"
)

// markAuditor checks, at the moment each deletion mark is written, that the replacement it names
// is in the bucket whole and live: a source is never marked before its replacement is complete.
type markAuditor struct {
	objstore.Bucket
	mu         sync.Mutex
	violations []string
}

var deletionMarkObject = regexp.MustCompile(`^[0-9A-Z]{26}/` + regexp.QuoteMeta(block.DeletionMarkFilename) + `$`)

func (a *markAuditor) Upload(ctx context.Context, name string, r io.Reader, opts ...objstore.ObjectUploadOption) error {
	if !deletionMarkObject.MatchString(name) {
		return a.Bucket.Upload(ctx, name, r, opts...)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	var m block.DeletionMark
	// A mark that does not decode is a partial upload the test injected.
	repl, ok := ulid.ULID{}, false
	if json.Unmarshal(b, &m) == nil {
		repl, ok = replacement(&m)
	}
	if ok && repl != (ulid.ULID{}) {
		meta, err := block.ReadMeta(ctx, a.Bucket, repl)
		switch {
		case err != nil:
			a.violate("%s names %s, whose meta.json does not read: %v", name, repl, err)
		default:
			if err := complete(ctx, a.Bucket, meta); err != nil {
				a.violate("%s names %s, which is not whole: %v", name, repl, err)
			}
			if ok, err := a.Bucket.Exists(ctx, path.Join(repl.String(), block.DeletionMarkFilename)); err != nil || ok {
				a.violate("%s names %s, which is marked (%v)", name, repl, err)
			}
		}
	}
	return a.Bucket.Upload(ctx, name, bytes.NewReader(b), opts...)
}

func (a *markAuditor) violate(format string, args ...any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.violations = append(a.violations, fmt.Sprintf(format, args...))
}

// faultKinds are the faults that make sense for each operation.
var faultKinds = map[objfault.Op][]objfault.Kind{
	objfault.OpGet:        {objfault.KindError, objfault.KindTimeout, objfault.KindTruncate},
	objfault.OpGetRange:   {objfault.KindError, objfault.KindTruncate},
	objfault.OpUpload:     {objfault.KindError, objfault.KindTimeout, objfault.KindPartialUpload},
	objfault.OpExists:     {objfault.KindError, objfault.KindTimeout},
	objfault.OpIter:       {objfault.KindError, objfault.KindTimeout},
	objfault.OpDelete:     {objfault.KindError, objfault.KindTimeout},
	objfault.OpAttributes: {objfault.KindError},
}

// TestRunSurvivesBucketFaults injects one fault at a time, at calls spread over a whole run, of
// every kind that fits the operation, with retries and without: the run either succeeds or
// fails with an error, never marks a source before its replacement is whole (checked at the
// moment the mark is written), and a rerun on a healthy bucket finishes the job with exactly the
// deleted samples gone.
func TestRunSurvivesBucketFaults(t *testing.T) {
	ctx := context.Background()
	before, calls := probeFaultRun(t)

	var injected, survived, failedCleanly int
	for op, kinds := range faultKinds {
		n := calls[op]
		// About 5 calls of each operation, spread over the run.
		var at []int
		for i := 1; i <= n; i += max(1, n/5) {
			at = append(at, i)
		}
		for _, kind := range kinds {
			for _, nth := range at {
				for _, retries := range []int{1, 4} {
					if testing.Short() && retries > 1 {
						continue // -short: without retries, where faults reach the run.
					}
					t.Run(fmt.Sprintf("%s %s at call %d of %d, %d tries", kind, op, nth, n, retries), func(t *testing.T) {
						f := newMemFixture(t, 4)
						f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
						want := withoutSamples(before, `user_id="1"`, tombstones.BeginningOfTime, t0+10*3_600_000)
						audit := &markAuditor{Bucket: f.bkt}
						fb := objfault.New(audit)
						fb.Add(objfault.Fault{Op: op, Nth: nth, Kind: kind, Bytes: 7, Delay: time.Millisecond})
						var logs bytes.Buffer
						r := NewRunner(fb, f.store, slog.New(slog.NewTextHandler(&logs, nil)), nil,
							withDefaults(t, Config{Threshold: 0.05, Retries: retries, RetryBackoff: time.Millisecond}))
						rep, err := r.Run(ctx)
						hit := fb.Injected()[kind] > 0
						t.Cleanup(func() {
							if t.Failed() {
								t.Logf("faulty run: %v\n%s\nbucket:\n%s", err, logs.String(), describeBucket(f.bkt))
							}
						})
						testutil.Equals(t, []string(nil), audit.violations)
						checkReplacementsOf(t, f.bkt, kind == objfault.KindPartialUpload)
						if hit {
							injected++
							if err == nil && len(rep.Bad) == 0 {
								survived++
							} else {
								failedCleanly++
							}
						}
						// A rerun on a healthy bucket finishes the job.
						rerun := NewRunner(audit, f.store, slog.New(slog.NewTextHandler(&logs, nil)), nil, withDefaults(t, Config{Threshold: 0.05}))
						rep, err = rerun.Run(ctx)
						testutil.Ok(t, err)
						testutil.Equals(t, 0, len(rep.Bad), "bad blocks: %v", rep.Bad)
						testutil.Equals(t, []string(nil), audit.violations)
						checkReplacements(t, f.bkt)
						checkNoOverlap(t, f.bkt)
						testutil.Equals(t, want, samples(t, f.bkt))
					})
				}
			}
		}
	}
	t.Logf("faults injected: %d; survived (the run succeeded): %d; failed cleanly (the run failed, the rerun finished): %d", injected, survived, failedCleanly)
	testutil.Assert(t, injected > 50, "only %d faults were injected", injected)
}

// probeFaultRun runs the fault tests' job on a healthy bucket: it returns the samples every
// fixture holds before, and how many calls of each operation the run makes.
func probeFaultRun(t *testing.T) (map[string][]int64, map[objfault.Op]int) {
	t.Helper()
	probe := newMemFixture(t, 4)
	before := samples(t, probe.bkt)
	probe.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	counter := objfault.New(probe.bkt)
	_, err := NewRunner(counter, probe.store, slog.New(slog.DiscardHandler), nil, withDefaults(t, Config{Threshold: 0.05})).Run(context.Background())
	testutil.Ok(t, err)
	return before, counter.Calls()
}
