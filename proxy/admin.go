package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	v1 "github.com/prometheus/prometheus/web/api/v1"

	"github.com/lethe-project/lethe/tombstones"
)

// registerAdmin adds the deletion API: Prometheus' delete_series and lethe's /api/v1/tombstones.
func (p *Proxy) registerAdmin() {
	p.handle("/api/v1/admin/tsdb/delete_series", p.admin(p.deleteSeries), http.MethodPost, http.MethodPut)
	p.handle("/api/v1/tombstones", p.admin(p.listTombstones), http.MethodGet)
	p.handle("/api/v1/tombstones", p.admin(p.addTombstone), http.MethodPost)
	p.handle("/api/v1/tombstones/{id}", p.admin(p.showTombstone), http.MethodGet)
	p.handle("/api/v1/tombstones/{id}/cancel", p.admin(p.cancelTombstone), http.MethodPost)
}

// admin refuses requests without an admin bearer token or an admin basic-auth user; with none
// configured the deletion API is off.
func (p *Proxy) admin(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(p.cfg.adminTokens) == 0 && len(p.cfg.AdminUsers) == 0 {
			writeError(w, http.StatusForbidden, "unavailable", "the deletion API is disabled: start lethe-proxy with --web.admin-token-file")
			return
		}
		if c := p.identify(r); !c.admin {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lethe-proxy admin"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "a valid admin bearer token is required")
			return
		}
		if err := r.ParseForm(); err != nil {
			writeError(w, http.StatusBadRequest, "bad_data", err.Error())
			return
		}
		next(w, r)
	})
}

// reader authorizes a read endpoint when Config.ReadAuth asks for it; it answers the request
// itself when it returns false.
func (p *Proxy) reader(w http.ResponseWriter, r *http.Request) bool {
	if !p.cfg.ReadAuth {
		return true
	}
	if c := p.identify(r); c.admin || c.reader {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="lethe-proxy"`)
	writeError(w, http.StatusUnauthorized, "unauthorized", "a valid bearer token, basic-auth user or client certificate is required")
	return false
}

// isReadPath reports whether a path is one of the read endpoints: the query API, not the deletion
// API, the page or the proxy's own endpoints.
func isReadPath(path string) bool {
	return strings.HasPrefix(path, "/api/v1/") && !strings.HasPrefix(path, "/api/v1/admin/") && !strings.HasPrefix(path, "/api/v1/tombstones")
}

// spec reads a tombstone request: Prometheus' match[], start and end, and lethe's own fields.
func specFromForm(r *http.Request) (tombstones.Spec, error) {
	spec := tombstones.Spec{
		Selectors: r.Form["match[]"],
		Reason:    r.Form.Get("reason"),
		Author:    r.Form.Get("author"),
		Redact:    r.Form.Get("redact") == "true",
		Force:     r.Form.Get("force") == "true",
	}
	if len(spec.Selectors) == 0 {
		return spec, errors.New("no match[] parameter provided")
	}
	for _, f := range []struct {
		name string
		dst  **int64
	}{{"start", &spec.Start}, {"end", &spec.End}} {
		if v := r.Form.Get(f.name); v != "" {
			t, err := tombstones.ParseTime(v)
			if err != nil {
				return spec, errors.Wrapf(err, "invalid parameter %q", f.name)
			}
			ms := t.UnixMilli()
			*f.dst = &ms
		}
	}
	for _, f := range []struct {
		name string
		dst  **time.Duration
	}{{"undelete_window", &spec.UndeleteWindow}, {"max_wait", &spec.MaxWait}} {
		if v := r.Form.Get(f.name); v != "" {
			d, err := model.ParseDuration(v)
			if err != nil {
				return spec, errors.Wrapf(err, "invalid parameter %q", f.name)
			}
			td := time.Duration(d)
			*f.dst = &td
		}
	}
	return spec, nil
}

// register validates, checks that the selectors match stored data, writes the tombstone and masks
// it here at once. It writes the audit line of the attempt, whatever its outcome.
func (p *Proxy) register(r *http.Request) (*tombstones.Tombstone, int, error) {
	t, code, err := p.registerTombstone(r)
	action := "add"
	if strings.HasSuffix(r.URL.Path, "/delete_series") {
		action = "delete_series"
	}
	id, author, reason := "", r.Form.Get("author"), r.Form.Get("reason")
	if t != nil {
		id, author, reason = t.ID.String(), t.Author, t.Reason
	}
	p.audit(r, action, id, author, reason, err)
	return t, code, err
}

func (p *Proxy) registerTombstone(r *http.Request) (*tombstones.Tombstone, int, error) {
	spec, err := specFromForm(r)
	if err != nil {
		return nil, http.StatusBadRequest, err
	}
	t, err := p.mask.store.Build(spec)
	if err != nil {
		return nil, http.StatusBadRequest, err
	}
	if !spec.Force {
		sels, err := tombstones.ParseSelectors(spec.Selectors)
		if err != nil {
			return nil, http.StatusBadRequest, err
		}
		n, err := p.countMatches(r.Context(), sels, t.Start, t.End)
		if err != nil {
			return nil, http.StatusServiceUnavailable, errors.Wrap(err, "count matching series")
		}
		if n == 0 {
			return nil, http.StatusBadRequest, errors.Newf("the selectors match no stored series in [%s, %s]; nothing to delete (force=true registers it anyway)",
				tombstones.FormatMillis(t.Start), tombstones.FormatMillis(t.End))
		}
	}
	if err := p.mask.store.Put(r.Context(), t); err != nil {
		return nil, http.StatusServiceUnavailable, err
	}
	if err := p.mask.add(t); err != nil {
		return nil, http.StatusInternalServerError, err
	}
	return t, http.StatusOK, nil
}

// countMatches counts the series the selectors select in [mint, maxt], before any mask: the
// question is whether there is stored data to delete.
func (p *Proxy) countMatches(ctx context.Context, sels [][]*labels.Matcher, mint, maxt int64) (int, error) {
	if up, ok := p.source.(*Upstream); ok {
		// The upstream's series endpoint answers with labels only; remote read would send samples.
		return up.countSeries(ctx, sels, mint, maxt)
	}
	empty, err := tombstones.NewIndex(nil, nil)
	if err != nil {
		return 0, err
	}
	q, err := p.source.Querier(&Snapshot{index: empty, metrics: p.mask.metrics}, mint, maxt)
	if err != nil {
		return 0, err
	}
	defer q.Close()
	n := 0
	for _, sel := range sels {
		ss := q.Select(ctx, false, &storage.SelectHints{Start: mint, End: maxt, Func: "series"}, sel...)
		for ss.Next() {
			n++
		}
		if err := ss.Err(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

func (p *Proxy) deleteSeries(w http.ResponseWriter, r *http.Request) {
	t, code, err := p.register(r)
	if err != nil {
		writeError(w, code, errorType(code), err.Error())
		return
	}
	w.Header().Set("X-Lethe-Tombstone-Id", t.ID.String())
	w.WriteHeader(http.StatusNoContent)
}

func (p *Proxy) addTombstone(w http.ResponseWriter, r *http.Request) {
	t, code, err := p.register(r)
	if err != nil {
		writeError(w, code, errorType(code), err.Error())
		return
	}
	writeData(w, tombstones.NewView(&tombstones.Entry{Tombstone: t}, p.mask.now()))
}

func (p *Proxy) listTombstones(w http.ResponseWriter, r *http.Request) {
	set, err := p.mask.store.Sync(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	views := make([]tombstones.View, 0, len(set.Entries))
	for _, e := range set.Entries {
		views = append(views, tombstones.NewView(e, set.At))
	}
	broken := set.Broken
	if broken == nil {
		broken = []tombstones.Broken{}
	}
	writeData(w, map[string]any{"tombstones": views, "broken": broken})
}

func (p *Proxy) entry(w http.ResponseWriter, r *http.Request) (*tombstones.Set, *tombstones.Entry, bool) {
	set, e, code, err := p.lookup(r)
	if err != nil {
		writeError(w, code, errorType(code), err.Error())
		return nil, nil, false
	}
	return set, e, true
}

// lookup finds the tombstone the path names in a fresh sync of the store.
func (p *Proxy) lookup(r *http.Request) (*tombstones.Set, *tombstones.Entry, int, error) {
	id, err := ulid.ParseStrict(r.PathValue("id"))
	if err != nil {
		return nil, nil, http.StatusBadRequest, errors.New(strconv.Quote(r.PathValue("id")) + " is not a tombstone id")
	}
	set, err := p.mask.store.Sync(r.Context())
	if err != nil {
		return nil, nil, http.StatusServiceUnavailable, err
	}
	e, ok := set.Get(id)
	if !ok {
		return nil, nil, http.StatusNotFound, errors.New("no tombstone with id " + id.String())
	}
	return set, e, http.StatusOK, nil
}

func (p *Proxy) showTombstone(w http.ResponseWriter, r *http.Request) {
	if set, e, ok := p.entry(w, r); ok {
		writeData(w, tombstones.NewView(e, set.At))
	}
}

// cancelTombstone cancels a tombstone and writes the audit line of the attempt, whatever its
// outcome.
func (p *Proxy) cancelTombstone(w http.ResponseWriter, r *http.Request) {
	reason, author := r.Form.Get("reason"), r.Form.Get("author")
	_, e, code, err := p.lookup(r)
	if err == nil {
		if _, err = p.mask.store.Cancel(r.Context(), e.ID, reason, author); err != nil {
			code = http.StatusBadRequest
		}
	}
	p.audit(r, "cancel", r.PathValue("id"), author, reason, err)
	if err != nil {
		writeError(w, code, errorType(code), err.Error())
		return
	}
	if err := p.mask.Refresh(r.Context()); err != nil {
		p.logger.Warn("refresh after cancel; the next refresh unmasks it", "tombstone", e.ID.String(), "err", err)
	}
	set, e, ok := p.entry(w, r)
	if ok {
		writeData(w, tombstones.NewView(e, set.At))
	}
}

func errorType(code int) string {
	switch code {
	case http.StatusBadRequest:
		return "bad_data"
	case http.StatusServiceUnavailable:
		return "unavailable"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusRequestEntityTooLarge:
		return "bad_data"
	}
	return "internal"
}

func writeData(w http.ResponseWriter, data any) { writeDataWarnings(w, data, nil) }

func writeDataWarnings(w http.ResponseWriter, data any, warnings []string) {
	b, err := json.Marshal(&v1.Response{Status: "success", Data: data, Warnings: warnings})
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}
