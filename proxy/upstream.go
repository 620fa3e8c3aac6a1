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
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/golang/snappy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
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
}

// DefaultMaxResponseBytes bounds the body of an upstream answer when
// UpstreamConfig.MaxResponseBytes is zero: about 19 million raw samples as query-API JSON, far more
// as remote-read chunks.
const DefaultMaxResponseBytes = 512 << 20

// Upstream reads series from a Prometheus-compatible server: by remote read with streamed chunks
// where it offers it (Prometheus), otherwise as raw samples through its query API (Thanos Query,
// Mimir, VictoriaMetrics).
type Upstream struct {
	base       *url.URL
	client     *http.Client
	readURL    string
	remoteRead bool
	timeout    time.Duration
	maxBytes   int64
	frameLimit uint64
	ext        labels.Labels
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
	readURL := *cfg.URL
	readURL.Path = path.Join(readURL.Path, "/api/v1/read")
	u := &Upstream{base: cfg.URL, client: client, readURL: readURL.String(), logger: logger,
		timeout: cfg.Timeout, maxBytes: cfg.MaxResponseBytes, frameLimit: cfg.ChunkedReadLimit,
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
	var se *statusError
	if errors.As(err, &se) && (se.code == http.StatusNotFound || se.code == http.StatusMethodNotAllowed) {
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
	var se *statusError
	if errors.As(err, &se) && (se.code == http.StatusNotFound || se.code == http.StatusMethodNotAllowed) {
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
	return newMaskedQuerier(&upstreamQuerier{u: u, snap: snap, mint: mint, maxt: maxt}, snap, u.ext, mint, maxt), nil
}

// upstreamQuerier reads from the upstream for the masked querier over it; snap only decides
// whether the upstream's own error messages may be shown.
type upstreamQuerier struct {
	u          *Upstream
	snap       *Snapshot
	mint, maxt int64
}

func (q *upstreamQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	mint, maxt := q.mint, q.maxt
	if hints != nil {
		mint, maxt = hints.Start, hints.End
	}
	var ss storage.SeriesSet
	if q.u.remoteRead {
		ss = q.remoteSelect(ctx, sortSeries, hints, mint, maxt, ms)
	} else {
		ss = q.apiSelect(ctx, sortSeries, mint, maxt, ms)
	}
	if err := ss.Err(); err != nil {
		return storage.ErrSeriesSet(q.u.queryError(err, q.snap.MayMatch(ms, q.u.ext, math.MinInt64, math.MaxInt64)))
	}
	return ss
}

// queryError is an upstream failure as lethe's engine reports it: a missed deadline as
// Prometheus' query timeout (503, timeout), anything else as a storage error (500, internal).
// When a tombstone may cover any series of the selection, at any time, the upstream's own message
// is withheld (and logged): it may name deleted series or carry their values.
func (u *Upstream) queryError(err error, masked bool) error {
	var to upstreamTimeout
	if errors.As(err, &to) {
		return promql.ErrQueryTimeout("the upstream request: no answer within --upstream.timeout=" + time.Duration(to).String())
	}
	var se *statusError
	if masked && errors.As(err, &se) {
		u.logger.Warn("upstream error withheld from the client: a tombstone may cover the series it names", "err", err)
		err = se.withheld()
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
	data, warnings, err := q.u.apiGet(ctx, "/api/v1/query", params)
	if err != nil {
		return storage.ErrSeriesSet(err)
	}
	var res struct {
		ResultType string       `json:"resultType"`
		Result     model.Matrix `json:"result"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return storage.ErrSeriesSet(errors.Wrap(err, "decode upstream samples"))
	}
	series := make([]storage.Series, 0, len(res.Result))
	for _, ss := range res.Result {
		if len(ss.Histograms) > 0 {
			// Named by no label: the series may be one a tombstone covers.
			return storage.ErrSeriesSet(errors.New("upstream returned native histograms through its query API, which loses their schema; use an upstream with remote read (--upstream.read=remote-read)"))
		}
		b := labels.NewScratchBuilder(len(ss.Metric))
		for k, v := range ss.Metric {
			b.Add(string(k), string(v))
		}
		b.Sort()
		samples := make([]chunks.Sample, 0, len(ss.Values))
		for _, p := range ss.Values {
			samples = append(samples, floatSample{t: int64(p.Timestamp), f: float64(p.Value)})
		}
		series = append(series, storage.NewListSeries(b.Labels(), samples))
	}
	if sortSeries {
		slices.SortFunc(series, func(a, b storage.Series) int { return labels.Compare(a.Labels(), b.Labels()) })
	}
	return &listSeriesSet{series: series, i: -1, ws: toAnnotations(warnings)}
}

func (q *upstreamQuerier) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return q.labels(ctx, "/api/v1/label/"+url.PathEscape(name)+"/values", hints, ms)
}

func (q *upstreamQuerier) LabelNames(ctx context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return q.labels(ctx, "/api/v1/labels", hints, ms)
}

func (q *upstreamQuerier) labels(ctx context.Context, p string, hints *storage.LabelHints, ms []*labels.Matcher) ([]string, annotations.Annotations, error) {
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

// statusError is an upstream answer that was not a success.
type statusError struct {
	code int
	typ  string // empty when the answer was no Prometheus API error envelope
	msg  string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("upstream answered %d: %s: %s", e.code, e.typ, e.msg)
}

// withheld is the error without the upstream's message.
func (e *statusError) withheld() *statusError {
	return &statusError{code: e.code, typ: e.typ, msg: "(message withheld: it may name deleted series; see lethe-proxy's log)"}
}

// upstreamTimeout is the cause of an upstream call cut off by its deadline.
type upstreamTimeout time.Duration

func (d upstreamTimeout) Error() string {
	return "the upstream did not answer within --upstream.timeout=" + time.Duration(d).String()
}

// answerTooLarge is an upstream answer beyond the size bound.
type answerTooLarge int64

func (n answerTooLarge) Error() string {
	return fmt.Sprintf("the upstream's answer is larger than the bound of %d bytes", int64(n))
}

// answer is an upstream answer, read in full within the deadline and the size bound.
type answer struct {
	code   int
	header http.Header
	body   []byte
}

// do sends req with the upstream's deadline and reads the whole answer within it and within the
// size bound: an answer cut short, stalled or too large is an error, never part of an answer.
func (u *Upstream) do(ctx context.Context, kind string, req *http.Request) (_ *answer, err error) {
	ctx, cancel := context.WithTimeoutCause(ctx, u.timeout, upstreamTimeout(u.timeout))
	defer cancel()
	start := time.Now()
	defer func() { u.latency.WithLabelValues(kind).Observe(time.Since(start).Seconds()) }()
	resp, err := u.client.Do(req.WithContext(ctx))
	if err != nil {
		return nil, callError(ctx, err, "upstream unreachable")
	}
	defer errcapture.Do(&err, resp.Body.Close, "close upstream answer")
	body, err := io.ReadAll(io.LimitReader(resp.Body, u.maxBytes+1))
	if err != nil {
		return nil, callError(ctx, err, "read upstream answer")
	}
	if int64(len(body)) > u.maxBytes {
		return nil, answerTooLarge(u.maxBytes)
	}
	return &answer{code: resp.StatusCode, header: resp.Header, body: body}, nil
}

// callError names the deadline when it is what cut the call off.
func callError(ctx context.Context, err error, what string) error {
	var to upstreamTimeout
	if errors.As(context.Cause(ctx), &to) {
		return to
	}
	return errors.Wrap(err, what)
}

// statusError reads an answer that is not a success: the upstream's error envelope where it sent
// one, else the start of its body.
func (a *answer) statusError() *statusError {
	var env struct {
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
	}
	if err := json.Unmarshal(a.body, &env); err == nil && env.Error != "" {
		return &statusError{code: a.code, typ: env.ErrorType, msg: env.Error}
	}
	msg := strings.TrimSpace(string(a.body))
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return &statusError{code: a.code, msg: msg}
}

// apiGet calls the upstream's API and returns the data of a successful answer.
func (u *Upstream) apiGet(ctx context.Context, p string, params url.Values) (json.RawMessage, []string, error) {
	target := *u.base
	target.Path = path.Join(target.Path, p)
	target.RawQuery = params.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		return nil, nil, err
	}
	a, err := u.do(ctx, "api", req)
	if err != nil {
		return nil, nil, err
	}
	var env struct {
		Status   string          `json:"status"`
		Data     json.RawMessage `json:"data"`
		Warnings []string        `json:"warnings"`
	}
	if err := json.Unmarshal(a.body, &env); err != nil || env.Status != "success" || a.code/100 != 2 {
		if a.code/100 == 2 {
			a.code = http.StatusBadGateway // A success status with no success in it.
		}
		return nil, nil, a.statusError()
	}
	return env.Data, env.Warnings, nil
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
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.readURL, bytes.NewReader(snappy.Encode(nil, data)))
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
	if a.code/100 != 2 {
		return nil, a.statusError()
	}
	switch ct := a.header.Get("Content-Type"); {
	case strings.HasPrefix(ct, "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"):
		cr := remote.NewChunkedReader(bytes.NewReader(a.body), u.frameLimit, nil)
		return remote.NewChunkedSeriesSet(cr, io.NopCloser(bytes.NewReader(nil)), q.StartTimestampMs, q.EndTimestampMs, func(error) {}), nil
	case strings.HasPrefix(ct, "application/x-protobuf"):
		n, err := snappy.DecodedLen(a.body)
		if err != nil {
			return nil, errors.Wrap(err, "decode remote-read answer")
		}
		if int64(n) > u.maxBytes {
			return nil, answerTooLarge(u.maxBytes)
		}
		raw, err := snappy.Decode(nil, a.body)
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
	var to upstreamTimeout
	var se *statusError
	switch {
	case errors.As(err, &to):
		writeError(w, http.StatusServiceUnavailable, "timeout", err.Error())
	case errors.As(err, &se) && se.typ != "":
		writeError(w, se.code, se.typ, se.msg)
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

type floatSample struct {
	t int64
	f float64
}

func (s floatSample) T() int64                    { return s.t }
func (floatSample) ST() int64                     { return 0 }
func (s floatSample) F() float64                  { return s.f }
func (floatSample) H() *histogram.Histogram       { return nil }
func (floatSample) FH() *histogram.FloatHistogram { return nil }
func (floatSample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s floatSample) Copy() chunks.Sample         { return s }

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
	v := url.Values{}
	for _, k := range passThroughParams {
		if vals, ok := r.Form[k]; ok {
			v[k] = vals
		}
	}
	return context.WithValue(ctx, passThroughKey{}, v)
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
// [mint, maxt], with the upstream's own client configuration.
func (u *Upstream) series(ctx context.Context, sels [][]*labels.Matcher, mint, maxt int64) ([]labels.Labels, error) {
	params := url.Values{}
	for _, sel := range sels {
		params.Add("match[]", (&parser.VectorSelector{LabelMatchers: sel}).String())
	}
	params.Set("start", formatTime(tombstones.APITime(mint).UnixMilli()))
	params.Set("end", formatTime(tombstones.APITime(maxt).UnixMilli()))
	data, _, err := u.apiGet(ctx, "/api/v1/series", params)
	if err != nil {
		return nil, err
	}
	var maps []map[string]string
	if err := json.Unmarshal(data, &maps); err != nil {
		return nil, errors.Wrap(err, "decode upstream series")
	}
	out := make([]labels.Labels, 0, len(maps))
	for _, m := range maps {
		out = append(out, labels.FromMap(m))
	}
	return out, nil
}

// countSeries counts the series the selectors match in [mint, maxt], by their labels only.
func (u *Upstream) countSeries(ctx context.Context, sels [][]*labels.Matcher, mint, maxt int64) (int, error) {
	series, err := u.series(ctx, sels, mint, maxt)
	return len(series), err
}
