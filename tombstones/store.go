package tombstones

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	stderrors "errors"
	"io"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/thanos-io/objstore"
	"golang.org/x/sync/errgroup"
)

// ErrNotFound is returned for an id no tombstone has.
var ErrNotFound = stderrors.New("tombstone not found")

// syncConcurrency bounds parallel downloads of new objects during a sync.
const syncConcurrency = 16

var objectName = regexp.MustCompile(`^` + regexp.QuoteMeta(Prefix) + `([0-9A-HJKMNP-TV-Z]{26})(?:\.(cancel|applied)-([0-9A-HJKMNP-TV-Z]{26}))?\.json$`)

// Store reads and writes tombstone objects in a bucket. Objects are immutable, so what it has read
// once it keeps: a sync lists the prefix and downloads only objects it has not seen. It is safe for
// concurrent use.
type Store struct {
	bkt    objstore.Bucket
	logger *slog.Logger
	now    func() time.Time
	key    *RedactionKey

	mu    sync.Mutex
	cache map[string]any // object name -> *Tombstone, *Cancellation or *Applied
	// brokenBefore are the objects that did not decode at the last sync.
	brokenBefore map[string]bool

	syncs       prometheus.Counter
	syncFails   prometheus.Counter
	objectsRead prometheus.Counter
	broken      prometheus.Gauge
	byState     *prometheus.GaugeVec
	overdue     prometheus.Gauge
	overdueAge  prometheus.Gauge
	lastSync    prometheus.Gauge
}

// Option configures a Store.
type Option func(*Store)

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.logger = l } }

// WithClock sets the clock; the default is time.Now.
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// WithRedactionKey sets the key used to write redacted tombstones and to match them.
func WithRedactionKey(k *RedactionKey) Option { return func(s *Store) { s.key = k } }

// NewStore returns a store over bkt. Metrics are registered with reg, which may be nil.
func NewStore(bkt objstore.Bucket, reg prometheus.Registerer, opts ...Option) *Store {
	s := &Store{
		bkt:    bkt,
		logger: slog.New(slog.DiscardHandler),
		now:    time.Now,
		cache:  map[string]any{},
	}
	for _, o := range opts {
		o(s)
	}
	f := promauto.With(reg)
	s.syncs = f.NewCounter(prometheus.CounterOpts{Name: "lethe_tombstones_syncs_total", Help: "Syncs of tombstones from the bucket."})
	s.syncFails = f.NewCounter(prometheus.CounterOpts{Name: "lethe_tombstones_sync_failures_total", Help: "Syncs of tombstones from the bucket that failed."})
	s.objectsRead = f.NewCounter(prometheus.CounterOpts{Name: "lethe_tombstones_objects_read_total", Help: "Tombstone objects downloaded; each is read once, as objects never change."})
	s.broken = f.NewGauge(prometheus.GaugeOpts{Name: "lethe_tombstones_broken_objects", Help: "Objects under tombstones/ that could not be decoded at the last sync."})
	s.byState = f.NewGaugeVec(prometheus.GaugeOpts{Name: "lethe_tombstones", Help: "Tombstones by state at the last sync."}, []string{"state"})
	s.overdue = f.NewGauge(prometheus.GaugeOpts{Name: "lethe_tombstones_overdue", Help: "Tombstones past their deadline and not yet applied (counted in lethe_tombstones{state=\"due\"} too), at the last sync."})
	s.overdueAge = f.NewGauge(prometheus.GaugeOpts{Name: "lethe_tombstones_overdue_max_seconds", Help: "How long the longest-overdue tombstone has been past its deadline at the last sync; 0 when none is."})
	s.lastSync = f.NewGauge(prometheus.GaugeOpts{Name: "lethe_tombstones_last_sync_success_timestamp_seconds", Help: "When tombstones were last synced from the bucket."})
	return s
}

// Now returns the store's clock reading.
func (s *Store) Now() time.Time { return s.now() }

// RedactionKey returns the key the store matches and writes redacted tombstones with, or nil.
func (s *Store) RedactionKey() *RedactionKey { return s.key }

// Broken is an object under tombstones/ that could not be used. It is reported, never fatal: a
// reader keeps every valid tombstone.
type Broken struct {
	Object string `json:"object"`
	Err    string `json:"error"`
}

// Set is a consistent view of all tombstones at one sync.
type Set struct {
	// Entries are sorted by id, that is by creation time.
	Entries []*Entry
	Broken  []Broken
	// At is the store's clock at the sync.
	At time.Time

	byID map[ulid.ULID]*Entry
}

// Get returns the entry with the given id.
func (s *Set) Get(id ulid.ULID) (*Entry, bool) {
	e, ok := s.byID[id]
	return e, ok
}

// Masking returns the tombstones that proxies must apply: all but cancelled ones.
func (s *Set) Masking() []*Tombstone {
	out := make([]*Tombstone, 0, len(s.Entries))
	for _, e := range s.Entries {
		if e.Masks() {
			out = append(out, e.Tombstone)
		}
	}
	return out
}

// Sync lists the bucket's tombstone objects, downloads those not seen before and returns the
// resulting set. A failure to list or download fails the sync, so that a reader never works from a
// set that silently lacks a valid tombstone; an object that downloads but does not decode is
// reported in Set.Broken and retried at the next sync (a filesystem bucket may show an object while
// it is still being written).
func (s *Store) Sync(ctx context.Context) (set *Set, err error) {
	s.syncs.Inc()
	defer func() {
		if err != nil {
			s.syncFails.Inc()
		}
	}()

	var names []string
	if err := s.bkt.Iter(ctx, Prefix, func(name string) error {
		if strings.HasSuffix(name, ".json") {
			names = append(names, name)
		}
		return nil
	}); err != nil {
		return nil, errors.Wrap(err, "list tombstones")
	}

	objects := make(map[string]any, len(names))
	var missing []string
	s.mu.Lock()
	for _, n := range names {
		if o, ok := s.cache[n]; ok {
			objects[n] = o
		} else {
			missing = append(missing, n)
		}
	}
	s.mu.Unlock()

	var (
		broken []Broken
		mu     sync.Mutex
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(syncConcurrency)
	for _, n := range missing {
		g.Go(func() error {
			b, err := s.read(gctx, n)
			if err != nil {
				if s.bkt.IsObjNotFoundErr(errors.Cause(err)) {
					return nil // Deleted between list and get, e.g. by an operator cleaning up.
				}
				return errors.Wrapf(err, "read %s", n)
			}
			o, err := decodeObject(n, b)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				broken = append(broken, Broken{Object: n, Err: err.Error()})
				return nil
			}
			objects[n] = o
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	s.mu.Lock()
	for n, o := range objects {
		s.cache[n] = o
	}
	s.mu.Unlock()

	set = assemble(objects, broken, s.now())
	// An object that does not decode the first time may still be being written (a FILESYSTEM
	// bucket shows it from its first byte): it is reported in the set, and warned of once it
	// stays so at the next sync.
	s.mu.Lock()
	seen := map[string]bool{}
	for _, b := range set.Broken {
		seen[b.Object] = true
		if s.brokenBefore[b.Object] {
			s.logger.Warn("unusable tombstone object", "object", b.Object, "err", b.Err)
		} else {
			s.logger.Debug("tombstone object does not decode (yet); it may still be being written", "object", b.Object, "err", b.Err)
		}
	}
	s.brokenBefore = seen
	s.mu.Unlock()
	s.broken.Set(float64(len(set.Broken)))
	counts := map[State]int{StatePending: 0, StateDue: 0, StateCancelled: 0, StateApplied: 0}
	overdue, overdueAge := 0, time.Duration(0)
	for _, e := range set.Entries {
		counts[e.State(set.At)]++
		if e.Overdue(set.At) {
			overdue++
			overdueAge = max(overdueAge, set.At.Sub(e.Deadline))
		}
	}
	s.overdue.Set(float64(overdue))
	s.overdueAge.Set(overdueAge.Seconds())
	for st, n := range counts {
		s.byState.WithLabelValues(string(st)).Set(float64(n))
	}
	s.lastSync.Set(float64(set.At.UnixNano()) / 1e9)
	return set, nil
}

func (s *Store) read(ctx context.Context, name string) (_ []byte, err error) {
	rc, err := s.bkt.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	defer errcapture.Do(&err, rc.Close, "close %s", name)
	s.objectsRead.Inc()
	return io.ReadAll(rc)
}

// decodeObject decodes one object by its name.
func decodeObject(name string, b []byte) (any, error) {
	m := objectName.FindStringSubmatch(name)
	if m == nil {
		return nil, errors.New("unexpected object name")
	}
	target, err := ulid.ParseStrict(m[1])
	if err != nil {
		return nil, errors.Wrap(err, "object name")
	}
	var version struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &version); err != nil {
		return nil, errors.Wrap(err, "decode JSON")
	}
	if version.Version != Version {
		return nil, errors.Newf("unsupported version %d (this lethe reads version %d)", version.Version, Version)
	}
	switch m[2] {
	case "":
		t := &Tombstone{}
		if err := strictUnmarshal(b, t); err != nil {
			return nil, err
		}
		if t.ID != target {
			return nil, errors.Newf("object holds tombstone %s", t.ID)
		}
		if err := t.validate(); err != nil {
			return nil, err
		}
		return t, nil
	case "cancel":
		c := &Cancellation{}
		if err := strictUnmarshal(b, c); err != nil {
			return nil, err
		}
		if c.Tombstone != target || c.ID.String() != m[3] || c.CreatedAt.IsZero() {
			return nil, errors.New("cancellation does not match its object name or has no created_at")
		}
		return c, nil
	default:
		a := &Applied{}
		if err := strictUnmarshal(b, a); err != nil {
			return nil, err
		}
		if a.Tombstone != target || a.ID.String() != m[3] || a.CreatedAt.IsZero() {
			return nil, errors.New("applied record does not match its object name or has no created_at")
		}
		return a, nil
	}
}

func strictUnmarshal(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return errors.Wrap(err, "decode JSON")
	}
	return nil
}

func assemble(objects map[string]any, broken []Broken, now time.Time) *Set {
	set := &Set{At: now, Broken: broken, byID: map[ulid.ULID]*Entry{}}
	for _, o := range objects {
		if t, ok := o.(*Tombstone); ok {
			e := &Entry{Tombstone: t}
			set.Entries = append(set.Entries, e)
			set.byID[t.ID] = e
		}
	}
	for n, o := range objects {
		switch ev := o.(type) {
		case *Cancellation:
			e, ok := set.byID[ev.Tombstone]
			if !ok {
				set.Broken = append(set.Broken, Broken{Object: n, Err: "cancellation of unknown tombstone " + ev.Tombstone.String()})
				continue
			}
			if !e.acceptCancellation(ev) {
				set.Broken = append(set.Broken, Broken{Object: n, Err: "cancellation made after undelete_until; ignored"})
			}
		case *Applied:
			e, ok := set.byID[ev.Tombstone]
			if !ok {
				set.Broken = append(set.Broken, Broken{Object: n, Err: "applied record of unknown tombstone " + ev.Tombstone.String()})
				continue
			}
			e.acceptApplied(ev)
		}
	}
	sort.Slice(set.Entries, func(i, j int) bool { return set.Entries[i].ID.Compare(set.Entries[j].ID) < 0 })
	sort.Slice(set.Broken, func(i, j int) bool { return set.Broken[i].Object < set.Broken[j].Object })
	return set
}

// Spec is what an operator asks for. Nil times and durations take the defaults of CONTRACT.md.
type Spec struct {
	Selectors []string
	// Start and End are in milliseconds. Start defaults to the beginning of time, End to the
	// creation time.
	Start, End *int64
	// UndeleteWindow defaults to 24h, MaxWait (creation to deadline) to 14 days.
	UndeleteWindow, MaxWait *time.Duration
	Reason, Author          string
	// Redact stores equality-matcher values as digests under the store's redaction key.
	Redact bool
	// Force allows a selector that matches every series.
	Force bool
}

// Build validates spec and returns the tombstone that Add would write at the store's current time,
// without writing anything.
func (s *Store) Build(spec Spec) (*Tombstone, error) {
	now := s.now().UTC()
	sels, err := ParseSelectors(spec.Selectors)
	if err != nil {
		return nil, err
	}
	if !spec.Force {
		for i, sel := range sels {
			if MatchesEverySeries(sel) {
				return nil, errors.Newf("selector %q matches every series; use --force if you really mean to delete everything", spec.Selectors[i])
			}
		}
	}
	undelete, maxWait := DefaultUndeleteWindow, DefaultMaxWait
	if spec.UndeleteWindow != nil {
		undelete = *spec.UndeleteWindow
	}
	if spec.MaxWait != nil {
		maxWait = *spec.MaxWait
	}
	if undelete < 0 {
		return nil, errors.Newf("undelete window %s is negative", undelete)
	}
	if maxWait < 0 {
		return nil, errors.Newf("max wait %s is negative", maxWait)
	}
	if maxWait < undelete {
		return nil, errors.Newf("max wait %s is shorter than the undelete window %s: the deadline cannot come before cancelling ends", maxWait, undelete)
	}
	id, err := ulid.New(ulid.Timestamp(now), rand.Reader)
	if err != nil {
		return nil, errors.Wrap(err, "generate id")
	}
	t := &Tombstone{
		Version:       Version,
		ID:            id,
		Matchers:      make([]string, 0, len(sels)),
		Start:         BeginningOfTime,
		End:           now.UnixMilli(),
		CreatedAt:     now,
		UndeleteUntil: now.Add(undelete),
		Deadline:      now.Add(maxWait),
		Reason:        spec.Reason,
		Author:        spec.Author,
	}
	if spec.Start != nil {
		t.Start = *spec.Start
	}
	if spec.End != nil {
		t.End = *spec.End
	}
	if t.Start > t.End {
		return nil, errors.Newf("start %s is after end %s", FormatMillis(t.Start), FormatMillis(t.End))
	}
	if spec.Redact {
		if s.key == nil {
			return nil, errors.New("redaction asked for but no redaction key is configured")
		}
		if t.Matchers, err = redactSelectors(sels, s.key); err != nil {
			return nil, err
		}
		t.Redaction = &Redaction{Algorithm: redactionAlgorithm, KeyID: s.key.ID()}
	} else {
		for _, sel := range sels {
			t.Matchers = append(t.Matchers, selectorString(sel))
		}
	}
	if err := t.validate(); err != nil {
		return nil, errors.Wrap(err, "built an invalid tombstone")
	}
	return t, nil
}

// Put writes a tombstone built by Build. Its object name is its fresh id, so it never overwrites.
func (s *Store) Put(ctx context.Context, t *Tombstone) error {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return errors.Wrap(err, "encode tombstone")
	}
	if err := s.bkt.Upload(ctx, TombstoneObject(t.ID), bytes.NewReader(b)); err != nil {
		return errors.Wrapf(err, "upload tombstone %s", t.ID)
	}
	s.mu.Lock()
	s.cache[TombstoneObject(t.ID)] = t
	s.mu.Unlock()
	s.logger.Info("tombstone added", "tombstone", t.ID.String(), "matchers", strings.Join(t.DisplayMatchers(), " or "),
		"start", FormatMillis(t.Start), "end", FormatMillis(t.End), "undelete_until", t.UndeleteUntil, "deadline", t.Deadline,
		"author", t.Author, "reason", t.Reason)
	return nil
}

// Add builds and writes a tombstone.
func (s *Store) Add(ctx context.Context, spec Spec) (*Tombstone, error) {
	t, err := s.Build(spec)
	if err != nil {
		return nil, err
	}
	return t, s.Put(ctx, t)
}

// Cancel undoes a tombstone inside its undelete window by writing a cancellation object.
func (s *Store) Cancel(ctx context.Context, id ulid.ULID, reason, author string) (*Cancellation, error) {
	set, err := s.Sync(ctx)
	if err != nil {
		return nil, err
	}
	e, ok := set.Get(id)
	if !ok {
		return nil, errors.Wrapf(ErrNotFound, "%s", id)
	}
	now := s.now().UTC()
	switch {
	case e.Cancellation != nil:
		return nil, errors.Newf("tombstone %s was already cancelled at %s", id, e.Cancellation.CreatedAt.Format(time.RFC3339))
	case e.Applied != nil:
		return nil, errors.Newf("tombstone %s was already applied at %s", id, e.Applied.CreatedAt.Format(time.RFC3339))
	case !e.Cancellable(now):
		return nil, errors.Newf("tombstone %s can no longer be cancelled: its undelete window ended at %s", id, e.UndeleteUntil.Format(time.RFC3339))
	}
	evID, err := ulid.New(ulid.Timestamp(now), rand.Reader)
	if err != nil {
		return nil, errors.Wrap(err, "generate id")
	}
	c := &Cancellation{Version: Version, ID: evID, Tombstone: id, CreatedAt: now, Reason: reason, Author: author}
	if err := s.putEvent(ctx, eventObject(id, "cancel", evID), c); err != nil {
		return nil, err
	}
	s.logger.Info("tombstone cancelled", "tombstone", id.String(), "author", author, "reason", reason)
	return c, nil
}

// MarkApplied records that no live block holds data the tombstone covers any more.
func (s *Store) MarkApplied(ctx context.Context, id ulid.ULID, blocks []ulid.ULID) (*Applied, error) {
	now := s.now().UTC()
	evID, err := ulid.New(ulid.Timestamp(now), rand.Reader)
	if err != nil {
		return nil, errors.Wrap(err, "generate id")
	}
	a := &Applied{Version: Version, ID: evID, Tombstone: id, CreatedAt: now, Blocks: blocks}
	if err := s.putEvent(ctx, eventObject(id, "applied", evID), a); err != nil {
		return nil, err
	}
	s.logger.Info("tombstone applied", "tombstone", id.String(), "blocks", len(blocks))
	return a, nil
}

func (s *Store) putEvent(ctx context.Context, name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return errors.Wrap(err, "encode event")
	}
	if err := s.bkt.Upload(ctx, name, bytes.NewReader(b)); err != nil {
		return errors.Wrapf(err, "upload %s", name)
	}
	s.mu.Lock()
	s.cache[name] = v
	s.mu.Unlock()
	return nil
}

// TombstoneObject is the object name of a tombstone.
func TombstoneObject(id ulid.ULID) string { return Prefix + id.String() + ".json" }

func eventObject(id ulid.ULID, kind string, ev ulid.ULID) string {
	return Prefix + id.String() + "." + kind + "-" + ev.String() + ".json"
}
