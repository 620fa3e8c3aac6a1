package proxy

import (
	"slices"
	"strings"
	"sync"

	"github.com/lethe-project/lethe/tombstones"
)

// splits caches one index's splits by label names: a source asks for the same split on every
// query, and 10,000 tombstones are not re-indexed each time.
type splits struct {
	mu      sync.Mutex
	byNames map[string]split
}

type split struct {
	naming, others *Snapshot
	err            error
}

// SplitNaming splits the snapshot's tombstones by the label names: naming holds those one of
// whose selectors has a matcher on one of names, others the rest. naming is nil when no
// tombstone names them (others is then s itself).
//
// A source that drops labels before masking, as replica labels are dropped when replicas are
// deduplicated, masks with naming before it drops them and lets the proxy mask with others after:
// a tombstone on one replica deletes that replica's samples only, as Prometheus' delete_series
// on that replica does, and the other replica's samples answer in their place.
func (s *Snapshot) SplitNaming(names []string) (naming, others *Snapshot, err error) {
	if len(names) == 0 {
		return nil, s, nil
	}
	key := strings.Join(names, "\xff")
	if s.splits != nil {
		s.splits.mu.Lock()
		defer s.splits.mu.Unlock()
		if sp, ok := s.splits.byNames[key]; ok {
			return s.withHits(sp.naming), s.withHits(sp.others), sp.err
		}
	}
	sp := s.split(names)
	if s.splits != nil {
		s.splits.byNames[key] = sp
	}
	return s.withHits(sp.naming), s.withHits(sp.others), sp.err
}

func (s *Snapshot) split(names []string) split {
	mentions := func(t *tombstones.Tombstone) bool {
		for _, sel := range t.Selectors() {
			for _, m := range sel {
				if slices.Contains(names, m.Name) {
					return true
				}
			}
		}
		return false
	}
	var named, rest []*tombstones.Tombstone
	for _, t := range s.live {
		if mentions(t) {
			named = append(named, t)
		} else {
			rest = append(rest, t)
		}
	}
	if len(named) == 0 {
		return split{others: s}
	}
	sub := func(live []*tombstones.Tombstone) (*Snapshot, error) {
		ix, err := s.index.Reindex(live)
		if err != nil {
			return nil, err
		}
		return &Snapshot{index: ix, live: live, metrics: s.metrics, sels: newSelectorIndex(live)}, nil
	}
	naming, err := sub(named)
	if err != nil {
		return split{err: err}
	}
	others, err := sub(rest)
	if err != nil {
		return split{err: err}
	}
	return split{naming: naming, others: others}
}

// withHits returns part recording what it masks into s's query record.
func (s *Snapshot) withHits(part *Snapshot) *Snapshot {
	if part == nil || part == s || s.hits == nil {
		return part
	}
	c := *part
	c.hits = s.hits
	return &c
}
