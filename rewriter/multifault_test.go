package rewriter

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"

	"github.com/lethe-project/lethe/internal/objfault"
	"github.com/lethe-project/lethe/tombstones"
)

// TestRunSurvivesSimultaneousFaults injects two to five faults at once, drawn by seeded rounds
// from every kind that fits each operation, at calls spread over a whole run, while a second
// tombstone becomes due on some rounds: the run either succeeds or fails with an error, never
// marks a source before its replacement is whole, and a rerun on a healthy bucket finishes the
// job with exactly the deleted samples gone. LETHE_FAULT_ROUNDS sets the number of rounds
// (default 60), LETHE_FAULT_SEED replays one.
func TestRunSurvivesSimultaneousFaults(t *testing.T) {
	ctx := context.Background()
	before, calls := probeFaultRun(t)
	ops := slices.Sorted(func(yield func(objfault.Op) bool) {
		for op := range faultKinds {
			if calls[op] > 0 && !yield(op) {
				return
			}
		}
	})

	rounds, first := 60, uint64(1)
	if s := os.Getenv("LETHE_FAULT_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		testutil.Ok(t, err, "LETHE_FAULT_ROUNDS=%q", s)
		testutil.Assert(t, n > 0 && n <= 10_000, "LETHE_FAULT_ROUNDS=%d: want 1..10000", n)
		rounds = n
	}
	if s := os.Getenv("LETHE_FAULT_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		testutil.Ok(t, err, "LETHE_FAULT_SEED=%q", s)
		rounds, first = 1, n
	}
	if testing.Short() {
		rounds = min(rounds, 15)
	}
	var hits, survived, failedCleanly int
	for seed := first; seed < first+uint64(rounds); seed++ {
		rng := rand.New(rand.NewPCG(seed, 0x6c657468))
		var faults []objfault.Fault
		for n := 2 + rng.IntN(4); len(faults) < n; {
			op := ops[rng.IntN(len(ops))]
			kinds := faultKinds[op]
			faults = append(faults, objfault.Fault{Op: op, Nth: 1 + rng.IntN(calls[op]), Kind: kinds[rng.IntN(len(kinds))],
				Bytes: int64(rng.IntN(64)), Delay: time.Millisecond})
		}
		retries := 1 + rng.IntN(3)
		second := rng.IntN(2) == 0
		var desc []string
		for _, f := range faults {
			desc = append(desc, fmt.Sprintf("%s %s #%d", f.Kind, f.Op, f.Nth))
		}
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			f := newMemFixture(t, 4)
			f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
			want := withoutSamples(before, `user_id="1"`, tombstones.BeginningOfTime, t0+10*3_600_000)
			if second {
				f.tombstone(t, `{user_id="2"}`, t0+3_600_000, t0+9_000_000, false)
				want = withoutSamples(want, `user_id="2"`, t0+3_600_000, t0+9_000_000)
			}
			audit := &markAuditor{Bucket: f.bkt}
			fb := objfault.New(audit)
			for _, fl := range faults {
				fb.Add(fl)
			}
			var logs bytes.Buffer
			rep, err := NewRunner(fb, f.store, slog.New(slog.NewTextHandler(&logs, nil)), nil,
				withDefaults(t, Config{Threshold: 0.05, Retries: retries, RetryBackoff: time.Millisecond})).Run(ctx)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("faults %s, %d tries, second tombstone %v; faulty run: %v\n%s\nbucket:\n%s", strings.Join(desc, ", "), retries, second, err, logs.String(), describeBucket(f.bkt))
				}
			})
			testutil.Equals(t, []string(nil), audit.violations)
			partial := slices.ContainsFunc(faults, func(f objfault.Fault) bool { return f.Kind == objfault.KindPartialUpload })
			checkReplacementsOf(t, f.bkt, partial)
			if len(fb.Injected()) > 0 {
				hits++
				if err == nil && len(rep.Bad) == 0 {
					survived++
				} else {
					failedCleanly++
				}
			}
			rep, err = NewRunner(audit, f.store, slog.New(slog.NewTextHandler(&logs, nil)), nil, withDefaults(t, Config{Threshold: 0.05})).Run(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, 0, len(rep.Bad), "bad blocks: %v", rep.Bad)
			testutil.Equals(t, []string(nil), audit.violations)
			checkReplacements(t, f.bkt)
			checkNoOverlap(t, f.bkt)
			testutil.Equals(t, want, samples(t, f.bkt))
		})
	}
	t.Logf("%d rounds; faults reached the run in %d; survived (the run succeeded): %d; failed cleanly (the run failed, the rerun finished): %d", rounds, hits, survived, failedCleanly)
	testutil.Assert(t, hits > rounds/2, "faults reached only %d of %d runs", hits, rounds)
}
