package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/lethe-project/lethe/internal/synth"
)

// TestProxySafetyLookbackDelta: a series whose last 30 minutes are deleted, after which it
// stopped, queried shortly after its end with a lookback longer than lethe's own, from the request
// (lookback_delta) or from the upstream's --query.lookback-delta. No tombstone must be judged out
// of reach with a shorter lookback than the one the answer is computed with: every probe equals a
// Prometheus that got the deletion through delete_series and clean_tombstones.
func TestProxySafetyLookbackDelta(t *testing.T) {
	const step = 15_000
	twoH := int64(2 * time.Hour / time.Millisecond)
	// session_active for users a and b stops at the end of the first block; c goes on.
	stopped := []labels.Labels{
		labels.FromStrings("__name__", "session_active", "user", "a"),
		labels.FromStrings("__name__", "session_active", "user", "b"),
	}
	goesOn := labels.FromStrings("__name__", "session_active", "user", "c")
	value := func(i int, ts int64) float64 { return float64(10*(i+1)) + float64((ts-blockStart)/step%50) }
	tmp := t.TempDir()
	_, first, err := synth.Write(context.Background(), tmp, synth.Block{
		Series: append(stopped, goesOn), MinTime: blockStart, MaxTime: blockStart + twoH, Step: step, Value: value})
	testutil.Ok(t, err)
	_, second, err := synth.Write(context.Background(), tmp, synth.Block{
		Series: []labels.Labels{goesOn}, MinTime: blockStart + twoH, MaxTime: blockStart + 2*twoH, Step: step, Value: value})
	testutil.Ok(t, err)
	dirs := []string{first, second}

	end := time.UnixMilli(blockStart + twoH - step) // a's last sample
	delStart, delEnd := end.Add(-30*time.Minute), end.Add(time.Hour)
	const match = `session_active{user="a"}`

	oracle5m := startPrometheus(t, dirs)
	oracle1h := startPrometheus(t, dirs, "--query.lookback-delta=1h")
	for _, o := range []*prometheusProc{oracle5m, oracle1h} {
		s, e := delStart, delEnd
		o.DeleteSeries(t, []string{match}, &s, &e)
		o.CleanTombstones(t)
	}
	upstream5m := startPrometheus(t, dirs)
	upstream1h := startPrometheus(t, dirs, "--query.lookback-delta=1h")

	bucketDir := t.TempDir()
	conf := "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + bucketDir + "}"
	r := runLethe(t, conf, "tombstone", "add", "--match", match,
		"--start", delStart.UTC().Format(time.RFC3339), "--end", delEnd.UTC().Format(time.RFC3339), "--query.url", upstream5m.URL)
	testutil.Equals(t, 0, r.code, r.stderr)

	setups := []struct {
		name     string
		proxy    *proxyProc
		upstream *prometheusProc
		oracle   *prometheusProc
	}{
		{"lethe 5m, upstream 5m", startProxy(t, bucketDir, "--upstream.url="+upstream5m.URL, "--query.lookback-delta=5m"), upstream5m, oracle5m},
		{"lethe 5m, upstream 1h", startProxy(t, bucketDir, "--upstream.url="+upstream1h.URL, "--query.lookback-delta=5m"), upstream1h, oracle5m},
		{"lethe 1h, upstream 1h", startProxy(t, bucketDir, "--upstream.url="+upstream1h.URL, "--query.lookback-delta=1h"), upstream1h, oracle1h},
	}
	ask := func(base, path string, form url.Values) string {
		t.Helper()
		resp, err := http.PostForm(base+path, form)
		testutil.Ok(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		testutil.Ok(t, err)
		return fmt.Sprint(resp.StatusCode) + " " + normalizeJSON(t, b)
	}

	var probes []struct {
		path string
		form url.Values
	}
	add := func(path string, form url.Values) {
		probes = append(probes, struct {
			path string
			form url.Values
		}{path, form})
	}
	for _, q := range []string{`session_active`, `sum(session_active)`, match, `timestamp(session_active)`, `count(session_active)`} {
		for _, lookback := range []string{"", "1h", "3600", "45m", "2h", "30s"} {
			for _, d := range []time.Duration{-20 * time.Minute, time.Minute, 10 * time.Minute, 40 * time.Minute, 70 * time.Minute} {
				form := url.Values{"query": {q}, "time": {formatPromTime(end.Add(d).UnixMilli())}}
				if lookback != "" {
					form.Set("lookback_delta", lookback)
				}
				add("/api/v1/query", form)
			}
			form := url.Values{"query": {q}, "start": {formatPromTime(end.Add(-time.Hour).UnixMilli())},
				"end": {formatPromTime(end.Add(90 * time.Minute).UnixMilli())}, "step": {"300"}}
			if lookback != "" {
				form.Set("lookback_delta", lookback)
			}
			add("/api/v1/query_range", form)
		}
	}

	for _, s := range setups {
		discriminating := 0
		for _, p := range probes {
			want := ask(s.oracle.URL, p.path, p.form)
			testutil.Equals(t, want, ask(s.proxy.URL, p.path, p.form), "%s: %s %s", s.name, p.path, p.form.Encode())
			if ask(s.upstream.URL, p.path, p.form) != want {
				discriminating++
			}
		}
		t.Logf("%s: %d probes equal to the oracle, %d of them differ on the undeleted upstream", s.name, len(probes), discriminating)
		testutil.Assert(t, discriminating >= len(probes)/4, "%s: only %d of %d probes see the deletion", s.name, discriminating, len(probes))
	}
}
