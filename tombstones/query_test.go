package tombstones

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
)

// TestQueryAPIBoundsEveryCall: the query-API client reads whole answers only, within its deadline
// and size bound, and reports each failure as what it is.
func TestQueryAPIBoundsEveryCall(t *testing.T) {
	var asked url.Values
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = r.URL.Query()
		switch r.URL.Query().Get("match[]") {
		case `{job="stall"}`:
			select {
			case <-r.Context().Done():
			case <-time.After(20 * time.Second):
			}
		case `{job="big"}`:
			_, _ = w.Write([]byte(`{"status":"success","data":[{"job":"` + strings.Repeat("x", 4096) + `"}]}`))
		case `{job="down"}`:
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte("<html>bad gateway</html>"))
		case `{job="refused"}`:
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"status":"error","errorType":"bad_data","error":"1:2: parse error"}`))
		case `{job="cut"}`:
			_, _ = w.Write([]byte(`{"status":"success","data":[{"job":"c`))
		default:
			_, _ = w.Write([]byte(`{"status":"success","data":[{"__name__":"up","job":"api"}]}`))
		}
	}))
	t.Cleanup(srv.Close)
	base, err := url.Parse(srv.URL + "/prefix")
	testutil.Ok(t, err)
	api := NewQueryAPI(base, srv.Client(), 200*time.Millisecond, 1024)
	series := func(job string) ([]labels.Labels, error) {
		return api.Series(context.Background(), [][]*labels.Matcher{{labels.MustNewMatcher(labels.MatchEqual, "job", job)}}, BeginningOfTime, 1793491200000)
	}

	got, err := series("api")
	testutil.Ok(t, err)
	testutil.Equals(t, []labels.Labels{labels.FromStrings("__name__", "up", "job", "api")}, got)
	testutil.Equals(t, "-62135596800.000", asked.Get("start")) // Open ends clamped to the year 1.
	testutil.Equals(t, "1793491200.000", asked.Get("end"))

	began := time.Now()
	_, err = series("stall")
	var to TimeoutError
	testutil.Assert(t, errors.As(err, &to), "%v", err)
	testutil.Assert(t, time.Since(began) < 10*time.Second, "took %v", time.Since(began))

	_, err = series("big")
	var tl TooLargeError
	testutil.Assert(t, errors.As(err, &tl) && strings.Contains(err.Error(), "1024 bytes"), "%v", err)

	_, err = series("down")
	var se *StatusError
	testutil.Assert(t, errors.As(err, &se) && se.Code == http.StatusBadGateway && se.Type == "", "%v", err)
	_, err = series("refused")
	testutil.Assert(t, errors.As(err, &se) && se.Code == http.StatusBadRequest && se.Type == "bad_data" && se.Msg == "1:2: parse error", "%v", err)
	_, err = series("cut")
	testutil.Assert(t, errors.As(err, &se) && se.Code == http.StatusBadGateway, "%v", err)

	// Streamed: the same bounds, the body read as it comes.
	stream := func(job string) (string, error) {
		var got []byte
		err := api.Stream(context.Background(), "/api/v1/series", url.Values{"match[]": {`{job="` + job + `"}`}}, func(r io.Reader) error {
			var err error
			got, err = io.ReadAll(r)
			return err
		})
		return string(got), err
	}
	body, err := stream("api")
	testutil.Ok(t, err)
	testutil.Equals(t, `{"status":"success","data":[{"__name__":"up","job":"api"}]}`, body)
	_, err = stream("stall")
	testutil.Assert(t, errors.As(err, &to), "%v", err)
	_, err = stream("big")
	testutil.Assert(t, errors.As(err, &tl), "%v", err)
	_, err = stream("refused")
	testutil.Assert(t, errors.As(err, &se) && se.Code == http.StatusBadRequest && se.Type == "bad_data", "%v", err)
	_, err = stream("down")
	testutil.Assert(t, errors.As(err, &se) && se.Code == http.StatusBadGateway, "%v", err)

	_, err = CountSeriesByQuery(context.Background(), "ftp://host", nil, 0, 1)
	testutil.NotOk(t, err)
	n, err := CountSeriesByQuery(context.Background(), srv.URL, [][]*labels.Matcher{{labels.MustNewMatcher(labels.MatchEqual, "job", "api")}}, 0, 1)
	testutil.Ok(t, err)
	testutil.Equals(t, 1, n)
}
