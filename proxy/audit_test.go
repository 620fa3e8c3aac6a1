package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	aliceToken   = "alice-token-0123456789abcdef"
	grafanaToken = "grafana-token-0123456789abcd"
)

// lockedBuffer is a log sink the handler goroutines write to while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// auditLines returns the "audit" log lines written so far.
func (l *lockedBuffer) auditLines(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	for sc.Scan() {
		var m map[string]any
		testutil.Ok(t, json.Unmarshal(sc.Bytes(), &m))
		if m["msg"] == "audit" {
			out = append(out, m)
		}
	}
	return out
}

// securedProxy serves the fixture's blocks with the given security settings, logging to the
// returned buffer.
func securedProxy(t *testing.T, f *fixture, cfg Config) (*Proxy, *lockedBuffer) {
	t.Helper()
	logs := &lockedBuffer{}
	return New(f.mask, f.blocks, slog.New(slog.NewJSONHandler(logs, nil)), prometheus.NewRegistry(), cfg), logs
}

func serve(p http.Handler, method, target string, form url.Values, prepare func(*http.Request)) *httptest.ResponseRecorder {
	var body *strings.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	} else {
		body = strings.NewReader("")
	}
	req := httptest.NewRequest(method, target, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if prepare != nil {
		prepare(req)
	}
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, req)
	return rec
}

func bearer(token string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
}

// verifiedCert makes the request look as if TLS client auth verified a certificate with the
// given common name.
func verifiedCert(cn string) func(*http.Request) {
	return func(r *http.Request) {
		cert := &x509.Certificate{Subject: pkix.Name{CommonName: cn, Organization: []string{"ops"}}}
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}, VerifiedChains: [][]*x509.Certificate{{cert}}}
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content string
		want          map[string]string
		err           string
	}{
		{name: "bare token", content: "  " + aliceToken + "\n", want: map[string]string{"admin": aliceToken}},
		{name: "named", content: "# operators\nalice:" + aliceToken + "\n\ngrafana: " + grafanaToken + "\n", want: map[string]string{"alice": aliceToken, "grafana": grafanaToken}},
		{name: "empty", content: "\n# nothing\n", err: "holds no token"},
		{name: "short", content: "bob:short", err: `the token of "bob" must be at least 16 characters`},
		{name: "bare among named", content: "alice:" + aliceToken + "\n" + grafanaToken, err: "line 2: want name:token"},
		{name: "twice", content: "alice:" + aliceToken + "\nalice:" + grafanaToken, err: `name "alice" is given twice`},
		{name: "shared", content: "alice:" + aliceToken + "\nbob:" + aliceToken, err: `"alice" and "bob" have the same token`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			testutil.Ok(t, os.WriteFile(path, []byte(tc.content), 0o600))
			got, err := ReadTokenFile(path)
			if tc.err != "" {
				testutil.NotOk(t, err)
				testutil.Assert(t, strings.Contains(err.Error(), tc.err), err.Error())
				return
			}
			testutil.Ok(t, err)
			testutil.Equals(t, tc.want, got)
		})
	}
	_, err := ReadTokenFile(filepath.Join(dir, "missing"))
	testutil.NotOk(t, err)
}

func TestReadEndpointsBehindTokens(t *testing.T) {
	f := newFixture(t, nil)
	p, _ := securedProxy(t, f, Config{
		AdminTokens: map[string]string{"alice": aliceToken}, ReadTokens: map[string]string{"grafana": grafanaToken},
		AdminUsers: []string{"root"}, BasicAuthVerified: true,
	})
	at := fmt.Sprint((t0 + 3_600_000) / 1000)
	query := "/api/v1/query?" + url.Values{"query": {"count(http_requests_total)"}, "time": {at}}.Encode()
	basic := func(user string) func(*http.Request) {
		return func(r *http.Request) { r.SetBasicAuth(user, "checked by the web config") }
	}
	for _, tc := range []struct {
		name    string
		target  string
		prepare func(*http.Request)
		want    int
	}{
		{"query without credentials", query, nil, http.StatusUnauthorized},
		{"query with a wrong token", query, bearer("not-a-token-of-this-proxy"), http.StatusUnauthorized},
		{"query with the read token", query, bearer(grafanaToken), http.StatusOK},
		{"query with an admin token", query, bearer(aliceToken), http.StatusOK},
		{"query as a verified basic-auth user", query, basic("viewer"), http.StatusOK},
		{"query with a verified client certificate", query, verifiedCert("grafana.example"), http.StatusOK},
		{"label values with the read token", "/api/v1/label/job/values", bearer(grafanaToken), http.StatusOK},
		{"label values without credentials", "/api/v1/label/job/values", nil, http.StatusUnauthorized},
		{"series without credentials", "/api/v1/series?match[]=up", nil, http.StatusUnauthorized},
		{"buildinfo without credentials", "/api/v1/status/buildinfo", nil, http.StatusUnauthorized},
		{"metadata without credentials", "/api/v1/metadata", nil, http.StatusUnauthorized},
		{"tombstones with the read token", "/api/v1/tombstones", bearer(grafanaToken), http.StatusUnauthorized},
		{"tombstones as a reading basic-auth user", "/api/v1/tombstones", basic("viewer"), http.StatusUnauthorized},
		{"tombstones as an admin basic-auth user", "/api/v1/tombstones", basic("root"), http.StatusOK},
		{"tombstones with a client certificate only", "/api/v1/tombstones", verifiedCert("grafana.example"), http.StatusUnauthorized},
		{"tombstones with an admin token", "/api/v1/tombstones", bearer(aliceToken), http.StatusOK},
		{"ready without credentials", "/-/ready", nil, http.StatusOK},
		{"healthy without credentials", "/-/healthy", nil, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := serve(p, http.MethodGet, tc.target, nil, tc.prepare)
			testutil.Equals(t, tc.want, rec.Code, rec.Body.String())
			if tc.want == http.StatusUnauthorized {
				testutil.Assert(t, strings.Contains(rec.Body.String(), `"errorType":"unauthorized"`), rec.Body.String())
			}
		})
	}

	// A basic-auth user the web config did not verify is nobody.
	unverified, _ := securedProxy(t, f, Config{AdminToken: aliceToken, ReadAuth: true, AdminUsers: []string{"root"}})
	testutil.Equals(t, http.StatusUnauthorized, serve(unverified, http.MethodGet, query, nil, basic("root")).Code)
	testutil.Equals(t, http.StatusUnauthorized, serve(unverified, http.MethodGet, "/api/v1/tombstones", nil, basic("root")).Code)
	testutil.Equals(t, http.StatusOK, serve(unverified, http.MethodGet, query, nil, bearer(aliceToken)).Code)
	// Without ReadAuth, reads are open as before.
	open, _ := securedProxy(t, f, Config{AdminToken: aliceToken})
	testutil.Equals(t, http.StatusOK, serve(open, http.MethodGet, query, nil, nil).Code)
}

func TestAuditLinePerTombstoneAction(t *testing.T) {
	f := newFixture(t, nil)
	p, logs := securedProxy(t, f, Config{AdminToken: adminToken, AdminTokens: map[string]string{"alice": aliceToken}, AdminUsers: []string{"root"}, BasicAuthVerified: true})
	start, end := fmt.Sprint(t0/1000), fmt.Sprint((t0+3_600_000)/1000)

	rec := serve(p, http.MethodPost, "/api/v1/tombstones", url.Values{
		"match[]": {`{user_id="1"}`}, "start": {start}, "end": {end}, "author": {"alice@example.com"}, "reason": {"GDPR request 17"},
	}, bearer(aliceToken))
	testutil.Equals(t, http.StatusOK, rec.Code, rec.Body.String())
	var added struct {
		Data struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	testutil.Ok(t, json.Unmarshal(rec.Body.Bytes(), &added))

	rec = serve(p, http.MethodPost, "/api/v1/admin/tsdb/delete_series", url.Values{"match[]": {`{user_id="2"}`}, "start": {start}, "end": {end}}, bearer(adminToken))
	testutil.Equals(t, http.StatusNoContent, rec.Code, rec.Body.String())
	deleted := rec.Header().Get("X-Lethe-Tombstone-Id")

	// A basic-auth admin with a client certificate cancels; both identities are logged.
	rec = serve(p, http.MethodPost, "/api/v1/tombstones/"+added.Data.ID+"/cancel", url.Values{"author": {"root@example.com"}, "reason": {"wrong user"}}, func(r *http.Request) {
		r.SetBasicAuth("root", "checked by the web config")
		verifiedCert("ops-laptop")(r)
	})
	testutil.Equals(t, http.StatusOK, rec.Code, rec.Body.String())

	// Refused attempts are logged too, with their error.
	rec = serve(p, http.MethodPost, "/api/v1/tombstones", url.Values{"match[]": {`{user_id=~"("}`}, "author": {"alice@example.com"}}, bearer(aliceToken))
	testutil.Equals(t, http.StatusBadRequest, rec.Code, rec.Body.String())
	rec = serve(p, http.MethodPost, "/api/v1/tombstones/01M86065CWNBFDYWAT4K034EY4/cancel", url.Values{"reason": {"typo"}}, bearer(aliceToken))
	testutil.Equals(t, http.StatusNotFound, rec.Code, rec.Body.String())
	testutil.Assert(t, strings.Contains(rec.Body.String(), `"errorType":"not_found"`), rec.Body.String())
	// A caller without credentials never reaches an action: no audit line.
	rec = serve(p, http.MethodPost, "/api/v1/tombstones", url.Values{"match[]": {`{user_id="3"}`}}, nil)
	testutil.Equals(t, http.StatusUnauthorized, rec.Code)

	lines := logs.auditLines(t)
	testutil.Equals(t, 5, len(lines), "%v", lines)
	pick := func(m map[string]any) map[string]any {
		out := map[string]any{}
		for _, k := range []string{"action", "outcome", "tombstone", "author", "reason", "token", "user", "cert_subject", "remote"} {
			out[k] = m[k]
		}
		return out
	}
	remote := "192.0.2.1:1234" // httptest.NewRequest's remote address.
	testutil.Equals(t, map[string]any{"action": "add", "outcome": "ok", "tombstone": added.Data.ID, "author": "alice@example.com", "reason": "GDPR request 17",
		"token": "alice", "user": "", "cert_subject": "", "remote": remote}, pick(lines[0]))
	testutil.Equals(t, map[string]any{"action": "delete_series", "outcome": "ok", "tombstone": deleted, "author": "", "reason": "",
		"token": "admin", "user": "", "cert_subject": "", "remote": remote}, pick(lines[1]))
	testutil.Equals(t, map[string]any{"action": "cancel", "outcome": "ok", "tombstone": added.Data.ID, "author": "root@example.com", "reason": "wrong user",
		"token": "", "user": "root", "cert_subject": "CN=ops-laptop,O=ops", "remote": remote}, pick(lines[2]))
	testutil.Equals(t, map[string]any{"action": "add", "outcome": "refused", "tombstone": "", "author": "alice@example.com", "reason": "",
		"token": "alice", "user": "", "cert_subject": "", "remote": remote}, pick(lines[3]))
	testutil.Assert(t, lines[3]["error"] != "", "refused line without error: %v", lines[3])
	testutil.Equals(t, map[string]any{"action": "cancel", "outcome": "refused", "tombstone": "01M86065CWNBFDYWAT4K034EY4", "author": "", "reason": "typo",
		"token": "alice", "user": "", "cert_subject": "", "remote": remote}, pick(lines[4]))
}

func TestAuditLineOfThePagesActions(t *testing.T) {
	f := newFixture(t, nil)
	p, logs := securedProxy(t, f, Config{AdminTokens: map[string]string{"alice": aliceToken}})
	srv := httptest.NewServer(p)
	defer srv.Close()
	c := newPageClient(t, srv.URL)
	code, body := c.post("/login", url.Values{"token": {aliceToken}, "next": {"/"}})
	testutil.Equals(t, http.StatusOK, code, body)
	csrf := csrfOf(t, body)

	code, body = c.post("/tombstones", url.Values{"csrf": {csrf}, "match[]": {`{user_id="2"}`}, "start": {fmt.Sprint(t0 / 1000)},
		"end": {fmt.Sprint((t0 + 7_200_000) / 1000)}, "reason": {"GDPR #7"}, "author": {"carol"}})
	testutil.Equals(t, http.StatusOK, code, body)
	testutil.Equals(t, 1, len(f.mask.live))
	id := f.mask.live[0].ID.String()
	code, body = c.post("/tombstones/"+id+"/cancel", url.Values{"csrf": {csrf}, "reason": {"wrong user"}, "author": {"dave"}})
	testutil.Equals(t, http.StatusOK, code, body)

	lines := logs.auditLines(t)
	testutil.Equals(t, 2, len(lines), "%v", lines)
	for i, want := range []map[string]any{
		{"action": "add", "outcome": "ok", "tombstone": id, "author": "carol", "reason": "GDPR #7", "token": "alice", "path": "/tombstones"},
		{"action": "cancel", "outcome": "ok", "tombstone": id, "author": "dave", "reason": "wrong user", "token": "alice", "path": "/tombstones/" + id + "/cancel"},
	} {
		for k, v := range want {
			testutil.Equals(t, v, lines[i][k], "line %d %s", i, k)
		}
		testutil.Assert(t, strings.HasPrefix(lines[i]["remote"].(string), "127.0.0.1:"), "%v", lines[i])
	}
}
