package proxy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/efficientgo/core/testutil"

	"github.com/lethe-project/lethe/tombstones"
)

// chromium returns the browser the page test drives: LETHE_CHROMIUM (tools/chromium.sh prints
// it, installing Debian's chromium when missing), else a chromium on this machine. The test is
// skipped only when neither exists.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("LETHE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium: run LETHE_CHROMIUM=$(tools/chromium.sh) go test ./proxy -run TestPageInBrowser")
	return ""
}

// TestPageInBrowser drives the deletions page in headless Chromium with JavaScript off, as an
// operator without it would: sign in, add with a preview, see the list update, cancel, and be
// refused without credentials and from another site. Screenshots go to LETHE_SCREENSHOTS (default:
// a temporary directory).
func TestPageInBrowser(t *testing.T) {
	path := chromium(t)
	shots := os.Getenv("LETHE_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	testutil.Ok(t, os.MkdirAll(shots, 0o755))

	pf := newPageFixture(t)
	ctx := context.Background()
	zero, hour := time.Duration(0), time.Hour
	pf.add(t, tombstones.Spec{Selectors: []string{`{job="api", user_id="0"}`}, Reason: "GDPR request #4711", Author: "alice"})
	pf.add(t, tombstones.Spec{Selectors: []string{`{token="s3cr3t"}`}, Redact: true, Reason: "leaked token", Author: "sec-team"})
	due := pf.add(t, tombstones.Spec{Selectors: []string{`http_requests_total{user_id="1"}`}, UndeleteWindow: &zero, MaxWait: &hour, Reason: "GDPR request #4690", Author: "bob"})
	overdue := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="3"}`}, UndeleteWindow: &zero, MaxWait: &zero, Reason: "GDPR request #4602", Author: "bob"})
	_, err := pf.store.MarkApplied(ctx, overdue, pf.ids[:1])
	testutil.Ok(t, err)
	pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="3"}`}, UndeleteWindow: &zero, MaxWait: &zero, Reason: "GDPR request #4655", Author: "bob"})
	victim := pf.add(t, tombstones.Spec{Selectors: []string{`{user_id="0"}`}, Reason: "kept: must survive a forged cancel"})
	before := len(pf.entries(t).Entries)

	// Another site on this machine: a form that posts a cancellation to the proxy.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!DOCTYPE html><form method="post" action="%s/tombstones/%s/cancel"><input type="hidden" name="reason" value="forged">`+
			`<button id="go" type="submit">win a prize</button></form>`, pf.srv.URL, victim)
	}))
	defer evil.Close()

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.WindowSize(1280, 900), chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-dev-shm-usage", true))...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	// The first run starts the browser; its context must not carry the deadline.
	testutil.Ok(t, chromedp.Do(browser, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
		return err
	})))
	b, cancel := context.WithTimeout(browser, 2*time.Minute)
	defer cancel()

	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(b, chromedp.FullScreenshot(100))
		testutil.Ok(t, err)
		testutil.Ok(t, os.WriteFile(filepath.Join(shots, name), png, 0o644))
	}
	text := func(sel string) string {
		t.Helper()
		// textContent, not innerText: the style sheet upper-cases the state badges.
		s, err := chromedp.Run(b, chromedp.Evaluate[string](`document.querySelector(`+fmt.Sprintf("%q", sel)+`).textContent`))
		testutil.Ok(t, err, sel)
		return strings.TrimSpace(s)
	}
	count := func(sel string) int {
		t.Helper()
		n, err := chromedp.Run(b, chromedp.Evaluate[int](`document.querySelectorAll(`+fmt.Sprintf("%q", sel)+`).length`))
		testutil.Ok(t, err)
		return n
	}
	open := func(url string, steps ...chromedp.Action[chromedp.Void]) int64 {
		t.Helper()
		if url != "" {
			steps = append([]chromedp.Action[chromedp.Void]{chromedp.Navigate(url)}, steps...)
		}
		resp, err := chromedp.RunResponse(b, steps...)
		testutil.Ok(t, err)
		return resp.Status
	}

	// Without credentials: the login form, nothing else.
	testutil.Equals(t, int64(http.StatusUnauthorized), open(pf.srv.URL+"/"))
	testutil.Equals(t, 0, count("#tombstones"))
	shot("page-login.png")
	testutil.Equals(t, int64(http.StatusOK), open("",
		chromedp.SendKeys(chromedp.CSS(`input[name="token"]`), adminToken), chromedp.Submit(chromedp.CSS(`#login form`))))
	testutil.Equals(t, before, count("table.list tbody tr"))
	// The page's script did not run: what follows works without it.
	testutil.Equals(t, 0, count("table.list .rel"))
	testutil.Assert(t, strings.Contains(text("#tombstones"), "token=<redacted>"))
	testutil.Assert(t, !strings.Contains(text("body"), "s3cr3t"))

	// Add with a preview.
	testutil.Ok(t, chromedp.Do(b,
		chromedp.SetValue(chromedp.CSS(`textarea[name="selectors"]`), `{user_id="2"}`),
		chromedp.SetValue(chromedp.CSS(`input[name="start"]`), time.UnixMilli(t0).UTC().Format(time.RFC3339)),
		chromedp.SetValue(chromedp.CSS(`input[name="end"]`), time.UnixMilli(t0+7_200_000).UTC().Format(time.RFC3339)),
		chromedp.SetValue(chromedp.CSS(`input[name="reason"]`), "GDPR request #4802"),
		chromedp.SetValue(chromedp.CSS(`input[name="author"]`), "carol"),
	))
	testutil.Equals(t, int64(http.StatusOK), open("", chromedp.Click(chromedp.CSS(`button[name="preview"]`))))
	testutil.Assert(t, strings.HasPrefix(text("#match-count"), "1 stored series match"), text("#match-count"))
	testutil.Assert(t, strings.Contains(text("#matched-series"), `user_id="2"`))
	testutil.Assert(t, strings.Contains(text("#graph figcaption"), "121 samples masked, 60 kept"), text("#graph figcaption"))
	testutil.Equals(t, 2, count("#graph svg path.line"))
	testutil.Equals(t, before, len(pf.entries(t).Entries))
	shot("page-preview.png")

	testutil.Equals(t, int64(http.StatusOK), open("", chromedp.Click(chromedp.CSS(`#confirm button`))))
	testutil.Equals(t, "pending", text("#state"))
	testutil.Equals(t, 1, count("#added"))
	set := pf.entries(t)
	testutil.Equals(t, before+1, len(set.Entries))
	added := set.Entries[len(set.Entries)-1]
	testutil.Equals(t, "GDPR request #4802", added.Reason)
	testutil.Assert(t, strings.Contains(text("#tombstone"), added.ID.String()))
	shot("page-tombstone.png")

	// The list shows it, newest first.
	testutil.Equals(t, int64(http.StatusOK), open(pf.srv.URL+"/"))
	testutil.Equals(t, before+1, count("table.list tbody tr"))
	id, err := chromedp.Run(b, chromedp.Evaluate[string](`document.querySelector("table.list tbody tr").dataset.id`))
	testutil.Ok(t, err)
	testutil.Equals(t, added.ID.String(), id)
	testutil.Equals(t, "pending", text("table.list tbody tr .badge"))

	// Cancel it with a reason; the button is gone afterwards.
	testutil.Equals(t, int64(http.StatusOK), open(pf.srv.URL+"/tombstones/"+id))
	testutil.Ok(t, chromedp.Do(b, chromedp.SetValue(chromedp.CSS(`#cancel input[name="reason"]`), "wrong user id"),
		chromedp.SetValue(chromedp.CSS(`#cancel input[name="author"]`), "carol")))
	testutil.Equals(t, int64(http.StatusOK), open("", chromedp.Click(chromedp.CSS(`#cancel button`))))
	testutil.Equals(t, "cancelled", text("#state"))
	testutil.Equals(t, 0, count("#cancel"))
	testutil.Assert(t, strings.Contains(text("#events"), "reason: wrong user id"), text("#events"))
	shot("page-cancelled.png")
	e, _ := pf.entries(t).Get(added.ID)
	testutil.Assert(t, e.Cancellation != nil && e.Cancellation.Reason == "wrong user id")

	// Another site's form, with this browser signed in: refused, nothing cancelled.
	testutil.Equals(t, int64(http.StatusOK), open(evil.URL))
	testutil.Equals(t, int64(http.StatusForbidden), open("", chromedp.Click(chromedp.ID("go"))))
	testutil.Assert(t, strings.Contains(text("#error"), "cross-origin request detected"), text("#error"))
	shot("page-refused.png")
	e, _ = pf.entries(t).Get(victim)
	testutil.Assert(t, e.Cancellation == nil, "a cross-site form cancelled a tombstone")

	// The list with its script on: times gain their distance from the proxy's clock.
	testutil.Ok(t, chromedp.Do(b, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: false})
		return err
	})))
	testutil.Equals(t, int64(http.StatusOK), open(pf.srv.URL+"/"))
	testutil.Equals(t, "cancelled", text("table.list tbody tr .badge"))
	testutil.Assert(t, count("table.list .rel") > 0)
	shot("page-list.png")
	// A form once sent has its buttons disabled, so a double click sends it once.
	disabled, err := chromedp.Run(b, chromedp.Evaluate[bool](`new Promise((resolve) => {
		const form = document.querySelector("form.logout");
		form.addEventListener("submit", (e) => e.preventDefault());
		form.requestSubmit();
		setTimeout(() => resolve(form.querySelector("button").disabled), 100);
	})`, chromedp.EvalAwaitPromise))
	testutil.Ok(t, err)
	testutil.Assert(t, disabled, "the sent form's button is still enabled")
	testutil.Equals(t, int64(http.StatusOK), open(pf.srv.URL+"/"))

	// A due tombstone's page asks the rewriter's planner on request: both blocks hold its series.
	testutil.Equals(t, int64(http.StatusOK), open(pf.srv.URL+"/tombstones/"+due.String()))
	testutil.Equals(t, int64(http.StatusOK), open("", chromedp.Click(chromedp.CSS(`#plan button`))))
	testutil.Equals(t, 2, count("#plan-jobs tbody tr"))
	testutil.Assert(t, strings.Contains(text("#plan-jobs"), pf.ids[0].String()), text("#plan-jobs"))
	shot("page-plan.png")

	// Signed out, the page is the login form again.
	testutil.Equals(t, int64(http.StatusUnauthorized), open("", chromedp.Click(chromedp.CSS(`form.logout button`))))
	testutil.Equals(t, 1, count("#login"))
	testutil.Equals(t, int64(http.StatusUnauthorized), open(pf.srv.URL+"/tombstones/"+id))
	testutil.Equals(t, 0, count("#tombstone"))
}
