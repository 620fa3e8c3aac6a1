package block

import (
	"testing"

	"github.com/efficientgo/core/testutil"
)

// TestRangedIndexCacheIsBounded: however much of the object is read, at most maxPages pages stay
// cached, and what is read is right.
func TestRangedIndexCacheIsBounded(t *testing.T) {
	data := make([]byte, 40*pageSize+123)
	for i := range data {
		data[i] = byte(i * 7)
	}
	r := &rangedIndex{name: "x", size: len(data), pages: map[int][]byte{}, maxPages: 4,
		read: func(off, length int) ([]byte, error) { return append([]byte(nil), data[off:off+length]...), nil }}
	for i := 0; i+3*pageSize < len(data); i += pageSize / 2 {
		testutil.Equals(t, data[i:i+3*pageSize], r.Range(i, i+3*pageSize))
		testutil.Assert(t, len(r.pages) <= 4, "%d pages cached", len(r.pages))
	}
	// A range wider than the bound is still read whole.
	testutil.Equals(t, data[10:10+8*pageSize], r.Range(10, 10+8*pageSize))
	testutil.Ok(t, r.err)
}
