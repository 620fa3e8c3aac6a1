package tombstones

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore"
	"github.com/thanos-io/objstore/providers/filesystem"
)

func readObject(t testing.TB, bkt objstore.Bucket, name string) []byte {
	t.Helper()
	rc, err := bkt.Get(context.Background(), name)
	testutil.Ok(t, err)
	defer rc.Close()
	b, err := io.ReadAll(rc)
	testutil.Ok(t, err)
	return b
}

func upload(t testing.TB, bkt objstore.Bucket, name string, b []byte) {
	t.Helper()
	testutil.Ok(t, bkt.Upload(context.Background(), name, bytes.NewReader(b)))
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	testutil.Ok(t, err)
	return b
}

// countingBucket counts downloads.
type countingBucket struct {
	objstore.Bucket
	gets atomic.Int64
}

func (b *countingBucket) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	b.gets.Add(1)
	return b.Bucket.Get(ctx, name)
}

// failingBucket fails listing or downloading.
type failingBucket struct {
	objstore.Bucket
	iterErr error
	getErr  func(name string) error
}

func (b *failingBucket) Iter(ctx context.Context, dir string, f func(string) error, opts ...objstore.IterOption) error {
	if b.iterErr != nil {
		return b.iterErr
	}
	return b.Bucket.Iter(ctx, dir, f, opts...)
}

func (b *failingBucket) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	if b.getErr != nil {
		if err := b.getErr(name); err != nil {
			return nil, err
		}
	}
	return b.Bucket.Get(ctx, name)
}

// exported is what a tombstone serializes to, for comparing a written and a read tombstone.
func exported(t testing.TB, tb *Tombstone) string {
	return string(mustJSON(t, tb))
}

func TestStoreRoundTrip(t *testing.T) {
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			ctx := context.Background()
			bkt := bk.new(t)

			// An empty bucket is an empty set.
			set, err := newTestStore(bkt).Sync(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, 0, len(set.Entries))
			testutil.Equals(t, 0, len(set.Broken))
			testutil.Assert(t, set.At.Equal(fixed), "set at %v", set.At)

			w := newTestStore(bkt)
			a, err := w.Add(ctx, Spec{Selectors: []string{`up{job="api"}`}, Reason: "leaked token", Author: "alice"})
			testutil.Ok(t, err)
			b, err := w.Add(ctx, Spec{Selectors: []string{`{user_id="42"}`, `{email="x@example.org"}`}, Start: i64(1000), End: i64(2000), UndeleteWindow: dur(time.Hour), MaxWait: dur(2 * time.Hour)})
			testutil.Ok(t, err)
			testutil.Assert(t, a.ID != b.ID, "distinct ids")

			names := objectNames(t, bkt)
			sort.Strings(names)
			want := []string{TombstoneObject(a.ID), TombstoneObject(b.ID)}
			sort.Strings(want)
			testutil.Equals(t, want, names)
			testutil.Equals(t, Prefix+a.ID.String()+".json", TombstoneObject(a.ID))

			// The object is the tombstone's JSON.
			var onDisk map[string]any
			testutil.Ok(t, json.Unmarshal(readObject(t, bkt, TombstoneObject(b.ID)), &onDisk))
			testutil.Equals(t, float64(1), onDisk["version"])
			testutil.Equals(t, b.ID.String(), onDisk["id"])
			testutil.Equals(t, []any{`{user_id="42"}`, `{email="x@example.org"}`}, onDisk["matchers"])
			testutil.Equals(t, float64(1000), onDisk["start"])
			testutil.Equals(t, float64(2000), onDisk["end"])
			testutil.Equals(t, "2026-03-01T12:00:00Z", onDisk["created_at"])
			testutil.Equals(t, "2026-03-01T13:00:00Z", onDisk["undelete_until"])
			testutil.Equals(t, "2026-03-01T14:00:00Z", onDisk["deadline"])

			// A fresh reader gets both back, sorted by id.
			r := newTestStore(bkt)
			set, err = r.Sync(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, 0, len(set.Broken))
			testutil.Equals(t, 2, len(set.Entries))
			testutil.Assert(t, set.Entries[0].ID.Compare(set.Entries[1].ID) < 0, "sorted by id")
			for _, orig := range []*Tombstone{a, b} {
				e, ok := set.Get(orig.ID)
				testutil.Assert(t, ok, "entry %s", orig.ID)
				testutil.Equals(t, exported(t, orig), exported(t, e.Tombstone))
				testutil.Equals(t, len(orig.Selectors()), len(e.Selectors()))
				testutil.Assert(t, e.Cancellation == nil && e.Applied == nil, "no events")
				testutil.Equals(t, StatePending, e.State(set.At))
			}
			_, ok := set.Get(ulid.MustNew(1, nil))
			testutil.Assert(t, !ok, "unknown id")
			testutil.Equals(t, 2, len(set.Masking()))

			// The writer's own store sees them too, without downloading.
			set, err = w.Sync(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, 2, len(set.Entries))
		})
	}
}

func TestStoreLifecycle(t *testing.T) {
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			ctx := context.Background()
			bkt := bk.new(t)
			clock := &testClock{now: fixed}
			s := newClockStore(bkt, clock)

			kept, err := s.Add(ctx, Spec{Selectors: []string{`{job="kept"}`}})
			testutil.Ok(t, err)
			cancelled, err := s.Add(ctx, Spec{Selectors: []string{`{job="cancelled"}`}})
			testutil.Ok(t, err)
			applied, err := s.Add(ctx, Spec{Selectors: []string{`{job="applied"}`}})
			testutil.Ok(t, err)

			state := func(at time.Time, id ulid.ULID) (*Entry, State) {
				t.Helper()
				clock.now = at
				set, err := newClockStore(bkt, clock).Sync(ctx)
				testutil.Ok(t, err)
				testutil.Equals(t, 0, len(set.Broken))
				e, ok := set.Get(id)
				testutil.Assert(t, ok, "entry %s", id)
				return e, e.State(set.At)
			}

			for _, id := range []ulid.ULID{kept.ID, cancelled.ID, applied.ID} {
				e, st := state(fixed, id)
				testutil.Equals(t, StatePending, st)
				testutil.Assert(t, e.Masks() && e.Cancellable(fixed) && !e.Overdue(fixed), "pending: masks, cancellable, not overdue")
			}
			e, st := state(fixed.Add(24*time.Hour-time.Nanosecond), kept.ID)
			testutil.Equals(t, StatePending, st)
			testutil.Assert(t, e.Cancellable(fixed.Add(24*time.Hour-time.Nanosecond)), "cancellable until the window ends")

			// Cancel inside the window.
			clock.now = fixed.Add(time.Hour)
			c, err := s.Cancel(ctx, cancelled.ID, "mistake", "bob")
			testutil.Ok(t, err)
			testutil.Equals(t, cancelled.ID, c.Tombstone)
			testutil.Assert(t, c.CreatedAt.Equal(fixed.Add(time.Hour)), "cancelled at %v", c.CreatedAt)
			testutil.Equals(t, "mistake", c.Reason)
			testutil.Equals(t, "bob", c.Author)

			e, st = state(fixed.Add(2*time.Hour), cancelled.ID)
			testutil.Equals(t, StateCancelled, st)
			testutil.Assert(t, !e.Masks() && !e.Cancellable(fixed.Add(2*time.Hour)), "cancelled: masks nothing")
			testutil.Equals(t, c.ID, e.Cancellation.ID)
			_, st = state(fixed.Add(30*24*time.Hour), cancelled.ID)
			testutil.Equals(t, StateCancelled, st)
			testutil.Assert(t, !e.Overdue(fixed.Add(30*24*time.Hour)), "cancelled is never overdue")

			// Due from undelete_until.
			e, st = state(fixed.Add(24*time.Hour), kept.ID)
			testutil.Equals(t, StateDue, st)
			testutil.Assert(t, e.Masks() && !e.Cancellable(fixed.Add(24*time.Hour)) && !e.Overdue(fixed.Add(24*time.Hour)), "due: masks, not cancellable, not overdue")
			e, st = state(fixed.Add(14*24*time.Hour-time.Nanosecond), kept.ID)
			testutil.Equals(t, StateDue, st)
			testutil.Assert(t, !e.Overdue(fixed.Add(14*24*time.Hour-time.Nanosecond)), "not overdue before the deadline")
			e, st = state(fixed.Add(14*24*time.Hour), kept.ID)
			testutil.Equals(t, StateDue, st)
			testutil.Assert(t, e.Overdue(fixed.Add(14*24*time.Hour)), "overdue at the deadline")

			// Applied.
			clock.now = fixed.Add(3 * 24 * time.Hour)
			blocks := []ulid.ULID{ulid.MustNew(5, nil), ulid.MustNew(6, nil)}
			a, err := s.MarkApplied(ctx, applied.ID, blocks)
			testutil.Ok(t, err)
			testutil.Equals(t, Prefix+applied.ID.String()+".applied-"+a.ID.String()+".json", eventObject(applied.ID, "applied", a.ID))
			e, st = state(fixed.Add(20*24*time.Hour), applied.ID)
			testutil.Equals(t, StateApplied, st)
			testutil.Assert(t, e.Masks(), "applied tombstones still mask")
			testutil.Assert(t, !e.Overdue(fixed.Add(20*24*time.Hour)), "applied is not overdue")
			testutil.Equals(t, blocks, e.Applied.Blocks)
			testutil.Assert(t, e.Applied.CreatedAt.Equal(fixed.Add(3*24*time.Hour)), "applied at %v", e.Applied.CreatedAt)

			// Masking leaves out only the cancelled one.
			clock.now = fixed.Add(20 * 24 * time.Hour)
			set, err := newClockStore(bkt, clock).Sync(ctx)
			testutil.Ok(t, err)
			masking := map[ulid.ULID]bool{}
			for _, tb := range set.Masking() {
				masking[tb.ID] = true
			}
			testutil.Equals(t, map[ulid.ULID]bool{kept.ID: true, applied.ID: true}, masking)

			// The overdue gauges: none before the deadline; at 20 days the kept one is 6 days
			// past its 14-day deadline (cancelled and applied ones never count).
			for _, tc := range []struct {
				at      time.Time
				n, secs float64
			}{
				{at: fixed.Add(14*24*time.Hour - time.Second)},
				{at: fixed.Add(20 * 24 * time.Hour), n: 1, secs: (6 * 24 * time.Hour).Seconds()},
			} {
				clock.now = tc.at
				r := newClockStore(bkt, clock)
				_, err := r.Sync(ctx)
				testutil.Ok(t, err)
				testutil.Equals(t, tc.n, promtestutil.ToFloat64(r.overdue), "overdue at %v", tc.at)
				testutil.Equals(t, tc.secs, promtestutil.ToFloat64(r.overdueAge), "overdue seconds at %v", tc.at)
			}
		})
	}
}

func TestStoreCancel(t *testing.T) {
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			ctx := context.Background()
			bkt := bk.new(t)
			clock := &testClock{now: fixed}
			s := newClockStore(bkt, clock)

			tb, err := s.Add(ctx, Spec{Selectors: []string{`{job="a"}`}})
			testutil.Ok(t, err)
			late, err := s.Add(ctx, Spec{Selectors: []string{`{job="late"}`}, UndeleteWindow: dur(time.Hour)})
			testutil.Ok(t, err)
			tbBytes := readObject(t, bkt, TombstoneObject(tb.ID))
			lateBytes := readObject(t, bkt, TombstoneObject(late.ID))
			before := objectNames(t, bkt)

			// Unknown id.
			_, err = s.Cancel(ctx, ulid.MustNew(ulid.Timestamp(fixed), nil), "", "")
			testutil.NotOk(t, err)
			testutil.Assert(t, errors.Is(err, ErrNotFound), "want ErrNotFound, got %v", err)
			testutil.Assert(t, strings.Contains(err.Error(), "tombstone not found"), "error: %v", err)

			// After the undelete window (exactly at its end, too).
			for _, at := range []time.Time{fixed.Add(time.Hour), fixed.Add(5 * time.Hour)} {
				clock.now = at
				_, err = s.Cancel(ctx, late.ID, "", "")
				testutil.NotOk(t, err)
				testutil.Assert(t, strings.Contains(err.Error(), "can no longer be cancelled"), "error: %v", err)
				testutil.Assert(t, !errors.Is(err, ErrNotFound), "not a not-found error")
			}
			testutil.Equals(t, before, objectNames(t, bkt))

			// Inside the window: one new object, the tombstone's bytes untouched.
			clock.now = fixed.Add(30 * time.Minute)
			c, err := s.Cancel(ctx, tb.ID, "wrong user", "carol")
			testutil.Ok(t, err)
			after := objectNames(t, bkt)
			testutil.Equals(t, len(before)+1, len(after))
			cancelObj := eventObject(tb.ID, "cancel", c.ID)
			testutil.Assert(t, slicesContains(after, cancelObj), "objects %v lack %s", after, cancelObj)
			testutil.Equals(t, Prefix+tb.ID.String()+".cancel-"+c.ID.String()+".json", cancelObj)
			testutil.Equals(t, tbBytes, readObject(t, bkt, TombstoneObject(tb.ID)))
			testutil.Equals(t, lateBytes, readObject(t, bkt, TombstoneObject(late.ID)))

			var onDisk Cancellation
			testutil.Ok(t, json.Unmarshal(readObject(t, bkt, cancelObj), &onDisk))
			testutil.Equals(t, Version, onDisk.Version)
			testutil.Equals(t, c.ID, onDisk.ID)
			testutil.Equals(t, tb.ID, onDisk.Tombstone)
			testutil.Assert(t, onDisk.CreatedAt.Equal(fixed.Add(30*time.Minute)), "created_at %v", onDisk.CreatedAt)
			testutil.Equals(t, "wrong user", onDisk.Reason)
			testutil.Equals(t, "carol", onDisk.Author)

			// Twice: refused, by this store and by a fresh one.
			_, err = s.Cancel(ctx, tb.ID, "", "")
			testutil.NotOk(t, err)
			testutil.Assert(t, strings.Contains(err.Error(), "already cancelled"), "error: %v", err)
			_, err = newClockStore(bkt, clock).Cancel(ctx, tb.ID, "", "")
			testutil.NotOk(t, err)
			testutil.Assert(t, strings.Contains(err.Error(), "already cancelled"), "error: %v", err)
			testutil.Equals(t, after, objectNames(t, bkt))
			testutil.Equals(t, tbBytes, readObject(t, bkt, TombstoneObject(tb.ID)))

			// Applied tombstones cannot be cancelled.
			clock.now = fixed
			ap, err := s.Add(ctx, Spec{Selectors: []string{`{job="ap"}`}})
			testutil.Ok(t, err)
			_, err = s.MarkApplied(ctx, ap.ID, nil)
			testutil.Ok(t, err)
			_, err = s.Cancel(ctx, ap.ID, "", "")
			testutil.NotOk(t, err)
			testutil.Assert(t, strings.Contains(err.Error(), "already applied"), "error: %v", err)
		})
	}
}

func slicesContains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func TestStoreSyncDownloadsEachObjectOnce(t *testing.T) {
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			ctx := context.Background()
			bkt := bk.new(t)
			w := newTestStore(bkt)
			var ids []ulid.ULID
			for i := 0; i < 3; i++ {
				tb, err := w.Add(ctx, Spec{Selectors: []string{`{job="a"}`}})
				testutil.Ok(t, err)
				ids = append(ids, tb.ID)
			}
			_, err := w.Cancel(ctx, ids[0], "", "")
			testutil.Ok(t, err)
			_, err = w.MarkApplied(ctx, ids[1], nil)
			testutil.Ok(t, err)

			cb := &countingBucket{Bucket: bkt}
			r := newTestStore(cb)
			set, err := r.Sync(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, int64(5), cb.gets.Load())
			testutil.Equals(t, 5.0, promtestutil.ToFloat64(r.objectsRead))
			testutil.Equals(t, 3, len(set.Entries))

			set, err = r.Sync(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, int64(5), cb.gets.Load(), "the second sync downloads nothing")
			testutil.Equals(t, 3, len(set.Entries))
			e, _ := set.Get(ids[0])
			testutil.Equals(t, StateCancelled, e.State(set.At))
			e, _ = set.Get(ids[1])
			testutil.Equals(t, StateApplied, e.State(set.At))
			e, _ = set.Get(ids[2])
			testutil.Equals(t, StatePending, e.State(set.At))

			// One new object: one download.
			_, err = w.Add(ctx, Spec{Selectors: []string{`{job="b"}`}})
			testutil.Ok(t, err)
			set, err = r.Sync(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, int64(6), cb.gets.Load())
			testutil.Equals(t, 4, len(set.Entries))
			testutil.Equals(t, 2.0, promtestutil.ToFloat64(r.byState.WithLabelValues(string(StatePending))))
			testutil.Equals(t, 1.0, promtestutil.ToFloat64(r.byState.WithLabelValues(string(StateCancelled))))
			testutil.Equals(t, 1.0, promtestutil.ToFloat64(r.byState.WithLabelValues(string(StateApplied))))
			testutil.Equals(t, 3.0, promtestutil.ToFloat64(r.syncs))
			testutil.Equals(t, 0.0, promtestutil.ToFloat64(r.syncFails))
		})
	}
}

func TestStoreBrokenObjects(t *testing.T) {
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			ctx := context.Background()
			bkt := bk.new(t)
			w := newTestStore(bkt)
			var valid []*Tombstone
			for i := 0; i < 3; i++ {
				tb, err := w.Add(ctx, Spec{Selectors: []string{`{job="a"}`}})
				testutil.Ok(t, err)
				valid = append(valid, tb)
			}
			validBytes := readObject(t, bkt, TombstoneObject(valid[0].ID))

			newID := func(ms uint64) ulid.ULID { return ulid.MustNew(ms, nil) }
			garbage, v99, wrongID, startAfterEnd, unknownField := newID(1), newID(2), newID(3), newID(4), newID(5)

			upload(t, bkt, TombstoneObject(garbage), []byte(`{"version": 1, "id": `))
			upload(t, bkt, TombstoneObject(v99), []byte(`{"version": 99, "id": "`+v99.String()+`", "whatever": true}`))
			upload(t, bkt, TombstoneObject(wrongID), validBytes)
			bad := *valid[1]
			bad.ID, bad.Start, bad.End = startAfterEnd, 10, 5
			upload(t, bkt, TombstoneObject(startAfterEnd), mustJSON(t, &bad))
			var withExtra map[string]any
			dec := json.NewDecoder(bytes.NewReader(mustJSON(t, valid[2])))
			dec.UseNumber() // Keep start (math.MinInt64) exact.
			testutil.Ok(t, dec.Decode(&withExtra))
			withExtra["id"], withExtra["unexpected"] = unknownField.String(), 1
			upload(t, bkt, TombstoneObject(unknownField), mustJSON(t, withExtra))
			upload(t, bkt, Prefix+"not-a-ulid.json", validBytes)
			upload(t, bkt, Prefix+strings.ToLower(valid[0].ID.String())+".json", validBytes)
			// A cancellation whose body names another event id, and one of an unknown tombstone.
			cMismatch := &Cancellation{Version: Version, ID: newID(6), Tombstone: valid[0].ID, CreatedAt: fixed}
			upload(t, bkt, eventObject(valid[0].ID, "cancel", newID(7)), mustJSON(t, cMismatch))
			orphan := newID(8)
			cOrphan := &Cancellation{Version: Version, ID: newID(9), Tombstone: orphan, CreatedAt: fixed}
			upload(t, bkt, eventObject(orphan, "cancel", cOrphan.ID), mustJSON(t, cOrphan))
			aOrphan := &Applied{Version: Version, ID: newID(10), Tombstone: orphan, CreatedAt: fixed}
			upload(t, bkt, eventObject(orphan, "applied", aOrphan.ID), mustJSON(t, aOrphan))
			// Not .json: ignored entirely.
			upload(t, bkt, Prefix+"README.txt", []byte("hello"))

			r := NewStore(bkt, nil, WithClock(func() time.Time { return fixed }))
			set, err := r.Sync(ctx)
			testutil.Ok(t, err)

			var got []string
			for _, e := range set.Entries {
				got = append(got, e.ID.String())
			}
			var want []string
			for _, tb := range valid {
				want = append(want, tb.ID.String())
			}
			sort.Strings(want) // Entries are sorted by id.
			testutil.Equals(t, want, got, "every valid tombstone is returned")
			for _, e := range set.Entries {
				testutil.Assert(t, e.Cancellation == nil, "no valid cancellation among the broken ones")
			}

			wantBroken := map[string]string{
				TombstoneObject(garbage):                                 "decode JSON",
				TombstoneObject(v99):                                     "unsupported version 99",
				TombstoneObject(wrongID):                                 "object holds tombstone " + valid[0].ID.String(),
				TombstoneObject(startAfterEnd):                           "is after end",
				TombstoneObject(unknownField):                            `unknown field "unexpected"`,
				Prefix + "not-a-ulid.json":                               "unexpected object name",
				Prefix + strings.ToLower(valid[0].ID.String()) + ".json": "unexpected object name",
				eventObject(valid[0].ID, "cancel", newID(7)):             "cancellation does not match its object name",
				eventObject(orphan, "cancel", cOrphan.ID):                "cancellation of unknown tombstone " + orphan.String(),
				eventObject(orphan, "applied", aOrphan.ID):               "applied record of unknown tombstone " + orphan.String(),
			}
			gotBroken := map[string]string{}
			for i, b := range set.Broken {
				if i > 0 {
					testutil.Assert(t, set.Broken[i-1].Object < b.Object, "broken sorted by object")
				}
				gotBroken[b.Object] = b.Err
			}
			testutil.Equals(t, len(wantBroken), len(gotBroken), "broken: %v", set.Broken)
			for obj, msg := range wantBroken {
				testutil.Assert(t, strings.Contains(gotBroken[obj], msg), "%s: error %q does not contain %q", obj, gotBroken[obj], msg)
			}
			testutil.Equals(t, float64(len(wantBroken)), promtestutil.ToFloat64(r.broken))

			// A broken object is retried: once fixed (say, its upload completed), it is used.
			fixedTb := *valid[0]
			fixedTb.ID = garbage
			upload(t, bkt, TombstoneObject(garbage), mustJSON(t, &fixedTb))
			set, err = r.Sync(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, 4, len(set.Entries))
			_, ok := set.Get(garbage)
			testutil.Assert(t, ok, "fixed object read at the next sync")
			testutil.Equals(t, len(wantBroken)-1, len(set.Broken))
		})
	}
}

func TestStoreLateCancellationIgnored(t *testing.T) {
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			ctx := context.Background()
			bkt := bk.new(t)
			w := newTestStore(bkt)
			tb, err := w.Add(ctx, Spec{Selectors: []string{`{job="a"}`}})
			testutil.Ok(t, err)
			other, err := w.Add(ctx, Spec{Selectors: []string{`{job="b"}`}})
			testutil.Ok(t, err)

			// Written by a process whose clock is past the undelete window, and one exactly at its end.
			for _, at := range []time.Time{tb.UndeleteUntil.Add(time.Hour), tb.UndeleteUntil} {
				c := &Cancellation{Version: Version, ID: ulid.MustNew(ulid.Timestamp(at), nil), Tombstone: tb.ID, CreatedAt: at}
				upload(t, bkt, eventObject(tb.ID, "cancel", c.ID), mustJSON(t, c))
			}
			// For the other tombstone, one late and one in time: the valid one wins.
			inTime := &Cancellation{Version: Version, ID: ulid.MustNew(ulid.Timestamp(fixed.Add(2*time.Hour)), nil), Tombstone: other.ID, CreatedAt: fixed.Add(2 * time.Hour)}
			lateC := &Cancellation{Version: Version, ID: ulid.MustNew(ulid.Timestamp(fixed.Add(48*time.Hour)), nil), Tombstone: other.ID, CreatedAt: fixed.Add(48 * time.Hour)}
			earlier := &Cancellation{Version: Version, ID: ulid.MustNew(ulid.Timestamp(fixed.Add(time.Hour)), nil), Tombstone: other.ID, CreatedAt: fixed.Add(time.Hour)}
			for _, c := range []*Cancellation{inTime, lateC, earlier} {
				upload(t, bkt, eventObject(other.ID, "cancel", c.ID), mustJSON(t, c))
			}

			at := fixed.Add(72 * time.Hour)
			set, err := NewStore(bkt, nil, WithClock(func() time.Time { return at })).Sync(ctx)
			testutil.Ok(t, err)
			e, ok := set.Get(tb.ID)
			testutil.Assert(t, ok, "tombstone present")
			testutil.Assert(t, e.Cancellation == nil, "late cancellation ignored")
			testutil.Equals(t, StateDue, e.State(at))
			testutil.Assert(t, e.Masks(), "still masks")

			e, _ = set.Get(other.ID)
			testutil.Equals(t, StateCancelled, e.State(at))
			testutil.Equals(t, earlier.ID, e.Cancellation.ID)

			testutil.Equals(t, 3, len(set.Broken))
			for _, b := range set.Broken {
				testutil.Assert(t, strings.Contains(b.Err, "after undelete_until; ignored"), "broken %v", b)
			}
		})
	}
}

func TestStoreConcurrentWriters(t *testing.T) {
	const (
		writers = 8
		each    = 10
	)
	ctx := context.Background()
	bkt, err := filesystem.NewBucket(t.TempDir())
	testutil.Ok(t, err)

	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		added     = map[ulid.ULID]bool{} // id -> cancelled
		errs      []error
		firstErrs = func(err error) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := newTestStore(bkt)
			var mine []ulid.ULID
			for i := 0; i < each; i++ {
				tb, err := s.Add(ctx, Spec{Selectors: []string{`{writer="` + string(rune('a'+w)) + `"}`}, Reason: "concurrent"})
				if err != nil {
					firstErrs(err)
					return
				}
				mine = append(mine, tb.ID)
			}
			for i, id := range mine {
				cancel := i%2 == 0
				if cancel {
					if _, err := s.Cancel(ctx, id, "half", ""); err != nil {
						firstErrs(err)
						return
					}
				}
				mu.Lock()
				added[id] = cancel
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	testutil.Equals(t, 0, len(errs), "errors: %v", errs)
	testutil.Equals(t, writers*each, len(added))

	set, err := newTestStore(bkt).Sync(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(set.Broken), "broken: %v", set.Broken)
	testutil.Equals(t, writers*each, len(set.Entries))
	cancelled := 0
	for _, e := range set.Entries {
		wantCancelled, ok := added[e.ID]
		testutil.Assert(t, ok, "unexpected tombstone %s", e.ID)
		testutil.Equals(t, wantCancelled, e.State(set.At) == StateCancelled, "tombstone %s", e.ID)
		if e.State(set.At) == StateCancelled {
			cancelled++
		}
	}
	testutil.Equals(t, writers*each/2, cancelled)
	testutil.Equals(t, writers*each/2, len(set.Masking()))
	testutil.Equals(t, writers*each*3/2, len(objectNames(t, bkt)))
}

func TestStoreSyncFailures(t *testing.T) {
	ctx := context.Background()
	inner := objstore.NewInMemBucket()
	w := newTestStore(inner)
	a, err := w.Add(ctx, Spec{Selectors: []string{`{job="a"}`}})
	testutil.Ok(t, err)
	b, err := w.Add(ctx, Spec{Selectors: []string{`{job="b"}`}})
	testutil.Ok(t, err)

	t.Run("iter error", func(t *testing.T) {
		s := newTestStore(&failingBucket{Bucket: inner, iterErr: errors.New("listing is down")})
		set, err := s.Sync(ctx)
		testutil.NotOk(t, err)
		testutil.Assert(t, set == nil, "no set on failure")
		testutil.Assert(t, strings.Contains(err.Error(), "list tombstones") && strings.Contains(err.Error(), "listing is down"), "error: %v", err)
		testutil.Equals(t, 1.0, promtestutil.ToFloat64(s.syncFails))

		// Cancel, which syncs first, fails too and writes nothing.
		_, err = s.Cancel(ctx, a.ID, "", "")
		testutil.NotOk(t, err)
		testutil.Equals(t, 2, len(objectNames(t, inner)))
	})
	t.Run("get error", func(t *testing.T) {
		s := newTestStore(&failingBucket{Bucket: inner, getErr: func(name string) error {
			if name == TombstoneObject(b.ID) {
				return errors.New("connection reset")
			}
			return nil
		}})
		_, err := s.Sync(ctx)
		testutil.NotOk(t, err)
		testutil.Assert(t, strings.Contains(err.Error(), "connection reset") && strings.Contains(err.Error(), b.ID.String()), "error: %v", err)
	})
	t.Run("object deleted between list and get", func(t *testing.T) {
		fb := &failingBucket{Bucket: inner}
		fb.getErr = func(name string) error {
			if name == TombstoneObject(b.ID) {
				_, err := inner.Get(ctx, Prefix+"does-not-exist")
				return err
			}
			return nil
		}
		set, err := newTestStore(fb).Sync(ctx)
		testutil.Ok(t, err)
		testutil.Equals(t, 1, len(set.Entries))
		testutil.Equals(t, a.ID, set.Entries[0].ID)
		testutil.Equals(t, 0, len(set.Broken))
	})
}

func TestRedactionKeys(t *testing.T) {
	ctx := context.Background()
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			bkt := bk.new(t)
			k1, err := LoadOrCreateBucketKey(ctx, bkt)
			testutil.Ok(t, err)
			testutil.Equals(t, []string{RedactionKeyObject}, objectNames(t, bkt))
			stored := readObject(t, bkt, RedactionKeyObject)
			testutil.Equals(t, 64, len(stored))

			k2, err := LoadOrCreateBucketKey(ctx, bkt)
			testutil.Ok(t, err)
			testutil.Equals(t, k1.ID(), k2.ID())
			testutil.Equals(t, k1.Digest("user_id", "42"), k2.Digest("user_id", "42"))
			testutil.Equals(t, stored, readObject(t, bkt, RedactionKeyObject), "the key is not rewritten")

			// Another bucket gets another key.
			k3, err := LoadOrCreateBucketKey(ctx, bk.new(t))
			testutil.Ok(t, err)
			testutil.Assert(t, k1.ID() != k3.ID(), "fresh keys differ")
			testutil.Assert(t, k1.Digest("user_id", "42") != k3.Digest("user_id", "42"), "digests differ by key")

			// The key object is not a tombstone object.
			set, err := newTestStore(bkt).Sync(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, 0, len(set.Entries)+len(set.Broken))

			// Redacted tombstones written with it match through an index built with it.
			w := newTestStore(bkt, WithRedactionKey(k1))
			testutil.Equals(t, k1, w.RedactionKey())
			tb, err := w.Add(ctx, Spec{Selectors: []string{`{user_id="42"}`}, Redact: true, Start: i64(0), End: i64(9)})
			testutil.Ok(t, err)
			set, err = newTestStore(bkt).Sync(ctx)
			testutil.Ok(t, err)
			e, ok := set.Get(tb.ID)
			testutil.Assert(t, ok, "redacted tombstone read")
			testutil.Equals(t, k1.ID(), e.Redaction.KeyID)
			ix, err := NewIndex(set.Masking(), k2)
			testutil.Ok(t, err)
			testutil.Equals(t, Intervals{{0, 9}}, ix.Intervals(labels.FromStrings("user_id", "42"), labels.EmptyLabels(), nil))
			testutil.Equals(t, Intervals(nil), ix.Intervals(labels.FromStrings("user_id", "43"), labels.EmptyLabels(), nil))
			_, err = NewIndex(set.Masking(), k3)
			testutil.NotOk(t, err)
		})
	}

	t.Run("short key in bucket", func(t *testing.T) {
		bkt := objstore.NewInMemBucket()
		upload(t, bkt, RedactionKeyObject, []byte("0123456789abcde"))
		_, err := LoadOrCreateBucketKey(ctx, bkt)
		testutil.NotOk(t, err)
		testutil.Assert(t, strings.Contains(err.Error(), "at least 16 bytes"), "error: %v", err)
		testutil.Equals(t, []byte("0123456789abcde"), readObject(t, bkt, RedactionKeyObject), "a bad key is never replaced")
	})
	t.Run("bucket failure is not taken for a missing key", func(t *testing.T) {
		bkt := &failingBucket{Bucket: objstore.NewInMemBucket(), getErr: func(string) error { return errors.New("denied") }}
		_, err := LoadOrCreateBucketKey(ctx, bkt)
		testutil.NotOk(t, err)
		testutil.Equals(t, 0, len(objectNames(t, bkt.Bucket)), "no key written")
	})

	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		content []byte
		wantErr string
	}{
		{name: "15 bytes", content: []byte("0123456789abcde"), wantErr: "at least 16 bytes, got 15"},
		{name: "empty", content: nil, wantErr: "at least 16 bytes, got 0"},
		{name: "short with whitespace", content: []byte("   0123456789\n\n\n\n\n"), wantErr: "at least 16 bytes, got 10"},
		{name: "16 bytes", content: []byte("0123456789abcdef")},
		{name: "16 bytes with newline", content: []byte("0123456789abcdef\n")},
		{name: "long", content: bytes.Repeat([]byte{0x01, 0x02}, 64)},
	} {
		t.Run("key file/"+tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			testutil.Ok(t, os.WriteFile(p, tc.content, 0o600))
			k, err := ReadRedactionKeyFile(p)
			if tc.wantErr != "" {
				testutil.NotOk(t, err)
				testutil.Assert(t, strings.Contains(err.Error(), tc.wantErr), "error: %v", err)
				testutil.Assert(t, strings.Contains(err.Error(), p), "error names the file: %v", err)
				return
			}
			testutil.Ok(t, err)
			testutil.Equals(t, 16, len(k.ID()))
			k2, err := NewRedactionKey(bytes.TrimSpace(tc.content))
			testutil.Ok(t, err)
			testutil.Equals(t, k2.ID(), k.ID())
			testutil.Equals(t, k2.Digest("a", "b"), k.Digest("a", "b"))
		})
	}
	_, err := ReadRedactionKeyFile(filepath.Join(dir, "missing"))
	testutil.NotOk(t, err)
}

// TestStoreWarnsOfAnObjectStillBrokenAtTheNextSync: an object seen half written (a FILESYSTEM
// bucket shows it from its first byte) is reported in the set at once but warned of only when it
// still does not decode at the next sync; once written whole it is a tombstone like any other.
func TestStoreWarnsOfAnObjectStillBrokenAtTheNextSync(t *testing.T) {
	ctx := context.Background()
	bkt := objstore.NewInMemBucket()
	var logs bytes.Buffer
	s := newTestStore(bkt, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	whole, err := s.Build(Spec{Selectors: []string{`{job="a"}`}})
	testutil.Ok(t, err)
	b := mustJSON(t, whole)
	upload(t, bkt, TombstoneObject(whole.ID), b[:len(b)/2])

	set, err := s.Sync(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 1, len(set.Broken))
	testutil.Assert(t, !strings.Contains(logs.String(), "level=WARN"), "warned at the first sight: %s", logs.String())

	set, err = s.Sync(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 1, len(set.Broken))
	testutil.Assert(t, strings.Contains(logs.String(), `level=WARN msg="unusable tombstone object"`), "no warning at the second sync: %s", logs.String())

	logs.Reset()
	upload(t, bkt, TombstoneObject(whole.ID), b)
	set, err = s.Sync(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(set.Broken))
	_, ok := set.Get(whole.ID)
	testutil.Assert(t, ok, "the tombstone written whole is not in the set")
	testutil.Equals(t, "", logs.String())
}
