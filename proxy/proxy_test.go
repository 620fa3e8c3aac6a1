package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

const adminToken = "test-admin-token-0123456789"

// t0 is the start of the test data: 2026-11-01T00:00:00Z. Two 2h blocks follow it.
const t0 = int64(1793491200000)

type fixture struct {
	bkt    *flakyBucket
	store  *tombstones.Store
	mask   *Mask
	blocks *BucketBlocks
	srv    *httptest.Server
	now    *atomic.Int64
	ids    []ulid.ULID
}

// flakyBucket fails every operation while down is set.
type flakyBucket struct {
	objstore.Bucket
	down atomic.Bool
}

func (b *flakyBucket) Iter(ctx context.Context, dir string, f func(string) error, opts ...objstore.IterOption) error {
	if b.down.Load() {
		return fmt.Errorf("bucket unreachable")
	}
	return b.Bucket.Iter(ctx, dir, f, opts...)
}

func newFixture(t *testing.T, ext map[string]string) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{bkt: &flakyBucket{Bucket: objstore.NewInMemBucket()}, now: &atomic.Int64{}}
	f.now.Store(t0 + 5*3_600_000)
	clock := func() time.Time { return time.UnixMilli(f.now.Load()) }

	var series []labels.Labels
	for u := 0; u < 4; u++ {
		series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", fmt.Sprint(u)))
	}
	series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "token", "s3cr3t"))
	for i := int64(0); i < 2; i++ {
		id, err := synth.Upload(ctx, f.bkt, t.TempDir(), synth.Block{
			Series: series, MinTime: t0 + i*7_200_000, MaxTime: t0 + (i+1)*7_200_000, Step: 60_000, External: ext,
			Value: func(s int, ts int64) float64 { return float64((ts - t0) / 60_000) },
		})
		testutil.Ok(t, err)
		f.ids = append(f.ids, id)
	}
	reg := prometheus.NewRegistry()
	f.store = tombstones.NewStore(f.bkt, reg, tombstones.WithClock(clock))
	f.mask = NewMask(f.store, slog.New(slog.DiscardHandler), reg, time.Minute)
	f.mask.now = clock
	testutil.Ok(t, f.mask.Refresh(ctx))
	f.blocks = NewBucketBlocks(f.bkt, t.TempDir(), slog.New(slog.DiscardHandler), reg)
	testutil.Ok(t, f.blocks.Sync(ctx))
	t.Cleanup(func() { testutil.Ok(t, f.blocks.Close()) })
	f.srv = httptest.NewServer(New(f.mask, f.blocks, slog.New(slog.DiscardHandler), reg, Config{AdminToken: adminToken}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) tombstone(t *testing.T, sel string, start, end int64) {
	t.Helper()
	_, err := f.store.Add(context.Background(), tombstones.Spec{Selectors: []string{sel}, Start: &start, End: &end})
	testutil.Ok(t, err)
	testutil.Ok(t, f.mask.Refresh(context.Background()))
}

type apiResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
}

func (f *fixture) get(t *testing.T, p string, params url.Values) (int, apiResponse) {
	t.Helper()
	resp, err := http.Get(f.srv.URL + p + "?" + params.Encode())
	testutil.Ok(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	testutil.Ok(t, err)
	var r apiResponse
	if strings.HasPrefix(p, "/api/") && resp.StatusCode != http.StatusNotFound {
		testutil.Ok(t, json.Unmarshal(b, &r), string(b))
	}
	return resp.StatusCode, r
}

type vectorSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// instant runs an instant query and returns metric label sets and values.
func (f *fixture) instant(t *testing.T, q string, at int64) map[string]string {
	t.Helper()
	code, r := f.get(t, "/api/v1/query", url.Values{"query": {q}, "time": {fmt.Sprint(float64(at) / 1000)}})
	testutil.Equals(t, http.StatusOK, code, r.Error)
	var d struct {
		Result []vectorSample `json:"result"`
	}
	testutil.Ok(t, json.Unmarshal(r.Data, &d))
	out := map[string]string{}
	for _, s := range d.Result {
		out[labels.FromMap(s.Metric).String()] = s.Value[1].(string)
	}
	return out
}

func TestProxyMasksQueries(t *testing.T) {
	f := newFixture(t, nil)
	// Delete user 1 from 01:00 to 02:59:59.999 and the token series everywhere.
	f.tombstone(t, `{user_id="1"}`, t0+3_600_000, t0+3*3_600_000-1)
	f.tombstone(t, `{token="s3cr3t"}`, tombstones.BeginningOfTime, t0+10*3_600_000)

	at := t0 + 3*3_600_000 + 30*60_000 // 03:30, after the deleted window.
	got := f.instant(t, `count_over_time(http_requests_total[4h])`, at)
	// 3:30 back to (but excluding) -0:30: samples at 0:00..3:30 are 211 per series; user 1 loses
	// the 120 samples from 1:00 to 2:59.
	testutil.Equals(t, map[string]string{
		`{job="api", user_id="0"}`: "211",
		`{job="api", user_id="1"}`: "91",
		`{job="api", user_id="2"}`: "211",
		`{job="api", user_id="3"}`: "211",
	}, got)

	// Inside the deleted window, user 1 is gone from instant selectors and aggregations.
	in := t0 + 2*3_600_000
	testutil.Equals(t, map[string]string{"{}": "3"}, f.instant(t, `count(http_requests_total)`, in))
	testutil.Equals(t, map[string]string{}, f.instant(t, `http_requests_total{user_id="1"}`, in))
	testutil.Equals(t, map[string]string{`{user_id="1"}`: "1"}, f.instant(t, `absent(http_requests_total{user_id="1"})`, in))
	// Subqueries and offsets see the mask too. The subquery's steps at 1:00..1:03 still find the
	// 0:59 sample within the 5m lookback, as Prometheus' own answer after deletion does: 91 + 4.
	testutil.Equals(t, map[string]string{`{job="api", user_id="1"}`: "95"},
		f.instant(t, `count_over_time(http_requests_total{user_id="1"}[4h:1m])`, at))
	testutil.Equals(t, map[string]string{}, f.instant(t, `http_requests_total{user_id="1"} offset 1h`, in+3_600_000))
	testutil.Equals(t, map[string]string{}, f.instant(t, `http_requests_total{user_id="1"} @ `+fmt.Sprint(in/1000), at))

	// Series and label look-ups never show the token, and drop user 1 only where all its samples
	// in the range are deleted.
	for _, tc := range []struct {
		path   string
		params url.Values
		want   string
	}{
		{"/api/v1/label/token/values", nil, `[]`},
		{"/api/v1/labels", nil, `["__name__","job","user_id"]`},
		{"/api/v1/label/user_id/values", url.Values{"start": {fmt.Sprint((t0 + 3_600_000) / 1000)}, "end": {fmt.Sprint((t0 + 2*3_600_000) / 1000)}}, `["0","2","3"]`},
		{"/api/v1/label/user_id/values", nil, `["0","1","2","3"]`},
		{"/api/v1/series", url.Values{"match[]": {`{user_id="1"}`}, "start": {fmt.Sprint((t0 + 3_600_000) / 1000)}, "end": {fmt.Sprint((t0 + 2*3_600_000) / 1000)}}, `[]`},
		{"/api/v1/series", url.Values{"match[]": {`{token!=""}`}}, `[]`},
	} {
		t.Run(tc.path+"?"+tc.params.Encode(), func(t *testing.T) {
			code, r := f.get(t, tc.path, tc.params)
			testutil.Equals(t, http.StatusOK, code, r.Error)
			testutil.Equals(t, tc.want, string(r.Data))
		})
	}
}

func TestProxyExternalLabels(t *testing.T) {
	f := newFixture(t, map[string]string{"cluster": "eu1"})
	f.tombstone(t, `{cluster="eu1", user_id="2"}`, tombstones.BeginningOfTime, t0+10*3_600_000)
	f.tombstone(t, `{cluster="us1", user_id="3"}`, tombstones.BeginningOfTime, t0+10*3_600_000)
	in := t0 + 3_600_000
	// External labels are labels of every series, and tombstones naming them match.
	testutil.Equals(t, map[string]string{`{cluster="eu1"}`: "4"}, f.instant(t, `count by (cluster) (http_requests_total{cluster="eu1"})`, in))
	testutil.Equals(t, map[string]string{}, f.instant(t, `http_requests_total{cluster="us1"}`, in))
	testutil.Equals(t, map[string]string{}, f.instant(t, `http_requests_total{user_id="2"}`, in))
	testutil.Equals(t, map[string]string{`{__name__="http_requests_total", cluster="eu1", job="api", user_id="3"}`: "60"},
		f.instant(t, `http_requests_total{user_id="3"}`, in))
	code, r := f.get(t, "/api/v1/label/cluster/values", nil)
	testutil.Equals(t, http.StatusOK, code)
	testutil.Equals(t, `["eu1"]`, string(r.Data))
}

func TestProxyFailsClosedWhenTombstonesAreStale(t *testing.T) {
	f := newFixture(t, nil)
	f.bkt.down.Store(true)
	testutil.NotOk(t, f.mask.Refresh(context.Background()))
	// Within the staleness bound the last good set still serves.
	code, _ := f.get(t, "/api/v1/query", url.Values{"query": {"up"}})
	testutil.Equals(t, http.StatusOK, code)

	f.now.Add(2 * time.Minute.Milliseconds())
	code, r := f.get(t, "/api/v1/query", url.Values{"query": {"up"}})
	testutil.Equals(t, http.StatusServiceUnavailable, code)
	testutil.Equals(t, "unavailable", r.ErrorType)
	testutil.Assert(t, strings.Contains(r.Error, "tombstones are stale") && strings.Contains(r.Error, "bucket unreachable"), r.Error)
	code, _ = f.get(t, "/-/ready", nil)
	testutil.Equals(t, http.StatusServiceUnavailable, code)
	code, _ = f.get(t, "/-/healthy", nil)
	testutil.Equals(t, http.StatusOK, code)

	f.bkt.down.Store(false)
	testutil.Ok(t, f.mask.Refresh(context.Background()))
	code, _ = f.get(t, "/api/v1/query", url.Values{"query": {"up"}})
	testutil.Equals(t, http.StatusOK, code)
}

func TestProxyOnlyServesItsEndpoints(t *testing.T) {
	f := newFixture(t, nil)
	for _, p := range []string{"/federate", "/api/v1/read", "/api/v1/write", "/api/v1/admin/tsdb/snapshot", "/api/v1/status/config",
		"/api/v1/targets", "/api/v1/query_cost", "/api/v1/parse_query", "/graph", "/api/v2/query"} {
		code, _ := f.get(t, p, nil)
		testutil.Equals(t, http.StatusNotFound, code, p)
	}
	resp, err := http.Post(f.srv.URL+"/api/v1/query", "application/x-www-form-urlencoded", strings.NewReader("query=up{"))
	testutil.Ok(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	testutil.Equals(t, http.StatusBadRequest, resp.StatusCode)
	testutil.Assert(t, strings.Contains(string(b), `"errorType":"bad_data"`), string(b))
}

func TestProxyFollowsBlocksInTheBucket(t *testing.T) {
	f := newFixture(t, nil)
	in := t0 + 3_600_000
	testutil.Equals(t, map[string]string{"{}": "5"}, f.instant(t, `count(http_requests_total)`, in))

	// A deletion-marked block goes away at the next sync.
	testutil.Ok(t, f.bkt.Upload(context.Background(), path.Join(f.ids[0].String(), block.DeletionMarkFilename), strings.NewReader(`{}`)))
	testutil.Ok(t, f.blocks.Sync(context.Background()))
	testutil.Equals(t, map[string]string{}, f.instant(t, `count(http_requests_total)`, in))

	// A new block shows up.
	_, err := synth.Upload(context.Background(), f.bkt, t.TempDir(), synth.Block{
		Series: []labels.Labels{labels.FromStrings("__name__", "late_metric")}, MinTime: t0, MaxTime: t0 + 7_200_000, Step: 60_000,
	})
	testutil.Ok(t, err)
	testutil.Ok(t, f.blocks.Sync(context.Background()))
	testutil.Equals(t, map[string]string{"{}": "1"}, f.instant(t, `count(late_metric)`, in))
}

func (f *fixture) admin(t *testing.T, method, p string, form url.Values, token string) (int, http.Header, apiResponse) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+p, strings.NewReader(form.Encode()))
	testutil.Ok(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	testutil.Ok(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	testutil.Ok(t, err)
	var r apiResponse
	if len(b) > 0 {
		testutil.Ok(t, json.Unmarshal(b, &r), string(b))
	}
	return resp.StatusCode, resp.Header, r
}

func TestProxyDeleteSeriesMasksAtOnce(t *testing.T) {
	f := newFixture(t, nil)
	in := t0 + 3_600_000
	testutil.Equals(t, map[string]string{"{}": "4"}, f.instant(t, `count(http_requests_total{user_id!=""})`, in))
	form := url.Values{"match[]": {`{user_id="2"}`}, "start": {fmt.Sprint(t0 / 1000)}, "end": {fmt.Sprint((t0 + 7_200_000) / 1000)}}

	// Refused without the token, and with a wrong one; nothing is written.
	code, hdr, r := f.admin(t, http.MethodPost, "/api/v1/admin/tsdb/delete_series", form, "")
	testutil.Equals(t, http.StatusUnauthorized, code)
	testutil.Equals(t, "unauthorized", r.ErrorType)
	testutil.Assert(t, strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer"))
	code, _, _ = f.admin(t, http.MethodPost, "/api/v1/admin/tsdb/delete_series", form, "wrong-token-0123456789")
	testutil.Equals(t, http.StatusUnauthorized, code)
	set, err := f.store.Sync(context.Background())
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(set.Entries))

	code, hdr, _ = f.admin(t, http.MethodPost, "/api/v1/admin/tsdb/delete_series", form, adminToken)
	testutil.Equals(t, http.StatusNoContent, code)
	id := hdr.Get("X-Lethe-Tombstone-Id")
	testutil.Equals(t, 26, len(id))
	// Masked at once, without a refresh.
	testutil.Equals(t, map[string]string{"{}": "3"}, f.instant(t, `count(http_requests_total{user_id!=""})`, in))

	// A selector matching nothing stored is an error (Thanos' proposal), unless forced.
	code, _, r = f.admin(t, http.MethodPost, "/api/v1/admin/tsdb/delete_series", url.Values{"match[]": {`{user_id="nobody"}`}}, adminToken)
	testutil.Equals(t, http.StatusBadRequest, code)
	testutil.Equals(t, "bad_data", r.ErrorType)
	testutil.Assert(t, strings.Contains(r.Error, "match no stored series"), r.Error)
	code, _, r = f.admin(t, http.MethodPost, "/api/v1/admin/tsdb/delete_series", url.Values{"match[]": {`up{`}}, adminToken)
	testutil.Equals(t, http.StatusBadRequest, code, r.Error)
	code, _, _ = f.admin(t, http.MethodPost, "/api/v1/admin/tsdb/delete_series", url.Values{}, adminToken)
	testutil.Equals(t, http.StatusBadRequest, code)

	// The tombstones API lists, shows and cancels; cancelling unmasks.
	code, _, r = f.admin(t, http.MethodGet, "/api/v1/tombstones", nil, adminToken)
	testutil.Equals(t, http.StatusOK, code)
	var list struct {
		Tombstones []tombstones.View `json:"tombstones"`
	}
	testutil.Ok(t, json.Unmarshal(r.Data, &list))
	testutil.Equals(t, 1, len(list.Tombstones))
	testutil.Equals(t, id, list.Tombstones[0].ID)
	testutil.Equals(t, tombstones.StatePending, list.Tombstones[0].State)

	code, _, r = f.admin(t, http.MethodPost, "/api/v1/tombstones/"+id+"/cancel", url.Values{"reason": {"wrong user"}}, adminToken)
	testutil.Equals(t, http.StatusOK, code, r.Error)
	var v tombstones.View
	testutil.Ok(t, json.Unmarshal(r.Data, &v))
	testutil.Equals(t, tombstones.StateCancelled, v.State)
	testutil.Equals(t, map[string]string{"{}": "4"}, f.instant(t, `count(http_requests_total{user_id!=""})`, in))

	code, _, r = f.admin(t, http.MethodGet, "/api/v1/tombstones/01M86065CWNBFDYWAT4K034EY4", nil, adminToken)
	testutil.Equals(t, http.StatusNotFound, code)
	testutil.Equals(t, "not_found", r.ErrorType)

	// POST /api/v1/tombstones adds with lethe's own fields and answers with the tombstone.
	code, _, r = f.admin(t, http.MethodPost, "/api/v1/tombstones", url.Values{"match[]": {`{user_id="3"}`}, "reason": {"GDPR"}, "undelete_window": {"1h"}}, adminToken)
	testutil.Equals(t, http.StatusOK, code, r.Error)
	testutil.Ok(t, json.Unmarshal(r.Data, &v))
	testutil.Equals(t, "GDPR", v.Reason)
	testutil.Equals(t, time.Hour, v.UndeleteUntil.Sub(v.CreatedAt))
	testutil.Equals(t, map[string]string{}, f.instant(t, `http_requests_total{user_id="3"}`, in))
}

func TestProxyAdminDisabledWithoutToken(t *testing.T) {
	f := newFixture(t, nil)
	srv := httptest.NewServer(New(f.mask, f.blocks, slog.New(slog.DiscardHandler), prometheus.NewRegistry(), Config{}))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/api/v1/admin/tsdb/delete_series?match[]=up", "", nil)
	testutil.Ok(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	testutil.Equals(t, http.StatusForbidden, resp.StatusCode)
	testutil.Equals(t, `{"status":"error","errorType":"unavailable","error":"the deletion API is disabled: start lethe-proxy with --web.admin-token-file"}`, string(b))
}

func TestProxyLimits(t *testing.T) {
	f := newFixture(t, nil)
	reg := prometheus.NewRegistry()
	srv := httptest.NewServer(New(f.mask, f.blocks, slog.New(slog.DiscardHandler), reg, Config{MaxSamples: 100, QueryTimeout: time.Minute}))
	defer srv.Close()
	at := fmt.Sprint((t0 + 3_600_000) / 1000)
	resp, err := http.Get(srv.URL + "/api/v1/query?" + url.Values{"query": {`http_requests_total[1h]`}, "time": {at}}.Encode())
	testutil.Ok(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// Prometheus' own answer to a query over --query.max-samples.
	testutil.Equals(t, http.StatusUnprocessableEntity, resp.StatusCode)
	testutil.Assert(t, strings.Contains(string(b), `"errorType":"execution","error":"query processing would load too many samples into memory in query execution"`), string(b))

	// A query under the limit goes through.
	resp, err = http.Get(srv.URL + "/api/v1/query?" + url.Values{"query": {`count(http_requests_total)`}, "time": {at}}.Encode())
	testutil.Ok(t, err)
	resp.Body.Close()
	testutil.Equals(t, http.StatusOK, resp.StatusCode)

	// With every query slot taken, a request whose client gives up gets 503, not a hang.
	srv2 := New(f.mask, f.blocks, slog.New(slog.DiscardHandler), prometheus.NewRegistry(), Config{MaxConcurrency: 1})
	srv2.slots <- struct{}{}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req := httptest.NewRequest(http.MethodGet, "/api/v1/query?query=up", nil).WithContext(ctx)
	rec := httptest.NewRecorder()
	srv2.ServeHTTP(rec, req)
	testutil.Equals(t, http.StatusServiceUnavailable, rec.Code)
	testutil.Assert(t, strings.Contains(rec.Body.String(), "too many concurrent queries"), rec.Body.String())
}
