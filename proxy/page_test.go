package proxy

import (
	"context"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/rewriter"
	"github.com/lethe-project/lethe/tombstones"
)

// pageFixture is the proxy fixture with a redaction key, so that the page can show redacted
// tombstones.
type pageFixture struct {
	*fixture
	store *tombstones.Store
	mask  *Mask
	srv   *httptest.Server
}

func newPageFixture(t *testing.T) *pageFixture {
	t.Helper()
	f := newFixture(t, nil)
	key, err := tombstones.NewRedactionKey([]byte("page-test-redaction-key-0123456789"))
	testutil.Ok(t, err)
	clock := func() time.Time { return time.UnixMilli(f.now.Load()) }
	reg := prometheus.NewRegistry()
	pf := &pageFixture{fixture: f}
	pf.store = tombstones.NewStore(f.bkt, reg, tombstones.WithClock(clock), tombstones.WithRedactionKey(key))
	pf.mask = NewMask(pf.store, slog.New(slog.DiscardHandler), reg, time.Hour)
	pf.mask.now = clock
	testutil.Ok(t, pf.mask.Refresh(context.Background()))
	pf.srv = httptest.NewServer(New(pf.mask, f.blocks, slog.New(slog.DiscardHandler), reg, Config{AdminToken: adminToken, Plan: testPlanner(f.bkt, key)}))
	t.Cleanup(pf.srv.Close)
	return pf
}

// testPlanner is lethe-rewriter's planner over bkt as cmd/lethe-proxy gives it to the page.
func testPlanner(bkt objstore.BucketReader, key *tombstones.RedactionKey) PlanFunc {
	return func(ctx context.Context, set *tombstones.Set, threshold float64) ([]PlannedJob, []string, error) {
		plan, err := rewriter.NewPlanner(bkt, slog.New(slog.DiscardHandler), threshold, key).Plan(ctx, set)
		if err != nil {
			return nil, nil, err
		}
		jobs := make([]PlannedJob, 0, len(plan.Jobs))
		for _, j := range plan.Jobs {
			jobs = append(jobs, PlannedJob{Block: j.Block.String(), Series: j.Series, SeriesAffected: j.SeriesAffected,
				DeletedShare: j.DeletedShare, Decision: j.Decision, Reason: j.Reason})
		}
		return jobs, plan.Problems, nil
	}
}

func (pf *pageFixture) add(t *testing.T, spec tombstones.Spec) ulid.ULID {
	t.Helper()
	tb, err := pf.store.Add(context.Background(), spec)
	testutil.Ok(t, err)
	testutil.Ok(t, pf.mask.Refresh(context.Background()))
	// The next one is a second younger, so the list's order (newest first) is the order of adding.
	pf.now.Add(1000)
	return tb.ID
}

func (pf *pageFixture) entries(t *testing.T) *tombstones.Set {
	t.Helper()
	set, err := pf.store.Sync(context.Background())
	testutil.Ok(t, err)
	return set
}

// pageClient is a browser's part of the conversation: a cookie jar, redirects followed, and the
// headers a browser adds.
type pageClient struct {
	t      *testing.T
	base   string
	c      *http.Client
	header http.Header
}

func newPageClient(t *testing.T, base string) *pageClient {
	jar, err := cookiejar.New(nil)
	testutil.Ok(t, err)
	return &pageClient{t: t, base: base, c: &http.Client{Jar: jar}, header: http.Header{}}
}

func (c *pageClient) do(method, p string, form url.Values, header http.Header) (int, string) {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, c.base+p, body)
	testutil.Ok(c.t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.c.Do(req)
	testutil.Ok(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	testutil.Ok(c.t, err)
	return resp.StatusCode, string(b)
}

func (c *pageClient) get(p string) (int, string) { return c.do(http.MethodGet, p, nil, nil) }

func (c *pageClient) post(p string, form url.Values) (int, string) {
	return c.do(http.MethodPost, p, form, nil)
}

func (c *pageClient) login() string {
	c.t.Helper()
	code, body := c.post("/login", url.Values{"token": {adminToken}, "next": {"/"}})
	testutil.Equals(c.t, http.StatusOK, code, body)
	testutil.Assert(c.t, strings.Contains(body, `id="tombstones"`), body)
	return csrfOf(c.t, body)
}

var (
	csrfField  = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	listedRow  = regexp.MustCompile(`<tr class="row-(\w+)" data-id="(\w+)">`)
	hiddenItem = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)
)

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfField.FindStringSubmatch(body)
	testutil.Assert(t, m != nil, "no CSRF token in %s", body)
	return m[1]
}

// listed returns the state of every tombstone the list shows.
func listed(body string) map[string]string {
	out := map[string]string{}
	for _, m := range listedRow.FindAllStringSubmatch(body, -1) {
		out[m[2]] = m[1]
	}
	return out
}

// formFields returns the hidden fields of the form with the given id, as a browser would send them.
func formFields(t *testing.T, body, id string) url.Values {
	t.Helper()
	start := strings.Index(body, `id="`+id+`"`)
	testutil.Assert(t, start >= 0, "no form %s in %s", id, body)
	end := strings.Index(body[start:], "</form>")
	v := url.Values{}
	for _, m := range hiddenItem.FindAllStringSubmatch(body[start:start+end], -1) {
		v.Add(m[1], html.UnescapeString(m[2]))
	}
	return v
}

func TestPageAnswersOnlyItsOwnPaths(t *testing.T) {
	pf := newPageFixture(t)
	c := newPageClient(t, pf.srv.URL)
	for _, p := range []string{"/index.html", "/graph", "/foo", "/tombstones", "/static/", "/static/missing.css", "/static/../page.go", "/tombstones/x/y"} {
		code, _ := c.get(p)
		testutil.Assert(t, code == http.StatusNotFound || code == http.StatusMethodNotAllowed, "%s: %d", p, code)
	}
	code, body := c.get("/static/page.css")
	testutil.Equals(t, http.StatusOK, code)
	testutil.Assert(t, strings.Contains(body, ".badge"), body)
	// Nothing on the page comes from elsewhere.
	c.header.Set("Authorization", "Bearer "+adminToken)
	_, body = c.get("/")
	testutil.Assert(t, !strings.Contains(body, "http://") && !strings.Contains(body, "https://"), body)
}

func TestPageNeedsTheAdminToken(t *testing.T) {
	pf := newPageFixture(t)
	id := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="1"}`}, Reason: "secret reason"})

	// No credentials: the login form, and nothing about the tombstones.
	c := newPageClient(t, pf.srv.URL)
	for _, p := range []string{"/", "/tombstones/" + id.String()} {
		code, body := c.get(p)
		testutil.Equals(t, http.StatusUnauthorized, code, p)
		testutil.Assert(t, strings.Contains(body, `action="/login"`), body)
		testutil.Assert(t, !strings.Contains(body, `id="tombstones"`) && !strings.Contains(body, "secret reason"), body)
	}
	// A wrong token is refused by the admin API's own check.
	code, body := c.post("/login", url.Values{"token": {"wrong-token-0123456789"}})
	testutil.Equals(t, http.StatusUnauthorized, code)
	testutil.Assert(t, strings.Contains(body, "a valid admin bearer token is required"), body)
	code, _ = c.get("/")
	testutil.Equals(t, http.StatusUnauthorized, code)

	// The bearer token works as on the API, and so does a login.
	bearer := newPageClient(t, pf.srv.URL)
	bearer.header.Set("Authorization", "Bearer "+adminToken)
	code, body = bearer.get("/")
	testutil.Equals(t, http.StatusOK, code)
	testutil.Equals(t, map[string]string{id.String(): "pending"}, listed(body))
	c.login()
	code, body = c.get("/tombstones/" + id.String())
	testutil.Equals(t, http.StatusOK, code)
	testutil.Assert(t, strings.Contains(body, "secret reason"), body)
	// Signing out ends it.
	code, _ = c.post("/logout", url.Values{"csrf": {csrfOf(t, body)}})
	testutil.Equals(t, http.StatusUnauthorized, code)
	code, _ = c.get("/")
	testutil.Equals(t, http.StatusUnauthorized, code)

	// Without an admin token configured the page is off, as the API is.
	off := httptest.NewServer(New(pf.mask, pf.blocks, slog.New(slog.DiscardHandler), prometheus.NewRegistry(), Config{}))
	defer off.Close()
	code, body = newPageClient(t, off.URL).get("/")
	testutil.Equals(t, http.StatusForbidden, code)
	testutil.Assert(t, strings.Contains(body, "start lethe-proxy with --web.admin-token-file"), body)
}

func TestPageListsStatesAndRedacts(t *testing.T) {
	pf := newPageFixture(t)
	ctx := context.Background()
	zero, hour := time.Duration(0), time.Hour
	pending := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="0"}`}, Reason: "GDPR #1", Author: "alice"})
	due := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="1"}`}, UndeleteWindow: &zero, MaxWait: &hour})
	overdue := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="2"}`}, UndeleteWindow: &zero, MaxWait: &zero})
	applied := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="3"}`}, UndeleteWindow: &zero})
	_, err := pf.store.MarkApplied(ctx, applied, pf.ids)
	testutil.Ok(t, err)
	cancelled := pf.add(t, tombstones.Spec{Selectors: []string{`{job="api"}`}})
	_, err = pf.store.Cancel(ctx, cancelled, "wrong job", "bob")
	testutil.Ok(t, err)
	redacted := pf.add(t, tombstones.Spec{Selectors: []string{`{token="s3cr3t"}`}, Redact: true})

	c := newPageClient(t, pf.srv.URL)
	c.login()
	code, body := c.get("/")
	testutil.Equals(t, http.StatusOK, code)
	testutil.Equals(t, map[string]string{
		pending.String(): "pending", due.String(): "due", overdue.String(): "overdue",
		applied.String(): "applied", cancelled.String(): "cancelled", redacted.String(): "pending",
	}, listed(body))
	testutil.Assert(t, strings.Contains(body, "GDPR #1") && strings.Contains(body, "alice"), body)
	// The newest first.
	testutil.Assert(t, strings.Index(body, redacted.String()) < strings.Index(body, pending.String()), body)

	// A redacted value never appears, not even as its digest.
	set := pf.entries(t)
	e, _ := set.Get(redacted)
	testutil.Assert(t, strings.Contains(body, "token=&lt;redacted&gt;"), body)
	testutil.Assert(t, !strings.Contains(body, "s3cr3t"), body)
	for _, m := range e.Matchers {
		digest := strings.Split(strings.Split(m, `"`)[1], `"`)[0]
		testutil.Assert(t, len(digest) >= 32 && !strings.Contains(body, digest), "digest %s shown", digest)
	}
	_, body = c.get("/tombstones/" + redacted.String())
	testutil.Assert(t, strings.Contains(body, "token=&lt;redacted&gt;") && !strings.Contains(body, "s3cr3t"), body)

	// Filters by state; "due" lists the overdue one too.
	for state, want := range map[string][]ulid.ULID{
		"pending": {pending, redacted}, "due": {due, overdue}, "overdue": {overdue}, "applied": {applied}, "cancelled": {cancelled},
	} {
		code, body := c.get("/?state=" + state)
		testutil.Equals(t, http.StatusOK, code)
		got := listed(body)
		testutil.Equals(t, len(want), len(got), state)
		for _, id := range want {
			_, ok := got[id.String()]
			testutil.Assert(t, ok, "%s not listed under %s", id, state)
		}
	}
	// An object that does not decode is reported, never fatal.
	testutil.Ok(t, pf.bkt.Upload(ctx, "tombstones/01M86065CWNBFDYWAT4K034EY4.json", strings.NewReader("{not json")))
	code, body = c.get("/")
	testutil.Equals(t, http.StatusOK, code)
	testutil.Equals(t, 6, len(listed(body)))
	testutil.Assert(t, strings.Contains(body, "1 unusable objects under tombstones/") && strings.Contains(body, "tombstones/01M86065CWNBFDYWAT4K034EY4.json"), body)

	code, body = c.get("/?state=gone")
	testutil.Equals(t, http.StatusBadRequest, code)
	testutil.Assert(t, strings.Contains(body, "unknown state gone"), body)

	// The applied record names the blocks replaced; the cancellation its reason.
	_, body = c.get("/tombstones/" + applied.String())
	testutil.Assert(t, strings.Contains(body, "<strong>applied</strong>"), body)
	for _, b := range pf.ids {
		testutil.Assert(t, strings.Contains(body, "<code>"+b.String()+"</code>"), "block %s missing", b)
	}
	_, body = c.get("/tombstones/" + cancelled.String())
	testutil.Assert(t, strings.Contains(body, "<strong>cancelled</strong>") && strings.Contains(body, "reason: wrong job"), body)
	code, _ = c.get("/tombstones/01M86065CWNBFDYWAT4K034EY4")
	testutil.Equals(t, http.StatusNotFound, code)
	code, _ = c.get("/tombstones/not-an-id")
	testutil.Equals(t, http.StatusBadRequest, code)
}

func TestPageAddsWithPreview(t *testing.T) {
	pf := newPageFixture(t)
	c := newPageClient(t, pf.srv.URL)
	csrf := c.login()

	form := url.Values{"csrf": {csrf}, "selectors": {"{user_id=\"2\"}\n"}, "start": {fmt.Sprint(t0 / 1000)},
		"end": {fmt.Sprint((t0 + 7_200_000) / 1000)}, "reason": {"GDPR #7"}, "author": {"carol"}}
	code, body := c.post("/tombstones/preview", form)
	testutil.Equals(t, http.StatusOK, code, body)
	testutil.Assert(t, strings.Contains(body, `<strong>1</strong> stored series match`), body)
	testutil.Assert(t, strings.Contains(body, html.EscapeString(`{__name__="http_requests_total", job="api", user_id="2"}`)), body)
	// The graph: one sample a minute, the range [t0, t0+2h] and an hour after it.
	testutil.Assert(t, strings.Contains(body, "121 samples masked, 60 kept"), body)
	testutil.Equals(t, 2, strings.Count(body, `<path class="line"`))
	// A preview writes nothing.
	testutil.Equals(t, 0, len(pf.entries(t).Entries))

	confirm, edit := formFields(t, body, "confirm"), formFields(t, body, "edit")
	testutil.Equals(t, []string{`{user_id="2"}`}, confirm["match[]"])
	code, body = c.post("/tombstones", confirm)
	testutil.Equals(t, http.StatusOK, code, body)
	set := pf.entries(t)
	testutil.Equals(t, 1, len(set.Entries))
	id := set.Entries[0].ID.String()
	testutil.Equals(t, "GDPR #7", set.Entries[0].Reason)
	testutil.Equals(t, t0, set.Entries[0].Start)
	testutil.Assert(t, strings.Contains(body, `id="added"`) && strings.Contains(body, id) && strings.Contains(body, `id="cancel"`), body)
	// Masked at once, as through the API.
	testutil.Equals(t, map[string]string{}, (&fixture{srv: pf.srv}).instant(t, `http_requests_total{user_id="2"}`, t0+3_600_000))
	_, body = c.get("/")
	testutil.Equals(t, map[string]string{id: "pending"}, listed(body))

	// Edit goes back to the form, filled in as it was.
	_, body = c.get("/?" + edit.Encode())
	testutil.Assert(t, strings.Contains(body, html.EscapeString(`{user_id="2"}`)+"\n</textarea>") && strings.Contains(body, `value="GDPR #7"`), body)

	// With no range, everything stored until now: the graph shows the last 31 days of it.
	code, body = c.post("/tombstones/preview", url.Values{"csrf": {csrf}, "selectors": {`{user_id="1"}`}})
	testutil.Equals(t, http.StatusOK, code, body)
	testutil.Assert(t, strings.Contains(body, "240 samples masked, 0 kept") && strings.Contains(body, "the last 31 days"), body)
	testutil.Equals(t, 1, strings.Count(body, `<path class="line"`))

	// A selector that matches nothing: the preview says so, and confirming is refused.
	form.Set("selectors", `{user_id="nobody"}`)
	code, body = c.post("/tombstones/preview", form)
	testutil.Equals(t, http.StatusOK, code)
	testutil.Assert(t, strings.Contains(body, `<strong>0</strong> stored series match`) && strings.Contains(body, `id="refused"`), body)
	code, body = c.post("/tombstones", formFields(t, body, "confirm"))
	testutil.Equals(t, http.StatusBadRequest, code)
	testutil.Assert(t, strings.Contains(body, "match no stored series"), body)
	// Bad input is one clear error, on the form, and writes nothing.
	for sel, msg := range map[string]string{`up{`: "parse selector", `{__name__=~".+"}`: "matches every series"} {
		form.Set("selectors", sel)
		code, body = c.post("/tombstones/preview", form)
		testutil.Equals(t, http.StatusBadRequest, code)
		testutil.Assert(t, strings.Contains(body, `id="form-error"`) && strings.Contains(body, msg), body)
	}
	testutil.Equals(t, 1, len(pf.entries(t).Entries))
}

func TestPageAddsRedacted(t *testing.T) {
	pf := newPageFixture(t)
	c := newPageClient(t, pf.srv.URL)
	csrf := c.login()
	_, body := c.get("/")
	testutil.Assert(t, strings.Contains(body, `name="redact"`), body)

	form := url.Values{"csrf": {csrf}, "selectors": {`{token="s3cr3t"}`}, "redact": {"true"},
		"start": {fmt.Sprint(t0 / 1000)}, "end": {fmt.Sprint((t0 + 7_200_000) / 1000)}}
	code, body := c.post("/tombstones/preview", form)
	testutil.Equals(t, http.StatusOK, code, body)
	// The digest matches the series: the graph after masking has the hole.
	testutil.Assert(t, strings.Contains(body, `<strong>1</strong> stored series match`) && strings.Contains(body, "121 samples masked, 60 kept"), body)
	testutil.Assert(t, strings.Contains(body, "token=&lt;redacted&gt;"), body)
	// Only the confirm and edit forms carry the value, to send it back.
	confirm := formFields(t, body, "confirm")
	testutil.Equals(t, 2, strings.Count(body, "s3cr3t"))
	code, body = c.post("/tombstones", confirm)
	testutil.Equals(t, http.StatusOK, code, body)
	set := pf.entries(t)
	testutil.Equals(t, 1, len(set.Entries))
	testutil.Assert(t, set.Entries[0].Redacted())
	testutil.Assert(t, !strings.Contains(body, "s3cr3t") && strings.Contains(body, "token=&lt;redacted&gt;"), body)
}

func TestPageCancelsOnlyInsideTheWindow(t *testing.T) {
	pf := newPageFixture(t)
	id := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="1"}`}})
	late := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="2"}`}})
	c := newPageClient(t, pf.srv.URL)
	c.login()

	_, body := c.get("/tombstones/" + id.String())
	testutil.Assert(t, strings.Contains(body, `id="cancel"`), body)
	form := url.Values{"csrf": {csrfOf(t, body)}, "reason": {"wrong user"}, "author": {"dave"}}
	code, body := c.post("/tombstones/"+id.String()+"/cancel", form)
	testutil.Equals(t, http.StatusOK, code, body)
	testutil.Assert(t, strings.Contains(body, `id="state">cancelled`) && !strings.Contains(body, `id="cancel"`), body)
	testutil.Assert(t, strings.Contains(body, "by dave, reason: wrong user"), body)
	_, body = c.get("/")
	testutil.Equals(t, "cancelled", listed(body)[id.String()])

	// After the undelete window: no cancel button, and a cancel sent anyway is refused.
	pf.now.Add((25 * time.Hour).Milliseconds())
	testutil.Ok(t, pf.mask.Refresh(context.Background()))
	_, body = c.get("/tombstones/" + late.String())
	testutil.Assert(t, strings.Contains(body, `id="state">due`) && !strings.Contains(body, `id="cancel"`) && strings.Contains(body, `id="no-cancel"`), body)
	code, body = c.post("/tombstones/"+late.String()+"/cancel", form)
	testutil.Equals(t, http.StatusBadRequest, code)
	testutil.Assert(t, strings.Contains(body, "can no longer be cancelled"), body)
	e, _ := pf.entries(t).Get(late)
	testutil.Assert(t, e.Cancellation == nil)
}

func TestPageRefusesCrossSiteRequests(t *testing.T) {
	pf := newPageFixture(t)
	id := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="1"}`}})
	c := newPageClient(t, pf.srv.URL)
	csrf := c.login()
	cancel := "/tombstones/" + id.String() + "/cancel"
	form := url.Values{"csrf": {csrf}, "reason": {"forged"}}

	other := newPageClient(t, pf.srv.URL)
	otherCSRF := other.login()
	for name, req := range map[string]struct {
		form   url.Values
		header http.Header
		client *pageClient
		code   int
	}{
		"cross-site fetch":        {form: form, header: http.Header{"Sec-Fetch-Site": {"cross-site"}}, client: c, code: http.StatusForbidden},
		"same-site fetch":         {form: form, header: http.Header{"Sec-Fetch-Site": {"same-site"}}, client: c, code: http.StatusForbidden},
		"foreign origin":          {form: form, header: http.Header{"Origin": {"http://evil.example"}}, client: c, code: http.StatusForbidden},
		"no CSRF token":           {form: url.Values{"reason": {"forged"}}, client: c, code: http.StatusForbidden},
		"another browser's token": {form: url.Values{"csrf": {otherCSRF}, "reason": {"forged"}}, client: c, code: http.StatusForbidden},
		"no credentials":          {form: form, client: newPageClient(t, pf.srv.URL), code: http.StatusUnauthorized},
	} {
		code, body := req.client.do(http.MethodPost, cancel, req.form, req.header)
		testutil.Equals(t, req.code, code, name)
		testutil.Assert(t, !strings.Contains(body, `id="state">cancelled`), name)
	}
	// GET changes nothing.
	code, _ := c.get(cancel)
	testutil.Equals(t, http.StatusMethodNotAllowed, code)
	// A preview and an add need the token too.
	code, _ = c.post("/tombstones", url.Values{"match[]": {`{user_id="2"}`}})
	testutil.Equals(t, http.StatusForbidden, code)
	code, _ = c.post("/tombstones/preview", url.Values{"selectors": {`{user_id="2"}`}})
	testutil.Equals(t, http.StatusForbidden, code)
	set := pf.entries(t)
	testutil.Equals(t, 1, len(set.Entries))
	e, _ := set.Get(id)
	testutil.Assert(t, e.Cancellation == nil)

	// The same request from the page itself goes through.
	code, _ = c.do(http.MethodPost, cancel, form, http.Header{"Sec-Fetch-Site": {"same-origin"}, "Origin": {pf.srv.URL}})
	testutil.Equals(t, http.StatusOK, code)
	e, _ = pf.entries(t).Get(id)
	testutil.Assert(t, e.Cancellation != nil && e.Cancellation.Reason == "forged")
}

func TestPageShowsThePlan(t *testing.T) {
	pf := newPageFixture(t)
	zero := time.Duration(0)
	due := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="2"}`}, UndeleteWindow: &zero})
	pending := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="3"}`}})
	c := newPageClient(t, pf.srv.URL)
	c.login()

	_, body := c.get("/tombstones/" + due.String())
	testutil.Assert(t, strings.Contains(body, "Ask the planner") && !strings.Contains(body, `id="plan-jobs"`), body)
	for _, id := range []ulid.ULID{due, pending} {
		_, body = c.get("/tombstones/" + id.String() + "?plan=1")
		testutil.Assert(t, strings.Contains(body, `id="plan-jobs"`), body)
		// One series of the five in each block: 20% deleted, over the 5% threshold.
		for _, b := range pf.ids {
			testutil.Assert(t, strings.Contains(body, "<td><code>"+b.String()+"</code></td><td>1 of 5</td><td>20.00%</td><td>rewrite</td>"), "block %s: %s", b, body)
		}
	}
	testutil.Assert(t, strings.Contains(body, "Once due"), body)
}

// TestPagePreviewsOverAnUpstream previews through an upstream's query API: the series come from its
// series endpoint, the samples from range queries. The upstream is a lethe-proxy over the blocks
// with no tombstones of its own, which answers with Prometheus' own API code.
func TestPagePreviewsOverAnUpstream(t *testing.T) {
	pf := newPageFixture(t)
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	plain := NewMask(tombstones.NewStore(objstore.NewInMemBucket(), nil), logger, prometheus.NewRegistry(), time.Hour)
	testutil.Ok(t, plain.Refresh(ctx))
	upstream := httptest.NewServer(New(plain, pf.blocks, logger, prometheus.NewRegistry(), Config{}))
	defer upstream.Close()
	u, err := url.Parse(upstream.URL)
	testutil.Ok(t, err)
	none := labels.EmptyLabels()
	reg := prometheus.NewRegistry()
	up, err := NewUpstream(ctx, UpstreamConfig{URL: u, Read: ReadQueryAPI, ExternalLabels: &none}, logger, reg)
	testutil.Ok(t, err)
	srv := httptest.NewServer(New(pf.mask, up, logger, reg, Config{AdminToken: adminToken}))
	defer srv.Close()

	c := newPageClient(t, srv.URL)
	csrf := c.login()
	code, body := c.post("/tombstones/preview", url.Values{"csrf": {csrf}, "selectors": {`{user_id=~"1|2"}`},
		"start": {fmt.Sprint(t0 / 1000)}, "end": {fmt.Sprint((t0 + 7_200_000) / 1000)}})
	testutil.Equals(t, http.StatusOK, code, body)
	testutil.Assert(t, strings.Contains(body, `<strong>2</strong> stored series match`), body)
	testutil.Assert(t, strings.Contains(body, html.EscapeString(`{__name__="http_requests_total", job="api", user_id="1"}`)), body)
	testutil.Assert(t, strings.Contains(body, "121 samples masked, 60 kept"), body)

	// The plan needs the bucket's blocks, which an upstream does not show.
	id := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="1"}`}})
	_, body = c.get("/tombstones/" + id.String() + "?plan=1")
	testutil.Assert(t, strings.Contains(body, "run lethe-rewriter plan against the bucket"), body)
}
