package storeapi

import (
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/thanos-io/objstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/internal/storepb/infopb"
	"github.com/lethe-project/lethe/internal/storepb/labelpb"
	"github.com/lethe-project/lethe/proxy"
	"github.com/lethe-project/lethe/tombstones"
)

// t0 is 2026-11-01T00:00:00Z.
const t0 = int64(1793491200000)

// testStore is a StoreAPI server over fixed series (sorted), each a chunk of one sample a minute
// in [t0, t0+1h); or one that fails every call with err. Its calls select series by their
// matchers, as a store's index does.
type testStore struct {
	storepb.UnimplementedStoreServer
	infopb.UnimplementedInfoServer
	series []labels.Labels
	names  []string // what LabelNames answers, as a store's index would
	err    error
	// sent counts the series Series has sent.
	sent atomic.Int64
	// downsampled, when set, is the chunk every series has instead (a downsampled block's).
	downsampled *storepb.AggrChunk
}

func (s *testStore) Series(req *storepb.SeriesRequest, srv storepb.Store_SeriesServer) error {
	if s.err != nil {
		return s.err
	}
	c := chunkenc.NewXORChunk()
	app, err := c.Appender()
	if err != nil {
		return err
	}
	for ts := t0; ts < t0+3_600_000; ts += 60_000 {
		app.Append(0, ts, float64(ts-t0))
	}
	ms, err := promMatchers(req.Matchers)
	if err != nil {
		return err
	}
	selected := s.selected(ms)
	if req.Limit > 0 && int64(len(selected)) > req.Limit {
		selected = selected[:req.Limit]
	}
	for _, ls := range selected {
		out := &storepb.Series{}
		ls.Range(func(l labels.Label) { out.Labels = append(out.Labels, &labelpb.Label{Name: l.Name, Value: l.Value}) })
		switch {
		case req.SkipChunks:
		case s.downsampled != nil:
			out.Chunks = []*storepb.AggrChunk{s.downsampled}
		default:
			out.Chunks = []*storepb.AggrChunk{{MinTime: t0, MaxTime: t0 + 3_540_000, Raw: &storepb.Chunk{Type: storepb.Chunk_XOR, Data: c.Bytes()}}}
		}
		if err := srv.Send(&storepb.SeriesResponse{Result: &storepb.SeriesResponse_Series{Series: out}}); err != nil {
			return err
		}
		s.sent.Add(1)
	}
	return srv.Send(&storepb.SeriesResponse{Result: &storepb.SeriesResponse_Warning{Warning: "store warning"}})
}

// selected returns the series all matchers select.
func (s *testStore) selected(ms []*labels.Matcher) []labels.Labels {
	var out []labels.Labels
	for _, ls := range s.series {
		if !slices.ContainsFunc(ms, func(m *labels.Matcher) bool { return !m.Matches(ls.Get(m.Name)) }) {
			out = append(out, ls)
		}
	}
	return out
}

// LabelNames answers names, when set and asked without matchers, as an index that knows more
// names than the window's series carry; else the names of the series the matchers select.
func (s *testStore) LabelNames(_ context.Context, req *storepb.LabelNamesRequest) (*storepb.LabelNamesResponse, error) {
	if s.err != nil {
		return nil, s.err
	}
	if s.names != nil && len(req.Matchers) == 0 {
		return &storepb.LabelNamesResponse{Names: s.names}, nil
	}
	ms, err := promMatchers(req.Matchers)
	if err != nil {
		return nil, err
	}
	set := map[string]struct{}{}
	for _, ls := range s.selected(ms) {
		ls.Range(func(l labels.Label) { set[l.Name] = struct{}{} })
	}
	return &storepb.LabelNamesResponse{Names: sortedLimit(set, 0)}, nil
}

func (s *testStore) LabelValues(_ context.Context, req *storepb.LabelValuesRequest) (*storepb.LabelValuesResponse, error) {
	if s.err != nil {
		return nil, s.err
	}
	ms, err := promMatchers(req.Matchers)
	if err != nil {
		return nil, err
	}
	var vs []string
	for _, ls := range s.selected(ms) {
		if v := ls.Get(req.Label); v != "" {
			vs = append(vs, v)
		}
	}
	return &storepb.LabelValuesResponse{Values: vs}, nil
}

func (s *testStore) Info(context.Context, *infopb.InfoRequest) (*infopb.InfoResponse, error) {
	if s.err != nil {
		return nil, s.err
	}
	return &infopb.InfoResponse{ComponentType: "store", Store: &infopb.StoreInfo{MinTime: t0, MaxTime: t0 + 3_600_000},
		LabelSets: []*labelpb.ZLabelSet{{Labels: []*labelpb.Label{{Name: "replica", Value: s.series[0].Get("replica")}}}}}, nil
}

// serve serves srv's services on 127.0.0.1:0 and returns a connection to it.
func serve(t testing.TB, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	g := grpc.NewServer()
	register(g)
	return serveGRPC(t, g)
}

// serveGRPC serves g on 127.0.0.1:0 and returns a connection to it.
func serveGRPC(t testing.TB, g *grpc.Server) *grpc.ClientConn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	testutil.Ok(t, err)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	testutil.Ok(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// fixture is lethe's filter over the test stores, with the tombstones of the selectors (start,
// end) in force; its clock can be moved.
type fixture struct {
	client storepb.StoreClient
	info   infopb.InfoClient
	now    time.Time
}

type deletion struct {
	selector   string
	start, end int64
}

func newFixture(t testing.TB, stores []*testStore, dels ...deletion) *fixture {
	t.Helper()
	return newFixtureServed(t, true, stores, dels...)
}

// newFixtureServed is newFixture; with wire, lethe is served as lethe-proxy serves it
// (NewGRPCServer: Series frames pass as the stores encoded them), and else on a plain gRPC server
// (each frame decoded and encoded again).
func newFixtureServed(t testing.TB, wire bool, stores []*testStore, dels ...deletion) *fixture {
	t.Helper()
	f := &fixture{now: time.UnixMilli(t0 + 7_200_000)}
	reg := prometheus.NewRegistry()
	tstore := tombstones.NewStore(objstore.NewInMemBucket(), reg, tombstones.WithClock(func() time.Time { return f.now }))
	for _, d := range dels {
		_, err := tstore.Add(context.Background(), tombstones.Spec{Selectors: []string{d.selector}, Start: &d.start, End: &d.end})
		testutil.Ok(t, err)
	}
	logger := slog.New(slog.DiscardHandler)
	mask := proxy.NewMask(tstore, logger, reg, time.Minute)
	testutil.Ok(t, mask.Refresh(context.Background()))
	var sts []Store
	for i, s := range stores {
		conn := serve(t, func(g *grpc.Server) {
			storepb.RegisterStoreServer(g, s)
			infopb.RegisterInfoServer(g, s)
		})
		sts = append(sts, NewStore(string(rune('a'+i)), conn))
	}
	srv := NewServer(logger, reg, mask, sts)
	var conn *grpc.ClientConn
	if wire {
		conn = serveGRPC(t, NewGRPCServer(srv))
	} else {
		conn = serve(t, srv.Register)
	}
	f.client, f.info = storepb.NewStoreClient(conn), infopb.NewInfoClient(conn)
	return f
}

// seriesAnswer is what a Series call streamed: each series' labels and sample timestamps, and
// the warnings.
type seriesAnswer struct {
	series   []string
	samples  map[string][]int64
	warnings []string
	batches  int
}

func (f *fixture) series(t *testing.T, req *storepb.SeriesRequest) (seriesAnswer, error) {
	t.Helper()
	cl, err := f.client.Series(context.Background(), req)
	testutil.Ok(t, err)
	a := seriesAnswer{samples: map[string][]int64{}}
	var b labels.ScratchBuilder
	for {
		r, err := cl.Recv()
		if errors.Is(err, io.EOF) {
			return a, nil
		}
		if err != nil {
			return a, err
		}
		if w := r.GetWarning(); w != "" {
			a.warnings = append(a.warnings, w)
			continue
		}
		batch := []*storepb.Series{r.GetSeries()}
		if r.GetBatch() != nil {
			batch = r.GetBatch().Series
			a.batches++
		}
		for _, s := range batch {
			key := seriesLabels(s, &b).String()
			a.series = append(a.series, key)
			for _, c := range s.Chunks {
				chk, err := decodeChunk(c.Raw)
				testutil.Ok(t, err)
				it := chk.Iterator(nil)
				for it.Next() != chunkenc.ValNone {
					a.samples[key] = append(a.samples[key], it.AtT())
				}
				testutil.Ok(t, it.Err())
			}
		}
	}
}

func minutes(from, to int64) []int64 {
	var out []int64
	for m := from; m < to; m++ {
		out = append(out, t0+m*60_000)
	}
	return out
}

var (
	a1 = labels.FromStrings("__name__", "up", "job", "a", "replica", "r0")
	a2 = labels.FromStrings("__name__", "up", "job", "c", "replica", "r0")
	b1 = labels.FromStrings("__name__", "up", "job", "b", "replica", "r1")
	b2 = labels.FromStrings("__name__", "up", "job", "d", "replica", "r1", "user_id", "42")
)

func upRequest(strategy storepb.PartialResponseStrategy) *storepb.SeriesRequest {
	return &storepb.SeriesRequest{
		MinTime: t0, MaxTime: t0 + 3_600_000, PartialResponseStrategy: strategy,
		Matchers: []*storepb.LabelMatcher{{Type: storepb.LabelMatcher_EQ, Name: "__name__", Value: "up"}},
	}
}

func TestSeriesMergesStoresAndRemovesDeletedSamples(t *testing.T) {
	for _, wire := range []bool{true, false} {
		t.Run(map[bool]string{true: "wire", false: "decoded"}[wire], func(t *testing.T) { testSeriesMerges(t, wire) })
	}
}

func testSeriesMerges(t *testing.T, wire bool) {
	f := newFixtureServed(t, wire, []*testStore{{series: []labels.Labels{a1, a2}}, {series: []labels.Labels{b1, b2}}},
		deletion{`{user_id="42"}`, t0 - 1, t0 + 7_200_000},
		deletion{`up{job="c",replica="r0"}`, t0 + 10*60_000, t0 + 20*60_000 - 1},
	)
	got, err := f.series(t, upRequest(storepb.PartialResponseStrategy_WARN))
	testutil.Ok(t, err)
	testutil.Equals(t, []string{a1.String(), b1.String(), a2.String()}, got.series, "merged in label order, the deleted series dropped")
	testutil.Equals(t, minutes(0, 60), got.samples[a1.String()])
	testutil.Equals(t, append(minutes(0, 10), minutes(20, 60)...), got.samples[a2.String()], "the cut series keeps what is outside the deleted range")
	testutil.Equals(t, []string{"store warning", "store warning"}, got.warnings, "the stores' warnings pass through")
	testutil.Equals(t, 0, got.batches)

	// Batches of the size asked, the same series in them.
	req := upRequest(storepb.PartialResponseStrategy_WARN)
	req.ResponseBatchSize = 2
	batched, err := f.series(t, req)
	testutil.Ok(t, err)
	testutil.Equals(t, got.series, batched.series)
	testutil.Equals(t, got.samples, batched.samples)
	testutil.Equals(t, 2, batched.batches)

	// A limit holds over the merged stores.
	req.Limit = 2
	limited, err := f.series(t, req)
	testutil.Ok(t, err)
	testutil.Equals(t, got.series[:2], limited.series)
	req.Limit = 0

	// A series look-up (no chunks) leaves out a series with nothing left in the window.
	req = upRequest(storepb.PartialResponseStrategy_WARN)
	req.SkipChunks, req.MinTime, req.MaxTime = true, t0+11*60_000, t0+19*60_000
	got, err = f.series(t, req)
	testutil.Ok(t, err)
	testutil.Equals(t, []string{a1.String(), b1.String()}, got.series)
}

func TestSeriesPartialResponse(t *testing.T) {
	f := newFixture(t, []*testStore{{series: []labels.Labels{a1, a2}}, {err: status.Error(codes.ResourceExhausted, "store b is out of memory")}})

	got, err := f.series(t, upRequest(storepb.PartialResponseStrategy_WARN))
	testutil.Ok(t, err)
	testutil.Equals(t, []string{a1.String(), a2.String()}, got.series)
	testutil.Equals(t, 2, len(got.warnings))
	testutil.Assert(t, got.warnings[0] == "store warning" || got.warnings[1] == "store warning")
	testutil.Assert(t, got.warnings[0] != got.warnings[1], "the failing store is a warning: %v", got.warnings)

	_, err = f.series(t, upRequest(storepb.PartialResponseStrategy_ABORT))
	testutil.Equals(t, codes.ResourceExhausted, status.Code(err), "without partial responses the store's error fails the call: %v", err)

	_, err = f.client.LabelNames(context.Background(), &storepb.LabelNamesRequest{PartialResponseStrategy: storepb.PartialResponseStrategy_ABORT})
	testutil.Equals(t, codes.ResourceExhausted, status.Code(err))
	names, err := f.client.LabelNames(context.Background(), &storepb.LabelNamesRequest{})
	testutil.Ok(t, err)
	testutil.Equals(t, 1, len(names.Warnings))
}

func TestLabelLookUpsHideWhatOnlyDeletedSamplesCarry(t *testing.T) {
	// The store's index knows a name no series of the window has: passed through while no
	// tombstone can meet the request, as the store answers.
	stores := []*testStore{{series: []labels.Labels{a1, a2}, names: []string{"__name__", "job", "replica", "stale_name"}}, {series: []labels.Labels{b1, b2}, names: []string{"__name__", "job", "replica", "user_id"}}}
	f := newFixture(t, stores, deletion{`{user_id="42"}`, t0 - 1, t0 + 7_200_000})
	ctx := context.Background()

	vals, err := f.client.LabelValues(ctx, &storepb.LabelValuesRequest{Label: "user_id", Start: t0, End: t0 + 3_600_000})
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(vals.Values), "a value only deleted samples carry: %v", vals.Values)
	names, err := f.client.LabelNames(ctx, &storepb.LabelNamesRequest{Start: t0, End: t0 + 3_600_000})
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"__name__", "job", "replica"}, names.Names, "names from the surviving series")

	// After the deleted range, nothing can be masked: the stores' answers as they are.
	names, err = f.client.LabelNames(ctx, &storepb.LabelNamesRequest{Start: t0 + 7_200_001, End: t0 + 9_000_000})
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"__name__", "job", "replica", "stale_name", "user_id"}, names.Names)
	vals, err = f.client.LabelValues(ctx, &storepb.LabelValuesRequest{Label: "job", Start: t0, End: t0 + 3_600_000,
		Matchers: []*storepb.LabelMatcher{{Type: storepb.LabelMatcher_EQ, Name: "user_id", Value: ""}}})
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"a", "b", "c"}, vals.Values, "a request no tombstone meets is the stores' answer")
}

func TestFailsClosedAndMergesInfo(t *testing.T) {
	f := newFixture(t, []*testStore{{series: []labels.Labels{a1}}, {series: []labels.Labels{b1}}})
	info, err := f.info.Info(context.Background(), &infopb.InfoRequest{})
	testutil.Ok(t, err)
	testutil.Equals(t, t0, info.Store.MinTime)
	testutil.Equals(t, 2, len(info.LabelSets))
	testutil.Assert(t, !info.Store.SupportsWithoutReplicaLabels, "lethe needs the replica labels to match tombstones")

	f.now = f.now.Add(2 * time.Minute) // Past the staleness bound, with no refresh since.
	_, err = f.series(t, upRequest(storepb.PartialResponseStrategy_WARN))
	testutil.Equals(t, codes.Unavailable, status.Code(err), "%v", err)
	_, err = f.client.LabelNames(context.Background(), &storepb.LabelNamesRequest{})
	testutil.Equals(t, codes.Unavailable, status.Code(err), "%v", err)
	_, err = f.client.LabelValues(context.Background(), &storepb.LabelValuesRequest{Label: "job"})
	testutil.Equals(t, codes.Unavailable, status.Code(err), "%v", err)
}
