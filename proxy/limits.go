package proxy

import (
	"net/http"
	"strconv"
	"time"

	"github.com/efficientgo/core/errors"

	"github.com/lethe-project/lethe/tombstones"
)

// Limits bound what one request may ask of the proxy. Requests over a bound are refused before
// any work, with Prometheus' error envelope: 413 for a body, 400 bad_data for the rest.
type Limits struct {
	// MaxBodyBytes bounds a request's body (a POSTed form).
	MaxBodyBytes int64
	// MaxQueryLength bounds each query and match[] parameter, in bytes.
	MaxQueryLength int
	// MaxRange bounds end - start of a range query (query_range, query_exemplars). Series and label
	// look-ups are left unbounded: they cost the index, not samples, and lethe itself asks an
	// upstream for them over all time.
	MaxRange time.Duration
}

// The default limits hold every dashboard Grafana sends: 1 MiB forms, 64 KiB queries, a year of
// range.
const (
	DefaultMaxBodyBytes   = 1 << 20
	DefaultMaxQueryLength = 64 << 10
	DefaultMaxRange       = 366 * 24 * time.Hour
)

func (l Limits) withDefaults() Limits {
	if l.MaxBodyBytes == 0 {
		l.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if l.MaxQueryLength == 0 {
		l.MaxQueryLength = DefaultMaxQueryLength
	}
	if l.MaxRange == 0 {
		l.MaxRange = DefaultMaxRange
	}
	return l
}

// bounded parses the request's form within the body bound and, for read endpoints, checks the
// query length and time range; it answers the request itself when it returns false.
func (p *Proxy) bounded(w http.ResponseWriter, r *http.Request, read bool) bool {
	lim := p.cfg.Limits
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, lim.MaxBodyBytes)
	}
	if err := r.ParseForm(); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, "bad_data", "request body larger than "+strconv.FormatInt(lim.MaxBodyBytes, 10)+" bytes")
			return false
		}
		writeError(w, http.StatusBadRequest, "bad_data", err.Error())
		return false
	}
	if !read {
		return true
	}
	for _, name := range []string{"query", "match[]"} {
		for _, v := range r.Form[name] {
			if len(v) > lim.MaxQueryLength {
				writeError(w, http.StatusBadRequest, "bad_data", "parameter "+strconv.Quote(name)+" is "+strconv.Itoa(len(v))+
					" bytes long, longer than the limit of "+strconv.Itoa(lim.MaxQueryLength))
				return false
			}
		}
	}
	start, end := r.Form.Get("start"), r.Form.Get("end")
	if (r.URL.Path != "/api/v1/query_range" && r.URL.Path != "/api/v1/query_exemplars") || start == "" || end == "" {
		return true
	}
	// Times that do not parse are left to the endpoint, which refuses them in its own words.
	s, serr := tombstones.ParseTime(start)
	e, eerr := tombstones.ParseTime(end)
	if serr == nil && eerr == nil && e.Sub(s) > lim.MaxRange {
		writeError(w, http.StatusBadRequest, "bad_data", "the time range "+e.Sub(s).String()+" from start to end is longer than the limit of "+lim.MaxRange.String())
		return false
	}
	return true
}
