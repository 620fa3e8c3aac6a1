package tombstones

import (
	"strconv"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore"
)

const (
	benchTombstones = 10000
	benchRegexOnly  = 10
)

// benchIndex indexes benchTombstones tombstones {__name__="http_requests_total", user_id="<i>"},
// redacted or not, plus benchRegexOnly plain tombstones {job=~"batch-<i>.*"} that every lookup
// has to scan.
func benchIndex(tb testing.TB, redact bool) *Index {
	tb.Helper()
	key := testKey(tb)
	s := newTestStore(objstore.NewInMemBucket(), WithRedactionKey(key))
	ts := make([]*Tombstone, 0, benchTombstones+benchRegexOnly)
	for i := 0; i < benchTombstones; i++ {
		t, err := s.Build(Spec{Selectors: []string{`{__name__="http_requests_total", user_id="` + strconv.Itoa(i) + `"}`}, Redact: redact})
		testutil.Ok(tb, err)
		ts = append(ts, t)
	}
	for i := 0; i < benchRegexOnly; i++ {
		t, err := s.Build(Spec{Selectors: []string{`{job=~"batch-` + strconv.Itoa(i) + `.*"}`}})
		testutil.Ok(tb, err)
		ts = append(ts, t)
	}
	ix, err := NewIndex(ts, key)
	testutil.Ok(tb, err)
	testutil.Equals(tb, benchTombstones+benchRegexOnly, ix.Len())
	return ix
}

// benchSeries is a series with 6 labels and the 2 external labels of its store.
func benchSeries(userID string) (series, ext labels.Labels) {
	return labels.FromStrings(
			"__name__", "http_requests_total",
			"instance", "10.0.0.1:9090",
			"job", "api",
			"method", "GET",
			"status", "200",
			"user_id", userID,
		),
		labels.FromStrings("cluster", "eu-1", "replica", "a")
}

var (
	missUser = "not-deleted-77"
	hitUser  = "4242"
	// hitWant is what a hit returns: the default range, from the beginning of time to creation.
	hitWant = Intervals{{Mint: BeginningOfTime, Maxt: fixed.UnixMilli()}}
)

func BenchmarkIndexIntervals(b *testing.B) {
	plain := benchIndex(b, false)
	redacted := benchIndex(b, true)

	for _, bc := range []struct {
		name string
		ix   *Index
		user string
		want Intervals
	}{
		{name: "miss", ix: plain, user: missUser},
		{name: "hit", ix: plain, user: hitUser, want: hitWant},
		{name: "redacted-miss", ix: redacted, user: missUser},
		{name: "redacted-hit", ix: redacted, user: hitUser, want: hitWant},
	} {
		b.Run(bc.name, func(b *testing.B) {
			series, ext := benchSeries(bc.user)
			testutil.Equals(b, bc.want, bc.ix.Intervals(series, ext, nil))

			var dst Intervals
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				dst = bc.ix.Intervals(series, ext, dst[:0])
			}
			b.StopTimer()
			testutil.Equals(b, len(bc.want), len(dst))
		})
	}
}

func TestIndexMissAllocatesNothing(t *testing.T) {
	ix := benchIndex(t, false)

	series, ext := benchSeries(missUser)
	testutil.Equals(t, Intervals(nil), ix.Intervals(series, ext, nil))
	allocs := testing.AllocsPerRun(200, func() {
		if got := ix.Intervals(series, ext, nil); got != nil {
			t.Fatalf("miss returned %v", got)
		}
	})
	testutil.Equals(t, 0.0, allocs, "allocations per miss")

	// A series that a regex-only tombstone nearly matches scans without allocating, too.
	series = labels.FromStrings("__name__", "cron_runs_total", "instance", "b:1", "job", "batch", "method", "x", "status", "ok", "user_id", "u")
	testutil.Equals(t, 0.0, testing.AllocsPerRun(200, func() { ix.Intervals(series, ext, nil) }))

	// A hit into a buffer that is large enough allocates nothing either, and finds the right range.
	series, ext = benchSeries(hitUser)
	dst := make(Intervals, 0, 4)
	testutil.Equals(t, hitWant, ix.Intervals(series, ext, dst))
	testutil.Equals(t, 0.0, testing.AllocsPerRun(200, func() { dst = ix.Intervals(series, ext, dst[:0]) }))

	// Redacted tombstones hash the series' values with pooled buffers: no allocation either.
	red := benchIndex(t, true)
	series, ext = benchSeries(missUser)
	testutil.Equals(t, 0.0, testing.AllocsPerRun(200, func() { red.Intervals(series, ext, nil) }))

	// The regex-only tombstones still match what they should.
	series = labels.FromStrings("__name__", "cron_runs_total", "job", "batch-7-nightly")
	testutil.Equals(t, hitWant, ix.Intervals(series, labels.EmptyLabels(), nil))
}
