package proxy

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/lethe-project/lethe/tombstones"
)

// forwardParams are the only request parameters passed to the upstream on the fast path.
var forwardParams = append([]string{"query", "time", "start", "end", "step", "timeout", "match[]", "limit", "stats", "lookback_delta"}, passThroughParams...)

// lookbackDelta is the lookback a query request is evaluated with, by lethe's engine and, on the
// fast path, by the upstream: the request's lookback_delta when it is positive (as in Prometheus),
// else lethe's --query.lookback-delta.
func (p *Proxy) lookbackDelta(r *http.Request) (time.Duration, error) {
	s := r.Form.Get("lookback_delta")
	if s == "" {
		return p.cfg.LookbackDelta, nil
	}
	d, err := parseDurationParam(s)
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return p.cfg.LookbackDelta, nil
	}
	return d, nil
}

// queryLookback is lookbackDelta, or, where the request names no lookback_delta and asks for a
// resolution, the longer one Thanos Query takes for that resolution (see dynamicLookback): what
// the fast path judges a query with and forwards it with, and what lethe's engine takes over a
// downsampling source.
func (p *Proxy) queryLookback(r *http.Request) (time.Duration, error) {
	lb, err := p.lookbackDelta(r)
	if err != nil || r.Form.Get("lookback_delta") != "" {
		return lb, err
	}
	if res, err := SourceResolution(r.Context()); err == nil && res > 0 {
		lb = dynamicLookback(lb, res)
	}
	return lb, nil
}

// untouched reports whether no selector of the request can meet a live tombstone, by matchers and
// time, so that the upstream's own answer is the masked answer. The time a selector reaches back
// is judged with the longer of the request's lookback and the upstream's own default (an upstream
// that ignores lookback_delta answers with its own). Anything it cannot parse is touched: the
// engine then answers it (or refuses it as bad_data) itself.
func (p *Proxy) untouched(r *http.Request, route string, snap *Snapshot, up *Upstream) bool {
	now := time.Now()
	ext := up.ExternalLabels()
	switch route {
	case "/api/v1/query", "/api/v1/query_range":
		expr, err := parser.NewParser(parser.Options{}).ParseExpr(r.Form.Get("query"))
		if err != nil {
			return false
		}
		lookback, err := p.queryLookback(r)
		if err != nil {
			return false
		}
		lookback = max(lookback, up.LookbackDelta())
		start, end, step := now, now, time.Duration(0)
		if route == "/api/v1/query" {
			if t := r.Form.Get("time"); t != "" {
				if start, err = tombstones.ParseTime(t); err != nil {
					return false
				}
				end = start
			}
		} else {
			if start, err = tombstones.ParseTime(r.Form.Get("start")); err != nil {
				return false
			}
			if end, err = tombstones.ParseTime(r.Form.Get("end")); err != nil {
				return false
			}
			secs, err := parseDurationParam(r.Form.Get("step"))
			if err != nil || secs <= 0 {
				return false
			}
			step = secs
		}
		if expr, err = promql.PreprocessExpr(expr, start, end, step); err != nil {
			return false
		}
		mint, maxt := promql.FindMinMaxTime(&parser.EvalStmt{Expr: expr, Start: start, End: end, Interval: step, LookbackDelta: lookback})
		// Thanos answers from downsampled blocks an aggregate whose window began before mint.
		mint -= downsampledWindow(r.Form.Get("max_source_resolution"), step)
		touched := false
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok && snap.MayMatch(vs.LabelMatchers, ext, mint, maxt) {
				touched = true
			}
			return nil
		})
		return !touched
	default:
		mint, maxt := int64(math.MinInt64), int64(math.MaxInt64)
		if s := r.Form.Get("start"); s != "" {
			t, err := tombstones.ParseTime(s)
			if err != nil {
				return false
			}
			mint = t.UnixMilli()
		}
		if s := r.Form.Get("end"); s != "" {
			t, err := tombstones.ParseTime(s)
			if err != nil {
				return false
			}
			maxt = t.UnixMilli()
		}
		sels := r.Form["match[]"]
		if len(sels) == 0 {
			sels = []string{`{__name__=~".+"}`}
		}
		for _, s := range sels {
			ms, err := parser.NewParser(parser.Options{}).ParseMetricSelector(s)
			if err != nil || snap.MayMatch(ms, ext, mint, maxt) {
				return false
			}
		}
		return true
	}
}

// parseDurationParam reads a duration parameter as Prometheus' API does: seconds as a float, or a
// Prometheus duration (5m, 1h30m, 1d).
func parseDurationParam(s string) (time.Duration, error) {
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		d := secs * float64(time.Second)
		if math.IsNaN(d) || d > math.MaxInt64 || d < math.MinInt64 {
			return 0, errors.Newf("cannot parse %q to a valid duration: out of range", s)
		}
		return time.Duration(d), nil
	}
	d, err := model.ParseDuration(s)
	if err != nil {
		return 0, errors.Newf("cannot parse %q to a valid duration", s)
	}
	return time.Duration(d), nil
}

// forward sends the request to the upstream's own endpoint of the same route, with only the
// allowed parameters, and copies its answer. A query is sent with the lookback lethe judged it
// with, so that an upstream whose own default is longer answers as lethe's engine would.
func (u *Upstream) forward(w http.ResponseWriter, r *http.Request, route string, lookback time.Duration) (err error) {
	params := url.Values{}
	for _, k := range forwardParams {
		if v, ok := r.Form[k]; ok {
			params[k] = v
		}
	}
	if route == "/api/v1/query" || route == "/api/v1/query_range" {
		params.Set("lookback_delta", strconv.FormatFloat(lookback.Seconds(), 'f', -1, 64))
	}
	target := u.api.URL(route)
	var req *http.Request
	if r.Method == http.MethodPost {
		req, err = http.NewRequestWithContext(r.Context(), http.MethodPost, target.String(), strings.NewReader(params.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	} else {
		target.RawQuery = params.Encode()
		req, err = http.NewRequestWithContext(r.Context(), http.MethodGet, target.String(), nil)
	}
	if err != nil {
		return err
	}
	// The upstream compresses only as the client allows, and only with gzip, so its answer can be
	// checked here and then copied as it is (set by hand, Go's client leaves the body compressed).
	encoding := "identity"
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		encoding = "gzip"
	}
	req.Header.Set("Accept-Encoding", encoding)
	a, err := u.do(r.Context(), "forward", req)
	if err != nil {
		writeUpstreamError(w, err)
		return nil
	}
	if err := u.checkAnswer(a); err != nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", fmt.Sprintf("upstream answered %d with no Prometheus API answer: %s", a.Code, err))
		return nil
	}
	for _, h := range []string{"Content-Type", "Content-Encoding"} {
		if v := a.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(a.Code)
	_, err = w.Write(a.Body)
	return err
}

// checkAnswer makes sure an answer copied to the client is one whole Prometheus API envelope.
func (u *Upstream) checkAnswer(a *tombstones.Answer) (err error) {
	maxBytes := u.api.MaxAnswerBytes()
	var body io.Reader = bytes.NewReader(a.Body)
	switch ce := a.Header.Get("Content-Encoding"); ce {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(body)
		if err != nil {
			return errors.Wrap(err, "gzip")
		}
		defer errcapture.Do(&err, zr.Close, "close gzip reader")
		body = io.LimitReader(zr, maxBytes+1)
	default:
		return errors.Newf("unasked content encoding %q", ce)
	}
	dec := json.NewDecoder(body)
	var env struct {
		Status string `json:"status"`
	}
	if err := dec.Decode(&env); err != nil {
		return errors.Wrap(err, "decode")
	}
	if env.Status != "success" && env.Status != "error" {
		return errors.Newf("status %q", env.Status)
	}
	if dec.InputOffset() > maxBytes {
		return tombstones.TooLargeError(maxBytes)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the answer")
	}
	return nil
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip.
func acceptsGzip(accept string) bool {
	for _, part := range strings.Split(accept, ",") {
		coding, params, _ := strings.Cut(part, ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		qs, ok := strings.CutPrefix(strings.TrimSpace(params), "q=")
		if !ok {
			return true
		}
		q, err := strconv.ParseFloat(qs, 64)
		return err == nil && q > 0
	}
	return false
}
