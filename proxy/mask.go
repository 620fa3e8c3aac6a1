// Package proxy serves the Prometheus HTTP API with every sample a live tombstone covers removed:
// PromQL is evaluated by Prometheus' own engine over a storage.Queryable that drops deleted
// samples, fed by an upstream Prometheus-compatible server or by the bucket's blocks.
package proxy

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/lethe-project/lethe/tombstones"
)

// ErrStale is returned while the tombstones could not be refreshed for longer than the bound: the
// proxy fails closed rather than serve data that may have been deleted since.
var ErrStale = errors.New("tombstones are stale: cannot refresh them from the bucket, refusing to serve possibly deleted data")

// Mask holds the live tombstones, refreshed from the bucket, and answers which samples to hide.
type Mask struct {
	store        *tombstones.Store
	logger       *slog.Logger
	now          func() time.Time
	maxStaleness time.Duration

	mu       sync.RWMutex
	index    *tombstones.Index
	live     []*tombstones.Tombstone
	sels     *selectorIndex
	splits   *splits
	lastSync time.Time
	lastErr  error
	// local are tombstones this process wrote that no refresh has listed yet; a refresh that began
	// before the write must not unmask them.
	local map[ulid.ULID]*tombstones.Tombstone

	loaded  prometheus.Gauge
	age     prometheus.GaugeFunc
	metrics *maskMetrics
}

// NewMask returns a mask over the store's tombstones. It holds nothing until the first Refresh.
func NewMask(store *tombstones.Store, logger *slog.Logger, reg prometheus.Registerer, maxStaleness time.Duration) *Mask {
	m := &Mask{store: store, logger: logger, now: store.Now, maxStaleness: maxStaleness, local: map[ulid.ULID]*tombstones.Tombstone{}}
	f := promauto.With(reg)
	m.loaded = f.NewGauge(prometheus.GaugeOpts{Name: "lethe_proxy_tombstones_loaded", Help: "Tombstones the proxy masks (all but cancelled ones)."})
	m.metrics = &maskMetrics{
		seriesMasked: f.NewCounter(prometheus.CounterOpts{Name: "lethe_proxy_series_masked_total", Help: "Series read through the proxy that a tombstone covers in part or whole."}),
		seriesHidden: f.NewCounter(prometheus.CounterOpts{Name: "lethe_proxy_series_hidden_total", Help: "Series left out of selects and of series and label look-ups because tombstones cover all their samples in the range."}),
	}
	m.age = f.NewGaugeFunc(prometheus.GaugeOpts{Name: "lethe_proxy_tombstones_refresh_age_seconds", Help: "Seconds since the tombstones were last refreshed from the bucket."}, func() float64 {
		m.mu.RLock()
		defer m.mu.RUnlock()
		if m.lastSync.IsZero() {
			return -1
		}
		return m.now().Sub(m.lastSync).Seconds()
	})
	return m
}

// Refresh syncs the tombstones from the bucket and swaps in a new index. On failure the previous
// index stays in force until it is older than the staleness bound.
func (m *Mask) Refresh(ctx context.Context) error {
	set, err := m.store.Sync(ctx)
	if err == nil {
		err = unreadableTombstone(set)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		var ix *tombstones.Index
		live := set.Masking()
		for id, t := range m.local {
			if _, listed := set.Get(id); listed {
				delete(m.local, id)
				continue
			}
			live = append(live, t)
		}
		if ix, err = tombstones.NewIndex(live, m.store.RedactionKey()); err == nil {
			m.index, m.live, m.lastSync, m.lastErr = ix, live, set.At, nil
			m.sels = newSelectorIndex(live)
			m.splits = &splits{byNames: map[string]split{}}
			m.loaded.Set(float64(len(live)))
			return nil
		}
	}
	m.lastErr = err
	m.logger.Error("refresh tombstones", "err", err)
	return err
}

// unreadableTombstone fails a refresh that found a tombstone object it cannot decode: what it
// deletes is unknown, so a set without it may show deleted data. The last good index stays in
// force until the staleness bound, then the proxy fails closed until the object decodes or is
// removed. A broken cancellation or applied record is no such danger: its tombstone keeps masking.
func unreadableTombstone(set *tombstones.Set) error {
	for _, b := range set.Broken {
		id, ok := strings.CutSuffix(strings.TrimPrefix(b.Object, tombstones.Prefix), ".json")
		if _, err := ulid.ParseStrict(id); ok && err == nil && b.Object == tombstones.Prefix+id+".json" {
			return errors.Newf("tombstone object %s is unusable (%s): cannot tell what it deletes", b.Object, b.Err)
		}
	}
	return nil
}

// Run refreshes every interval until ctx ends.
func (m *Mask) Run(ctx context.Context, interval time.Duration) error {
	every(ctx, interval, func() {
		_ = m.Refresh(ctx) // Logged; staleness is judged at query time.
	})
	return nil
}

// every calls fn at each tick of interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// Snapshot is the index in force for one query.
type Snapshot struct {
	index   *tombstones.Index
	live    []*tombstones.Tombstone
	metrics *maskMetrics
	// hits records which tombstones masked something in this query, for its log line.
	hits *hits
	// sels is built once per index and shared by the snapshots taken from it.
	sels *selectorIndex
	// splits holds the snapshot's splits by label names (see SplitNaming), made once per index.
	splits *splits
}

// hits is the set of tombstones that masked series in one query.
type hits struct {
	mu     sync.Mutex
	ids    map[ulid.ULID]struct{}
	series int
}

func (h *hits) add(series labels.Labels, ext labels.Labels, ix *tombstones.Index) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.series++
	ix.Matching(series, ext, func(t *tombstones.Tombstone) { h.ids[t.ID] = struct{}{} })
}

// summary returns the tombstone ids and the number of series masked.
func (h *hits) summary() ([]string, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]string, 0, len(h.ids))
	for id := range h.ids {
		ids = append(ids, id.String())
	}
	slices.Sort(ids)
	return ids, h.series
}

// forQuery returns a copy of the snapshot that records what it masks.
func (s *Snapshot) forQuery() *Snapshot {
	c := *s
	c.hits = &hits{ids: map[ulid.ULID]struct{}{}}
	return &c
}

// Current returns the index in force, or ErrStale (wrapped with the last refresh error) once the
// last successful refresh is older than the staleness bound.
func (m *Mask) Current() (*Snapshot, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.index == nil {
		if m.lastErr != nil {
			return nil, errors.Wrap(ErrStale, m.lastErr.Error())
		}
		return nil, ErrStale
	}
	if age := m.now().Sub(m.lastSync); age > m.maxStaleness {
		msg := "last refresh " + age.Round(time.Second).String() + " ago"
		if m.lastErr != nil {
			msg += ": " + m.lastErr.Error()
		}
		return nil, errors.Wrap(ErrStale, msg)
	}
	return &Snapshot{index: m.index, live: m.live, metrics: m.metrics, sels: m.sels, splits: m.splits}, nil
}

// Intervals returns the deleted intervals of a series with the given labels and external labels.
func (s *Snapshot) Intervals(series, ext labels.Labels, dst tombstones.Intervals) tombstones.Intervals {
	return s.index.Intervals(series, ext, dst)
}

// MayMatch reports whether a series selected by matchers, with samples in [mint, maxt], might be
// covered by a live tombstone. False is certain; true may be a false alarm.
func (s *Snapshot) MayMatch(matchers []*labels.Matcher, ext labels.Labels, mint, maxt int64) bool {
	return s.selectors().mayMatch(matchers, ext, mint, maxt, s.index)
}

func (s *Snapshot) selectors() *selectorIndex {
	if s.sels == nil {
		return newSelectorIndex(s.live) // Snapshots made by hand (tests, the empty one).
	}
	return s.sels
}

// selectorIndex files the live tombstones' selectors under one of their equality matchers,
// __name__ first, so that a query pinning that label only meets the selectors filed under its
// value: 10,000 tombstones on other metrics cost a map probe, not 10,000 checks.
type selectorIndex struct {
	byKey   map[string]map[string][]selectorRef
	unkeyed []selectorRef
}

type selectorRef struct {
	t   *tombstones.Tombstone
	sel []*labels.Matcher
}

func newSelectorIndex(live []*tombstones.Tombstone) *selectorIndex {
	si := &selectorIndex{byKey: map[string]map[string][]selectorRef{}}
	for _, t := range live {
		for _, sel := range t.Selectors() {
			ref := selectorRef{t: t, sel: sel}
			key := -1
			for i, m := range sel {
				if m.Type != labels.MatchEqual || m.Value == "" || (t.Redacted() && m.Name != model.MetricNameLabel) {
					continue
				}
				if key < 0 || m.Name == model.MetricNameLabel {
					key = i
				}
			}
			if key < 0 {
				si.unkeyed = append(si.unkeyed, ref)
				continue
			}
			m := sel[key]
			if si.byKey[m.Name] == nil {
				si.byKey[m.Name] = map[string][]selectorRef{}
			}
			si.byKey[m.Name][m.Value] = append(si.byKey[m.Name][m.Value], ref)
		}
	}
	return si
}

func (si *selectorIndex) mayMatch(query []*labels.Matcher, ext labels.Labels, mint, maxt int64, ix *tombstones.Index) bool {
	check := func(refs []selectorRef) bool {
		for _, r := range refs {
			if r.t.Overlaps(mint, maxt) && !disjoint(query, r.sel, r.t, ext, ix) {
				return true
			}
		}
		return false
	}
	if check(si.unkeyed) {
		return true
	}
	for name, byValue := range si.byKey {
		if v, pinned := pinnedValue(query, ext, name); pinned {
			if check(byValue[v]) {
				return true
			}
			continue
		}
		for _, refs := range byValue {
			if check(refs) {
				return true
			}
		}
	}
	return false
}

// pinnedValue returns the value the query's equality matchers (or the external labels) fix for a
// label name.
func pinnedValue(query []*labels.Matcher, ext labels.Labels, name string) (string, bool) {
	if v := ext.Get(name); v != "" {
		return v, true
	}
	for _, m := range query {
		if m.Name == name && m.Type == labels.MatchEqual {
			return m.Value, true
		}
	}
	return "", false
}

// disjoint reports whether no series can satisfy both the query's matchers and a tombstone
// selector: some label's value is pinned by an equality matcher on one side and refused by the
// other, or decided by the external labels.
func disjoint(query, sel []*labels.Matcher, t *tombstones.Tombstone, ext labels.Labels, ix *tombstones.Index) bool {
	for _, tm := range sel {
		if v := ext.Get(tm.Name); v != "" {
			if !ix.MatcherMatches(t, tm, v) {
				return true
			}
			continue
		}
		for _, qm := range query {
			if qm.Name != tm.Name {
				continue
			}
			if qm.Type == labels.MatchEqual && !ix.MatcherMatches(t, tm, qm.Value) {
				return true
			}
			if tm.Type == labels.MatchEqual && !t.Redacted() && !qm.Matches(tm.Value) {
				return true
			}
		}
	}
	return false
}

// add masks a tombstone written by this process at once, before the next refresh lists it.
func (m *Mask) add(t *tombstones.Tombstone) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	live := append(slices.Clone(m.live), t)
	ix, err := tombstones.NewIndex(live, m.store.RedactionKey())
	if err != nil {
		return err
	}
	m.index, m.live, m.sels = ix, live, newSelectorIndex(live)
	m.local[t.ID] = t
	m.loaded.Set(float64(len(live)))
	return nil
}
