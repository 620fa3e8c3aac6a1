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
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/internal/objfault"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// faultFixture is a proxy over two blocks in a bucket that misbehaves on demand, with a fixed
// clock the test moves, and a tombstone deleting user 1 everywhere.
type faultFixture struct {
	raw   objstore.Bucket
	bkt   *objfault.Bucket
	now   *atomic.Int64
	store *tombstones.Store
	mask  *Mask
	srv   *httptest.Server
}

const faultStaleness = time.Minute

func newFaultFixture(t *testing.T, raw objstore.Bucket) *faultFixture {
	t.Helper()
	ctx := context.Background()
	f := &faultFixture{bkt: objfault.New(raw), raw: raw, now: &atomic.Int64{}}
	f.now.Store(t0 + 5*3_600_000)
	clock := func() time.Time { return time.UnixMilli(f.now.Load()) }
	if ok, err := raw.Exists(ctx, "blocks-uploaded"); err != nil || !ok {
		testutil.Ok(t, err)
		var series []labels.Labels
		for u := 0; u < 4; u++ {
			series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", fmt.Sprint(u)))
		}
		for i := int64(0); i < 2; i++ {
			_, err := synth.Upload(ctx, raw, t.TempDir(), synth.Block{
				Series: series, MinTime: t0 + i*7_200_000, MaxTime: t0 + (i+1)*7_200_000, Step: 60_000,
				Value: func(s int, ts int64) float64 { return float64((ts - t0) / 60_000) },
			})
			testutil.Ok(t, err)
		}
		testutil.Ok(t, raw.Upload(ctx, "blocks-uploaded", strings.NewReader("")))
		start, end := tombstones.BeginningOfTime, t0+10*3_600_000
		_, err := tombstones.NewStore(raw, prometheus.NewRegistry(), tombstones.WithClock(clock)).Add(ctx, tombstones.Spec{Selectors: []string{`{user_id="1"}`}, Start: &start, End: &end})
		testutil.Ok(t, err)
	}
	reg := prometheus.NewRegistry()
	f.store = tombstones.NewStore(f.bkt, reg, tombstones.WithClock(clock))
	f.mask = NewMask(f.store, slog.New(slog.DiscardHandler), reg, faultStaleness)
	f.mask.now = clock
	blocks := NewBucketBlocks(raw, t.TempDir(), slog.New(slog.DiscardHandler), reg)
	testutil.Ok(t, blocks.Sync(ctx))
	t.Cleanup(func() { testutil.Ok(t, blocks.Close()) })
	f.srv = httptest.NewServer(New(f.mask, blocks, slog.New(slog.DiscardHandler), reg, Config{AdminToken: adminToken}))
	t.Cleanup(f.srv.Close)
	return f
}

// dataProbes are requests to every data endpoint, each answering with user 1 if unmasked.
func dataProbes() []struct{ path, query string } {
	at := fmt.Sprint((t0 + 3_600_000) / 1000)
	in := url.Values{"start": {fmt.Sprint(t0 / 1000)}, "end": {fmt.Sprint((t0 + 4*3_600_000) / 1000)}}
	return []struct{ path, query string }{
		{"/api/v1/query", url.Values{"query": {`http_requests_total`}, "time": {at}}.Encode()},
		{"/api/v1/query_range", url.Values{"query": {`http_requests_total`}, "start": in["start"], "end": in["end"], "step": {"600"}}.Encode()},
		{"/api/v1/series", url.Values{"match[]": {`http_requests_total`}, "start": in["start"], "end": in["end"]}.Encode()},
		{"/api/v1/labels", in.Encode()},
		{"/api/v1/label/user_id/values", in.Encode()},
		{"/api/v1/query_exemplars", url.Values{"query": {`http_requests_total`}, "start": in["start"], "end": in["end"]}.Encode()},
	}
}

func (f *faultFixture) get(t *testing.T, target string) (int, string) {
	t.Helper()
	resp, err := http.Get(f.srv.URL + target)
	testutil.Ok(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	testutil.Ok(t, err)
	return resp.StatusCode, string(b)
}

// users returns the user_id values the instant query and the label look-up show.
func (f *faultFixture) users(t *testing.T) (string, string) {
	t.Helper()
	p := dataProbes()
	code, body := f.get(t, p[0].path+"?"+p[0].query)
	testutil.Equals(t, http.StatusOK, code, body)
	var r struct {
		Data struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
			} `json:"result"`
		} `json:"data"`
	}
	testutil.Ok(t, json.Unmarshal([]byte(body), &r))
	var ids []string
	for _, s := range r.Data.Result {
		ids = append(ids, s.Metric["user_id"])
	}
	code, values := f.get(t, p[4].path+"?"+p[4].query)
	testutil.Equals(t, http.StatusOK, code, values)
	return strings.Join(ids, ","), values
}

// assertMasked checks that user 1 is masked in the query and the label look-up.
func (f *faultFixture) assertMasked(t *testing.T) {
	t.Helper()
	ids, values := f.users(t)
	testutil.Equals(t, "0,2,3", ids)
	testutil.Equals(t, `{"status":"success","data":["0","2","3"]}`, values)
}

// assertClosed checks that every data endpoint refuses and the proxy reports not ready.
func (f *faultFixture) assertClosed(t *testing.T, cause string) {
	t.Helper()
	for _, p := range dataProbes() {
		code, body := f.get(t, p.path+"?"+p.query)
		testutil.Equals(t, http.StatusServiceUnavailable, code, "%s: %s", p.path, body)
		testutil.Assert(t, strings.Contains(body, `"errorType":"unavailable"`) && strings.Contains(body, "tombstones are stale") && strings.Contains(body, cause), "%s: %s", p.path, body)
		testutil.Assert(t, !strings.Contains(body, `"user_id"`), "%s: %s", p.path, body)
	}
	code, body := f.get(t, "/-/ready")
	testutil.Equals(t, http.StatusServiceUnavailable, code, body)
}

// recoverByItself runs the refresh loop and waits, bounded, until the proxy is ready again.
func (f *faultFixture) recoverByItself(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.mask.Run(ctx, 5*time.Millisecond) }()
	defer func() {
		cancel()
		testutil.Ok(t, <-done)
	}()
	for i := 0; i < 1000; i++ {
		if code, _ := f.get(t, "/-/ready"); code == http.StatusOK {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the proxy did not become ready after the bucket recovered")
}

var tombstoneObjects = regexp.MustCompile(`^tombstones/`)

func TestProxyFailsClosedWhileTombstonesCannotBeRefreshed(t *testing.T) {
	raw := objstore.NewInMemBucket()
	for _, tc := range []struct {
		name  string
		fault objfault.Fault
		// newTombstone writes a tombstone object the faulty read must meet (cached ones are not re-read).
		newTombstone bool
		cause        string
	}{
		{"listing fails", objfault.Fault{Op: objfault.OpIter, Kind: objfault.KindError}, false, "injected failure"},
		{"listing times out", objfault.Fault{Op: objfault.OpIter, Kind: objfault.KindTimeout, Delay: 10 * time.Millisecond}, false, "timed out"},
		{"reading a new tombstone fails", objfault.Fault{Op: objfault.OpGet, Name: tombstoneObjects, Kind: objfault.KindError}, true, "injected failure"},
		{"reading a new tombstone is cut short", objfault.Fault{Op: objfault.OpGet, Name: tombstoneObjects, Kind: objfault.KindTruncate, Bytes: 40}, true, "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFaultFixture(t, raw)
			testutil.Ok(t, f.mask.Refresh(context.Background()))
			f.assertMasked(t)

			f.bkt.Add(tc.fault)
			var added *tombstones.Tombstone
			if tc.newTombstone {
				start, end := tombstones.BeginningOfTime, t0+10*3_600_000
				var err error
				added, err = tombstones.NewStore(raw, prometheus.NewRegistry(), tombstones.WithClock(f.store.Now)).Add(context.Background(),
					tombstones.Spec{Selectors: []string{`{user_id="3"}`}, Start: &start, End: &end, Force: true})
				testutil.Ok(t, err)
			}
			err := f.mask.Refresh(context.Background())
			testutil.NotOk(t, err)
			testutil.Assert(t, strings.Contains(err.Error(), tc.cause), err.Error())
			testutil.Assert(t, f.bkt.Injected()[tc.fault.Kind] > 0, "no fault injected")

			// Within the bound the last good set serves, masked.
			f.now.Add(faultStaleness.Milliseconds())
			f.assertMasked(t)
			// Past it, every data endpoint fails closed, and stays closed while the fault lasts.
			f.now.Add(1)
			f.assertClosed(t, tc.cause)
			testutil.NotOk(t, f.mask.Refresh(context.Background()))
			f.now.Add(time.Hour.Milliseconds())
			f.assertClosed(t, tc.cause)

			// The bucket recovers: the proxy serves again by itself, with what it could not read.
			f.bkt.Clear()
			f.recoverByItself(t)
			ids, values := f.users(t)
			if added == nil {
				testutil.Equals(t, "0,2,3", ids)
				testutil.Equals(t, `{"status":"success","data":["0","2","3"]}`, values)
			} else {
				testutil.Equals(t, "0,2", ids)
				testutil.Equals(t, `{"status":"success","data":["0","2"]}`, values)
				testutil.Ok(t, raw.Delete(context.Background(), tombstones.TombstoneObject(added.ID)))
			}
		})
	}
}

func TestProxyNeverUnmasksOnACorruptTombstone(t *testing.T) {
	ctx := context.Background()
	raw := objstore.NewInMemBucket()
	f := newFaultFixture(t, raw)
	testutil.Ok(t, f.mask.Refresh(ctx))
	f.assertMasked(t)

	// A tombstone object that does not decode (cut short by a writer, or from a newer lethe) may
	// delete anything: the refresh fails, the last good set serves until the bound, then nothing.
	corrupt := tombstones.TombstoneObject(ulid.MustNew(uint64(t0), strings.NewReader(strings.Repeat("\x01", 16))))
	testutil.Ok(t, raw.Upload(ctx, corrupt, strings.NewReader(`{"version":1,"id":"`)))
	err := f.mask.Refresh(ctx)
	testutil.NotOk(t, err)
	testutil.Assert(t, strings.Contains(err.Error(), corrupt+" is unusable"), err.Error())
	f.assertMasked(t)
	f.now.Add(faultStaleness.Milliseconds() + 1)
	f.assertClosed(t, corrupt+" is unusable")

	// A proxy starting now never serves either.
	fresh := newFaultFixture(t, raw)
	testutil.NotOk(t, fresh.mask.Refresh(ctx))
	fresh.assertClosed(t, corrupt+" is unusable")

	// Once the object is removed, both serve again by themselves, masked.
	testutil.Ok(t, raw.Delete(ctx, corrupt))
	f.recoverByItself(t)
	f.assertMasked(t)
	fresh.recoverByItself(t)
	fresh.assertMasked(t)

	// A proxy starting while the known tombstone's reads are cut short serves nothing.
	cut := newFaultFixture(t, raw)
	cut.bkt.Add(objfault.Fault{Op: objfault.OpGet, Name: tombstoneObjects, Kind: objfault.KindTruncate, Bytes: 10})
	testutil.NotOk(t, cut.mask.Refresh(ctx))
	cut.assertClosed(t, "unexpected EOF")
	cut.bkt.Clear()
	cut.recoverByItself(t)
	cut.assertMasked(t)

	// A cancellation that does not decode, or whose read is cut short, cancels nothing.
	set, err := f.store.Sync(ctx)
	testutil.Ok(t, err)
	id := set.Entries[0].ID
	brokenCancel := tombstones.Prefix + id.String() + ".cancel-" + ulid.MustNew(uint64(t0), strings.NewReader(strings.Repeat("\x02", 16))).String() + ".json"
	testutil.Ok(t, raw.Upload(ctx, brokenCancel, strings.NewReader(`{"version":1,`)))
	testutil.Ok(t, f.mask.Refresh(ctx))
	f.assertMasked(t)
	testutil.Ok(t, raw.Delete(ctx, brokenCancel))

	f.bkt.Add(objfault.Fault{Op: objfault.OpGet, Name: regexp.MustCompile(`\.cancel-`), Kind: objfault.KindTruncate, Bytes: 20})
	_, err = tombstones.NewStore(raw, prometheus.NewRegistry(), tombstones.WithClock(f.store.Now)).Cancel(ctx, id, "test", "")
	testutil.Ok(t, err)
	testutil.NotOk(t, f.mask.Refresh(ctx))
	f.assertMasked(t)
	testutil.Equals(t, 1, f.bkt.Injected()[objfault.KindTruncate])
	// Read whole, the cancellation unmasks user 1, as it should.
	f.bkt.Clear()
	testutil.Ok(t, f.mask.Refresh(ctx))
	ids, _ := f.users(t)
	testutil.Equals(t, "0,1,2,3", ids)
}
