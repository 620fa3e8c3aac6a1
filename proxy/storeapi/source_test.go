package storeapi

import (
	"context"
	"log/slog"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/thanos-io/objstore"
	"google.golang.org/grpc"

	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/proxy"
	"github.com/lethe-project/lethe/tombstones"
)

// sourceOver returns a Source over the test stores with replica as the replica label, and the
// tombstone snapshot of the deletions.
func sourceOver(t testing.TB, partial bool, stores []*testStore, dels ...deletion) (*Source, *proxy.Snapshot) {
	t.Helper()
	now := time.UnixMilli(t0 + 7_200_000)
	reg := prometheus.NewRegistry()
	tstore := tombstones.NewStore(objstore.NewInMemBucket(), reg, tombstones.WithClock(func() time.Time { return now }))
	for _, d := range dels {
		_, err := tstore.Add(context.Background(), tombstones.Spec{Selectors: []string{d.selector}, Start: &d.start, End: &d.end})
		testutil.Ok(t, err)
	}
	mask := proxy.NewMask(tstore, slog.New(slog.DiscardHandler), reg, time.Minute)
	testutil.Ok(t, mask.Refresh(context.Background()))
	snap, err := mask.Current()
	testutil.Ok(t, err)
	var sts []Store
	for i, s := range stores {
		conn := serve(t, func(g *grpc.Server) { storepb.RegisterStoreServer(g, s) })
		sts = append(sts, NewStore(string(rune('a'+i)), conn))
	}
	return NewSource(sts, []string{"replica"}, partial), snap
}

type selected struct {
	lset labels.Labels
	ts   []int64
}

func selectAll(t testing.TB, src *Source, snap *proxy.Snapshot, ms ...*labels.Matcher) ([]selected, []string, error) {
	t.Helper()
	q, err := src.Querier(snap, math.MinInt64, math.MaxInt64)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, q.Close()) }()
	ss := q.Select(context.Background(), true, &storage.SelectHints{Start: t0, End: t0 + 3_600_000}, ms...)
	var out []selected
	for ss.Next() {
		s := selected{lset: ss.At().Labels()}
		it := ss.At().Iterator(nil)
		for it.Next() == chunkenc.ValFloat {
			s.ts = append(s.ts, it.AtT())
		}
		testutil.Ok(t, it.Err())
		out = append(out, s)
	}
	var ws []string
	for _, w := range ss.Warnings() {
		ws = append(ws, w.Error())
	}
	// Annotations are a set: their order is not part of the answer.
	slices.Sort(ws)
	return out, ws, ss.Err()
}

func TestSourceDeduplicatesReplicasAcrossStoresAndMasks(t *testing.T) {
	replica := func(r string) *testStore {
		return &testStore{series: []labels.Labels{
			labels.FromStrings("__name__", "up", "job", "a", "replica", r),
			labels.FromStrings("__name__", "up", "job", "b", "replica", r),
		}}
	}
	src, snap := sourceOver(t, false, []*testStore{replica("r0"), replica("r1")}, deletion{`up{job="b"}`, t0 + 10*60_000, t0 + 19*60_000})
	got, ws, err := selectAll(t, src, snap, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"))
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"store a: store warning", "store b: store warning"}, ws)
	testutil.Equals(t, 2, len(got))
	testutil.Equals(t, labels.FromStrings("__name__", "up", "job", "a"), got[0].lset)
	testutil.Equals(t, minutes(0, 60), got[0].ts)
	testutil.Equals(t, labels.FromStrings("__name__", "up", "job", "b"), got[1].lset)
	testutil.Equals(t, append(minutes(0, 10), minutes(20, 60)...), got[1].ts)
}

func TestSourcePartialResponse(t *testing.T) {
	ok := &testStore{series: []labels.Labels{labels.FromStrings("__name__", "up", "replica", "r0")}}
	failing := &testStore{err: errors.New("store down")}

	src, snap := sourceOver(t, false, []*testStore{ok, failing})
	_, _, err := selectAll(t, src, snap, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"))
	testutil.NotOk(t, err)
	testutil.Assert(t, strings.Contains(err.Error(), "store b") && strings.Contains(err.Error(), "store down"), "error: %v", err)

	src, snap = sourceOver(t, true, []*testStore{ok, failing})
	got, ws, err := selectAll(t, src, snap, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"))
	testutil.Ok(t, err)
	testutil.Equals(t, 1, len(got))
	testutil.Equals(t, minutes(0, 60), got[0].ts)
	testutil.Equals(t, 2, len(ws), "the failure and the other store's warning: %v", ws)
}

// TestSourceFailsOnStreamOutOfOrderWithoutReplicaLabels: a store that sorts by the replica
// label too would make equal series arrive apart; the read fails rather than answer duplicates.
func TestSourceFailsOnStreamOutOfOrderWithoutReplicaLabels(t *testing.T) {
	st := &testStore{series: []labels.Labels{
		labels.FromStrings("__name__", "up", "replica", "r0", "x", "2"),
		labels.FromStrings("__name__", "up", "replica", "r1", "x", "1"),
	}}
	src, snap := sourceOver(t, false, []*testStore{st})
	_, _, err := selectAll(t, src, snap, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"))
	testutil.NotOk(t, err)
	testutil.Assert(t, strings.Contains(err.Error(), "out of label order"), "error: %v", err)
}
