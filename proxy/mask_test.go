package proxy

import (
	"fmt"
	"math/rand"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/lethe-project/lethe/tombstones"
)

// TestMayMatchIndexAgreesWithScan checks the selector index against a scan of every tombstone,
// on random tombstones and queries.
func TestMayMatchIndexAgreesWithScan(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(t0) }))
	names := []string{"up", "http_requests_total", "node_load1"}
	pick := func(vals ...string) string { return vals[rng.Intn(len(vals))] }
	sel := func() string {
		switch rng.Intn(5) {
		case 0:
			return fmt.Sprintf(`{__name__=%q, user_id=%q}`, pick(names...), pick("1", "2", "3"))
		case 1:
			return fmt.Sprintf(`{user_id=%q}`, pick("1", "2", "3"))
		case 2:
			return fmt.Sprintf(`{job=~%q}`, pick("a.*", "b", "api|web"))
		case 3:
			return fmt.Sprintf(`{__name__=%q, cluster=%q}`, pick(names...), pick("eu1", "us1"))
		default:
			return fmt.Sprintf(`%s{job!=%q}`, pick(names...), pick("api", "web"))
		}
	}
	for round := 0; round < 30; round++ {
		var ts []*tombstones.Tombstone
		for i := 0; i < 1+rng.Intn(8); i++ {
			start := t0 + int64(rng.Intn(10))*3_600_000
			end := start + int64(rng.Intn(5))*3_600_000
			tb, err := store.Build(tombstones.Spec{Selectors: []string{sel(), sel()}[:1+rng.Intn(2)], Start: &start, End: &end})
			testutil.Ok(t, err)
			ts = append(ts, tb)
		}
		ix, err := tombstones.NewIndex(ts, nil)
		testutil.Ok(t, err)
		snap := &Snapshot{index: ix, live: ts, sels: newSelectorIndex(ts)}
		for q := 0; q < 40; q++ {
			ms, err := parser.NewParser(parser.Options{}).ParseMetricSelector(sel())
			testutil.Ok(t, err)
			ext := labels.EmptyLabels()
			if rng.Intn(2) == 0 {
				ext = labels.FromStrings("cluster", pick("eu1", "us1"))
			}
			mint := t0 + int64(rng.Intn(15))*3_600_000
			maxt := mint + int64(rng.Intn(3))*3_600_000
			scan := false
			for _, tb := range ts {
				for _, s := range tb.Selectors() {
					scan = scan || (tb.Overlaps(mint, maxt) && !disjoint(ms, s, tb, ext, ix))
				}
			}
			testutil.Equals(t, scan, snap.MayMatch(ms, ext, mint, maxt), "query %v ext %v [%d,%d]", ms, ext, mint, maxt)
		}
	}
}
