package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
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
}

// Upstream reads series from a Prometheus-compatible server: by remote read with streamed chunks
// where it offers it (Prometheus), otherwise as raw samples through its query API (Thanos Query,
// Mimir, VictoriaMetrics).
type Upstream struct {
	base       *url.URL
	client     *http.Client
	rr         remote.ReadClient
	remoteRead bool
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
	client, err := config_util.NewClientFromConfig(cfg.HTTP, "lethe-proxy-upstream")
	if err != nil {
		return nil, errors.Wrap(err, "upstream HTTP client")
	}
	if len(cfg.Headers) > 0 {
		client.Transport = &headerTransport{next: client.Transport, headers: cfg.Headers}
	}
	u := &Upstream{base: cfg.URL, client: client, logger: logger,
		latency: promauto.With(reg).NewHistogramVec(prometheus.HistogramOpts{
			Name: "lethe_proxy_upstream_request_duration_seconds", Help: "Latency of requests to the upstream by kind: remote_read, api, forward (the fast path).",
			Buckets: prometheus.DefBuckets,
		}, []string{"kind"}),
	}

	readURL := *cfg.URL
	readURL.Path = path.Join(readURL.Path, "/api/v1/read")
	u.rr, err = remote.NewReadClient("lethe-upstream", &remote.ClientConfig{
		URL:              &config_util.URL{URL: &readURL},
		Timeout:          model.Duration(cfg.Timeout),
		HTTPClientConfig: cfg.HTTP,
		Headers:          cfg.Headers,
		ChunkedReadLimit: 1 << 30,
	})
	if err != nil {
		return nil, errors.Wrap(err, "upstream remote-read client")
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
		ss, err := u.rr.Read(ctx, q, false)
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
	return newMaskedQuerier(&upstreamQuerier{u: u, mint: mint, maxt: maxt}, snap, u.ext, mint, maxt), nil
}

type upstreamQuerier struct {
	u          *Upstream
	mint, maxt int64
}

func (q *upstreamQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	mint, maxt := q.mint, q.maxt
	if hints != nil {
		mint, maxt = hints.Start, hints.End
	}
	if q.u.remoteRead {
		return q.remoteSelect(ctx, sortSeries, hints, mint, maxt, ms)
	}
	return q.apiSelect(ctx, sortSeries, mint, maxt, ms)
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
	start := time.Now()
	ss, err := q.u.rr.Read(ctx, pq, false)
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
	q.u.latency.WithLabelValues("remote_read").Observe(time.Since(start).Seconds())
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
			return storage.ErrSeriesSet(errors.Newf("upstream returned native histograms for %s through its query API, which loses their schema; use an upstream with remote read", ss.Metric))
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
		return nil, nil, err
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
	typ  string
	msg  string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("upstream answered %d: %s: %s", e.code, e.typ, e.msg)
}

// apiGet calls the upstream's API and returns the data of a successful answer.
func (u *Upstream) apiGet(ctx context.Context, p string, params url.Values) (_ json.RawMessage, _ []string, err error) {
	target := *u.base
	target.Path = path.Join(target.Path, p)
	target.RawQuery = params.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, nil, errors.Wrap(err, "upstream unreachable")
	}
	defer func() { u.latency.WithLabelValues("api").Observe(time.Since(start).Seconds()) }()
	defer errcapture.Do(&err, resp.Body.Close, "close upstream answer")
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, errors.Wrap(err, "read upstream answer")
	}
	var env struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Warnings  []string        `json:"warnings"`
	}
	if err := json.Unmarshal(b, &env); err != nil || env.Status != "success" {
		if env.Error == "" {
			env.Error = strings.TrimSpace(string(b))
			if len(env.Error) > 200 {
				env.Error = env.Error[:200]
			}
		}
		return nil, nil, &statusError{code: resp.StatusCode, typ: env.ErrorType, msg: env.Error}
	}
	return env.Data, env.Warnings, nil
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

// countSeries asks the upstream's series endpoint how many series the selectors match in
// [mint, maxt], with the upstream's own client configuration.
func (u *Upstream) countSeries(ctx context.Context, sels [][]*labels.Matcher, mint, maxt int64) (int, error) {
	params := url.Values{}
	for _, sel := range sels {
		params.Add("match[]", (&parser.VectorSelector{LabelMatchers: sel}).String())
	}
	params.Set("start", formatTime(tombstones.APITime(mint).UnixMilli()))
	params.Set("end", formatTime(tombstones.APITime(maxt).UnixMilli()))
	data, _, err := u.apiGet(ctx, "/api/v1/series", params)
	if err != nil {
		return 0, err
	}
	var series []json.RawMessage
	if err := json.Unmarshal(data, &series); err != nil {
		return 0, errors.Wrap(err, "decode upstream series")
	}
	return len(series), nil
}
