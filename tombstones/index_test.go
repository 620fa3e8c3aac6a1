package tombstones

import (
	"fmt"
	"math"
	"math/rand"
	"strings"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore"
)

const (
	minT = int64(math.MinInt64)
	maxT = int64(math.MaxInt64)
)

func TestIntervalsAdd(t *testing.T) {
	for _, tc := range []struct {
		name string
		add  []Interval
		want Intervals
	}{
		{name: "one", add: []Interval{{1, 5}}, want: Intervals{{1, 5}}},
		{name: "disjoint in order", add: []Interval{{1, 5}, {10, 12}}, want: Intervals{{1, 5}, {10, 12}}},
		{name: "disjoint reversed", add: []Interval{{10, 12}, {1, 5}}, want: Intervals{{1, 5}, {10, 12}}},
		{name: "disjoint in the middle", add: []Interval{{1, 2}, {20, 30}, {10, 12}}, want: Intervals{{1, 2}, {10, 12}, {20, 30}}},
		{name: "overlapping", add: []Interval{{1, 5}, {3, 8}}, want: Intervals{{1, 8}}},
		{name: "overlapping reversed", add: []Interval{{3, 8}, {1, 5}}, want: Intervals{{1, 8}}},
		{name: "adjacent", add: []Interval{{1, 5}, {6, 9}}, want: Intervals{{1, 9}}},
		{name: "adjacent reversed", add: []Interval{{6, 9}, {1, 5}}, want: Intervals{{1, 9}}},
		{name: "gap of one", add: []Interval{{1, 5}, {7, 9}}, want: Intervals{{1, 5}, {7, 9}}},
		{name: "gap of one reversed", add: []Interval{{7, 9}, {1, 5}}, want: Intervals{{1, 5}, {7, 9}}},
		{name: "gap filled by a point", add: []Interval{{1, 5}, {7, 9}, {6, 6}}, want: Intervals{{1, 9}}},
		{name: "contained", add: []Interval{{1, 10}, {3, 4}}, want: Intervals{{1, 10}}},
		{name: "containing", add: []Interval{{3, 4}, {1, 10}}, want: Intervals{{1, 10}}},
		{name: "same twice", add: []Interval{{3, 4}, {3, 4}}, want: Intervals{{3, 4}}},
		{name: "bridging several", add: []Interval{{1, 2}, {5, 6}, {9, 10}, {14, 15}, {3, 8}}, want: Intervals{{1, 10}, {14, 15}}},
		{name: "covering several", add: []Interval{{5, 6}, {9, 10}, {14, 15}, {0, 20}}, want: Intervals{{0, 20}}},
		{name: "extending the last", add: []Interval{{1, 2}, {5, 6}, {6, 30}}, want: Intervals{{1, 2}, {5, 30}}},
		{name: "negative times", add: []Interval{{-10, -5}, {-4, 0}}, want: Intervals{{-10, 0}}},

		// Open ends, in any order. Prometheus' Intervals.Add overflows on n.Mint-1 / n.Maxt+1 and
		// indexes out of range (or breaks the order) when an open interval comes after the first.
		{name: "open start after a closed one", add: []Interval{{10, 20}, {minT, 5}}, want: Intervals{{minT, 5}, {10, 20}}},
		{name: "open start touching", add: []Interval{{10, 20}, {minT, 9}}, want: Intervals{{minT, 20}}},
		{name: "open start over several", add: []Interval{{10, 20}, {30, 40}, {50, 60}, {minT, 35}}, want: Intervals{{minT, 40}, {50, 60}}},
		{name: "open end after a closed one", add: []Interval{{1, 2}, {10, maxT}}, want: Intervals{{1, 2}, {10, maxT}}},
		{name: "open end touching", add: []Interval{{1, 2}, {3, maxT}}, want: Intervals{{1, maxT}}},
		{name: "open end over several", add: []Interval{{1, 2}, {10, 20}, {30, 40}, {15, maxT}}, want: Intervals{{1, 2}, {10, maxT}}},
		{name: "open end before a closed one", add: []Interval{{10, maxT}, {1, 2}}, want: Intervals{{1, 2}, {10, maxT}}},
		{name: "closed inside open end", add: []Interval{{10, maxT}, {100, 200}}, want: Intervals{{10, maxT}}},
		{name: "closed inside open start", add: []Interval{{minT, 100}, {-5, 5}}, want: Intervals{{minT, 100}}},
		{name: "closed after open start", add: []Interval{{minT, 100}, {200, 300}}, want: Intervals{{minT, 100}, {200, 300}}},
		{name: "both open ends, then closed", add: []Interval{{minT, 3}, {10, maxT}, {5, 6}}, want: Intervals{{minT, 3}, {5, 6}, {10, maxT}}},
		{name: "both open ends, then bridge", add: []Interval{{minT, 3}, {10, maxT}, {4, 9}}, want: Intervals{{minT, maxT}}},
		{name: "open end then open start", add: []Interval{{5, maxT}, {minT, 4}}, want: Intervals{{minT, maxT}}},
		{name: "open start then open end", add: []Interval{{minT, 3}, {4, maxT}}, want: Intervals{{minT, maxT}}},
		{name: "everything after several", add: []Interval{{1, 2}, {5, 6}, {minT, maxT}}, want: Intervals{{minT, maxT}}},
		{name: "everything first", add: []Interval{{minT, maxT}, {1, 2}, {minT, 0}, {0, maxT}}, want: Intervals{{minT, maxT}}},
		{name: "extreme points", add: []Interval{{maxT, maxT}, {minT, minT}}, want: Intervals{{minT, minT}, {maxT, maxT}}},
		{name: "extreme points and neighbours", add: []Interval{{maxT, maxT}, {minT, minT}, {minT + 1, 0}, {1, maxT - 1}}, want: Intervals{{minT, maxT}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Intervals
			for _, iv := range tc.add {
				got = got.Add(iv)
			}
			testutil.Equals(t, tc.want, got)
			assertIntervalsInvariant(t, got)
		})
	}
}

func assertIntervalsInvariant(t testing.TB, ivs Intervals) {
	t.Helper()
	for i, iv := range ivs {
		testutil.Assert(t, iv.Mint <= iv.Maxt, "interval %d inverted: %v", i, ivs)
		if i > 0 {
			prev := ivs[i-1]
			testutil.Assert(t, prev.Maxt != maxT && prev.Maxt+1 < iv.Mint, "intervals %d and %d overlap or touch: %v", i-1, i, ivs)
		}
	}
}

// TestIntervalsAddRandom compares Add with a bitmap on a small domain.
func TestIntervalsAddRandom(t *testing.T) {
	const domain = 64
	rng := rand.New(rand.NewSource(7))
	for round := 0; round < 500; round++ {
		var (
			got  Intervals
			want [domain]bool
		)
		for k := 0; k < 1+rng.Intn(8); k++ {
			a, b := rng.Int63n(domain), rng.Int63n(domain)
			if a > b {
				a, b = b, a
			}
			got = got.Add(Interval{a, b})
			for x := a; x <= b; x++ {
				want[x] = true
			}
		}
		assertIntervalsInvariant(t, got)
		var wantIvs Intervals
		for x := int64(0); x < domain; x++ {
			if !want[x] {
				continue
			}
			if n := len(wantIvs); n > 0 && wantIvs[n-1].Maxt == x-1 {
				wantIvs[n-1].Maxt = x
			} else {
				wantIvs = append(wantIvs, Interval{x, x})
			}
			testutil.Assert(t, got.Covers(x), "round %d: %v does not cover %d", round, got, x)
		}
		testutil.Equals(t, wantIvs, got, "round %d", round)
		for x := int64(-1); x <= domain; x++ {
			testutil.Equals(t, x >= 0 && x < domain && want[x], got.Covers(x), "round %d: Covers(%d) of %v", round, x, got)
		}
		// CoversRange against every sample of the range.
		for lo := int64(-1); lo <= domain; lo++ {
			all := true
			for hi := lo; hi <= domain; hi++ {
				all = all && hi >= 0 && hi < domain && want[hi]
				testutil.Equals(t, all, got.CoversRange(lo, hi), "round %d: CoversRange(%d, %d) of %v", round, lo, hi, got)
			}
		}
	}
}

func TestIntervalsCovers(t *testing.T) {
	ivs := Intervals{{minT, -10}, {1, 5}, {10, 10}, {20, maxT}}
	for _, tc := range []struct {
		t    int64
		want bool
	}{
		{minT, true}, {-10, true}, {-9, false}, {0, false}, {1, true}, {3, true}, {5, true}, {6, false},
		{9, false}, {10, true}, {11, false}, {19, false}, {20, true}, {maxT, true},
	} {
		testutil.Equals(t, tc.want, ivs.Covers(tc.t), "Covers(%d)", tc.t)
	}
	testutil.Assert(t, !Intervals(nil).Covers(0), "empty covers nothing")
	testutil.Assert(t, !Intervals{{1, 5}}.Covers(minT), "closed does not cover minT")
	testutil.Assert(t, !Intervals{{1, 5}}.Covers(maxT), "closed does not cover maxT")
}

func TestIntervalsOverlaps(t *testing.T) {
	ivs := Intervals{{1, 5}, {10, 20}}
	for _, tc := range []struct {
		mint, maxt int64
		want       bool
	}{
		{6, 9, false}, {5, 5, true}, {0, 1, true}, {minT, 0, false}, {21, 30, false}, {21, maxT, false},
		{minT, maxT, true}, {20, 20, true}, {4, 11, true}, {12, 13, true}, {0, 0, false},
	} {
		testutil.Equals(t, tc.want, ivs.Overlaps(tc.mint, tc.maxt), "Overlaps(%d, %d)", tc.mint, tc.maxt)
	}
	testutil.Assert(t, !Intervals(nil).Overlaps(minT, maxT), "empty overlaps nothing")
	testutil.Assert(t, Intervals{{minT, maxT}}.Overlaps(0, 0), "everything overlaps")
}

// tspec is a tombstone to build in a test.
type tspec struct {
	sels       []string
	start, end int64
	redact     bool
}

func buildTombstones(t testing.TB, key *RedactionKey, specs ...tspec) []*Tombstone {
	t.Helper()
	s := newTestStore(objstore.NewInMemBucket(), WithRedactionKey(key))
	out := make([]*Tombstone, 0, len(specs))
	for _, sp := range specs {
		tb, err := s.Build(Spec{Selectors: sp.sels, Start: i64(sp.start), End: i64(sp.end), Redact: sp.redact, Force: true})
		testutil.Ok(t, err, "build %v", sp.sels)
		out = append(out, tb)
	}
	return out
}

func TestIndexIntervals(t *testing.T) {
	key := testKey(t)
	up := labels.FromStrings("__name__", "up", "job", "api", "instance", "a:9090")
	upNoJob := labels.FromStrings("__name__", "up", "instance", "a:9090")
	upWeb := labels.FromStrings("__name__", "up", "job", "web", "instance", "b:9090")
	http42 := labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", "42")
	http43 := labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", "43")
	withCluster := labels.FromStrings("__name__", "up", "job", "api", "cluster", "local", "tenant", "acme")
	ext := labels.FromStrings("cluster", "eu-1", "replica", "r0")
	none := labels.EmptyLabels()

	for _, tc := range []struct {
		name   string
		ts     []tspec
		series labels.Labels
		ext    labels.Labels
		want   Intervals
	}{
		{name: "no tombstones", series: up, ext: none},
		{name: "equality hit", ts: []tspec{{sels: []string{`up{job="api"}`}, start: 0, end: 10}}, series: up, ext: none, want: Intervals{{0, 10}}},
		{name: "equality miss on value", ts: []tspec{{sels: []string{`up{job="web"}`}, start: 0, end: 10}}, series: up, ext: none},
		{name: "equality miss on absent label", ts: []tspec{{sels: []string{`up{job="api"}`}, start: 0, end: 10}}, series: upNoJob, ext: none},
		{name: "equality on name only", ts: []tspec{{sels: []string{`up`}, start: 5, end: 6}}, series: upWeb, ext: none, want: Intervals{{5, 6}}},
		{name: "regex hit", ts: []tspec{{sels: []string{`{job=~"ap.*"}`}, start: 0, end: 10}}, series: up, ext: none, want: Intervals{{0, 10}}},
		{name: "regex is anchored", ts: []tspec{{sels: []string{`{job=~"ap"}`}, start: 0, end: 10}}, series: up, ext: none},
		{name: "regex alternation", ts: []tspec{{sels: []string{`{job=~"web|api"}`}, start: 0, end: 10}}, series: upWeb, ext: none, want: Intervals{{0, 10}}},
		{name: "regex on name", ts: []tspec{{sels: []string{`{__name__=~"u.", instance="a:9090"}`}, start: 0, end: 10}}, series: upNoJob, ext: none, want: Intervals{{0, 10}}},
		{name: "not equal excludes", ts: []tspec{{sels: []string{`up{job!="api"}`}, start: 0, end: 10}}, series: up, ext: none},
		{name: "not equal includes other", ts: []tspec{{sels: []string{`up{job!="api"}`}, start: 0, end: 10}}, series: upWeb, ext: none, want: Intervals{{0, 10}}},
		{name: "not equal includes absent", ts: []tspec{{sels: []string{`up{job!="api"}`}, start: 0, end: 10}}, series: upNoJob, ext: none, want: Intervals{{0, 10}}},
		{name: "negative regex excludes", ts: []tspec{{sels: []string{`up{job!~"a.*"}`}, start: 0, end: 10}}, series: up, ext: none},
		{name: "negative regex includes", ts: []tspec{{sels: []string{`up{job!~"a.*"}`}, start: 0, end: 10}}, series: upWeb, ext: none, want: Intervals{{0, 10}}},
		{name: "not empty requires label", ts: []tspec{{sels: []string{`up{job!=""}`}, start: 0, end: 10}}, series: upNoJob, ext: none},
		{name: "absent label matched by empty", ts: []tspec{{sels: []string{`up{job=""}`}, start: 0, end: 10}}, series: upNoJob, ext: none, want: Intervals{{0, 10}}},
		{name: "present label not matched by empty", ts: []tspec{{sels: []string{`up{job=""}`}, start: 0, end: 10}}, series: up, ext: none},
		{name: "union of selectors, first", ts: []tspec{{sels: []string{`up{job="api"}`, `up{job="web"}`}, start: 0, end: 10}}, series: up, ext: none, want: Intervals{{0, 10}}},
		{name: "union of selectors, second", ts: []tspec{{sels: []string{`up{job="api"}`, `up{job="web"}`}, start: 0, end: 10}}, series: upWeb, ext: none, want: Intervals{{0, 10}}},
		{name: "union of selectors, neither", ts: []tspec{{sels: []string{`up{job="api"}`, `up{job="web"}`}, start: 0, end: 10}}, series: upNoJob, ext: none},
		{name: "union of selectors, both", ts: []tspec{{sels: []string{`up{job="api"}`, `{instance="a:9090"}`}, start: 0, end: 10}}, series: up, ext: none, want: Intervals{{0, 10}}},
		{
			name: "several tombstones merge",
			ts: []tspec{
				{sels: []string{`up`}, start: 0, end: 10},
				{sels: []string{`{job="api"}`}, start: 5, end: 20},
				{sels: []string{`{instance="a:9090"}`}, start: 30, end: 40},
				{sels: []string{`{job=~"a.*"}`}, start: 21, end: 25},
				{sels: []string{`{job="web"}`}, start: 26, end: 29},                      // Does not match.
				{sels: []string{`{job="api", instance="b:9090"}`}, start: 100, end: 200}, // Does not match.
			},
			series: up, ext: none,
			want: Intervals{{0, 25}, {30, 40}},
		},
		{
			name: "open ends merge",
			ts: []tspec{
				{sels: []string{`up`}, start: 100, end: maxT},
				{sels: []string{`{job="api"}`}, start: minT, end: 10},
				{sels: []string{`{instance="a:9090"}`}, start: 11, end: 50},
			},
			series: up, ext: none,
			want: Intervals{{minT, 50}, {100, maxT}},
		},
		{name: "ext label named by selector", ts: []tspec{{sels: []string{`up{cluster="eu-1"}`}, start: 0, end: 10}}, series: up, ext: ext, want: Intervals{{0, 10}}},
		{name: "ext label only selector", ts: []tspec{{sels: []string{`{replica="r0"}`}, start: 0, end: 10}}, series: upNoJob, ext: ext, want: Intervals{{0, 10}}},
		{name: "ext label regex", ts: []tspec{{sels: []string{`{cluster=~"eu-.*"}`}, start: 0, end: 10}}, series: up, ext: ext, want: Intervals{{0, 10}}},
		{name: "ext label miss", ts: []tspec{{sels: []string{`{cluster="us-1"}`}, start: 0, end: 10}}, series: up, ext: ext},
		{name: "ext overrides series label, old value", ts: []tspec{{sels: []string{`{cluster="local"}`}, start: 0, end: 10}}, series: withCluster, ext: ext},
		{name: "ext overrides series label, new value", ts: []tspec{{sels: []string{`{cluster="eu-1"}`}, start: 0, end: 10}}, series: withCluster, ext: ext, want: Intervals{{0, 10}}},
		{name: "ext overrides series label, negative", ts: []tspec{{sels: []string{`up{cluster!="local"}`}, start: 0, end: 10}}, series: withCluster, ext: ext, want: Intervals{{0, 10}}},
		{name: "ext overrides series label, regex", ts: []tspec{{sels: []string{`up{cluster=~"loc.*"}`}, start: 0, end: 10}}, series: withCluster, ext: ext},
		{name: "series label without ext", ts: []tspec{{sels: []string{`{cluster="local"}`}, start: 0, end: 10}}, series: withCluster, ext: none, want: Intervals{{0, 10}}},
		{name: "series and ext labels together", ts: []tspec{{sels: []string{`{tenant="acme", cluster="eu-1", replica="r0"}`}, start: 0, end: 10}}, series: withCluster, ext: ext, want: Intervals{{0, 10}}},

		{name: "redacted hit", ts: []tspec{{sels: []string{`http_requests_total{user_id="42"}`}, start: 0, end: 10, redact: true}}, series: http42, ext: none, want: Intervals{{0, 10}}},
		{name: "redacted miss on value", ts: []tspec{{sels: []string{`http_requests_total{user_id="42"}`}, start: 0, end: 10, redact: true}}, series: http43, ext: none},
		{name: "redacted miss on absent label", ts: []tspec{{sels: []string{`{user_id="42"}`}, start: 0, end: 10, redact: true}}, series: up, ext: none},
		{name: "redacted miss on name", ts: []tspec{{sels: []string{`rpc_total{user_id="42"}`}, start: 0, end: 10, redact: true}}, series: http42, ext: none},
		{name: "redacted two labels", ts: []tspec{{sels: []string{`{job="api", user_id="42"}`}, start: 0, end: 10, redact: true}}, series: http42, ext: none, want: Intervals{{0, 10}}},
		{name: "redacted two labels, one wrong", ts: []tspec{{sels: []string{`{job="web", user_id="42"}`}, start: 0, end: 10, redact: true}}, series: http42, ext: none},
		{name: "redacted with name regex", ts: []tspec{{sels: []string{`{__name__=~"http_.*", user_id="42"}`}, start: 0, end: 10, redact: true}}, series: http42, ext: none, want: Intervals{{0, 10}}},
		{name: "redacted with empty matcher", ts: []tspec{{sels: []string{`{user_id="42", team=""}`}, start: 0, end: 10, redact: true}}, series: http42, ext: none, want: Intervals{{0, 10}}},
		{name: "redacted ext label", ts: []tspec{{sels: []string{`{cluster="eu-1"}`}, start: 0, end: 10, redact: true}}, series: withCluster, ext: ext, want: Intervals{{0, 10}}},
		{name: "redacted ext overrides series label", ts: []tspec{{sels: []string{`{cluster="local"}`}, start: 0, end: 10, redact: true}}, series: withCluster, ext: ext},
		{
			name: "redacted and plain merge",
			ts: []tspec{
				{sels: []string{`{user_id="42"}`}, start: 0, end: 10, redact: true},
				{sels: []string{`{user_id="42"}`}, start: 11, end: 20},
				{sels: []string{`{user_id="43"}`}, start: 50, end: 60, redact: true},
				{sels: []string{`{job="api"}`}, start: 30, end: 40, redact: true},
			},
			series: http42, ext: none,
			want: Intervals{{0, 20}, {30, 40}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := buildTombstones(t, key, tc.ts...)
			ix, err := NewIndex(ts, key)
			testutil.Ok(t, err)
			testutil.Equals(t, len(tc.ts), ix.Len())
			testutil.Equals(t, tc.want, ix.Intervals(tc.series, tc.ext, nil))

			// Matching names exactly the tombstones whose intervals were added.
			var got Intervals
			ix.Matching(tc.series, tc.ext, func(tb *Tombstone) { got = got.Add(Interval{tb.Start, tb.End}) })
			testutil.Equals(t, tc.want, got)
		})
	}
}

func TestIndexIntervalsAppends(t *testing.T) {
	ts := buildTombstones(t, nil, tspec{sels: []string{`up`}, start: 10, end: 20})
	ix, err := NewIndex(ts, nil)
	testutil.Ok(t, err)
	got := ix.Intervals(labels.FromStrings("__name__", "up"), labels.EmptyLabels(), Intervals{{0, 5}, {21, 30}})
	testutil.Equals(t, Intervals{{0, 5}, {10, 30}}, got)
}

func TestIndexMatchingOncePerSelector(t *testing.T) {
	ts := buildTombstones(t, nil,
		tspec{sels: []string{`up`, `{job="api"}`, `{job="web"}`}, start: 0, end: 1},
		tspec{sels: []string{`{instance="a"}`}, start: 0, end: 1},
	)
	ix, err := NewIndex(ts, nil)
	testutil.Ok(t, err)
	calls := map[ulid.ULID]int{}
	ix.Matching(labels.FromStrings("__name__", "up", "job", "api", "instance", "a"), labels.EmptyLabels(), func(tb *Tombstone) { calls[tb.ID]++ })
	testutil.Equals(t, map[ulid.ULID]int{ts[0].ID: 2, ts[1].ID: 1}, calls)
}

func TestNewIndexRedactionKeys(t *testing.T) {
	key := testKey(t)
	other, err := NewRedactionKey([]byte("another key of enough length"))
	testutil.Ok(t, err)
	testutil.Assert(t, key.ID() != other.ID(), "distinct keys have distinct ids")

	redacted := buildTombstones(t, key, tspec{sels: []string{`{user_id="42"}`}, start: 0, end: 10, redact: true})
	plain := buildTombstones(t, nil, tspec{sels: []string{`{user_id="42"}`}, start: 0, end: 10})

	_, err = NewIndex(append(plain, redacted...), nil)
	testutil.NotOk(t, err)
	testutil.Assert(t, strings.Contains(err.Error(), key.ID()) && strings.Contains(err.Error(), "not configured"), "error: %v", err)

	_, err = NewIndex(redacted, other)
	testutil.NotOk(t, err)
	testutil.Assert(t, strings.Contains(err.Error(), redacted[0].ID.String()), "error names the tombstone: %v", err)

	// Plain tombstones need no key.
	ix, err := NewIndex(plain, nil)
	testutil.Ok(t, err)
	testutil.Equals(t, Intervals{{0, 10}}, ix.Intervals(labels.FromStrings("user_id", "42"), labels.EmptyLabels(), nil))

	// A redacted matcher that holds no digest cannot be evaluated.
	for _, bad := range []string{`{user_id="42"}`, `{user_id="` + strings.Repeat("ab", 31) + `"}`, `{user_id="` + strings.Repeat("zz", 32) + `"}`} {
		tb := &Tombstone{
			Version: Version, ID: ulid.MustNew(ulid.Timestamp(fixed), nil), Matchers: []string{bad},
			Start: 0, End: 1, CreatedAt: fixed, UndeleteUntil: fixed, Deadline: fixed,
			Redaction: &Redaction{Algorithm: redactionAlgorithm, KeyID: key.ID()},
		}
		testutil.Ok(t, tb.validate())
		_, err = NewIndex([]*Tombstone{tb}, key)
		testutil.NotOk(t, err, bad)
		testutil.Assert(t, strings.Contains(err.Error(), "holds no digest"), "error: %v", err)
	}
}

// Random cross-check against a brute-force evaluation.

var (
	rndNames     = []string{"__name__", "job", "instance", "user_id", "region", "cluster"}
	rndMetrics   = []string{"up", "http", "rpc"}
	rndValues    = []string{"a", "b", "c", "ab"}
	rndRegexes   = []string{"a|b", "a.*", ".*", ".+", "", "b", "c|ab", "x"}
	rndNameRegex = []string{"up|http", "h.*", ".+", "r.c", ".*"}
)

func randomSeries(rng *rand.Rand) (series, ext labels.Labels) {
	b := labels.NewScratchBuilder(6)
	b.Add("__name__", rndMetrics[rng.Intn(len(rndMetrics))])
	for _, n := range rndNames[1:] {
		if rng.Intn(2) == 0 {
			b.Add(n, rndValues[rng.Intn(len(rndValues))])
		}
	}
	b.Sort()
	series = b.Labels()

	eb := labels.NewScratchBuilder(2)
	for _, n := range []string{"region", "cluster"} {
		if rng.Intn(3) == 0 {
			eb.Add(n, rndValues[rng.Intn(len(rndValues))])
		}
	}
	eb.Sort()
	return series, eb.Labels()
}

// randomMatcher renders one matcher; with redactable only, one that --redact accepts.
func randomMatcher(rng *rand.Rand, redactable bool) string {
	name := rndNames[rng.Intn(len(rndNames))]
	if name == "__name__" {
		switch rng.Intn(3) {
		case 0:
			return fmt.Sprintf(`__name__=%q`, rndMetrics[rng.Intn(len(rndMetrics))])
		case 1:
			return fmt.Sprintf(`__name__=~%q`, rndNameRegex[rng.Intn(len(rndNameRegex))])
		default:
			return fmt.Sprintf(`__name__!=%q`, rndMetrics[rng.Intn(len(rndMetrics))])
		}
	}
	if redactable {
		switch rng.Intn(5) {
		case 0:
			return name + `=""`
		case 1:
			return name + `!=""`
		default:
			return fmt.Sprintf(`%s=%q`, name, rndValues[rng.Intn(len(rndValues))])
		}
	}
	value := func() string {
		if rng.Intn(6) == 0 {
			return ""
		}
		return rndValues[rng.Intn(len(rndValues))]
	}
	switch rng.Intn(10) {
	case 0, 1, 2, 3:
		return fmt.Sprintf(`%s=%q`, name, rndValues[rng.Intn(len(rndValues))])
	case 4:
		return fmt.Sprintf(`%s=%q`, name, value())
	case 5, 6:
		return fmt.Sprintf(`%s!=%q`, name, value())
	case 7, 8:
		return fmt.Sprintf(`%s=~%q`, name, rndRegexes[rng.Intn(len(rndRegexes))])
	default:
		return fmt.Sprintf(`%s!~%q`, name, rndRegexes[rng.Intn(len(rndRegexes))])
	}
}

func randomTime(rng *rand.Rand, lo int64) int64 {
	return lo + rng.Int63n(100)
}

type plainTombstone struct {
	sels       [][]*labels.Matcher
	start, end int64
}

func bruteForce(ts []plainTombstone, series, ext labels.Labels) Intervals {
	value := func(name string) string {
		if v := ext.Get(name); v != "" {
			return v
		}
		return series.Get(name)
	}
	var out Intervals
	for _, tb := range ts {
		for _, sel := range tb.sels {
			ok := true
			for _, m := range sel {
				if !m.Matches(value(m.Name)) {
					ok = false
					break
				}
			}
			if ok {
				out = out.Add(Interval{tb.start, tb.end})
			}
		}
	}
	return out
}

func TestIndexMatchesBruteForce(t *testing.T) {
	key := testKey(t)
	s := newTestStore(objstore.NewInMemBucket(), WithRedactionKey(key))
	const (
		seeds         = 20
		seriesPerSeed = 300
	)
	var seriesHits, pairHits, pairs int
	for seed := int64(1); seed <= seeds; seed++ {
		rng := rand.New(rand.NewSource(seed))
		var (
			ts    []*Tombstone
			plain []plainTombstone
			nRed  int
		)
		for len(ts) < 6 {
			redact := rng.Intn(3) == 0
			var sels []string
			for k := 0; k < 1+rng.Intn(3); k++ {
				var ms []string
				for l := 0; l < 1+rng.Intn(3); l++ {
					ms = append(ms, randomMatcher(rng, redact))
				}
				sels = append(sels, "{"+strings.Join(ms, ", ")+"}")
			}
			parsed, err := ParseSelectors(sels)
			if err != nil {
				continue // A selector that matches the empty string; draw again.
			}
			start := randomTime(rng, -50)
			end := randomTime(rng, start)
			switch rng.Intn(8) {
			case 0:
				start = minT
			case 1:
				end = maxT
			}
			tb, err := s.Build(Spec{Selectors: sels, Start: i64(start), End: i64(end), Redact: redact, Force: true})
			testutil.Ok(t, err, "build %v", sels)
			testutil.Equals(t, redact, tb.Redacted())
			if redact {
				nRed++
			}
			ts = append(ts, tb)
			plain = append(plain, plainTombstone{sels: parsed, start: start, end: end})
		}
		testutil.Assert(t, nRed > 0, "seed %d: some tombstones are redacted", seed)

		ix, err := NewIndex(ts, key)
		testutil.Ok(t, err)
		for i := 0; i < seriesPerSeed; i++ {
			series, ext := randomSeries(rng)
			want := bruteForce(plain, series, ext)
			got := ix.Intervals(series, ext, nil)
			testutil.Equals(t, want, got, "seed %d: series %s ext %s", seed, series, ext)
			if len(want) > 0 {
				seriesHits++
			}
			for _, p := range plain {
				pairs++
				if len(bruteForce([]plainTombstone{p}, series, ext)) > 0 {
					pairHits++
				}
			}
		}
	}
	// The draw must exercise both outcomes, or the comparison proves little.
	t.Logf("%d of %d series hit; %d of %d (series, tombstone) pairs match", seriesHits, seeds*seriesPerSeed, pairHits, pairs)
	testutil.Assert(t, seriesHits > seeds*seriesPerSeed/10 && seriesHits < seeds*seriesPerSeed*9/10, "%d of %d series hit", seriesHits, seeds*seriesPerSeed)
	testutil.Assert(t, pairHits > pairs/10 && pairHits < pairs*9/10, "%d of %d pairs match", pairHits, pairs)
}
