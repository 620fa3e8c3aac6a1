package tombstones

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"
)

// Defaults of a QueryAPI.
const (
	DefaultQueryTimeout = 2 * time.Minute
	// DefaultMaxAnswerBytes bounds an answer's body: about 19 million raw samples as query-API
	// JSON.
	DefaultMaxAnswerBytes = 512 << 20
)

// QueryAPI is a client of a Prometheus-compatible HTTP API (Prometheus, Thanos Query, Mimir,
// VictoriaMetrics). Every call has a deadline and a bound on the size of its answer: an answer cut
// short, stalled or too large is an error, never part of an answer.
type QueryAPI struct {
	base     *url.URL
	client   *http.Client
	timeout  time.Duration
	maxBytes int64
}

// NewQueryAPI returns a client of the API under base (e.g. http://mimir/prometheus). A zero
// timeout or maxBytes takes the default.
func NewQueryAPI(base *url.URL, client *http.Client, timeout time.Duration, maxBytes int64) *QueryAPI {
	if timeout <= 0 {
		timeout = DefaultQueryTimeout
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxAnswerBytes
	}
	return &QueryAPI{base: base, client: client, timeout: timeout, maxBytes: maxBytes}
}

// URL returns the address of an endpoint of the API.
func (q *QueryAPI) URL(p string) *url.URL {
	u := *q.base
	u.Path = path.Join(u.Path, p)
	return &u
}

// MaxAnswerBytes is the bound on an answer's body.
func (q *QueryAPI) MaxAnswerBytes() int64 { return q.maxBytes }

// StatusError is an answer that was not a success.
type StatusError struct {
	Code int
	// Type is the errorType of the server's error envelope, empty when it sent none.
	Type string
	Msg  string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("the server answered %d: %s: %s", e.Code, e.Type, e.Msg)
}

// TimeoutError is a call cut off by its deadline.
type TimeoutError time.Duration

func (d TimeoutError) Error() string {
	return "no answer within " + time.Duration(d).String()
}

// TooLargeError is an answer beyond the size bound.
type TooLargeError int64

func (n TooLargeError) Error() string {
	return fmt.Sprintf("the answer is larger than the bound of %d bytes", int64(n))
}

// Answer is an answer read in full.
type Answer struct {
	Code   int
	Header http.Header
	Body   []byte
}

// Do sends req with the deadline and reads the whole answer within it and within the size bound.
func (q *QueryAPI) Do(ctx context.Context, req *http.Request) (_ *Answer, err error) {
	ctx, cancel := context.WithTimeoutCause(ctx, q.timeout, TimeoutError(q.timeout))
	defer cancel()
	resp, err := q.client.Do(req.WithContext(ctx))
	if err != nil {
		return nil, callError(ctx, err, "server unreachable")
	}
	defer errcapture.Do(&err, resp.Body.Close, "close answer")
	body, err := io.ReadAll(io.LimitReader(resp.Body, q.maxBytes+1))
	if err != nil {
		return nil, callError(ctx, err, "read answer")
	}
	if int64(len(body)) > q.maxBytes {
		return nil, TooLargeError(q.maxBytes)
	}
	return &Answer{Code: resp.StatusCode, Header: resp.Header, Body: body}, nil
}

// callError names the deadline when it is what cut the call off.
func callError(ctx context.Context, err error, what string) error {
	var to TimeoutError
	if errors.As(context.Cause(ctx), &to) {
		return to
	}
	return errors.Wrap(err, what)
}

// StatusError reads an answer that is not a success: the server's error envelope where it sent
// one, else the start of its body.
func (a *Answer) StatusError() *StatusError {
	var env struct {
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
	}
	if err := json.Unmarshal(a.Body, &env); err == nil && env.Error != "" {
		return &StatusError{Code: a.Code, Type: env.ErrorType, Msg: env.Error}
	}
	msg := strings.TrimSpace(string(a.Body))
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return &StatusError{Code: a.Code, Msg: msg}
}

// Fetch calls an endpoint with GET and returns its answer, whatever its status.
func (q *QueryAPI) Fetch(ctx context.Context, p string, params url.Values) (*Answer, error) {
	target := q.URL(p)
	target.RawQuery = params.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		return nil, err
	}
	return q.Do(ctx, req)
}

// Stream calls an endpoint with GET and hands the body of a successful answer to read as it
// arrives, within the deadline and the size bound. An answer that is not a success is read whole
// and returned as its StatusError.
func (q *QueryAPI) Stream(ctx context.Context, p string, params url.Values, read func(io.Reader) error) (err error) {
	ctx, cancel := context.WithTimeoutCause(ctx, q.timeout, TimeoutError(q.timeout))
	defer cancel()
	target := q.URL(p)
	target.RawQuery = params.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		return err
	}
	resp, err := q.client.Do(req)
	if err != nil {
		return callError(ctx, err, "server unreachable")
	}
	defer errcapture.Do(&err, resp.Body.Close, "close answer")
	body := &boundedReader{r: resp.Body, left: q.maxBytes}
	if resp.StatusCode/100 != 2 {
		b, err := io.ReadAll(body)
		if err != nil {
			return callError(ctx, err, "read answer")
		}
		return (&Answer{Code: resp.StatusCode, Header: resp.Header, Body: b}).StatusError()
	}
	if err := read(body); err != nil {
		if body.over {
			return TooLargeError(q.maxBytes)
		}
		return callError(ctx, err, "read answer")
	}
	return nil
}

// boundedReader fails a read past left bytes.
type boundedReader struct {
	r    io.Reader
	left int64
	over bool
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body of exactly the bound from a longer one.
		var one [1]byte
		if n, _ := b.r.Read(one[:]); n > 0 {
			b.over = true
			return 0, errors.New("answer larger than the bound")
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

// Get calls an endpoint and returns the data and warnings of a successful answer.
func (q *QueryAPI) Get(ctx context.Context, p string, params url.Values) (json.RawMessage, []string, error) {
	a, err := q.Fetch(ctx, p, params)
	if err != nil {
		return nil, nil, err
	}
	var env struct {
		Status   string          `json:"status"`
		Data     json.RawMessage `json:"data"`
		Warnings []string        `json:"warnings"`
	}
	if err := json.Unmarshal(a.Body, &env); err != nil || env.Status != "success" || a.Code/100 != 2 {
		if a.Code/100 == 2 {
			a.Code = http.StatusBadGateway // A success status with no success in it.
		}
		return nil, nil, a.StatusError()
	}
	return env.Data, env.Warnings, nil
}

// Series returns the labels of the series the selectors match with samples in [mint, maxt], from
// the series endpoint (labels only, no samples).
func (q *QueryAPI) Series(ctx context.Context, selectors [][]*labels.Matcher, mint, maxt int64) ([]labels.Labels, error) {
	params := url.Values{}
	for _, sel := range selectors {
		params.Add("match[]", selectorString(sel))
	}
	params.Set("start", formatAPITime(mint))
	params.Set("end", formatAPITime(maxt))
	data, _, err := q.Get(ctx, "/api/v1/series", params)
	if err != nil {
		return nil, err
	}
	var maps []map[string]string
	if err := json.Unmarshal(data, &maps); err != nil {
		return nil, errors.Wrap(err, "decode series")
	}
	out := make([]labels.Labels, 0, len(maps))
	for _, m := range maps {
		out = append(out, labels.FromMap(m))
	}
	return out, nil
}

// formatAPITime renders a tombstone's time (clamped by APITime) as the API's decimal seconds.
func formatAPITime(ms int64) string {
	ms = APITime(ms).UnixMilli()
	sign := ""
	if ms < 0 {
		sign, ms = "-", -ms
	}
	return fmt.Sprintf("%s%d.%03d", sign, ms/1000, ms%1000)
}

// CountSeriesByQuery asks a Prometheus-compatible query API how many series the selectors match
// with samples in [mint, maxt], for stores whose data is not (yet) in the bucket's blocks.
func CountSeriesByQuery(ctx context.Context, address string, selectors [][]*labels.Matcher, mint, maxt int64) (int, error) {
	base, err := url.Parse(address)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return 0, errors.Newf("query API address %q: want http(s)://host[:port][/prefix]", address)
	}
	series, err := NewQueryAPI(base, http.DefaultClient, 0, 0).Series(ctx, selectors, mint, maxt)
	if err != nil {
		return 0, errors.Wrapf(err, "count series through %s", address)
	}
	return len(series), nil
}

// APITime is a tombstone's time as Prometheus' HTTP API accepts it: open ends (the beginning of
// time, far futures) are clamped to the years 1 and 9999.
func APITime(ms int64) time.Time {
	const lo, hi = -62135596800000, 253402300799000 // Years 1 and 9999.
	return time.UnixMilli(min(max(ms, lo), hi)).UTC()
}
