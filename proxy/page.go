package proxy

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"html/template"
	"io/fs"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"

	"github.com/lethe-project/lethe/tombstones"
)

// webFiles are the deletions page's templates, style sheet and script, built into the binary:
// nothing is fetched at run time.
//
//go:embed web
var webFiles embed.FS

// Cookies of the deletions page. The session cookie carries the admin token (HttpOnly, SameSite
// Strict), so the page is authorized exactly as the admin API; the CSRF cookie carries a random
// nonce that the forms' token is derived from.
const (
	sessionCookie = "lethe_session"
	csrfCookie    = "lethe_csrf"
	sessionMaxAge = 12 * time.Hour
)

// pageStates are the states a tombstone is listed with and filtered by; "overdue" is a due
// tombstone past its deadline.
var pageStates = []string{"pending", "due", "overdue", "applied", "cancelled"}

// page serves the deletions page: the tombstones, an add form with a preview, cancelling, and each
// tombstone's history. Everything it writes goes through the admin API's own functions.
type page struct {
	p      *Proxy
	tmpl   map[string]*template.Template
	static fs.FS
	origin *http.CrossOriginProtection
}

// registerPage adds the deletions page at / and its own paths; every other path stays 404.
func (p *Proxy) registerPage() {
	pg, err := newPage(p)
	if err != nil {
		// The templates are built in; a failure here is a bug that the page tests catch.
		p.logger.Error("deletions page unavailable", "err", err)
		p.handle("/{$}", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "the deletions page is unavailable: "+err.Error(), http.StatusInternalServerError)
		}), http.MethodGet)
		return
	}
	p.handle("/{$}", pg.authorized(pg.list), http.MethodGet)
	p.handle("/static/{file}", http.HandlerFunc(pg.serveStatic), http.MethodGet)
	p.handle("/login", pg.sameOrigin(http.HandlerFunc(pg.login)), http.MethodPost)
	p.handle("/logout", pg.changing(pg.logout), http.MethodPost)
	p.handle("/tombstones/preview", pg.changing(pg.preview), http.MethodPost)
	p.handle("/tombstones", pg.changing(pg.add), http.MethodPost)
	p.handle("/tombstones/{id}", pg.authorized(pg.show), http.MethodGet)
	p.handle("/tombstones/{id}/cancel", pg.changing(pg.cancel), http.MethodPost)
}

func newPage(p *Proxy) (*page, error) {
	static, err := fs.Sub(webFiles, "web/static")
	if err != nil {
		return nil, errors.Wrap(err, "static files")
	}
	pg := &page{p: p, tmpl: map[string]*template.Template{}, static: static, origin: http.NewCrossOriginProtection()}
	funcs := template.FuncMap{
		"when":      formatWhen,
		"rfc3339":   func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"stateNote": stateNote,
		"percent":   func(f float64) string { return strconv.FormatFloat(f*100, 'f', 2, 64) + "%" },
	}
	for _, name := range []string{"list", "preview", "show", "login", "error"} {
		t, err := template.New(name).Funcs(funcs).ParseFS(webFiles, "web/layout.html", "web/"+name+".html")
		if err != nil {
			return nil, errors.Wrapf(err, "parse template %s", name)
		}
		pg.tmpl[name] = t
	}
	return pg, nil
}

// sameOrigin refuses cross-site requests (Sec-Fetch-Site, else Origin against Host) before
// anything else is looked at.
func (pg *page) sameOrigin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := pg.origin.Check(r); err != nil {
			pg.fail(w, r, http.StatusForbidden, "refused: "+err.Error()+"; changes are accepted only from the deletions page itself")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// authorized runs next behind the admin API's own check (Proxy.admin), with the session cookie
// standing in for the Authorization header a browser cannot send from a plain form. The admin
// check's JSON refusals are shown as pages: 401 as the login form.
func (pg *page) authorized(next http.HandlerFunc) http.Handler {
	guarded := pg.p.admin(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			if token, ok := sessionToken(r); ok {
				r = r.Clone(r.Context())
				r.Header.Set("Authorization", "Bearer "+token)
			}
		}
		rec := &apiErrorRecorder{ResponseWriter: w}
		guarded.ServeHTTP(rec, r)
		if rec.code == 0 {
			return
		}
		msg := rec.message()
		if rec.code == http.StatusUnauthorized {
			pg.loginForm(w, r, http.StatusUnauthorized, msg)
			return
		}
		pg.fail(w, r, rec.code, msg)
	})
}

// changing guards a POST that changes something or acts on the operator's behalf: same origin,
// admin credentials, and the form's CSRF token bound to this browser's nonce and the admin token.
func (pg *page) changing(next http.HandlerFunc) http.Handler {
	return pg.sameOrigin(pg.authorized(func(w http.ResponseWriter, r *http.Request) {
		if !pg.validCSRF(r) {
			pg.fail(w, r, http.StatusForbidden, "refused: the form's CSRF token is missing or invalid; reload the page and try again")
			return
		}
		next(w, r)
	}))
}

// apiErrorRecorder holds back the admin API's JSON error answers, so that they can be shown as a
// page; everything else passes through.
type apiErrorRecorder struct {
	http.ResponseWriter
	code int
	body bytes.Buffer
}

func (r *apiErrorRecorder) WriteHeader(code int) {
	if code >= http.StatusBadRequest && r.Header().Get("Content-Type") == "application/json" {
		r.code = code
		r.Header().Del("Content-Type")
		return
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *apiErrorRecorder) Write(b []byte) (int, error) {
	if r.code != 0 {
		return r.body.Write(b)
	}
	return r.ResponseWriter.Write(b)
}

// message is the error text of a held-back answer.
func (r *apiErrorRecorder) message() string {
	var env struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(r.body.Bytes(), &env); err != nil || env.Error == "" {
		return http.StatusText(r.code)
	}
	return env.Error
}

// sessionToken returns the admin token a login stored in the session cookie.
func sessionToken(r *http.Request) (string, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil || len(b) == 0 {
		return "", false
	}
	return string(b), true
}

// nonce returns this browser's CSRF nonce, setting a new one when it has none.
func (pg *page) nonce(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) >= 32 {
		return c.Value
	}
	return pg.newNonce(w, r)
}

// newNonce sets a fresh CSRF nonce; a login always gets one, so no nonce outlives a session.
func (pg *page) newNonce(w http.ResponseWriter, r *http.Request) string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails.
	v := base64.RawURLEncoding.EncodeToString(b)
	pg.setCookie(w, r, csrfCookie, v, sessionMaxAge)
	return v
}

// csrfToken is the forms' token: an HMAC of the browser's nonce under the admin token, so a token
// is good only for one browser and one admin credential.
func (pg *page) csrfToken(nonce string) string {
	mac := hmac.New(sha256.New, []byte(pg.p.cfg.AdminToken))
	mac.Write([]byte("lethe-proxy deletions page\x00"))
	mac.Write([]byte(nonce))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func (pg *page) validCSRF(r *http.Request) bool {
	c, err := r.Cookie(csrfCookie)
	if err != nil || len(c.Value) < 32 {
		return false
	}
	got := r.PostForm.Get("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(pg.csrfToken(c.Value))) == 1
}

func (pg *page) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: "/", MaxAge: int(maxAge.Seconds()),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	})
}

// login checks the token with the admin API's own check and keeps it in the session cookie.
func (pg *page) login(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		pg.loginForm(w, r, http.StatusBadRequest, err.Error())
		return
	}
	token := strings.TrimSpace(r.PostForm.Get("token"))
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+token)
	rec := &apiErrorRecorder{ResponseWriter: w}
	pg.p.admin(func(w http.ResponseWriter, r *http.Request) {
		pg.setCookie(w, r, sessionCookie, base64.RawURLEncoding.EncodeToString([]byte(token)), sessionMaxAge)
		pg.newNonce(w, r)
		http.Redirect(w, r, localPath(r.PostForm.Get("next")), http.StatusSeeOther)
	}).ServeHTTP(rec, r)
	if rec.code == http.StatusUnauthorized {
		pg.loginForm(w, r, http.StatusUnauthorized, "that is not the admin token: "+rec.message())
		return
	}
	if rec.code != 0 {
		pg.fail(w, r, rec.code, rec.message())
	}
}

func (pg *page) logout(w http.ResponseWriter, r *http.Request) {
	pg.setCookie(w, r, sessionCookie, "", -time.Second)
	pg.setCookie(w, r, csrfCookie, "", -time.Second)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// localPath keeps a redirect target on this server: "/" or one of the page's own paths.
func localPath(p string) string {
	if p == "/" || (strings.HasPrefix(p, "/tombstones/") && !strings.ContainsAny(p, "\\?#") && !strings.Contains(p, "//")) {
		return p
	}
	return "/"
}

func (pg *page) serveStatic(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	if _, err := fs.Stat(pg.static, name); err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=3600")
	http.ServeFileFS(w, r, pg.static, name)
}

// pageBase is what every page's layout needs.
type pageBase struct {
	Title  string
	CSRF   string
	Authed bool
	Now    time.Time
}

func (pg *page) base(w http.ResponseWriter, r *http.Request, title string) pageBase {
	// authorized() sets the header from the session cookie before any page handler runs.
	b := pageBase{Title: title, Now: pg.p.mask.now(), Authed: r.Header.Get("Authorization") != ""}
	if pg.p.cfg.AdminToken != "" {
		b.CSRF = pg.csrfToken(pg.nonce(w, r))
	}
	return b
}

// render executes a page into a buffer first, so that a template error is a clean 500.
func (pg *page) render(w http.ResponseWriter, code int, name string, data any) {
	var buf bytes.Buffer
	if err := pg.tmpl[name].ExecuteTemplate(&buf, "layout", data); err != nil {
		pg.p.logger.Error("render deletions page", "page", name, "err", err)
		http.Error(w, "render page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

type errorPage struct {
	pageBase
	Code    int
	Message string
}

func (pg *page) fail(w http.ResponseWriter, r *http.Request, code int, msg string) {
	pg.render(w, code, "error", errorPage{pageBase: pg.base(w, r, http.StatusText(code)), Code: code, Message: msg})
}

type loginPage struct {
	pageBase
	Message string
	Next    string
}

func (pg *page) loginForm(w http.ResponseWriter, r *http.Request, code int, msg string) {
	next := r.URL.Path
	if r.Method == http.MethodPost {
		next = r.PostForm.Get("next")
	}
	b := pg.base(w, r, "Sign in")
	b.Authed = false
	pg.render(w, code, "login", loginPage{pageBase: b, Message: msg, Next: localPath(next)})
}

// row is one tombstone as the page lists it.
type row struct {
	tombstones.View
	// Shown is the listed state: the lifecycle state, or "overdue" for a due one past its deadline.
	Shown       string
	Cancellable bool
}

func newRow(e *tombstones.Entry, now time.Time) row {
	v := tombstones.NewView(e, now)
	shown := string(v.State)
	if v.Overdue {
		shown = "overdue"
	}
	return row{View: v, Shown: shown, Cancellable: e.Cancellable(now)}
}

// matchesFilter: "due" lists every due tombstone, overdue ones included.
func (r row) matchesFilter(state string) bool {
	return state == "" || r.Shown == state || (state == "due" && r.State == tombstones.StateDue)
}

// addForm holds the add form's fields as typed, to show them again.
type addForm struct {
	Selectors      string
	Start, End     string
	UndeleteWindow string
	MaxWait        string
	Reason, Author string
	Redact, Force  bool
}

// readAddForm reads the add form and turns its one-selector-per-line text into the API's match[].
func readAddForm(r *http.Request) addForm {
	f := addForm{
		Selectors: r.Form.Get("selectors"), Start: r.Form.Get("start"), End: r.Form.Get("end"),
		UndeleteWindow: r.Form.Get("undelete_window"), MaxWait: r.Form.Get("max_wait"),
		Reason: r.Form.Get("reason"), Author: r.Form.Get("author"),
		Redact: r.Form.Get("redact") == "true", Force: r.Form.Get("force") == "true",
	}
	if f.Selectors == "" {
		f.Selectors = strings.Join(r.Form["match[]"], "\n")
	}
	var sels []string
	for _, line := range strings.Split(f.Selectors, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			sels = append(sels, line)
		}
	}
	r.Form["match[]"] = sels
	return f
}

type listPage struct {
	pageBase
	Filter    string
	States    []stateTab
	Rows      []row
	Total     int
	Broken    []tombstones.Broken
	Form      addForm
	FormError string
	CanRedact bool
}

type stateTab struct {
	Name  string
	Count int
}

func (pg *page) list(w http.ResponseWriter, r *http.Request) {
	pg.renderList(w, r, http.StatusOK, readAddForm(r), "")
}

func (pg *page) renderList(w http.ResponseWriter, r *http.Request, code int, form addForm, formErr string) {
	filter := r.URL.Query().Get("state")
	if filter != "" && !slices.Contains(pageStates, filter) {
		pg.fail(w, r, http.StatusBadRequest, "unknown state "+filter+": want one of "+strings.Join(pageStates, ", "))
		return
	}
	set, err := pg.p.mask.store.Sync(r.Context())
	if err != nil {
		pg.fail(w, r, http.StatusServiceUnavailable, err.Error())
		return
	}
	data := listPage{
		pageBase: pg.base(w, r, "Deletions"), Filter: filter, Broken: set.Broken, Total: len(set.Entries),
		Form: form, FormError: formErr, CanRedact: pg.p.mask.store.RedactionKey() != nil,
	}
	counts := map[string]int{}
	// Newest first: the one just added is on top.
	for i := len(set.Entries) - 1; i >= 0; i-- {
		rw := newRow(set.Entries[i], set.At)
		for _, st := range pageStates {
			if rw.matchesFilter(st) {
				counts[st]++
			}
		}
		if rw.matchesFilter(filter) {
			data.Rows = append(data.Rows, rw)
		}
	}
	for _, st := range pageStates {
		data.States = append(data.States, stateTab{Name: st, Count: counts[st]})
	}
	pg.render(w, code, "list", data)
}

type showPage struct {
	pageBase
	Row    row
	Events []event
	Plan   *tombstonePlan
	Added  bool
}

// event is one line of a tombstone's history: its objects in the bucket, and the clock's
// milestones.
type event struct {
	At     time.Time
	What   string
	Detail string
	Blocks []string
	Future bool
}

func (pg *page) show(w http.ResponseWriter, r *http.Request) {
	id, err := ulid.ParseStrict(r.PathValue("id"))
	if err != nil {
		pg.fail(w, r, http.StatusBadRequest, r.PathValue("id")+" is not a tombstone id")
		return
	}
	set, err := pg.p.mask.store.Sync(r.Context())
	if err != nil {
		pg.fail(w, r, http.StatusServiceUnavailable, err.Error())
		return
	}
	e, ok := set.Get(id)
	if !ok {
		pg.fail(w, r, http.StatusNotFound, "no tombstone with id "+id.String())
		return
	}
	data := showPage{pageBase: pg.base(w, r, "Tombstone "+id.String()), Row: newRow(e, set.At), Events: events(e, set.At), Added: r.URL.Query().Get("added") != ""}
	// A cancelled or applied tombstone is never planned: saying so costs nothing.
	if r.URL.Query().Get("plan") != "" || e.Cancellation != nil || e.Applied != nil {
		data.Plan = pg.plan(r, set, e)
	}
	pg.render(w, http.StatusOK, "show", data)
}

func events(e *tombstones.Entry, now time.Time) []event {
	detail := []string{}
	if e.Author != "" {
		detail = append(detail, "by "+e.Author)
	}
	if e.Reason != "" {
		detail = append(detail, "reason: "+e.Reason)
	}
	evs := []event{{At: e.CreatedAt, What: "created", Detail: strings.Join(detail, ", ") + maskedNote(e)}}
	if c := e.Cancellation; c != nil {
		d := []string{}
		if c.Author != "" {
			d = append(d, "by "+c.Author)
		}
		if c.Reason != "" {
			d = append(d, "reason: "+c.Reason)
		}
		evs = append(evs, event{At: c.CreatedAt, What: "cancelled", Detail: strings.Join(d, ", ")})
	}
	if a := e.Applied; a != nil {
		ev := event{At: a.CreatedAt, What: "applied", Detail: "no live block holds data it covers; blocks replaced by rewritten ones:"}
		for _, b := range a.Blocks {
			ev.Blocks = append(ev.Blocks, b.String())
		}
		if len(a.Blocks) == 0 {
			ev.Detail = "no live block held data it covers; no block was replaced"
		}
		evs = append(evs, ev)
	}
	if e.Cancellation == nil && e.Applied == nil {
		evs = append(evs,
			event{At: e.UndeleteUntil, What: "undelete window ends", Detail: "no longer cancellable; the rewriter may apply it where a block's deleted share reaches its threshold", Future: now.Before(e.UndeleteUntil)},
			event{At: e.Deadline, What: "deadline", Detail: "the rewriter applies it on its next run whatever the threshold", Future: now.Before(e.Deadline)},
		)
	}
	slices.SortStableFunc(evs, func(a, b event) int { return a.At.Compare(b.At) })
	return evs
}

func maskedNote(e *tombstones.Entry) string {
	if e.Cancellation != nil {
		return ""
	}
	return "; masked by every proxy from then on"
}

// add writes the tombstone the operator confirmed, by the same code as POST /api/v1/tombstones.
func (pg *page) add(w http.ResponseWriter, r *http.Request) {
	form := readAddForm(r)
	t, code, err := pg.p.register(r)
	if err != nil {
		pg.renderList(w, r, code, form, err.Error())
		return
	}
	http.Redirect(w, r, "/tombstones/"+t.ID.String()+"?added=1", http.StatusSeeOther)
}

// cancel cancels by the same code as POST /api/v1/tombstones/{id}/cancel, and shows the result.
func (pg *page) cancel(w http.ResponseWriter, r *http.Request) {
	rec := &apiErrorRecorder{ResponseWriter: discardBody{header: http.Header{}}}
	pg.p.cancelTombstone(rec, r)
	if rec.code != 0 {
		pg.fail(w, r, rec.code, rec.message())
		return
	}
	http.Redirect(w, r, "/tombstones/"+r.PathValue("id"), http.StatusSeeOther)
}

// discardBody takes the API's success answer when the page shows its own.
type discardBody struct{ header http.Header }

func (d discardBody) Header() http.Header         { return d.header }
func (d discardBody) Write(b []byte) (int, error) { return len(b), nil }
func (d discardBody) WriteHeader(int)             {}

// formatWhen renders a time for the page: UTC, to the second.
func formatWhen(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func stateNote(state string) string {
	switch state {
	case "pending":
		return "masked; cancellable until its undelete window ends; the rewriter leaves it alone"
	case "due":
		return "masked; no longer cancellable; the rewriter applies it where a block's deleted share reaches the threshold"
	case "overdue":
		return "masked; past its deadline: the rewriter applies it on its next run whatever the threshold"
	case "applied":
		return "no live block holds data it covers; kept for audit, and still masked"
	case "cancelled":
		return "undone inside its undelete window; nothing masks it"
	}
	return ""
}
