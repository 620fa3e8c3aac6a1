package proxy

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
)

// A block never changes, and neither does a tombstone (cancelling one takes it out of the live
// set): what the tombstones meeting a look-up over a block take out of its answer is the same
// every time the same tombstones meet the same look-up over the same part of the block. A
// dashboard asks the same look-ups on every load, over a window that covers most of its blocks
// whole; each block's querier keeps what its masking found, so that a day of blocks costs their
// index answers and a map probe each, not a check of every block's series on every load.

// maxCachedLookups bounds the look-ups a block remembers (each entry holds the values the
// tombstones took out, or the values of a label that selectors are filed under): a dashboard's
// variables are a few dozen look-ups, and a bucket may hold thousands of blocks. Past it, the
// oldest is forgotten first.
const maxCachedLookups = 64

// lookupCache is one block's memory of its masked look-ups.
type lookupCache struct {
	mu      sync.Mutex
	entries map[string][]string
	order   []string
}

func newLookupCache() *lookupCache {
	return &lookupCache{entries: map[string][]string{}}
}

func (c *lookupCache) get(key string) ([]string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.entries[key]
	return v, ok
}

func (c *lookupCache) put(key string, vals []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; ok {
		return
	}
	if len(c.order) >= maxCachedLookups {
		delete(c.entries, c.order[0])
		c.order = c.order[1:]
	}
	c.entries[key] = vals
	c.order = append(c.order, key)
}

// cachedBlockQuerier is a block's querier, carrying the block's look-up cache to the masking.
type cachedBlockQuerier struct {
	storage.Querier
	cache *lookupCache
}

// lookupCacheOf returns the look-up cache of the querier's block; nil if it reads no block.
func (q *maskedQuerier) lookupCacheOf() *lookupCache {
	if b, ok := q.inner.(*cachedBlockQuerier); ok {
		return b.cache
	}
	return nil
}

// keyValues returns the values of the label name that series selected by ms carry, which only
// depend on the block: over a block, remembered.
func (q *maskedQuerier) keyValues(ctx context.Context, name string, ms []*labels.Matcher) ([]string, error) {
	c := q.lookupCacheOf()
	var key string
	if c != nil {
		key = "key\xff" + name + "\xff" + matchersKey(ms)
		if vals, ok := c.get(key); ok {
			return vals, nil
		}
	}
	vals, _, err := q.inner.LabelValues(ctx, name, nil, ms...)
	if err != nil {
		return nil, err
	}
	if c != nil {
		c.put(key, vals)
	}
	return vals, nil
}

// droppedKey names a masked look-up over the querier's block: the kind of look-up, the request's
// matchers, the part of the block the window covers and the tombstone selectors that meet it.
func (q *maskedQuerier) droppedKey(ix labelIndex, ms []*labels.Matcher, sels []lookupSelector) string {
	var b strings.Builder
	b.WriteString("dropped\xff")
	b.WriteString(ix.name)
	b.WriteByte(0xff)
	b.WriteString(matchersKey(ms))
	b.WriteByte(0xff)
	b.WriteString(strconv.FormatInt(q.mint, 10))
	b.WriteByte(':')
	b.WriteString(strconv.FormatInt(q.maxt, 10))
	ids := make([]string, len(sels))
	for i, s := range sels {
		// A tombstone's selectors, start and end never change; its id and the selector name it.
		ids[i] = s.t.ID.String() + "\xfe" + matchersKey(s.send) + "\xfe" + strconv.FormatBool(s.exact)
	}
	slices.Sort(ids)
	for _, id := range ids {
		b.WriteByte(0xff)
		b.WriteString(id)
	}
	return b.String()
}

// cachedDropped returns what droppedValues finds, remembered per block.
func (q *maskedQuerier) cachedDropped(ctx context.Context, ix labelIndex, ms []*labels.Matcher, sels []lookupSelector, ask askFunc, candidates []string) (map[string]struct{}, error) {
	c := q.lookupCacheOf()
	if c == nil {
		return q.droppedValues(ctx, ix, ms, sels, ask, candidates)
	}
	key := q.droppedKey(ix, ms, sels)
	if vals, ok := c.get(key); ok {
		out := make(map[string]struct{}, len(vals))
		for _, v := range vals {
			out[v] = struct{}{}
		}
		return out, nil
	}
	dropped, err := q.droppedValues(ctx, ix, ms, sels, ask, candidates)
	if err != nil {
		return nil, err
	}
	c.put(key, sortedKeys(dropped))
	return dropped, nil
}

// matchersKey writes matchers in a canonical order.
func matchersKey(ms []*labels.Matcher) string {
	ss := make([]string, len(ms))
	for i, m := range ms {
		ss[i] = m.String()
	}
	slices.Sort(ss)
	return strings.Join(ss, ",")
}
