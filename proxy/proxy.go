package proxy

import (
	"context"
	"encoding/json"
	"github.com/grafana/regexp"
	"log/slog"
	"maps"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/model"
	"github.com/prometheus/common/route"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	v1 "github.com/prometheus/prometheus/web/api/v1"
)

// Source is where the proxy reads series from: the bucket's blocks or an upstream server.
type Source interface {
	// Querier returns a querier over [mint, maxt] that masks with snap.
	Querier(snap *Snapshot, mint, maxt int64) (storage.Querier, error)
}

// Config holds the proxy's limits and settings; zero values take Prometheus' defaults.
type Config struct {
	// QueryTimeout, MaxSamples and MaxConcurrency are Prometheus' --query.timeout,
	// --query.max-samples and --query.max-concurrency.
	QueryTimeout   time.Duration
	MaxSamples     int
	MaxConcurrency int
	// LookbackDelta is Prometheus' --query.lookback-delta; zero takes the upstream's own where it
	// is known, so that answers are the upstream's, else Prometheus' 5m.
	LookbackDelta time.Duration
	// Upstream is the server the source reads the same data from, when the source is another
	// (Thanos Query's StoreAPI beside its HTTP API): requests no tombstone can touch are answered
	// by it untouched, and its rules, alerts, exemplars and metadata are served filtered.
	Upstream *Upstream
	// AdminToken is the bearer token the deletion API demands; the audit log names its caller
	// "admin". With it, AdminTokens and AdminUsers all empty, the deletion API is disabled.
	AdminToken string
	// AdminTokens are further bearer tokens for the deletion API, by the name the audit log gives
	// their caller.
	AdminTokens map[string]string
	// AdminUsers are basic-auth users the deletion API admits without a token. They count only
	// with BasicAuthVerified.
	AdminUsers []string
	// ReadTokens are bearer tokens, by name, for the read endpoints (everything under /api/v1/
	// but the deletion API). With any, or with ReadAuth, those endpoints demand a read or admin
	// token, a verified basic-auth user or a verified client certificate.
	ReadTokens map[string]string
	ReadAuth   bool
	// BasicAuthVerified says that the server in front of the proxy (exporter-toolkit's web config
	// with basic_auth_users) verified every request's basic-auth user: only then is that user an
	// identity here.
	BasicAuthVerified bool
	// Limits bounds what one request may ask for; zero fields take the defaults.
	Limits Limits
	// Plan, when set, lets the deletions page show what lethe-rewriter's planner would do about
	// a tombstone (bucket mode: the proxy reads the bucket's blocks).
	Plan PlanFunc

	// adminTokens is AdminToken (as "admin") and AdminTokens together.
	adminTokens map[string]string
}

// upstreamOf returns the upstream server the proxy answers in front of: the source itself, or
// the Config's Upstream beside it.
func upstreamOf(source Source, c Config) (*Upstream, bool) {
	if up, ok := source.(*Upstream); ok {
		return up, true
	}
	return c.Upstream, c.Upstream != nil
}

// upstream returns the upstream server the proxy answers in front of, if any.
func (p *Proxy) upstream() (*Upstream, bool) { return upstreamOf(p.source, p.cfg) }

func (c Config) withDefaults(source Source) Config {
	if up, ok := upstreamOf(source, c); ok && c.LookbackDelta == 0 {
		c.LookbackDelta = up.LookbackDelta()
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = 2 * time.Minute
	}
	if c.MaxSamples == 0 {
		c.MaxSamples = 50_000_000
	}
	if c.MaxConcurrency == 0 {
		c.MaxConcurrency = 20
	}
	if c.LookbackDelta == 0 {
		c.LookbackDelta = 5 * time.Minute
	}
	c.adminTokens = map[string]string{}
	for name, token := range c.AdminTokens {
		c.adminTokens[name] = token
	}
	if c.AdminToken != "" {
		c.adminTokens[AdminTokenName] = c.AdminToken
	} else if len(c.AdminTokens) > 0 {
		// The deletions page keys its CSRF tokens with AdminToken: take the first named token.
		names := slices.Sorted(maps.Keys(c.AdminTokens))
		c.AdminToken = c.AdminTokens[names[0]]
	}
	c.ReadAuth = c.ReadAuth || len(c.ReadTokens) > 0
	c.Limits = c.Limits.withDefaults()
	return c
}

// Proxy is the HTTP handler Grafana talks to.
type Proxy struct {
	mask   *Mask
	source Source
	logger *slog.Logger
	cfg    Config
	reg    *prometheus.Registry
	mux    *http.ServeMux

	fastPath prometheus.Counter
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	slots    chan struct{}
}

// New builds the proxy. reg receives the proxy's metrics and is served on /metrics.
func New(mask *Mask, source Source, logger *slog.Logger, reg *prometheus.Registry, cfg Config) *Proxy {
	cfg = cfg.withDefaults(source)
	f := promauto.With(reg)
	p := &Proxy{
		mask: mask, source: source, logger: logger, cfg: cfg, reg: reg, mux: http.NewServeMux(),
		fastPath: f.NewCounter(prometheus.CounterOpts{Name: "lethe_proxy_fast_path_requests_total", Help: "Requests no tombstone could touch, answered by the upstream untouched."}),
		requests: f.NewCounterVec(prometheus.CounterOpts{Name: "lethe_proxy_requests_total", Help: "API requests by path and outcome."}, []string{"path", "code"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{Name: "lethe_proxy_request_duration_seconds", Help: "API request latency by path.", Buckets: prometheus.DefBuckets}, []string{"path"}),
		slots:    make(chan struct{}, cfg.MaxConcurrency),
	}
	engine := promql.NewEngine(promql.EngineOpts{
		Logger:               logger,
		Reg:                  reg,
		MaxSamples:           cfg.MaxSamples,
		Timeout:              cfg.QueryTimeout,
		LookbackDelta:        cfg.LookbackDelta,
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
		// A subquery without a step ("[30m:]") steps at the evaluation interval, as Prometheus'
		// global default of 1m.
		NoStepSubqueryIntervalFn: func(int64) int64 { return time.Minute.Milliseconds() },
	})
	api := v1.NewAPI(engine, &queryable{p: p}, nil, emptyExemplars{},
		nil, nil, nil,
		func() config.Config { return config.Config{} },
		map[string]string{},
		v1.GlobalURLOptions{},
		func(f http.HandlerFunc) http.HandlerFunc { return f },
		nil, "", false, false, 0, logger, nil, 0, 0, 0, false,
		regexp.MustCompile(".*"),
		nil,
		&v1.PrometheusVersion{Version: "3.16.0", Revision: "lethe-proxy", Branch: "lethe", GoVersion: goVersion()},
		nil, nil, reg, reg, nil, false, nil, false, false, false,
		cfg.LookbackDelta, false, false, nil, nil, v1.OpenAPIOptions{}, parser.NewParser(parser.Options{}), false, cfg.QueryTimeout,
	)
	router := route.New()
	api.Register(router.WithPrefix("/api/v1"))

	// Only these endpoints exist; everything else is 404, so nothing reaches the data around the mask.
	for _, path := range []string{"/api/v1/query", "/api/v1/query_range", "/api/v1/series", "/api/v1/labels"} {
		p.handle(path, p.guard(path, router), http.MethodGet, http.MethodPost)
	}
	if _, upstream := p.upstream(); upstream {
		p.registerFiltered()
	} else {
		// The bucket's blocks hold no exemplars and no metadata; Prometheus' API answers with none.
		p.handle("/api/v1/query_exemplars", p.guard("/api/v1/query_exemplars", router), http.MethodGet, http.MethodPost)
		p.handle("/api/v1/metadata", http.HandlerFunc(emptyMetadata), http.MethodGet)
	}
	p.handle("/api/v1/label/{name}/values", p.guard("/api/v1/label/{name}/values", router), http.MethodGet)
	p.handle("/api/v1/format_query", router, http.MethodGet, http.MethodPost)
	p.handle("/api/v1/status/buildinfo", router, http.MethodGet)
	p.registerAdmin()
	p.registerPage()
	p.mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	p.mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("lethe-proxy is Healthy.\n"))
	})
	p.mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := p.mask.Current(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("lethe-proxy is not ready: " + err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("lethe-proxy is Ready.\n"))
	})
	return p
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) { p.mux.ServeHTTP(w, r) }

// handle registers h on path for the given methods, with metrics, the request bounds and, for the
// read endpoints, their authorization.
func (p *Proxy) handle(path string, h http.Handler, methods ...string) {
	label := path
	read := isReadPath(path)
	for _, m := range methods {
		p.mux.Handle(m+" "+path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
			if p.bounded(rec, r, read) && (!read || p.reader(rec, r)) {
				h.ServeHTTP(rec, r)
			}
			p.requests.WithLabelValues(label, strconv.Itoa(rec.code)).Inc()
			p.duration.WithLabelValues(label).Observe(time.Since(start).Seconds())
		}))
	}
}

// admit takes the tombstone snapshot for a data request and parses its form; it answers the
// request itself (503 while tombstones are stale, 400 on a bad form) when it returns false.
func (p *Proxy) admit(w http.ResponseWriter, r *http.Request) (*Snapshot, bool) {
	snap, err := p.mask.Current()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
		return nil, false
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "bad_data", err.Error())
		return nil, false
	}
	return snap, true
}

// guard fails closed while tombstones are stale, bounds concurrent data requests, and sends a
// request that no tombstone can touch to the upstream untouched.
func (p *Proxy) guard(route string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		snap, ok := p.admit(w, r)
		if !ok {
			return
		}
		r = r.WithContext(withResolution(withPassThrough(r.Context(), r), r, route))
		select {
		case p.slots <- struct{}{}:
			defer func() { <-p.slots }()
		case <-r.Context().Done():
			writeError(w, http.StatusServiceUnavailable, "unavailable", "too many concurrent queries")
			return
		}
		if up, ok := p.upstream(); ok {
			target := route
			if name := r.PathValue("name"); name != "" {
				if !model.UTF8Validation.IsValidLabelName(name) {
					writeError(w, http.StatusBadRequest, "bad_data", "invalid label name: "+strconv.Quote(name))
					return
				}
				target = "/api/v1/label/" + name + "/values"
			}
			if p.untouched(r, route, snap, up) {
				lookback, _ := p.queryLookback(r) // untouched parsed it.
				p.fastPath.Inc()
				if err := up.forward(w, r, target, lookback); err != nil {
					p.logger.Warn("fast path", "route", route, "err", err)
				}
				return
			}
		}
		p.downsampledLookback(r)
		next.ServeHTTP(w, r)
	})
}

// DownsamplingSource is a Source that reads Thanos' downsampled aggregates where the request's
// max_source_resolution allows, as Thanos Query does.
type DownsamplingSource interface {
	Source
	ReadsDownsampled() bool
}

// downsampledLookback gives a query evaluated over a downsampling source the lookback Thanos
// Query would (see dynamicLookback), unless the request sets its own.
func (p *Proxy) downsampledLookback(r *http.Request) {
	ds, ok := p.source.(DownsamplingSource)
	if !ok || !ds.ReadsDownsampled() || r.Form.Get("lookback_delta") != "" {
		return
	}
	if lb, err := p.queryLookback(r); err == nil && lb != p.cfg.LookbackDelta {
		r.Form.Set("lookback_delta", strconv.FormatFloat(lb.Seconds(), 'f', -1, 64))
	}
}

// writeError answers in Prometheus' error envelope, byte for byte as its API does.
func writeError(w http.ResponseWriter, code int, typ, msg string) {
	b, err := json.Marshal(&v1.Response{Status: "error", ErrorType: typ, Error: msg})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func emptyMetadata(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"status":"success","data":{}}`))
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// queryable takes one tombstone snapshot per querier, so a query sees one consistent set.
type queryable struct{ p *Proxy }

func (q *queryable) Querier(mint, maxt int64) (storage.Querier, error) {
	snap, err := q.p.mask.Current()
	if err != nil {
		return nil, err
	}
	snap = snap.forQuery()
	inner, err := q.p.source.Querier(snap, mint, maxt)
	if err != nil {
		return nil, err
	}
	return &loggingQuerier{Querier: inner, snap: snap, logger: q.p.logger, mint: mint, maxt: maxt}, nil
}

// loggingQuerier logs, when the query is done, which tombstones masked how many series.
type loggingQuerier struct {
	storage.Querier
	snap       *Snapshot
	logger     *slog.Logger
	mint, maxt int64
}

func (q *loggingQuerier) Close() error {
	if ids, n := q.snap.hits.summary(); n > 0 {
		q.logger.Info("masked series", "tombstones", ids, "series", n, "mint", q.mint, "maxt", q.maxt)
	}
	return q.Querier.Close()
}

func (q *queryable) ChunkQuerier(int64, int64) (storage.ChunkQuerier, error) {
	return nil, errors.New("lethe-proxy serves no remote read")
}

// emptyExemplars answers exemplar queries with none: blocks in the bucket hold no exemplars.
type emptyExemplars struct{}

func (emptyExemplars) ExemplarQuerier(context.Context) (storage.ExemplarQuerier, error) {
	return emptyExemplars{}, nil
}

func (emptyExemplars) Select(int64, int64, ...[]*labels.Matcher) ([]exemplar.QueryResult, error) {
	return []exemplar.QueryResult{}, nil // Prometheus answers [] rather than null.
}

func goVersion() string { return strings.TrimPrefix(runtime.Version(), "go") }
