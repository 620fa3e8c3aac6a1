package tombstones

import (
	"encoding/hex"
	"math"
	"slices"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"
)

// Interval is an inclusive range of milliseconds.
type Interval struct {
	Mint, Maxt int64
}

// Intervals are sorted, non-overlapping and non-adjacent.
type Intervals []Interval

// Add inserts iv and merges what overlaps or touches it, keeping the invariant. It never indexes
// out of range, open ends (math.MinInt64, math.MaxInt64) included.
func (ivs Intervals) Add(iv Interval) Intervals {
	i, _ := slices.BinarySearchFunc(ivs, iv.Mint, func(x Interval, t int64) int {
		switch {
		case touchesBefore(x, t):
			return -1
		default:
			return 1
		}
	})
	// ivs[i:] are the first intervals that may touch or follow iv.
	j := i
	for j < len(ivs) && (iv.Maxt == math.MaxInt64 || ivs[j].Mint <= iv.Maxt+1) {
		iv.Mint = min(iv.Mint, ivs[j].Mint)
		iv.Maxt = max(iv.Maxt, ivs[j].Maxt)
		j++
	}
	if i == j {
		return slices.Insert(ivs, i, iv)
	}
	ivs[i] = iv
	return slices.Delete(ivs, i+1, j)
}

// touchesBefore reports whether x ends before t with a gap, so that an interval starting at t
// cannot merge with it.
func touchesBefore(x Interval, t int64) bool { return x.Maxt != math.MaxInt64 && x.Maxt+1 < t }

// Covers reports whether t lies in one of the intervals.
func (ivs Intervals) Covers(t int64) bool {
	_, found := ivs.Covering(t)
	return found
}

// Covering returns the interval that holds t.
func (ivs Intervals) Covering(t int64) (Interval, bool) {
	i, found := slices.BinarySearchFunc(ivs, t, func(x Interval, t int64) int {
		switch {
		case x.Maxt < t:
			return -1
		case x.Mint > t:
			return 1
		}
		return 0
	})
	if !found {
		return Interval{}, false
	}
	return ivs[i], true
}

// CoversRange reports whether the intervals cover all of [mint, maxt]: intervals that touch are
// merged by Add, so one of them must hold the whole range.
func (ivs Intervals) CoversRange(mint, maxt int64) bool {
	iv, ok := ivs.Covering(mint)
	return ok && iv.Maxt >= maxt
}

// Overlaps reports whether any interval meets [mint, maxt].
func (ivs Intervals) Overlaps(mint, maxt int64) bool {
	for _, iv := range ivs {
		if iv.Mint <= maxt && mint <= iv.Maxt {
			return true
		}
	}
	return false
}

// Index answers which time ranges of a series are deleted. Each selector of each tombstone is
// filed under one of its equality matchers (the rarest), so a lookup costs one map probe per label
// of the series plus a check of the few selectors that have no equality matcher.
type Index struct {
	eq       map[string]map[string][]*selector
	redacted map[string]map[[32]byte][]*selector
	scan     []*selector
	key      *RedactionKey
	size     int
}

type selector struct {
	t        *Tombstone
	matchers []*labels.Matcher
	// digests[i] holds the decoded digest of matchers[i] when it is redacted.
	digests [][32]byte
	isRed   []bool
}

// NewIndex indexes the given tombstones. Redacted tombstones need key, and a key with the id they
// were written with: a tombstone that cannot be evaluated is an error, because masking must fail
// closed rather than show data it was asked to hide.
func NewIndex(ts []*Tombstone, key *RedactionKey) (*Index, error) {
	ix := &Index{
		eq:       map[string]map[string][]*selector{},
		redacted: map[string]map[[32]byte][]*selector{},
		key:      key,
		size:     len(ts),
	}
	var sels []*selector
	for _, t := range ts {
		if t.Redacted() && (key == nil || key.ID() != t.Redaction.KeyID) {
			return nil, errors.Newf("tombstone %s is redacted with key %s, which is not configured", t.ID, t.Redaction.KeyID)
		}
		for _, ms := range t.Selectors() {
			s := &selector{t: t, matchers: ms}
			if t.Redacted() {
				s.digests = make([][32]byte, len(ms))
				s.isRed = make([]bool, len(ms))
				for i, m := range ms {
					if !isRedactable(m) {
						continue
					}
					b, err := hex.DecodeString(m.Value)
					if err != nil || len(b) != 32 {
						return nil, errors.Newf("tombstone %s: redacted matcher on %s holds no digest", t.ID, m.Name)
					}
					copy(s.digests[i][:], b)
					s.isRed[i] = true
				}
			}
			sels = append(sels, s)
		}
	}

	// Count how many selectors each equality pair could file, so each picks its rarest.
	type pair struct{ name, value string }
	freq := map[pair]int{}
	for _, s := range sels {
		for _, m := range s.matchers {
			if m.Type == labels.MatchEqual && m.Value != "" {
				freq[pair{m.Name, m.Value}]++
			}
		}
	}
	for _, s := range sels {
		best := -1
		for i, m := range s.matchers {
			if m.Type != labels.MatchEqual || m.Value == "" {
				continue
			}
			if best < 0 || freq[pair{m.Name, m.Value}] < freq[pair{s.matchers[best].Name, s.matchers[best].Value}] {
				best = i
			}
		}
		switch {
		case best < 0:
			ix.scan = append(ix.scan, s)
		case s.isRed != nil && s.isRed[best]:
			m := s.matchers[best]
			if ix.redacted[m.Name] == nil {
				ix.redacted[m.Name] = map[[32]byte][]*selector{}
			}
			ix.redacted[m.Name][s.digests[best]] = append(ix.redacted[m.Name][s.digests[best]], s)
		default:
			m := s.matchers[best]
			if ix.eq[m.Name] == nil {
				ix.eq[m.Name] = map[string][]*selector{}
			}
			ix.eq[m.Name][m.Value] = append(ix.eq[m.Name][m.Value], s)
		}
	}
	return ix, nil
}

// Reindex indexes the tombstones ts (a part of ix's, say) with the redaction key of ix.
func (ix *Index) Reindex(ts []*Tombstone) (*Index, error) { return NewIndex(ts, ix.key) }

// Len returns how many tombstones the index holds.
func (ix *Index) Len() int { return ix.size }

// Intervals appends to dst the deleted intervals of the series with the given labels. ext are the
// external labels of the series' block or store; as in Thanos, they override series labels of the
// same name. With no tombstone matching, it allocates nothing.
func (ix *Index) Intervals(series, ext labels.Labels, dst Intervals) Intervals {
	ix.visit(series, ext, func(t *Tombstone) {
		dst = dst.Add(Interval{Mint: t.Start, Maxt: t.End})
	})
	return dst
}

// Matching calls fn for every tombstone that matches the series, once per matching selector.
func (ix *Index) Matching(series, ext labels.Labels, fn func(*Tombstone)) {
	ix.visit(series, ext, fn)
}

// lookup holds what one lookup has hashed, so a value is hashed at most once.
type lookup struct {
	ix     *Index
	series labels.Labels
	ext    labels.Labels
	n      int
	names  [4]string
	sums   [4][32]byte
}

func (l *lookup) value(name string) string {
	if v := l.ext.Get(name); v != "" {
		return v
	}
	return l.series.Get(name)
}

func (l *lookup) digest(name, value string) [32]byte {
	for i := 0; i < l.n; i++ {
		if l.names[i] == name {
			return l.sums[i]
		}
	}
	var sum [32]byte
	l.ix.key.sum(name, value, sum[:0])
	if l.n < len(l.names) {
		l.names[l.n], l.sums[l.n] = name, sum
		l.n++
	}
	return sum
}

func (l *lookup) matches(s *selector) bool {
	for i, m := range s.matchers {
		v := l.value(m.Name)
		if s.isRed != nil && s.isRed[i] {
			if v == "" || l.digest(m.Name, v) != s.digests[i] {
				return false
			}
			continue
		}
		if !m.Matches(v) {
			return false
		}
	}
	return true
}

func (ix *Index) visit(series, ext labels.Labels, fn func(*Tombstone)) {
	if ix.size == 0 {
		return
	}
	l := lookup{ix: ix, series: series, ext: ext}
	probe := func(lb labels.Label) {
		if byValue, ok := ix.eq[lb.Name]; ok {
			for _, s := range byValue[lb.Value] {
				if l.matches(s) {
					fn(s.t)
				}
			}
		}
		if byDigest, ok := ix.redacted[lb.Name]; ok {
			for _, s := range byDigest[l.digest(lb.Name, lb.Value)] {
				if l.matches(s) {
					fn(s.t)
				}
			}
		}
	}
	series.Range(func(lb labels.Label) {
		if ext.Len() > 0 && ext.Has(lb.Name) {
			return
		}
		probe(lb)
	})
	ext.Range(probe)
	for _, s := range ix.scan {
		if l.matches(s) {
			fn(s.t)
		}
	}
}

// MatcherMatches reports whether matcher m of tombstone t accepts value, comparing digests when the
// matcher is redacted.
func (ix *Index) MatcherMatches(t *Tombstone, m *labels.Matcher, value string) bool {
	if t.Redacted() && isRedactable(m) {
		return value != "" && ix.key != nil && ix.key.Digest(m.Name, value) == m.Value
	}
	return m.Matches(value)
}
