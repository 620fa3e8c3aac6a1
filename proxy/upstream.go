package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/golang/snappy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/prometheus/prometheus/util/annotations"
	"go.yaml.in/yaml/v2"

	"github.com/lethe-project/lethe/tombstones"
)

// Read modes of an upstream.
const (
	ReadAuto       = "auto"
	ReadRemoteRead = "remote-read"
	ReadQueryAPI   = "query-api"
)

// UpstreamConfig says how to reach a Prometheus-compatible server.
type UpstreamConfig struct {
	URL *url.URL
	// HTTP is Prometheus' HTTP client configuration: TLS, basic auth, bearer tokens, OAuth2.
	HTTP config_util.HTTPClientConfig
	// Headers are sent with every request, e.g. X-Scope-OrgID for Mimir.
	Headers map[string]string
	// ExternalLabels of the upstream; nil discovers them from /api/v1/status/config (Prometheus).
	ExternalLabels *labels.Labels
	// Read is ReadAuto (remote read where the upstream answers it, else the query API),
	// ReadRemoteRead or ReadQueryAPI.
	Read    string
	Timeout time.Duration
	// LookbackDelta is the upstream's own --query.lookback-delta, the lookback it applies to a
	// query that names none; zero reads it from its /api/v1/status/flags where it serves them
	// (Prometheus, Thanos Query).
	LookbackDelta time.Duration
	// MaxResponseBytes bounds the body of every upstream answer; zero is DefaultMaxResponseBytes.
	MaxResponseBytes int64
	// ChunkedReadLimit bounds one frame of a streamed remote-read answer; zero is Prometheus'
	// default, 50 MB.
	ChunkedReadLimit uint64
	// ReplicaLabels are the labels that tell replicas apart in the upstream's data when it
	// deduplicates them (Thanos Query's --query.replica-label): its answers carry none, so a
	// tombstone naming one cannot be applied to them, and what it may meet fails instead.
	ReplicaLabels []string
}

// DefaultMaxResponseBytes bounds the body of an upstream answer when
// UpstreamConfig.MaxResponseBytes is zero: about 19 million raw samples as query-API JSON, far more
// as remote-read chunks.
const DefaultMaxResponseBytes = tombstones.DefaultMaxAnswerBytes

// Upstream reads series from a Prometheus-compatible server: by remote read with streamed chunks
// where it offers it (Prometheus), otherwise as raw samples through its query API (Thanos Query,
// Mimir, VictoriaMetrics).
type Upstream struct {
	base       *url.URL
	api        *tombstones.QueryAPI
	remoteRead bool
	frameLimit uint64
	ext        labels.Labels
	replicas   []string
	lookback   time.Duration
	logger     *slog.Logger
	latency    *prometheus.HistogramVec
}

// NewUpstream connects to the upstream, learns its external labels and picks the read mode.
func NewUpstream(ctx context.Context, cfg UpstreamConfig, logger *slog.Logger, reg prometheus.Registerer) (*Upstream, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.MaxResponseBytes == 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.ChunkedReadLimit == 0 {
		cfg.ChunkedReadLimit = config.DefaultChunkedReadLimit
	}
	client, err := config_util.NewClientFromConfig(cfg.HTTP, "lethe-proxy-upstream")
	if err != nil {
		return nil, errors.Wrap(err, "upstream HTTP client")
	}
	if len(cfg.Headers) > 0 {
		client.Transport = &headerTransport{next: client.Transport, headers: cfg.Headers}
	}
	u := &Upstream{api: tombstones.NewQueryAPI(cfg.URL, client, cfg.Timeout, cfg.MaxResponseBytes), logger: logger, frameLimit: cfg.ChunkedReadLimit, replicas: cfg.ReplicaLabels,
		latency: promauto.With(reg).NewHistogramVec(prometheus.HistogramOpts{
			Name: "lethe_proxy_upstream_request_duration_seconds", Help: "Latency of requests to the upstream by kind: remote_read, api, forward (the fast path).",
			Buckets: prometheus.DefBuckets,
		}, []string{"kind"}),
	}

	if cfg.ExternalLabels != nil {
		u.ext = *cfg.ExternalLabels
	} else if u.ext, err = u.discoverExternalLabels(ctx); err != nil {
		return nil, err
	}

	if u.lookback = cfg.LookbackDelta; u.lookback == 0 {
		if u.lookback, err = u.discoverLookbackDelta(ctx); err != nil {
			logger.Warn("cannot read the upstream's lookback delta; queries forwarded untouched name their lookback_delta, which an upstream that ignores it may exceed (set it to skip)", "err", err)
		}
	}

	switch cfg.Read {
	case ReadRemoteRead:
		u.remoteRead = true
	case ReadQueryAPI:
	case ReadAuto, "":
		now := time.Now().UnixMilli()
		q, err := remote.ToQuery(now-1, now, []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, model.MetricNameLabel, "lethe_remote_read_probe")}, nil)
		if err != nil {
			return nil, err
		}
		ss, err := u.read(ctx, q, false)
		if err == nil {
			for ss.Next() {
			}
			err = ss.Err()
		}
		u.remoteRead = err == nil
		if err != nil {
			logger.Info("upstream offers no remote read; reading raw samples through its query API", "err", err)
		}
	default:
		return nil, errors.Newf("unknown read mode %q: want auto, remote-read or query-api", cfg.Read)
	}
	logger.Info("upstream", "url", cfg.URL.Redacted(), "remote_read", u.remoteRead, "external_labels", u.ext.String(), "lookback_delta", u.lookback)
	return u, nil
}

// discoverExternalLabels reads Prometheus' configuration; servers without that endpoint (Thanos
// Query, Mimir, VictoriaMetrics) leave no external labels on their answers.
func (u *Upstream) discoverExternalLabels(ctx context.Context) (labels.Labels, error) {
	data, _, err := u.apiGet(ctx, "/api/v1/status/config", nil)
	var se *tombstones.StatusError
	if errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code == http.StatusMethodNotAllowed) {
		return labels.EmptyLabels(), nil
	}
	if err != nil {
		return labels.EmptyLabels(), errors.Wrap(err, "read upstream configuration for its external labels (set --upstream.external-labels to skip)")
	}
	var cfg struct {
		YAML string `json:"yaml"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return labels.EmptyLabels(), errors.Wrap(err, "decode upstream configuration")
	}
	var parsed struct {
		Global struct {
			ExternalLabels map[string]string `yaml:"external_labels"`
		} `yaml:"global"`
	}
	if err := yaml.Unmarshal([]byte(cfg.YAML), &parsed); err != nil {
		return labels.EmptyLabels(), errors.Wrap(err, "parse upstream configuration")
	}
	return labels.FromMap(parsed.Global.ExternalLabels), nil
}

// discoverLookbackDelta reads the upstream's --query.lookback-delta from its flags; servers without
// that endpoint leave it unknown (zero).
func (u *Upstream) discoverLookbackDelta(ctx context.Context) (time.Duration, error) {
	data, _, err := u.apiGet(ctx, "/api/v1/status/flags", nil)
	var se *tombstones.StatusError
	if errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code == http.StatusMethodNotAllowed) {
		return 0, nil
	}
	if err != nil {
		return 0, errors.Wrap(err, "read upstream flags")
	}
	var flags map[string]string
	if err := json.Unmarshal(data, &flags); err != nil {
		return 0, errors.Wrap(err, "decode upstream flags")
	}
	v, ok := flags["query.lookback-delta"]
	if !ok {
		return 0, nil
	}
	d, err := model.ParseDuration(v)
	if err != nil {
		return 0, errors.Wrapf(err, "upstream flag query.lookback-delta=%q", v)
	}
	return time.Duration(d), nil
}

// LookbackDelta returns the upstream's own default lookback, zero when unknown.
func (u *Upstream) LookbackDelta() time.Duration { return u.lookback }

// ExternalLabels returns the upstream's external labels.
func (u *Upstream) ExternalLabels() labels.Labels { return u.ext }

// Querier returns a masked querier over the upstream.
func (u *Upstream) Querier(snap *Snapshot, mint, maxt int64) (storage.Querier, error) {
	naming, _, err := snap.SplitNaming(u.replicas)
	if err != nil {
		return nil, err
	}
	return newMaskedQuerier(&upstreamQuerier{u: u, snap: snap, naming: naming, mint: mint, maxt: maxt}, snap, u.ext, mint, maxt), nil
}

// upstreamQuerier reads from the upstream for the masked querier over it; snap only decides
// whether the upstream's own error messages may be shown.
type upstreamQuerier struct {
	u    *Upstream
	snap *Snapshot
	// naming are the live tombstones that name a replica label (nil: none).
	naming     *Snapshot
	mint, maxt int64
}

// replicaNamed fails a read that a tombstone naming a replica label may meet: the upstream's
// answers are deduplicated, so one replica's samples cannot be told from the other's. A request
// naming other replica labels fails too (see ReplicaLabelsAllowed).
func (q *upstreamQuerier) replicaNamed(ctx context.Context, ms []*labels.Matcher) error {
	if err := ReplicaLabelsAllowed(ctx, q.u.replicas); err != nil {
		return err
	}
	if q.naming == nil || !q.naming.MayMatch(ms, q.u.ext, q.mint, q.maxt) {
		return nil
	}
	return errors.Newf("a live tombstone names a replica label (%s): through --upstream.url alone, the upstream's deduplicated answer cannot lose one replica's samples; read through its StoreAPI instead (--upstream.store=<Thanos Query's gRPC address>, --upstream.url beside it for what no tombstone can touch)",
		strings.Join(q.u.replicas, ", "))
}

func (q *upstreamQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	orderAsTSDB(ms)
	if err := q.replicaNamed(ctx, ms); err != nil {
		return storage.ErrSeriesSet(err)
	}
	mint, maxt := q.mint, q.maxt
	if hints != nil {
		mint, maxt = hints.Start, hints.End
	}
	var ss storage.SeriesSet
	switch {
	case q.u.remoteRead:
		ss = q.remoteSelect(ctx, sortSeries, hints, mint, maxt, ms)
	case hints != nil && hints.Func == "series":
		// A series look-up wants labels only: the series endpoint's, as the upstream's index has them.
		ss = q.seriesSelect(ctx, hints.Limit, ms)
	default:
		ss = q.apiSelect(ctx, sortSeries, mint, maxt, ms)
	}
	if err := ss.Err(); err != nil {
		return storage.ErrSeriesSet(q.u.queryError(err, q.snap.MayMatch(ms, q.u.ext, math.MinInt64, math.MaxInt64)))
	}
	return ss
}

// orderAsTSDB reorders the matchers in place as Prometheus' TSDB does when it selects series
// (tsdb.PostingsForMatchers): those that select series first, those that only take series away
// after, each kind in its order. The engine passes a selector's own matchers, and absent() takes
// its labels from them after the select, so Prometheus' answer depends on that order.
func orderAsTSDB(ms []*labels.Matcher) {
	mustBeSet := make(map[string]bool, len(ms))
	for _, m := range ms {
		if !m.Matches("") {
			mustBeSet[m.Name] = true
		}
	}
	subtracts := func(m *labels.Matcher) bool {
		return !mustBeSet[m.Name] || (m.Type == labels.MatchNotEqual || m.Type == labels.MatchNotRegexp) && m.Matches("")
	}
	slices.SortStableFunc(ms, func(a, b *labels.Matcher) int {
		switch sa, sb := subtracts(a), subtracts(b); {
		case !sa && sb:
			return -1
		case sa && !sb:
			return 1
		}
		return 0
	})
}

// queryError is an upstream failure as lethe's engine reports it: a missed deadline as
// Prometheus' query timeout (503, timeout), anything else as a storage error (500, internal).
// When a tombstone may cover any series of the selection, at any time, the upstream's own message
// is withheld (and logged): it may name deleted series or carry their values.
func (u *Upstream) queryError(err error, masked bool) error {
	var to tombstones.TimeoutError
	if errors.As(err, &to) {
		return promql.ErrQueryTimeout("the upstream request: no answer within --upstream.timeout=" + time.Duration(to).String())
	}
	var se *tombstones.StatusError
	if masked && errors.As(err, &se) {
		u.logger.Warn("upstream error withheld from the client: a tombstone may cover the series it names", "err", err)
		err = withheld(se)
	}
	return promql.ErrStorage{Err: err}
}

// remoteSelect reads by remote read. The upstream adds its external labels to the series; they are
// taken off again, since its query API would not show them. Matchers on external-label names are
// decided as the query API would: the stored series do not carry those labels.
func (q *upstreamQuerier) remoteSelect(ctx context.Context, sortSeries bool, hints *storage.SelectHints, mint, maxt int64, ms []*labels.Matcher) storage.SeriesSet {
	var rest []*labels.Matcher
	for _, m := range ms {
		if q.u.ext.Has(m.Name) {
			if !m.Matches("") {
				return storage.EmptySeriesSet()
			}
			continue
		}
		rest = append(rest, m)
	}
	pq, err := remote.ToQuery(mint, maxt, rest, hints)
	if err != nil {
		return storage.ErrSeriesSet(errors.Wrap(err, "remote-read query"))
	}
	ss, err := q.u.read(ctx, pq, false)
	if err != nil {
		return storage.ErrSeriesSet(errors.Wrap(err, "upstream remote read"))
	}
	var series []storage.Series
	for ss.Next() {
		s := ss.At()
		series = append(series, &extSeries{Series: s, lset: stripExt(s.Labels(), q.u.ext)})
	}
	if err := ss.Err(); err != nil {
		return storage.ErrSeriesSet(errors.Wrap(err, "upstream remote read"))
	}
	if sortSeries {
		slices.SortFunc(series, func(a, b storage.Series) int { return labels.Compare(a.Labels(), b.Labels()) })
	}
	return &listSeriesSet{series: series, i: -1, ws: ss.Warnings()}
}

// stripExt removes the upstream's external labels from a series' labels.
func stripExt(ls, ext labels.Labels) labels.Labels {
	if ext.IsEmpty() {
		return ls
	}
	b := labels.NewBuilder(ls)
	ext.Range(func(l labels.Label) {
		if ls.Get(l.Name) == l.Value {
			b.Del(l.Name)
		}
	})
	return b.Labels()
}

// apiSelect reads raw samples in [mint, maxt] with a range selector through the query API.
func (q *upstreamQuerier) apiSelect(ctx context.Context, sortSeries bool, mint, maxt int64, ms []*labels.Matcher) storage.SeriesSet {
	expr := (&parser.MatrixSelector{
		VectorSelector: &parser.VectorSelector{LabelMatchers: ms},
		Range:          time.Duration(maxt-mint+1) * time.Millisecond,
	}).String()
	params := passThrough(ctx)
	params.Set("query", expr)
	params.Set("time", formatTime(maxt))
	// Raw samples, whatever the request asked of Thanos Query: lethe's engine evaluates the query,
	// and a downsampled aggregate, stamped inside its window, may hold samples a tombstone deletes
	// from before that stamp.
	asked := params.Get("max_source_resolution")
	params.Set("max_source_resolution", "0s")
	ans, err := q.u.apiMatrix(ctx, params)
	if err != nil {
		return storage.ErrSeriesSet(err)
	}
	warnings := ans.warnings
	if r, err := sourceResolution(asked, time.Hour, false); err != nil || r > 0 {
		warnings = append(warnings, fmt.Sprintf("lethe-proxy evaluates queries a tombstone may meet from raw samples: max_source_resolution=%s is not applied", asked))
	}
	if ans.histograms {
		// Named by no label: the series may be one a tombstone covers.
		return storage.ErrSeriesSet(errors.New("upstream returned native histograms through its query API, which loses their schema; use an upstream with remote read (--upstream.read=remote-read)"))
	}
	series := make([]storage.Series, 0, len(ans.series))
	for _, s := range ans.series {
		series = append(series, s)
	}
	if sortSeries {
		slices.SortFunc(series, func(a, b storage.Series) int { return labels.Compare(a.Labels(), b.Labels()) })
	}
	return &listSeriesSet{series: series, i: -1, ws: toAnnotations(warnings)}
}

// seriesSelect lists the series the matchers select in the querier's window, by the upstream's
// series endpoint: their labels, no samples.
func (q *upstreamQuerier) seriesSelect(ctx context.Context, limit int, ms []*labels.Matcher) storage.SeriesSet {
	found, warnings, err := q.seriesEndpoint(ctx, ms, limit)
	if err != nil {
		return storage.ErrSeriesSet(err)
	}
	series := make([]storage.Series, 0, len(found))
	for _, ls := range found {
		series = append(series, storage.NewListSeries(ls, nil))
	}
	slices.SortFunc(series, func(a, b storage.Series) int { return labels.Compare(a.Labels(), b.Labels()) })
	return &listSeriesSet{series: series, i: -1, ws: toAnnotations(warnings)}
}

func (q *upstreamQuerier) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return q.labels(ctx, "/api/v1/label/"+url.PathEscape(name)+"/values", hints, ms)
}

func (q *upstreamQuerier) LabelNames(ctx context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return q.labels(ctx, "/api/v1/labels", hints, ms)
}

func (q *upstreamQuerier) labels(ctx context.Context, p string, hints *storage.LabelHints, ms []*labels.Matcher) ([]string, annotations.Annotations, error) {
	if err := q.replicaNamed(ctx, ms); err != nil {
		return nil, nil, err
	}
	params := passThrough(ctx)
	params.Set("start", formatTime(q.mint))
	params.Set("end", formatTime(q.maxt))
	if len(ms) > 0 {
		params.Set("match[]", (&parser.VectorSelector{LabelMatchers: ms}).String())
	}
	if hints != nil && hints.Limit > 0 {
		params.Set("limit", strconv.Itoa(hints.Limit))
	}
	data, warnings, err := q.u.apiGet(ctx, p, params)
	if err != nil {
		return nil, nil, q.u.queryError(err, q.snap.MayMatch(ms, q.u.ext, math.MinInt64, math.MaxInt64))
	}
	var vals []string
	if err := json.Unmarshal(data, &vals); err != nil {
		return nil, nil, errors.Wrap(err, "decode upstream labels")
	}
	return vals, toAnnotations(warnings), nil
}

func (q *upstreamQuerier) Close() error { return nil }

// withheld is the error without the upstream's message.
func withheld(e *tombstones.StatusError) *tombstones.StatusError {
	return &tombstones.StatusError{Code: e.Code, Type: e.Type, Msg: "(message withheld: it may name deleted series; see lethe-proxy's log)"}
}

// do sends req through the query-API client (its deadline and size bound), timed by kind.
func (u *Upstream) do(ctx context.Context, kind string, req *http.Request) (*tombstones.Answer, error) {
	start := time.Now()
	defer func() { u.latency.WithLabelValues(kind).Observe(time.Since(start).Seconds()) }()
	return u.api.Do(ctx, req)
}

// apiMatrix asks the upstream's query endpoint for a matrix and reads its successful answer as
// it streams in.
func (u *Upstream) apiMatrix(ctx context.Context, params url.Values) (*apiAnswer, error) {
	start := time.Now()
	defer func() { u.latency.WithLabelValues("api").Observe(time.Since(start).Seconds()) }()
	var ans *apiAnswer
	err := u.api.Stream(ctx, "/api/v1/query", params, func(body io.Reader) (err error) {
		ans, err = streamMatrixAnswer(body) // Errors say where, never what: the answer names series.
		return err
	})
	if err != nil {
		return nil, err
	}
	if ans.status != "success" {
		return nil, &tombstones.StatusError{Code: http.StatusBadGateway, Msg: fmt.Sprintf("answer status %q", ans.status)}
	}
	return ans, nil
}

// apiGet calls the upstream's API and returns the data of a successful answer.
func (u *Upstream) apiGet(ctx context.Context, p string, params url.Values) (json.RawMessage, []string, error) {
	start := time.Now()
	defer func() { u.latency.WithLabelValues("api").Observe(time.Since(start).Seconds()) }()
	return u.api.Get(ctx, p, params)
}

// read asks the upstream's remote-read endpoint for one query, preferring streamed chunks. The
// whole answer is read before any series is returned.
func (u *Upstream) read(ctx context.Context, q *prompb.Query, sortSeries bool) (storage.SeriesSet, error) {
	data, err := (&prompb.ReadRequest{
		Queries:               []*prompb.Query{q},
		AcceptedResponseTypes: []prompb.ReadRequest_ResponseType{prompb.ReadRequest_STREAMED_XOR_CHUNKS, prompb.ReadRequest_SAMPLES},
	}).Marshal()
	if err != nil {
		return nil, errors.Wrap(err, "encode remote-read request")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.api.URL("/api/v1/read").String(), bytes.NewReader(snappy.Encode(nil, data)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("Accept-Encoding", "snappy")
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("X-Prometheus-Remote-Read-Version", "0.1.0")
	a, err := u.do(ctx, "remote_read", req)
	if err != nil {
		return nil, err
	}
	if a.Code/100 != 2 {
		return nil, a.StatusError()
	}
	switch ct := a.Header.Get("Content-Type"); {
	case strings.HasPrefix(ct, "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"):
		cr := remote.NewChunkedReader(bytes.NewReader(a.Body), u.frameLimit, nil)
		return remote.NewChunkedSeriesSet(cr, io.NopCloser(bytes.NewReader(nil)), q.StartTimestampMs, q.EndTimestampMs, func(error) {}), nil
	case strings.HasPrefix(ct, "application/x-protobuf"):
		n, err := snappy.DecodedLen(a.Body)
		if err != nil {
			return nil, errors.Wrap(err, "decode remote-read answer")
		}
		if int64(n) > u.api.MaxAnswerBytes() {
			return nil, tombstones.TooLargeError(u.api.MaxAnswerBytes())
		}
		raw, err := snappy.Decode(nil, a.Body)
		if err != nil {
			return nil, errors.Wrap(err, "decode remote-read answer")
		}
		var resp prompb.ReadResponse
		if err := resp.Unmarshal(raw); err != nil {
			return nil, errors.Wrap(err, "decode remote-read answer")
		}
		if len(resp.Results) != 1 {
			return nil, errors.Newf("remote-read answer holds %d results for 1 query", len(resp.Results))
		}
		return remote.FromQueryResult(sortSeries, resp.Results[0]), nil
	default:
		return nil, errors.Newf("remote-read answer of unknown content type %q", ct)
	}
}

// writeUpstreamError answers a request whose upstream call failed, in Prometheus' error envelope:
// a missed deadline as a timeout, the upstream's own error as it gave it, anything else as
// unavailable.
func writeUpstreamError(w http.ResponseWriter, err error) {
	var to tombstones.TimeoutError
	var se *tombstones.StatusError
	switch {
	case errors.As(err, &to):
		writeError(w, http.StatusServiceUnavailable, "timeout", "the upstream request: no answer within --upstream.timeout="+time.Duration(to).String())
	case errors.As(err, &se) && se.Type != "":
		writeError(w, se.Code, se.Type, se.Msg)
	default:
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	}
}

func toAnnotations(warnings []string) annotations.Annotations {
	var a annotations.Annotations
	for _, w := range warnings {
		a.Add(errors.New(w))
	}
	return a
}

func formatTime(ms int64) string {
	return strconv.FormatFloat(float64(ms)/1000, 'f', 3, 64)
}

type headerTransport struct {
	next    http.RoundTripper
	headers map[string]string
}

func (t *headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range t.headers {
		r.Header.Set(k, v)
	}
	return t.next.RoundTrip(r)
}

// The pass-through parameters of a request: Thanos Query's, forwarded on every upstream call made
// for the request.
var passThroughParams = []string{"dedup", "partial_response", "max_source_resolution", "replicaLabels[]", "engine"}

type passThroughKey struct{}

func withPassThrough(ctx context.Context, r *http.Request) context.Context {
	return context.WithValue(ctx, passThroughKey{}, passThroughOf(r))
}

// passThroughOf returns the parameters of r's form that pass through to the upstream.
func passThroughOf(r *http.Request) url.Values {
	v := url.Values{}
	for _, k := range passThroughParams {
		if vals, ok := r.Form[k]; ok {
			v[k] = vals
		}
	}
	return v
}

func passThrough(ctx context.Context) url.Values {
	out := url.Values{}
	if v, ok := ctx.Value(passThroughKey{}).(url.Values); ok {
		for k, vals := range v {
			out[k] = slices.Clone(vals)
		}
	}
	return out
}

// series asks the upstream's series endpoint for the labels of the series the selectors match in
// [mint, maxt].
func (u *Upstream) series(ctx context.Context, sels [][]*labels.Matcher, mint, maxt int64) ([]labels.Labels, error) {
	start := time.Now()
	defer func() { u.latency.WithLabelValues("api").Observe(time.Since(start).Seconds()) }()
	return u.api.Series(ctx, sels, mint, maxt)
}

// countSeries counts the series the selectors match in [mint, maxt], by their labels only.
func (u *Upstream) countSeries(ctx context.Context, sels [][]*labels.Matcher, mint, maxt int64) (int, error) {
	series, err := u.series(ctx, sels, mint, maxt)
	return len(series), err
}
