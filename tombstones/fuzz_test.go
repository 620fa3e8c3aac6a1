package tombstones

// Native fuzz targets for what lethe reads from the outside: tombstone objects in the bucket, and
// the selectors and times an operator types (lethe tombstone add, the proxy's admin API). Their
// seed corpora (the f.Add calls and testdata/fuzz/<target>/) run with every `go test`; a fuzzing
// run is `go test ./tombstones -run '^$' -fuzz '^FuzzDecodeObject$' -fuzztime 30s`.

import (
	"bytes"
	"encoding/json"
	"math"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore"
)

// fuzzTombstoneID is the id of the seed tombstones.
const fuzzTombstoneID = "01JQ8W7Q3ZB5K0N6TQ2V9XG4RA"

// fuzzTombstoneSeeds are tombstone, cancellation and applied objects as lethe writes them, and
// broken ones. Each is an object name and its body.
var fuzzTombstoneSeeds = [][2]string{
	{Prefix + fuzzTombstoneID + ".json", `{"version":1,"id":"` + fuzzTombstoneID + `","matchers":["{__name__=\"http_requests_total\", user_id=\"u3\"}"],` +
		`"start":1793491200000,"end":1793494800000,"created_at":"2026-11-01T00:00:00Z","undelete_until":"2026-11-02T00:00:00Z","deadline":"2026-11-15T00:00:00Z","reason":"gdpr","author":"ops"}`},
	{Prefix + fuzzTombstoneID + ".json", `{"version":1,"id":"` + fuzzTombstoneID + `","matchers":["{job=~\"api|web\", path!=\"/\"}","up"],` +
		`"start":-9223372036854775808,"end":1793494800000,"created_at":"2026-11-01T00:00:00Z","undelete_until":"2026-11-01T00:00:00Z","deadline":"2026-11-01T00:00:00Z"}`},
	{Prefix + fuzzTombstoneID + ".json", `{"version":1,"id":"` + fuzzTombstoneID + `","matchers":["{user_id=\"` + strings.Repeat("ab", 32) + `\"}"],` +
		`"start":0,"end":1,"created_at":"2026-11-01T00:00:00Z","undelete_until":"2026-11-02T00:00:00Z","deadline":"2026-11-15T00:00:00Z","redaction":{"algorithm":"hmac-sha256","key_id":"k1"}}`},
	{Prefix + fuzzTombstoneID + ".json", `{"version":1,"id":"` + fuzzTombstoneID + `","matchers":["{a=~\"\"}"],"start":2,"end":1}`},
	{Prefix + fuzzTombstoneID + ".json", `{"version":2}`},
	{Prefix + fuzzTombstoneID + ".json", `{"version":1,"id":"` + fuzzTombstoneID + `","unknown":true}`},
	{Prefix + fuzzTombstoneID + ".cancel-01JQ8W7Q3ZB5K0N6TQ2V9XG4RB.json", `{"version":1,"id":"01JQ8W7Q3ZB5K0N6TQ2V9XG4RB","tombstone":"` + fuzzTombstoneID + `","created_at":"2026-11-01T01:00:00Z","reason":"mistake","author":"ops"}`},
	{Prefix + fuzzTombstoneID + ".applied-01JQ8W7Q3ZB5K0N6TQ2V9XG4RC.json", `{"version":1,"id":"01JQ8W7Q3ZB5K0N6TQ2V9XG4RC","tombstone":"` + fuzzTombstoneID + `","created_at":"2026-11-03T00:00:00Z","blocks":["01JQ8W7Q3ZB5K0N6TQ2V9XG4RD"]}`},
	{"tombstones/not-an-id.json", `{}`},
	{Prefix + fuzzTombstoneID + ".json", `[`},
}

// FuzzDecodeObject feeds decodeObject, the one decoder of every object under tombstones/, with
// arbitrary names and bodies. It must return an error or an object that passes validation, never
// panic; a decoded tombstone must survive lethe's own encoding unchanged and be indexable.
func FuzzDecodeObject(f *testing.F) {
	for _, s := range fuzzTombstoneSeeds {
		f.Add(s[0], []byte(s[1]))
	}
	key, err := NewRedactionKey(bytes.Repeat([]byte{7}, 32))
	testutil.Ok(f, err)
	f.Fuzz(func(t *testing.T, name string, body []byte) {
		o, err := decodeObject(name, body)
		if err != nil {
			testutil.Assert(t, o == nil, "an object and an error: %v", err)
			testutil.Assert(t, err.Error() != "", "an empty error")
			return
		}
		switch v := o.(type) {
		case *Tombstone:
			testutil.Assert(t, v.Start <= v.End, "start %d after end %d", v.Start, v.End)
			testutil.Equals(t, len(v.Matchers), len(v.Selectors()))
			for _, ms := range v.Selectors() {
				testutil.Assert(t, !matchesEmpty(ms), "selector matching the empty set of labels accepted: %v", ms)
			}
			testutil.Assert(t, !v.UndeleteUntil.Before(v.CreatedAt) && !v.Deadline.Before(v.UndeleteUntil), "times out of order: %+v", v)
			// What lethe writes back (Put's encoding) reads back as the same tombstone.
			b, err := json.MarshalIndent(v, "", "  ")
			testutil.Ok(t, err)
			again, err := decodeObject(TombstoneObject(v.ID), b)
			testutil.Ok(t, err, "re-encoded tombstone does not decode: %s", b)
			b2, err := json.MarshalIndent(again, "", "  ")
			testutil.Ok(t, err)
			testutil.Equals(t, string(b), string(b2))
			// A valid tombstone is one the proxy can mask with: indexing fails only for a redacted
			// tombstone whose key is not there (fail closed), never for a plain one.
			ix, err := NewIndex([]*Tombstone{v}, key)
			if !v.Redacted() {
				testutil.Ok(t, err)
				// Matching an arbitrary series never panics.
				ix.Matching(labels.FromStrings("__name__", "up", "job", "api"), labels.EmptyLabels(), func(*Tombstone) {})
			}
		case *Cancellation:
			testutil.Assert(t, !v.CreatedAt.IsZero(), "cancellation without created_at")
		case *Applied:
			testutil.Assert(t, !v.CreatedAt.IsZero(), "applied record without created_at")
		default:
			t.Fatalf("decodeObject returned a %T", o)
		}
	})
}

// fuzzTimeSeeds are times in the forms the CLI and the API accept, and near misses.
var fuzzTimeSeeds = []string{
	"2026-11-01T00:00:00Z", "2026-11-01T00:00:00.123456789+02:00", "1793491200", "1793491200.5", "-1.5",
	"0.0005", "0.9996", "+12", ".5", "5.", "-", ".", "", " 1 ", "1e3", "9200000000000", "9200000000001",
	"2026-13-01T00:00:00Z", "now", "1.2.3", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
}

// FuzzParseTime: a time lethe accepts is in UTC, a Unix-seconds time is whole milliseconds close
// to the number given, and the time lethe prints for it (FormatMillis) reads back as the same
// millisecond, so an operator can paste what `lethe tombstone show` printed.
func FuzzParseTime(f *testing.F) {
	for _, s := range fuzzTimeSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseTime(s)
		if err != nil {
			testutil.Assert(t, got.IsZero(), "a time and an error for %q", s)
			return
		}
		testutil.Equals(t, time.UTC, got.Location())
		ms := got.UnixMilli()
		if secs, perr := strconv.ParseFloat(strings.TrimSpace(s), 64); perr == nil {
			testutil.Equals(t, 0, got.Nanosecond()%int(time.Millisecond), "%q: not rounded to the millisecond: %v", s, got)
			// Within a millisecond, or within float64's precision for huge values.
			tol := math.Max(1, math.Abs(secs*1000)*1e-15)
			testutil.Assert(t, math.Abs(float64(ms)-secs*1000) <= tol, "%q parsed as %d ms", s, ms)
		}
		if ms == BeginningOfTime || ms == math.MaxInt64 {
			return // printed as words
		}
		back, err := ParseTime(FormatMillis(ms))
		if got.Year() < 0 || got.Year() > 9999 {
			// RFC 3339 has four-digit years: FormatMillis must not print what ParseTime rejects
			// silently differently.
			testutil.Assert(t, err != nil || back.UnixMilli() == ms, "%q: printed %q reads back as %v", s, FormatMillis(ms), back)
			return
		}
		testutil.Ok(t, err, "%q: printed as %q", s, FormatMillis(ms))
		testutil.Equals(t, ms, back.UnixMilli(), "%q printed as %q", s, FormatMillis(ms))
	})
}

// fuzzSelectorSeeds are selectors of every matcher type and near misses.
var fuzzSelectorSeeds = []string{
	`http_requests_total`, `{user_id="u3"}`, `up{job!="a",path=~"/a.*",x!~"y|z"}`, `{__name__=~".+"}`,
	`{__name__=~"request_(duration|latency)_seconds.*",instance="i-1"}`, `{a=~""}`, `{a!=""}`, `{"utf8.name"="v"}`,
	`{a="\u00e9\n"}`, `x{`, `{a=~"("}`, `rate(x[5m])`, `{}`, ``, ` `, `x{a="1",a="2"}`, `{__name__!~"^$"}`,
}

// FuzzSpec builds tombstones the way `lethe tombstone add` does, from a selector and start and end
// times given as text. What Build accepts must be what the bucket's readers accept: the tombstone
// it would write decodes, validates, keeps its selector's meaning, and rejects nothing it matched.
func FuzzSpec(f *testing.F) {
	for i, s := range fuzzSelectorSeeds {
		f.Add(s, fuzzTimeSeeds[i%len(fuzzTimeSeeds)], fuzzTimeSeeds[(i+3)%len(fuzzTimeSeeds)], i%2 == 0)
		f.Add(s, "1793491200", "2026-11-01T00:00:00.5Z", i%2 == 1)
	}
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := NewStore(objstore.NewInMemBucket(), prometheus.NewRegistry(), WithClock(func() time.Time { return now }))
	probes := []labels.Labels{
		labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", "u3", "path", "/a"),
		labels.FromStrings("__name__", "up", "instance", "i-1"),
		labels.FromStrings("a", "1", "x", "y"),
	}
	f.Fuzz(func(t *testing.T, selector, start, end string, force bool) {
		spec := Spec{Selectors: []string{selector}, Force: force, Reason: "fuzz"}
		for _, b := range []struct {
			text string
			dst  **int64
		}{{start, &spec.Start}, {end, &spec.End}} {
			if b.text == "" {
				continue
			}
			tm, err := ParseTime(b.text)
			if err != nil {
				return
			}
			ms := tm.UnixMilli()
			*b.dst = &ms
		}
		sels, perr := ParseSelectors(spec.Selectors)
		ts, err := s.Build(spec)
		if perr != nil {
			testutil.NotOk(t, err, "Build accepted %q that ParseSelectors rejects: %v", selector, perr)
			return
		}
		if err != nil {
			return
		}
		testutil.Assert(t, force || !MatchesEverySeries(sels[0]), "%q matches every series, accepted without force", selector)
		b, err := json.MarshalIndent(ts, "", "  ")
		testutil.Ok(t, err)
		o, err := decodeObject(TombstoneObject(ts.ID), b)
		testutil.Ok(t, err, "selector %q: the written tombstone does not decode: %s", selector, b)
		read := o.(*Tombstone)
		testutil.Equals(t, ts.Start, read.Start)
		testutil.Equals(t, ts.End, read.End)
		// The stored selector (selectorString, metric name first) means what the operator typed.
		for _, ls := range probes {
			testutil.Equals(t, matchesAll(sels[0], ls), matchesAll(read.Selectors()[0], ls),
				"selector %q stored as %q decides %s differently", selector, read.Matchers[0], ls)
		}
		testutil.Equals(t, len(sels[0]), len(read.Selectors()[0]), "selector %q stored as %q", selector, read.Matchers[0])
		testutil.Equals(t, matcherStrings(sels[0]), matcherStrings(read.Selectors()[0]), "selector %q stored as %q", selector, read.Matchers[0])
	})
}

func matcherStrings(ms []*labels.Matcher) []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.String())
	}
	sort.Strings(out)
	return out
}

func matchesAll(ms []*labels.Matcher, ls labels.Labels) bool {
	for _, m := range ms {
		if !m.Matches(ls.Get(m.Name)) {
			return false
		}
	}
	return true
}

// The seed tombstone ids are valid ULIDs.
func TestFuzzSeedsAreValid(t *testing.T) {
	_, err := ulid.ParseStrict(fuzzTombstoneID)
	testutil.Ok(t, err)
	o, err := decodeObject(fuzzTombstoneSeeds[0][0], []byte(fuzzTombstoneSeeds[0][1]))
	testutil.Ok(t, err)
	testutil.Equals(t, []string{`{__name__="http_requests_total", user_id="u3"}`}, o.(*Tombstone).Matchers)
	for _, s := range fuzzTombstoneSeeds[3:6] {
		_, err := decodeObject(s[0], []byte(s[1]))
		testutil.NotOk(t, err, s[1])
	}
}
