package tombstones

import (
	"context"
	"encoding/json"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/thanos-io/objstore"
	"github.com/thanos-io/objstore/providers/filesystem"
)

// fixed is the clock reading of every test store unless a test moves its clock.
var fixed = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testClock is a clock a test can move. Tests that share it between goroutines must not move it.
type testClock struct{ now time.Time }

func (c *testClock) Now() time.Time { return c.now }

func newTestStore(bkt objstore.Bucket, opts ...Option) *Store {
	return NewStore(bkt, nil, append([]Option{WithClock(func() time.Time { return fixed })}, opts...)...)
}

func newClockStore(bkt objstore.Bucket, c *testClock, opts ...Option) *Store {
	return NewStore(bkt, nil, append([]Option{WithClock(c.Now)}, opts...)...)
}

// bucketKinds are the two bucket implementations every store test runs against.
var bucketKinds = []struct {
	name string
	new  func(t testing.TB) objstore.Bucket
}{
	{name: "inmem", new: func(testing.TB) objstore.Bucket { return objstore.NewInMemBucket() }},
	{name: "filesystem", new: func(t testing.TB) objstore.Bucket {
		b, err := filesystem.NewBucket(t.TempDir())
		testutil.Ok(t, err)
		return b
	}},
}

// testKey is a deterministic redaction key.
func testKey(t testing.TB) *RedactionKey {
	k, err := NewRedactionKey([]byte("0123456789abcdef0123456789abcdef"))
	testutil.Ok(t, err)
	return k
}

func i64(v int64) *int64                 { return &v }
func dur(d time.Duration) *time.Duration { return &d }

// objectNames lists every object under the tombstones/ prefix.
func objectNames(t testing.TB, bkt objstore.Bucket) []string {
	var names []string
	testutil.Ok(t, bkt.Iter(context.Background(), Prefix, func(n string) error {
		names = append(names, n)
		return nil
	}))
	return names
}

// selectorParts splits a rendered selector into its sorted matchers, so that tests do not depend
// on the order in which the package renders them.
func selectorParts(sel string) []string {
	sel = strings.TrimSpace(sel)
	if !strings.HasPrefix(sel, "{") || !strings.HasSuffix(sel, "}") {
		return []string{"not a {...} selector: " + sel}
	}
	parts := strings.Split(sel[1:len(sel)-1], ", ")
	sort.Strings(parts)
	return parts
}

func parseSel(t testing.TB, s string) []*labels.Matcher {
	ms, err := parser.NewParser(parser.Options{}).ParseMetricSelector(s)
	testutil.Ok(t, err)
	return ms
}

func TestParseSelectors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []string
		want    [][]string // matcher strings per selector
		wantErr string
	}{
		{name: "metric name and label", in: []string{`up{job="api"}`}, want: [][]string{{`job="api"`, `__name__="up"`}}},
		{name: "braces only", in: []string{`{job="api", user_id=~"4.*"}`}, want: [][]string{{`job="api"`, `user_id=~"4.*"`}}},
		{name: "union of several", in: []string{`{job="a"}`, `{job="b", x!=""}`}, want: [][]string{{`job="a"`}, {`job="b"`, `x!=""`}}},
		{name: "one matcher not matching empty is enough", in: []string{`{job="a", x=""}`}, want: [][]string{{`job="a"`, `x=""`}}},
		{name: "unparsable", in: []string{`{job="a"`}, wantErr: "parse selector"},
		{name: "unparsable among valid", in: []string{`{job="a"}`, `up{`}, wantErr: "parse selector"},
		{name: "expression is not a selector", in: []string{`rate(up[5m])`}, wantErr: "parse selector"},
		{name: "empty string", in: []string{""}, wantErr: "empty selector"},
		{name: "blank string", in: []string{"   "}, wantErr: "empty selector"},
		{name: "no selectors", in: nil, wantErr: "no selector given"},
		{name: "no selectors, empty slice", in: []string{}, wantErr: "no selector given"},
		{name: "equality with empty value only", in: []string{`{a=""}`}, wantErr: "does not match the empty string"},
		{name: "regex matching empty only", in: []string{`{job=~".*"}`}, wantErr: "does not match the empty string"},
		{name: "negative only", in: []string{`{job!="a"}`}, wantErr: "does not match the empty string"},
		{name: "name regex matching empty", in: []string{`{__name__=~".*"}`}, wantErr: "does not match the empty string"},
		{name: "second selector matches empty", in: []string{`{job="a"}`, `{job=~"b|"}`}, wantErr: "does not match the empty string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSelectors(tc.in)
			if tc.wantErr != "" {
				testutil.NotOk(t, err)
				testutil.Assert(t, strings.Contains(err.Error(), tc.wantErr), "error %q does not contain %q", err.Error(), tc.wantErr)
				testutil.Assert(t, got == nil, "got selectors with an error: %v", got)
				return
			}
			testutil.Ok(t, err)
			var strs [][]string
			for _, sel := range got {
				var ms []string
				for _, m := range sel {
					ms = append(ms, m.String())
				}
				strs = append(strs, ms)
			}
			testutil.Equals(t, tc.want, strs)
		})
	}
}

func TestMatchesEverySeries(t *testing.T) {
	for _, tc := range []struct {
		sel  string
		want bool
	}{
		{sel: `{__name__=~".+"}`, want: true},
		{sel: `{__name__=~".*"}`, want: true},
		{sel: `{__name__!=""}`, want: true},
		{sel: `{__name__!~""}`, want: true},
		{sel: `{__name__=~".+", job=~".*"}`, want: true},
		{sel: `{__name__=~".+", job!="api"}`, want: true},
		{sel: `up`, want: false},
		{sel: `{job="a"}`, want: false},
		{sel: `{job=~".+"}`, want: false}, // Only series that have a job.
		{sel: `{job!=""}`, want: false},
		{sel: `{__name__=~"up|down"}`, want: false},
		{sel: `{__name__=~".+", job="a"}`, want: false},
		{sel: `{__name__=~"http_.*"}`, want: false},
		// Other spellings of "any name".
		{sel: `{__name__=~".{1,}"}`, want: true},
		{sel: `{__name__=~"..*"}`, want: true},
		{sel: `{__name__!~"^$"}`, want: true},
		{sel: `{__name__=~"(?s).+"}`, want: true},
		{sel: `{__name__=~".+|up"}`, want: true},
		{sel: `{__name__=~"[a-zA-Z_:][a-zA-Z0-9_:]*"}`, want: true},
		{sel: `{__name__=~"[a-z_]+"}`, want: false},
	} {
		t.Run(tc.sel, func(t *testing.T) {
			testutil.Equals(t, tc.want, MatchesEverySeries(parseSel(t, tc.sel)))
		})
	}
}

func TestParseTime(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{in: "2026-01-02T15:04:05Z", want: time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)},
		{in: "2026-01-02T15:04:05+02:00", want: time.Date(2026, 1, 2, 13, 4, 5, 0, time.UTC)},
		{in: "2026-01-02T15:04:05.123456789Z", want: time.Date(2026, 1, 2, 15, 4, 5, 123456789, time.UTC)},
		{in: "2026-01-02T15:04:05.5-01:00", want: time.Date(2026, 1, 2, 16, 4, 5, 500000000, time.UTC)},
		{in: " 2026-01-02T15:04:05Z ", want: time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)},
		{in: "1767225600", want: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{in: "+1767225600", want: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{in: "0", want: time.Unix(0, 0).UTC()},
		{in: "1.5", want: time.Unix(1, 500000000).UTC()},
		{in: "1767225600.25", want: time.Date(2026, 1, 1, 0, 0, 0, 250000000, time.UTC)},
		{in: ".5", want: time.Unix(0, 500000000).UTC()},
		{in: "-1", want: time.Unix(-1, 0).UTC()},
		{in: "-1.5", want: time.Unix(-2, 500000000).UTC()},
		{in: "-86400", want: time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC)},
		{in: "1.7672256e9", want: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{in: "1767225600e0", want: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{in: "0x1p30", want: time.Unix(1<<30, 0).UTC()},
		{in: "-292273086-05-16T16:47:06Z", want: time.Unix(math.MinInt64/1000+62135596801, 0).UTC()},
		{in: "292277025-08-18T07:12:54.999999999Z", want: time.Unix(math.MaxInt64/1000-62135596801, 999999999).UTC()},
		{in: "NaN", wantErr: true},
		{in: "Inf", wantErr: true},
		{in: "-Inf", wantErr: true},
		{in: "1e400", wantErr: true},
		{in: "1_000", want: time.Unix(1000, 0).UTC()}, // strconv.ParseFloat, as Prometheus parses it.
		{in: "", wantErr: true},
		{in: "   ", wantErr: true},
		{in: "garbage", wantErr: true},
		{in: "-", wantErr: true},
		{in: ".", wantErr: true},
		{in: "1.2.3", wantErr: true},
		{in: "12abc", wantErr: true},
		{in: "2026-01-02", wantErr: true},
		{in: "2026-01-02 15:04:05", wantErr: true},
		{in: "1e99", wantErr: true},
		{in: "99999999999999999999", wantErr: true}, // Out of range.
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTime(tc.in)
			if tc.wantErr {
				testutil.NotOk(t, err)
				testutil.Assert(t, got.IsZero(), "got %v with an error", got)
				return
			}
			testutil.Ok(t, err)
			testutil.Assert(t, got.Equal(tc.want), "ParseTime(%q) = %v, want %v", tc.in, got, tc.want)
			testutil.Equals(t, time.UTC, got.Location())
		})
	}
}

// TestParseTimeFractionalSecondsKeepMilliseconds pins ParseTime to Prometheus' own parseTime
// (web/api/v1), which rounds fractional seconds to the millisecond: "1700000000.123" is
// 1700000000123 ms there. Tombstone start/end are milliseconds, so a value one millisecond short
// leaves the sample at exactly the given end undeleted.
func TestParseTimeFractionalSecondsKeepMilliseconds(t *testing.T) {
	for _, tc := range []struct {
		in     string
		wantMs int64
	}{
		{in: "1.001", wantMs: 1001},
		{in: "1767225600.999", wantMs: 1767225600999},
		{in: "1700000000.123", wantMs: 1700000000123},
		{in: "1700000000.001", wantMs: 1700000000001},
		{in: "1767225600.007", wantMs: 1767225600007},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTime(tc.in)
			testutil.Ok(t, err)
			testutil.Equals(t, tc.wantMs, got.UnixMilli(), "ParseTime(%q) = %s", tc.in, got.Format(time.RFC3339Nano))
		})
	}
}

func TestFormatMillis(t *testing.T) {
	testutil.Equals(t, "beginning of time", FormatMillis(BeginningOfTime))
	testutil.Equals(t, "end of time", FormatMillis(math.MaxInt64))
	testutil.Equals(t, "2026-03-01T12:00:00.5Z", FormatMillis(fixed.UnixMilli()+500))
}

func TestStoreBuildDefaults(t *testing.T) {
	bkt := objstore.NewInMemBucket()
	s := newTestStore(bkt)

	tb, err := s.Build(Spec{Selectors: []string{`up{job="api"}`, `{user_id="42"}`}, Reason: "GDPR", Author: "ops"})
	testutil.Ok(t, err)

	testutil.Equals(t, Version, tb.Version)
	testutil.Equals(t, ulid.Timestamp(fixed), tb.ID.Time())
	testutil.Equals(t, 2, len(tb.Matchers))
	testutil.Equals(t, []string{`__name__="up"`, `job="api"`}, selectorParts(tb.Matchers[0]))
	testutil.Equals(t, []string{`user_id="42"`}, selectorParts(tb.Matchers[1]))
	testutil.Equals(t, BeginningOfTime, tb.Start)
	testutil.Equals(t, fixed.UnixMilli(), tb.End)
	testutil.Assert(t, tb.CreatedAt.Equal(fixed), "created_at %v", tb.CreatedAt)
	testutil.Assert(t, tb.UndeleteUntil.Equal(fixed.Add(24*time.Hour)), "undelete_until %v", tb.UndeleteUntil)
	testutil.Assert(t, tb.Deadline.Equal(fixed.Add(14*24*time.Hour)), "deadline %v", tb.Deadline)
	testutil.Equals(t, "GDPR", tb.Reason)
	testutil.Equals(t, "ops", tb.Author)
	testutil.Assert(t, !tb.Redacted(), "not redacted")
	testutil.Equals(t, tb.Matchers, tb.DisplayMatchers())
	testutil.Equals(t, 2, len(tb.Selectors()))
	testutil.Assert(t, tb.Overlaps(0, 0), "covers the epoch")
	testutil.Assert(t, tb.Overlaps(fixed.UnixMilli(), math.MaxInt64), "covers its end")
	testutil.Assert(t, !tb.Overlaps(fixed.UnixMilli()+1, math.MaxInt64), "does not cover after its end")

	// Build writes nothing.
	testutil.Equals(t, 0, len(objectNames(t, bkt)))

	// Explicit values are kept.
	tb, err = s.Build(Spec{
		Selectors:      []string{`{job="a"}`},
		Start:          i64(1000),
		End:            i64(fixed.UnixMilli() + 3600_000),
		UndeleteWindow: dur(time.Hour),
		MaxWait:        dur(48 * time.Hour),
	})
	testutil.Ok(t, err)
	testutil.Equals(t, int64(1000), tb.Start)
	testutil.Equals(t, fixed.UnixMilli()+3600_000, tb.End)
	testutil.Assert(t, tb.UndeleteUntil.Equal(fixed.Add(time.Hour)), "undelete_until %v", tb.UndeleteUntil)
	testutil.Assert(t, tb.Deadline.Equal(fixed.Add(48*time.Hour)), "deadline %v", tb.Deadline)

	// A zero undelete window and max wait equal to it are allowed.
	tb, err = s.Build(Spec{Selectors: []string{`{job="a"}`}, UndeleteWindow: dur(0), MaxWait: dur(0)})
	testutil.Ok(t, err)
	testutil.Assert(t, tb.UndeleteUntil.Equal(fixed) && tb.Deadline.Equal(fixed), "%v %v", tb.UndeleteUntil, tb.Deadline)
}

func TestStoreBuildValidation(t *testing.T) {
	s := newTestStore(objstore.NewInMemBucket())
	now := fixed.UnixMilli()
	for _, tc := range []struct {
		name    string
		spec    Spec
		key     bool
		wantErr string // Empty: accepted.
	}{
		{name: "start after end", spec: Spec{Selectors: []string{`{job="a"}`}, Start: i64(2000), End: i64(1000)}, wantErr: "is after end"},
		{name: "start after default end", spec: Spec{Selectors: []string{`{job="a"}`}, Start: i64(now + 1)}, wantErr: "is after end"},
		{name: "start equals end", spec: Spec{Selectors: []string{`{job="a"}`}, Start: i64(1000), End: i64(1000)}},
		{name: "negative undelete window", spec: Spec{Selectors: []string{`{job="a"}`}, UndeleteWindow: dur(-time.Second)}, wantErr: "undelete window -1s is negative"},
		{name: "negative max wait", spec: Spec{Selectors: []string{`{job="a"}`}, UndeleteWindow: dur(0), MaxWait: dur(-time.Hour)}, wantErr: "max wait -1h0m0s is negative"},
		{name: "max wait shorter than undelete window", spec: Spec{Selectors: []string{`{job="a"}`}, UndeleteWindow: dur(48 * time.Hour), MaxWait: dur(24 * time.Hour)}, wantErr: "shorter than the undelete window"},
		{name: "max wait shorter than default undelete window", spec: Spec{Selectors: []string{`{job="a"}`}, MaxWait: dur(time.Hour)}, wantErr: "shorter than the undelete window"},
		{name: "every series", spec: Spec{Selectors: []string{`{__name__=~".+"}`}}, wantErr: "matches every series"},
		{name: "every series, name not empty", spec: Spec{Selectors: []string{`{__name__!=""}`}}, wantErr: "matches every series"},
		{name: "every series among others", spec: Spec{Selectors: []string{`{job="a"}`, `{__name__=~".+", env=~".*"}`}}, wantErr: "matches every series"},
		{name: "every series with force", spec: Spec{Selectors: []string{`{__name__=~".+"}`}, Force: true}},
		{name: "every series with force, name not empty", spec: Spec{Selectors: []string{`{__name__!=""}`}, Force: true}},
		{name: "unparsable", spec: Spec{Selectors: []string{`{job=}`}}, wantErr: "parse selector"},
		{name: "no selector", spec: Spec{}, wantErr: "no selector given"},
		{name: "matches empty even with force", spec: Spec{Selectors: []string{`{job=~".*"}`}, Force: true}, wantErr: "does not match the empty string"},
		{name: "redact without key", spec: Spec{Selectors: []string{`{user_id="42"}`}, Redact: true}, wantErr: "no redaction key"},
		{name: "redact regex on label", spec: Spec{Selectors: []string{`{__name__="up", user_id=~"4.*"}`}, Redact: true}, key: true, wantErr: "--redact supports only equality matchers"},
		{name: "redact negative on label", spec: Spec{Selectors: []string{`{__name__="up", user_id!="42"}`}, Redact: true}, key: true, wantErr: "--redact supports only equality matchers"},
		{name: "redact negative regex on label", spec: Spec{Selectors: []string{`{__name__="up", user_id!~"42"}`}, Redact: true}, key: true, wantErr: "--redact supports only equality matchers"},
		{name: "redact regex on name", spec: Spec{Selectors: []string{`{__name__=~"http_.*", user_id="42"}`}, Redact: true}, key: true},
		{name: "redact empty-value matchers", spec: Spec{Selectors: []string{`{user_id="42", team="", env!=""}`}, Redact: true}, key: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := s
			if tc.key {
				st = newTestStore(objstore.NewInMemBucket(), WithRedactionKey(testKey(t)))
			}
			got, err := st.Build(tc.spec)
			if tc.wantErr != "" {
				testutil.NotOk(t, err)
				testutil.Assert(t, strings.Contains(err.Error(), tc.wantErr), "error %q does not contain %q", err.Error(), tc.wantErr)
				testutil.Assert(t, got == nil, "a tombstone with an error")
				if tc.spec.Redact {
					// The refusal itself must not print the value.
					testutil.Assert(t, !strings.Contains(err.Error(), "42"), "error %q leaks the value", err.Error())
				}
				return
			}
			testutil.Ok(t, err)
			testutil.Equals(t, len(tc.spec.Selectors), len(got.Matchers))
			testutil.Equals(t, tc.spec.Redact, got.Redacted())
		})
	}
}

func TestRedactedTombstone(t *testing.T) {
	const (
		secretUser  = "alice-secret-user"
		secretEmail = "alice@example.org"
	)
	key := testKey(t)
	s := newTestStore(objstore.NewInMemBucket(), WithRedactionKey(key))
	tb, err := s.Build(Spec{
		Selectors: []string{
			`http_requests_total{user_id="` + secretUser + `", env!=""}`,
			`{__name__=~"rpc_.*", email="` + secretEmail + `"}`,
		},
		Redact: true,
		Reason: "GDPR request 17",
	})
	testutil.Ok(t, err)
	testutil.Assert(t, tb.Redacted(), "redacted")
	testutil.Equals(t, &Redaction{Algorithm: "hmac-sha256", KeyID: key.ID()}, tb.Redaction)

	// The stored matchers hold digests.
	userDigest, emailDigest := key.Digest("user_id", secretUser), key.Digest("email", secretEmail)
	testutil.Equals(t, 64, len(userDigest))
	testutil.Assert(t, userDigest != key.Digest("user_id", secretUser+"x"), "digests differ by value")
	testutil.Assert(t, userDigest != key.Digest("email", secretUser), "digests differ by label name")
	testutil.Equals(t, 2, len(tb.Matchers))
	testutil.Equals(t, []string{`__name__="http_requests_total"`, `env!=""`, `user_id="` + userDigest + `"`}, selectorParts(tb.Matchers[0]))
	testutil.Equals(t, []string{`__name__=~"rpc_.*"`, `email="` + emailDigest + `"`}, selectorParts(tb.Matchers[1]))

	// What is displayed shows neither values nor digests.
	display := tb.DisplayMatchers()
	testutil.Equals(t, 2, len(display))
	testutil.Equals(t, []string{`__name__="http_requests_total"`, `env!=""`, `user_id=<redacted>`}, selectorParts(display[0]))
	testutil.Equals(t, []string{`__name__=~"rpc_.*"`, `email=<redacted>`}, selectorParts(display[1]))
	for _, d := range tb.DisplayMatchers() {
		for _, secret := range []string{secretUser, secretEmail, userDigest, emailDigest, "alice"} {
			testutil.Assert(t, !strings.Contains(d, secret), "displayed %q contains %q", d, secret)
		}
	}

	// Neither does the stored JSON carry a plain value.
	b, err := json.Marshal(tb)
	testutil.Ok(t, err)
	testutil.Assert(t, !strings.Contains(string(b), "alice"), "JSON leaks a value: %s", b)
	testutil.Assert(t, strings.Contains(string(b), userDigest), "JSON holds the digest: %s", b)
	testutil.Assert(t, strings.Contains(string(b), `"redaction":{"algorithm":"hmac-sha256","key_id":"`+key.ID()+`"}`), "JSON: %s", b)

	// Nor does the object Put writes, and a reader decodes it back.
	bkt := objstore.NewInMemBucket()
	s = newTestStore(bkt, WithRedactionKey(key))
	tb, err = s.Add(context.Background(), Spec{Selectors: []string{`{user_id="` + secretUser + `"}`}, Redact: true})
	testutil.Ok(t, err)
	raw := readObject(t, bkt, TombstoneObject(tb.ID))
	testutil.Assert(t, !strings.Contains(string(raw), "alice"), "object leaks a value: %s", raw)
	set, err := newTestStore(bkt).Sync(context.Background())
	testutil.Ok(t, err)
	e, ok := set.Get(tb.ID)
	testutil.Assert(t, ok, "redacted tombstone read back")
	testutil.Equals(t, []string{`{user_id=<redacted>}`}, e.DisplayMatchers())
	testutil.Equals(t, 0, len(set.Broken))
}

// TestTombstoneValidate checks what a decoded object must hold.
func TestTombstoneValidate(t *testing.T) {
	valid := func() *Tombstone {
		return &Tombstone{
			Version: Version, ID: ulid.MustNew(ulid.Timestamp(fixed), nil), Matchers: []string{`{job="a"}`},
			Start: 0, End: 10, CreatedAt: fixed, UndeleteUntil: fixed.Add(time.Hour), Deadline: fixed.Add(2 * time.Hour),
		}
	}
	for _, tc := range []struct {
		name    string
		mutate  func(*Tombstone)
		wantErr string
	}{
		{name: "valid", mutate: func(*Tombstone) {}},
		{name: "version", mutate: func(t *Tombstone) { t.Version = 2 }, wantErr: "unsupported tombstone version 2"},
		{name: "no id", mutate: func(t *Tombstone) { t.ID = ulid.ULID{} }, wantErr: "no id"},
		{name: "no matchers", mutate: func(t *Tombstone) { t.Matchers = nil }, wantErr: "no selector"},
		{name: "matches empty", mutate: func(t *Tombstone) { t.Matchers = []string{`{job=""}`} }, wantErr: "empty string"},
		{name: "start after end", mutate: func(t *Tombstone) { t.Start = 11 }, wantErr: "is after end"},
		{name: "no created_at", mutate: func(t *Tombstone) { t.CreatedAt = time.Time{} }, wantErr: "no created_at"},
		{name: "undelete before created", mutate: func(t *Tombstone) { t.UndeleteUntil = fixed.Add(-time.Second) }, wantErr: "undelete_until is before created_at"},
		{name: "deadline before undelete", mutate: func(t *Tombstone) { t.Deadline = fixed.Add(time.Minute) }, wantErr: "deadline is before undelete_until"},
		{name: "redaction algorithm", mutate: func(t *Tombstone) { t.Redaction = &Redaction{Algorithm: "md5", KeyID: "k"} }, wantErr: "unsupported redaction algorithm"},
		{name: "redaction without key id", mutate: func(t *Tombstone) { t.Redaction = &Redaction{Algorithm: "hmac-sha256"} }, wantErr: "no key_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := valid()
			tc.mutate(tb)
			err := tb.validate()
			if tc.wantErr == "" {
				testutil.Ok(t, err)
				testutil.Equals(t, 1, len(tb.Selectors()))
				return
			}
			testutil.NotOk(t, err)
			testutil.Assert(t, strings.Contains(err.Error(), tc.wantErr), "error %q does not contain %q", err.Error(), tc.wantErr)
		})
	}
}
