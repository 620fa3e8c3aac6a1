// Package tombstones stores deletion requests ("tombstones") as immutable, append-only objects in
// an object-storage bucket, derives their life cycle from an injected clock, and answers which time
// ranges of a series are deleted.
//
// Every object lives under the "tombstones/" prefix and is written exactly once:
//
//	tombstones/<ID>.json                     a tombstone
//	tombstones/<ID>.cancel-<EVENT>.json      a cancellation of tombstone <ID>
//	tombstones/<ID>.applied-<EVENT>.json     the record that the rewriter applied tombstone <ID>
//	tombstones/redaction.key                 the bucket's redaction key (see Redaction)
//
// Because every event gets its own ULID-named object, two processes adding or cancelling at the
// same moment never overwrite each other: object stores without conditional writes are safe.
package tombstones

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// Version is the format version this package writes. Readers refuse objects of other versions.
const Version = 1

// Prefix is the bucket folder that holds every tombstone object.
const Prefix = "tombstones/"

// BeginningOfTime is the start of a tombstone that covers all samples before its end.
const BeginningOfTime int64 = math.MinInt64

// Defaults from CONTRACT.md.
const (
	DefaultUndeleteWindow = 24 * time.Hour
	DefaultMaxWait        = 14 * 24 * time.Hour
)

// Tombstone is one deletion request: every sample of a series matched by any of Matchers, with a
// timestamp in [Start, End] (inclusive, milliseconds), is deleted.
type Tombstone struct {
	Version int       `json:"version"`
	ID      ulid.ULID `json:"id"`
	// Matchers are PromQL series selectors; a series is covered if any of them matches it (the
	// union, as with Prometheus' match[]). They may name external labels.
	Matchers []string `json:"matchers"`
	// Start and End are inclusive, in milliseconds since the epoch. Start may be BeginningOfTime.
	Start int64 `json:"start"`
	End   int64 `json:"end"`
	// CreatedAt is when the tombstone was registered; from then on proxies mask it.
	CreatedAt time.Time `json:"created_at"`
	// UndeleteUntil ends the window in which the tombstone can be cancelled; from then on the
	// rewriter may apply it.
	UndeleteUntil time.Time `json:"undelete_until"`
	// Deadline is when the rewriter applies it whatever the threshold.
	Deadline time.Time `json:"deadline"`
	Reason   string    `json:"reason,omitempty"`
	Author   string    `json:"author,omitempty"`
	// Redaction is set when the values of equality matchers are stored as digests.
	Redaction *Redaction `json:"redaction,omitempty"`

	selectors [][]*labels.Matcher
}

// Redaction says how the equality matchers of a tombstone were redacted: every equality matcher on
// a label other than __name__ holds the hex HMAC-SHA256 of the label name and value under the key
// named by KeyID.
type Redaction struct {
	Algorithm string `json:"algorithm"`
	KeyID     string `json:"key_id"`
}

// Selectors returns the parsed matchers of every selector. The result must not be modified.
func (t *Tombstone) Selectors() [][]*labels.Matcher { return t.selectors }

// Redacted reports whether the tombstone's equality matchers hold digests.
func (t *Tombstone) Redacted() bool { return t.Redaction != nil }

// Overlaps reports whether the tombstone's time range meets [mint, maxt] (inclusive).
func (t *Tombstone) Overlaps(mint, maxt int64) bool { return t.Start <= maxt && mint <= t.End }

// DisplayMatchers returns the selectors as an operator may see them: redacted values are replaced
// by "<redacted>", so no printed form carries them, not even as digests.
func (t *Tombstone) DisplayMatchers() []string {
	if !t.Redacted() {
		return t.Matchers
	}
	out := make([]string, 0, len(t.selectors))
	for _, sel := range t.selectors {
		parts := make([]string, 0, len(sel))
		for _, m := range sel {
			if isRedactable(m) {
				parts = append(parts, m.Name+`=<redacted>`)
				continue
			}
			parts = append(parts, m.String())
		}
		out = append(out, "{"+strings.Join(parts, ", ")+"}")
	}
	return out
}

// validate checks a decoded or freshly built tombstone and parses its selectors.
func (t *Tombstone) validate() error {
	if t.Version != Version {
		return errors.Newf("unsupported tombstone version %d (this lethe reads version %d)", t.Version, Version)
	}
	if t.ID == (ulid.ULID{}) {
		return errors.New("tombstone has no id")
	}
	sels, err := ParseSelectors(t.Matchers)
	if err != nil {
		return err
	}
	if t.Start > t.End {
		return errors.Newf("start %s is after end %s", FormatMillis(t.Start), FormatMillis(t.End))
	}
	if t.CreatedAt.IsZero() {
		return errors.New("tombstone has no created_at")
	}
	if t.UndeleteUntil.Before(t.CreatedAt) {
		return errors.New("undelete_until is before created_at")
	}
	if t.Deadline.Before(t.UndeleteUntil) {
		return errors.New("deadline is before undelete_until")
	}
	if t.Redaction != nil {
		if t.Redaction.Algorithm != redactionAlgorithm {
			return errors.Newf("unsupported redaction algorithm %q", t.Redaction.Algorithm)
		}
		if t.Redaction.KeyID == "" {
			return errors.New("redaction has no key_id")
		}
	}
	t.selectors = sels
	return nil
}

// ParseSelectors parses PromQL series selectors with Prometheus' parser. Each selector must hold at
// least one matcher that does not match the empty string, as Prometheus demands of match[].
func ParseSelectors(selectors []string) ([][]*labels.Matcher, error) {
	if len(selectors) == 0 {
		return nil, errors.New("no selector given (--match)")
	}
	p := parser.NewParser(parser.Options{})
	out := make([][]*labels.Matcher, 0, len(selectors))
	for _, s := range selectors {
		if strings.TrimSpace(s) == "" {
			return nil, errors.New("empty selector")
		}
		ms, err := p.ParseMetricSelector(s)
		if err != nil {
			return nil, errors.Wrapf(err, "parse selector %q", s)
		}
		if matchesEmpty(ms) {
			return nil, errors.Newf("selector %q must contain at least one matcher that does not match the empty string", s)
		}
		out = append(out, ms)
	}
	return out, nil
}

func matchesEmpty(ms []*labels.Matcher) bool {
	for _, m := range ms {
		if !m.Matches("") {
			return false
		}
	}
	return true
}

// MatchesEverySeries reports whether a selector matches every series that has a metric name: each
// of its matchers either matches the empty string (so also an absent label) or is a matcher on
// __name__ that accepts every non-empty name.
func MatchesEverySeries(ms []*labels.Matcher) bool {
	for _, m := range ms {
		if m.Matches("") {
			continue
		}
		if m.Name == model.MetricNameLabel && acceptsAnyNonEmpty(m) {
			continue
		}
		return false
	}
	return true
}

// probeNames are valid metric names of many shapes. A matcher on __name__ that accepts all of them
// is taken to accept every name, whatever its spelling (".+", ".{1,}", "..*", !~"^$", ...).
var probeNames = []string{"a", "up", "_", "x9", "ZZ:x_1", "http_requests_total", "node_cpu_seconds_total",
	"lethe_probe_5f3a_q", "A:b:c", "go_gc_duration_seconds_bucket"}

func acceptsAnyNonEmpty(m *labels.Matcher) bool {
	for _, n := range probeNames {
		if !m.Matches(n) {
			return false
		}
	}
	return true
}

// FormatMillis renders a millisecond timestamp for people, with the open ends spelled out.
func FormatMillis(ms int64) string {
	switch ms {
	case BeginningOfTime:
		return "beginning of time"
	case math.MaxInt64:
		return "end of time"
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano)
}

// promMinTime and promMaxTime are Prometheus' web/api/v1 MinTime and MaxTime, the open ends of
// an optional time range. Clients that want all time send them printed as RFC 3339 (with more
// than four year digits, which time.Parse does not read), and Prometheus accepts them.
var (
	promMinTime = time.Unix(math.MinInt64/1000+62135596801, 0).UTC()
	promMaxTime = time.Unix(math.MaxInt64/1000-62135596801, 999999999).UTC()
)

// ParseTime parses a time as Prometheus' HTTP API does: Unix seconds as any float strconv reads
// ("1767225600", "1.7672256e9", "1767225600.25"), rounded to the millisecond; RFC 3339; or
// Prometheus' own printed MinTime and MaxTime. Non-finite and out-of-range numbers are refused.
func ParseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, errors.New("empty time")
	}
	if secs, err := strconv.ParseFloat(s, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		if err != nil || math.IsNaN(secs) || math.Abs(secs) > 9.2e9*1e3 {
			return time.Time{}, errors.Newf("time %q is out of range", s)
		}
		// Round to the millisecond as Prometheus does: a float's fraction is inexact, and a
		// timestamp one millisecond short would leave the sample at the inclusive end undeleted.
		whole, frac := math.Modf(secs)
		ms := math.Round(frac*1000) / 1000
		return time.Unix(int64(whole), int64(ms*float64(time.Second))).UTC(), nil
	}
	switch s {
	case promMinTime.Format(time.RFC3339Nano):
		return promMinTime, nil
	case promMaxTime.Format(time.RFC3339Nano):
		return promMaxTime, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, errors.Newf("cannot parse %q as a time: want RFC 3339 (2026-01-02T15:04:05Z) or Unix seconds", s)
	}
	return t.UTC(), nil
}

// selectorString renders matchers as a series selector, metric name first.
func selectorString(ms []*labels.Matcher) string {
	parts := make([]string, 0, len(ms))
	for _, m := range ms {
		if m.Name == model.MetricNameLabel {
			parts = append(parts, m.String())
		}
	}
	for _, m := range ms {
		if m.Name != model.MetricNameLabel {
			parts = append(parts, m.String())
		}
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
