// Package storeapi serves Thanos' gRPC StoreAPI (Info, Series, LabelNames, LabelValues) in front
// of other StoreAPI servers (store gateways, sidecars, receivers, queriers) with every sample a
// live tombstone covers removed from the Series stream: Thanos Query points its --endpoint at it
// instead of at the stores, and deduplication, downsampling and PromQL stay Thanos' own.
package storeapi

import (
	"context"
	"log/slog"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/internal/storepb/infopb"
	"github.com/lethe-project/lethe/internal/storepb/labelpb"
	"github.com/lethe-project/lethe/proxy"
)

// Mask gives the tombstones in force for one request (proxy.Mask does).
type Mask interface {
	Current() (*proxy.Snapshot, error)
}

// Store is one StoreAPI server behind the filter.
type Store struct {
	// Name identifies the store in warnings and logs (its address).
	Name  string
	Store storepb.StoreClient
	Info  infopb.InfoClient
	// conn, when set, carries the Series calls of the filter, whose frames it reads undecoded.
	conn grpc.ClientConnInterface
}

// NewStore returns the store served over conn.
func NewStore(name string, conn grpc.ClientConnInterface) Store {
	return Store{Name: name, Store: storepb.NewStoreClient(conn), Info: infopb.NewInfoClient(conn), conn: conn}
}

// Server is the StoreAPI filter.
type Server struct {
	storepb.UnimplementedStoreServer
	infopb.UnimplementedInfoServer

	logger      *slog.Logger
	mask        Mask
	stores      []Store
	infoTimeout time.Duration
	// wire is set when the server sends with wireCodec (NewGRPCServer): Series frames then go
	// out as the stores encoded them.
	wire bool
	// bufs pools the buffers of the Series messages received from the stores (*wireBuf).
	bufs sync.Pool

	seriesMasked  prometheus.Counter
	seriesDropped prometheus.Counter
	chunksCut     prometheus.Counter
	storeErrors   *prometheus.CounterVec
}

// NewServer returns a filter in front of the stores.
func NewServer(logger *slog.Logger, reg prometheus.Registerer, mask Mask, stores []Store) *Server {
	f := promauto.With(reg)
	return &Server{
		logger:      logger,
		mask:        mask,
		stores:      stores,
		infoTimeout: 10 * time.Second,
		seriesMasked: f.NewCounter(prometheus.CounterOpts{
			Name: "lethe_proxy_storeapi_series_masked_total",
			Help: "Series streamed through the StoreAPI filter that a tombstone covers in part or whole.",
		}),
		seriesDropped: f.NewCounter(prometheus.CounterOpts{
			Name: "lethe_proxy_storeapi_series_dropped_total",
			Help: "Series left out of the StoreAPI Series stream because tombstones cover all their samples.",
		}),
		chunksCut: f.NewCounter(prometheus.CounterOpts{
			Name: "lethe_proxy_storeapi_chunks_cut_total",
			Help: "Chunks the StoreAPI filter re-encoded or cut at a deleted range.",
		}),
		storeErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "lethe_proxy_storeapi_store_errors_total",
			Help: "StoreAPI calls to a store behind the filter that failed.",
		}, []string{"store", "method"}),
	}
}

// Register serves the Store and Info services on s.
func (s *Server) Register(g *grpc.Server) {
	storepb.RegisterStoreServer(g, s)
	infopb.RegisterInfoServer(g, s)
}

// Info merges the stores' label sets and time ranges, as Thanos' own proxy does. It advertises no
// support for without_replica_labels: the filter needs the replica labels to match tombstones,
// and Thanos Query then removes them itself.
func (s *Server) Info(ctx context.Context, _ *infopb.InfoRequest) (*infopb.InfoResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.infoTimeout)
	defer cancel()

	type answer struct {
		resp *infopb.InfoResponse
		err  error
	}
	answers := make([]answer, len(s.stores))
	done := make(chan struct{}, len(s.stores))
	for i, st := range s.stores {
		go func() {
			defer func() { done <- struct{}{} }()
			r, err := st.Info.Info(ctx, &infopb.InfoRequest{})
			answers[i] = answer{r, err}
		}()
	}
	for range s.stores {
		<-done
	}

	var (
		sets     = map[string]*labelpb.ZLabelSet{}
		info     = &infopb.StoreInfo{MinTime: math.MaxInt64, MaxTime: math.MinInt64}
		answered int
		lastErr  error
	)
	for i, a := range answers {
		if a.err != nil {
			s.storeErrors.WithLabelValues(s.stores[i].Name, "Info").Inc()
			s.logger.Warn("store info", "store", s.stores[i].Name, "err", a.err)
			lastErr = a.err
			continue
		}
		if a.resp.Store == nil {
			continue // Not a StoreAPI server: nothing of it is served.
		}
		answered++
		for _, ls := range a.resp.LabelSets {
			sets[zLabelsToProm(ls.Labels).String()] = ls
		}
		info.MinTime = min(info.MinTime, a.resp.Store.MinTime)
		info.MaxTime = max(info.MaxTime, a.resp.Store.MaxTime)
		info.TsdbInfos = append(info.TsdbInfos, a.resp.Store.TsdbInfos...)
	}
	if answered == 0 {
		if lastErr != nil {
			return nil, status.Error(codes.Unavailable, errors.Wrap(lastErr, "no store behind lethe answers Info").Error())
		}
		return nil, status.Error(codes.Unavailable, "no StoreAPI server behind lethe")
	}
	keys := make([]string, 0, len(sets))
	for k := range sets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	resp := &infopb.InfoResponse{ComponentType: "store", Store: info}
	for _, k := range keys {
		resp.LabelSets = append(resp.LabelSets, sets[k])
	}
	return resp, nil
}

// Series streams the stores' series, merged in label order, without the samples live tombstones
// cover; a series with nothing left is dropped. Without tombstones in force it fails: it never
// serves data that may have been deleted since.
func (s *Server) Series(req *storepb.SeriesRequest, srv storepb.Store_SeriesServer) error {
	snap, err := s.mask.Current()
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	matchers, err := promMatchers(req.Matchers)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	send := func(msg *wireFrame) error {
		if s.wire {
			return srv.SendMsg(msg)
		}
		r := &storepb.SeriesResponse{}
		if err := proto.Unmarshal(msg.bytes(), r); err != nil {
			return err
		}
		return srv.Send(r)
	}
	return s.series(srv.Context(), snap, req, matchers, send)
}

// series fans req out to the stores and sends what survives the snapshot's tombstones.
// send is given each encoded SeriesResponse, and may not keep it after it returns.
func (s *Server) series(ctx context.Context, snap *proxy.Snapshot, req *storepb.SeriesRequest, matchers []*labels.Matcher, send func(*wireFrame) error) error {
	up := proto.CloneOf(req)
	// The replica labels are needed to match tombstones; Thanos Query drops them itself.
	up.WithoutReplicaLabels = nil
	// A downsampled aggregate stamped in the range holds samples from its window's start on.
	masked := snap.MayMatch(matchers, labels.EmptyLabels(), readFrom(req.MinTime, req.MaxResolutionWindow), req.MaxTime)
	if masked && req.SkipChunks {
		// Whether a series keeps a sample in the range is told by its chunks.
		up.SkipChunks = false
	}
	if masked && up.MaxResolutionWindow > 0 {
		// A counter aggregate is cut by the windows of another: Thanos Query reads the counter
		// and leaves the count it did not ask for.
		up.Aggregates = requestedAggregates(up.Aggregates)
	}
	filter := seriesFilter{server: s, snap: snap, req: req, masked: masked}
	out := &batcher{send: send, size: int(req.ResponseBatchSize), limit: req.Limit}
	err := s.merge(ctx, up, partialResponse(req.PartialResponseDisabled, req.PartialResponseStrategy), masked, filter.filter, out.add)
	if err != nil && !errors.Is(err, errLimit) {
		return err
	}
	return out.flush()
}

// errLimit ends a Series call that has sent the series its limit asks for.
var errLimit = errors.New("series limit reached")

// batcher sends series in batches of the size the client asked for (response_batch_size), and
// anything else at once. It copies what it is given into its own buffers, which it reuses.
// With a limit, it sends no more series than that, as Thanos' own proxy.
type batcher struct {
	send  func(*wireFrame) error
	size  int
	limit int64
	sent  int64
	n     int       // series in body
	body  []byte    // the encoded SeriesBatch being filled
	msg   wireFrame // the SeriesResponse being sent
}

func (b *batcher) add(f frame) error {
	if f.series == nil {
		if f.flush {
			if err := b.flush(); err != nil {
				return err
			}
		}
		return b.send(f.other)
	}
	if b.limit > 0 && b.sent >= b.limit {
		return errLimit
	}
	b.sent++
	if b.size <= 1 {
		b.msg.b = appendBytesField(b.msg.b[:0], fieldResponseSeries, f.series)
		return b.send(&b.msg)
	}
	b.body = appendBytesField(b.body, fieldBatchSeries, f.series)
	if b.n++; b.n < b.size {
		return nil
	}
	return b.flush()
}

func (b *batcher) flush() error {
	if b.n == 0 {
		return nil
	}
	b.msg.b = appendBytesField(b.msg.b[:0], fieldResponseBatch, b.body)
	b.body, b.n = b.body[:0], 0
	return b.send(&b.msg)
}

// seriesFilter removes deleted samples from one request's series.
type seriesFilter struct {
	server *Server
	snap   *proxy.Snapshot
	req    *storepb.SeriesRequest
	masked bool
}

// filter returns the encoded series without deleted samples, or nil when none is left. A series
// no tombstone meets goes as the store encoded it; of one a tombstone meets, only the chunks its
// intervals meet are decoded and cut.
func (f seriesFilter) filter(series []byte, lset labels.Labels) ([]byte, error) {
	if !f.masked {
		return series, nil
	}
	ivs := f.snap.Intervals(lset, labels.EmptyLabels(), nil)
	if len(ivs) == 0 {
		if f.req.SkipChunks {
			return wireLabelsOnly(series)
		}
		return series, nil
	}
	f.server.seriesMasked.Inc()
	if f.req.SkipChunks {
		var dec storepb.Series
		if err := proto.Unmarshal(series, &dec); err != nil {
			return nil, err
		}
		ok, err := survives(dec.Chunks, ivs, f.req.MinTime, f.req.MaxTime, f.req.MaxResolutionWindow)
		if err != nil || !ok {
			if err == nil {
				f.server.seriesDropped.Inc()
			}
			return nil, err
		}
		return wireLabelsOnly(series)
	}
	out, cut, err := cutWireSeries(series, ivs, f.req.MaxResolutionWindow, f.req.MinTime, f.req.MaxTime)
	if err != nil {
		return nil, errors.Wrapf(err, "series %s", redacted(lset))
	}
	if out == nil {
		f.server.seriesDropped.Inc()
		return nil, nil
	}
	if cut {
		f.server.chunksCut.Inc()
	}
	return out, nil
}

// LabelNames answers the stores' label names. When a tombstone may meet the request, the
// proxy's masked look-up runs over the stores (see lookup.go): a name carried only by deleted
// samples never appears, and the replica labels the request leaves out are left out after it.
func (s *Server) LabelNames(ctx context.Context, req *storepb.LabelNamesRequest) (*storepb.LabelNamesResponse, error) {
	snap, err := s.mask.Current()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	matchers, err := promMatchers(req.Matchers)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if !snap.MayMatch(matchers, labels.EmptyLabels(), req.Start, req.End) {
		return s.passLabelNames(ctx, req)
	}
	hints := &storage.LabelHints{}
	if req.Limit > 0 {
		// The replica labels are taken out after the masking's limit: room for them.
		hints.Limit = int(req.Limit) + len(req.WithoutReplicaLabels)
	}
	names, warnings, err := s.maskedLookup(ctx, snap, req.Start, req.End, req.PartialResponseDisabled, req.PartialResponseStrategy, func(q storage.Querier) ([]string, annotations.Annotations, error) {
		return q.LabelNames(ctx, hints, matchers...)
	})
	if err != nil {
		return nil, err
	}
	names = slices.DeleteFunc(names, func(n string) bool { return slices.Contains(req.WithoutReplicaLabels, n) })
	if req.Limit > 0 && int64(len(names)) > req.Limit {
		names = names[:req.Limit]
	}
	return &storepb.LabelNamesResponse{Names: names, Warnings: warnings}, nil
}

// LabelValues answers the stores' values of a label, as LabelNames does its names.
func (s *Server) LabelValues(ctx context.Context, req *storepb.LabelValuesRequest) (*storepb.LabelValuesResponse, error) {
	snap, err := s.mask.Current()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	if req.Label == "" {
		return nil, status.Error(codes.InvalidArgument, "label name parameter cannot be empty")
	}
	matchers, err := promMatchers(req.Matchers)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if !snap.MayMatch(matchers, labels.EmptyLabels(), req.Start, req.End) {
		return s.passLabelValues(ctx, req)
	}
	if slices.Contains(req.WithoutReplicaLabels, req.Label) {
		return &storepb.LabelValuesResponse{}, nil // As Thanos' stores answer.
	}
	hints := &storage.LabelHints{Limit: int(req.Limit)}
	values, warnings, err := s.maskedLookup(ctx, snap, req.Start, req.End, req.PartialResponseDisabled, req.PartialResponseStrategy, func(q storage.Querier) ([]string, annotations.Annotations, error) {
		return q.LabelValues(ctx, req.Label, hints, matchers...)
	})
	if err != nil {
		return nil, err
	}
	return &storepb.LabelValuesResponse{Values: values, Warnings: warnings}, nil
}

func (s *Server) passLabelNames(ctx context.Context, req *storepb.LabelNamesRequest) (*storepb.LabelNamesResponse, error) {
	names := map[string]struct{}{}
	warnings, err := fanOut(ctx, s, "LabelNames", partialResponse(req.PartialResponseDisabled, req.PartialResponseStrategy), func(ctx context.Context, st Store) ([]string, error) {
		r, err := st.Store.LabelNames(ctx, req)
		if err != nil {
			return nil, err
		}
		for _, n := range r.Names {
			names[n] = struct{}{}
		}
		return r.Warnings, nil
	})
	if err != nil {
		return nil, err
	}
	return &storepb.LabelNamesResponse{Names: sortedLimit(names, req.Limit), Warnings: warnings}, nil
}

func (s *Server) passLabelValues(ctx context.Context, req *storepb.LabelValuesRequest) (*storepb.LabelValuesResponse, error) {
	values := map[string]struct{}{}
	warnings, err := fanOut(ctx, s, "LabelValues", partialResponse(req.PartialResponseDisabled, req.PartialResponseStrategy), func(ctx context.Context, st Store) ([]string, error) {
		r, err := st.Store.LabelValues(ctx, req)
		if err != nil {
			return nil, err
		}
		for _, v := range r.Values {
			values[v] = struct{}{}
		}
		return r.Warnings, nil
	})
	if err != nil {
		return nil, err
	}
	return &storepb.LabelValuesResponse{Values: sortedLimit(values, req.Limit), Warnings: warnings}, nil
}

// fanOut calls each store in turn (label look-ups are small) and gathers their warnings. A store
// that fails adds a warning when partial responses are allowed, and fails the call otherwise.
func fanOut(ctx context.Context, s *Server, method string, partial bool, call func(context.Context, Store) ([]string, error)) ([]string, error) {
	var warnings []string
	for _, st := range s.stores {
		w, err := call(ctx, st)
		if err != nil {
			s.storeErrors.WithLabelValues(st.Name, method).Inc()
			if !partial {
				return nil, storeError(st, err)
			}
			warnings = append(warnings, errors.Wrapf(err, "store %s", st.Name).Error())
			continue
		}
		warnings = append(warnings, w...)
	}
	return warnings, nil
}

// partialResponse reports whether a failing store may be left out with a warning.
func partialResponse(disabled bool, strategy storepb.PartialResponseStrategy) bool {
	return !disabled && strategy != storepb.PartialResponseStrategy_ABORT
}

// storeError keeps the store's gRPC code and names the store.
func storeError(st Store, err error) error {
	return status.Error(status.Code(err), errors.Wrapf(err, "store %s", st.Name).Error())
}

func sortedLimit(set map[string]struct{}, limit int64) []string {
	out := make([]string, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	sort.Strings(out)
	if limit > 0 && int64(len(out)) > limit {
		out = out[:limit]
	}
	return out
}

func promMatchers(ms []*storepb.LabelMatcher) ([]*labels.Matcher, error) {
	out := make([]*labels.Matcher, 0, len(ms))
	for _, m := range ms {
		var t labels.MatchType
		switch m.Type {
		case storepb.LabelMatcher_EQ:
			t = labels.MatchEqual
		case storepb.LabelMatcher_NEQ:
			t = labels.MatchNotEqual
		case storepb.LabelMatcher_RE:
			t = labels.MatchRegexp
		case storepb.LabelMatcher_NRE:
			t = labels.MatchNotRegexp
		default:
			return nil, errors.Newf("unknown matcher type %d", m.Type)
		}
		pm, err := labels.NewMatcher(t, m.Name, m.Value)
		if err != nil {
			return nil, errors.Wrapf(err, "matcher %s", m.Name)
		}
		out = append(out, pm)
	}
	return out, nil
}

func seriesLabels(s *storepb.Series, b *labels.ScratchBuilder) labels.Labels {
	b.Reset()
	for _, l := range s.Labels {
		b.Add(l.Name, l.Value)
	}
	b.Sort()
	return b.Labels()
}

func zLabelsToProm(ls []*labelpb.Label) labels.Labels {
	var b labels.ScratchBuilder
	for _, l := range ls {
		b.Add(l.Name, l.Value)
	}
	b.Sort()
	return b.Labels()
}

// redacted names a series by its metric name only: its other label values may be what is being
// deleted.
func redacted(ls labels.Labels) string {
	return ls.Get(labels.MetricName) + "{...}"
}
