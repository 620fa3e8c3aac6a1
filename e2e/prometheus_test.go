package e2e

// A harness that runs real Prometheus servers on copies of TSDB blocks: one as the upstream lethe's
// proxy sits in front of, one as the oracle (Prometheus' own delete_series + clean_tombstones on
// the same data is the ground truth for what masked queries must return).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"

	"github.com/lethe-project/lethe/block"
)

const (
	promReadyTimeout = 60 * time.Second
	promPollEvery    = 50 * time.Millisecond
	promStopTimeout  = 10 * time.Second
	promLogTailBytes = 8 << 10
)

// prometheusProc is one running Prometheus server, stopped when its test ends.
type prometheusProc struct {
	*server
	// dir holds the config file, the log and the TSDB directory (dataDir).
	dir     string
	dataDir string
}

// prometheusOptions configures startPrometheusWith.
type prometheusOptions struct {
	// ExternalLabels go into the config's global.external_labels.
	ExternalLabels map[string]string
}

// prometheusPath returns the Prometheus binary: $LETHE_PROMETHEUS if set, else the one
// tools/build.sh builds (or has cached). It fails the test, never skips: CI must run these.
func prometheusPath(t testing.TB) string { return toolPath(t, "prometheus", "LETHE_PROMETHEUS") }

func findPrometheus() (string, error) { return findTool("prometheus", "LETHE_PROMETHEUS") }

// tools caches, per tool, where findTool found it.
var tools struct {
	mu    sync.Mutex
	found map[string]*toolResult
}

type toolResult struct {
	once sync.Once
	path string
	err  error
}

// toolPath returns a pinned third-party binary (prometheus, promtool, thanos) the tests run, found
// once per test binary by findTool. It fails the test, never skips: CI must run these tests.
func toolPath(t testing.TB, name, env string) string {
	t.Helper()
	tools.mu.Lock()
	if tools.found == nil {
		tools.found = map[string]*toolResult{}
	}
	r := tools.found[name]
	if r == nil {
		r = &toolResult{}
		tools.found[name] = r
	}
	tools.mu.Unlock()
	r.once.Do(func() { r.path, r.err = findTool(name, env) })
	if r.err != nil {
		t.Fatalf("no %s binary for the end-to-end tests (set %s or make `tools/build.sh %s` work): %v", name, env, name, r.err)
	}
	return r.path
}

// findTool returns $env if set, else the path `tools/build.sh name` prints after building the
// pinned version.
func findTool(name, env string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if err := checkExecutable(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", env, p, err)
		}
		return p, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "tools", "build.sh"), name)
	cmd.Dir = root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s/tools/build.sh %s: %v\nstderr:\n%s", root, name, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	p := strings.TrimSpace(lines[len(lines)-1])
	if p == "" {
		return "", fmt.Errorf("tools/build.sh %s printed no path; stderr:\n%s", name, stderr.String())
	}
	if err := checkExecutable(p); err != nil {
		return "", fmt.Errorf("tools/build.sh %s printed %q: %w", name, p, err)
	}
	return p, nil
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("not an executable file")
	}
	return nil
}

// repoRoot walks up from the working directory (e2e/ under go test) to the directory holding
// tools/build.sh.
func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "tools", "build.sh")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no tools/build.sh in %s or any parent", wd)
		}
	}
}

// startPrometheus starts a Prometheus server on copies of blockDirs (each a TSDB block directory
// named by its ULID) and waits until it is ready and serves every block. extraFlags are appended
// to the command line.
func startPrometheus(t *testing.T, blockDirs []string, extraFlags ...string) *prometheusProc {
	t.Helper()
	return startPrometheusWith(t, prometheusOptions{}, blockDirs, extraFlags...)
}

// startPrometheusWith is startPrometheus with options.
func startPrometheusWith(t *testing.T, opts prometheusOptions, blockDirs []string, extraFlags ...string) *prometheusProc {
	t.Helper()
	bin := prometheusPath(t)

	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	testutil.Ok(t, os.MkdirAll(dataDir, 0o755))
	var metas []*block.Meta
	for _, src := range blockDirs {
		dst := filepath.Join(dataDir, filepath.Base(src))
		if _, err := os.Stat(dst); err == nil {
			t.Fatalf("startPrometheus: two blocks named %s", filepath.Base(src))
		}
		testutil.Ok(t, os.CopyFS(dst, os.DirFS(src)), "copy block %s", src)
		raw, err := os.ReadFile(filepath.Join(dst, block.MetaFilename))
		testutil.Ok(t, err)
		meta, err := block.DecodeMeta(raw)
		testutil.Ok(t, err, "block %s", src)
		metas = append(metas, meta)
	}

	conf := filepath.Join(dir, "prometheus.yml")
	testutil.Ok(t, os.WriteFile(conf, []byte(prometheusConfig(opts)), 0o644))

	// Picking a free port and then letting Prometheus bind it races with anything else on the
	// machine; retry a few times when the bind is what failed.
	var p *prometheusProc
	for attempt := 1; ; attempt++ {
		var bindFailed bool
		p, bindFailed = launchPrometheus(t, bin, dir, dataDir, conf, attempt, extraFlags)
		if p != nil {
			break
		}
		if !bindFailed || attempt == 3 {
			t.Fatalf("prometheus did not start (attempt %d); see log above", attempt)
		}
	}

	waitLoaded(t, p, metas)
	return p
}

// launchPrometheus starts the process and waits for /-/ready. It returns nil and whether the
// failure was a lost port race when the process exited before it got ready.
func launchPrometheus(t *testing.T, bin, dir, dataDir, conf string, attempt int, extraFlags []string) (*prometheusProc, bool) {
	t.Helper()
	port := freePort(t)
	args := append([]string{
		"--config.file=" + conf,
		"--storage.tsdb.path=" + dataDir,
		"--web.listen-address=127.0.0.1:" + strconv.Itoa(port),
		"--web.enable-admin-api",
		"--storage.tsdb.retention.time=100y",
		"--log.level=warn",
	}, extraFlags...)
	p := &prometheusProc{dir: dir, dataDir: dataDir}
	var bindFailed bool
	p.server, bindFailed = launchServer(t, serverSpec{
		name: "prometheus", bin: bin, dir: dir, port: port, args: args,
		logFile:      filepath.Join(dir, fmt.Sprintf("prometheus-%d.log", attempt)),
		readyTimeout: promReadyTimeout, stopTimeout: promStopTimeout,
		ready: func(s *server) bool {
			status, _, err := (&prometheusProc{server: s}).get("/-/ready", nil)
			return err == nil && status == http.StatusOK
		},
	})
	if p.server == nil {
		return nil, bindFailed
	}
	return p, false
}

// waitLoaded polls until Prometheus answers queries with data from every block (it may load blocks
// after /-/ready), bounded by promReadyTimeout.
func waitLoaded(t *testing.T, p *prometheusProc, metas []*block.Meta) {
	t.Helper()
	began := time.Now()
	deadline := began.Add(promReadyTimeout)
	polls := 0
	for _, m := range metas {
		// Every sample of the block: the range (maxT-1-span, maxT-1] is [minT, maxT-1].
		q := url.Values{
			"query": {fmt.Sprintf(`count(last_over_time({__name__=~".+"}[%dms]))`, m.MaxTime-m.MinTime)},
			"time":  {formatPromTime(m.MaxTime - 1)},
		}
		for {
			polls++
			status, body, err := p.get("/api/v1/query", q)
			if err == nil && status == http.StatusOK && !isEmptyResult(body) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("prometheus %s does not serve block %s after %v (last answer %d %s, err %v); log tail:\n%s",
					p.URL, m.ULID, promReadyTimeout, status, body, err, p.logTail())
			}
			time.Sleep(promPollEvery)
		}
	}
	t.Logf("prometheus %s serves all %d blocks (%d polls, %v)", p.URL, len(metas), polls, time.Since(began).Round(time.Millisecond))
}

func isEmptyResult(body []byte) bool {
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	return json.Unmarshal(body, &r) != nil || r.Status != "success" || len(r.Data.Result) == 0
}

func prometheusConfig(opts prometheusOptions) string {
	if len(opts.ExternalLabels) == 0 {
		return "global: {}\n"
	}
	var b strings.Builder
	b.WriteString("global:\n  external_labels:\n")
	names := make([]string, 0, len(opts.ExternalLabels))
	for n := range opts.ExternalLabels {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		v, _ := json.Marshal(opts.ExternalLabels[n]) // a JSON string is a YAML string
		fmt.Fprintf(&b, "    %s: %s\n", n, v)
	}
	return b.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	testutil.Ok(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	testutil.Ok(t, l.Close())
	return port
}

// stopProcess sends SIGTERM to a process whose Wait closes done, waits up to timeout, then kills.
func stopProcess(t testing.TB, name string, cmd *exec.Cmd, done <-chan struct{}, timeout time.Duration) {
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(timeout):
		t.Logf("%s ignored SIGTERM for %v; killing it", name, timeout)
		_ = cmd.Process.Kill()
		<-done
	}
}

// fileTail returns the end of a log file for a failure message.
func fileTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	if len(b) > promLogTailBytes {
		b = append([]byte("...\n"), b[len(b)-promLogTailBytes:]...)
	}
	if len(b) == 0 {
		return "(empty)"
	}
	return string(b)
}

func (p *prometheusProc) get(path string, params url.Values) (int, []byte, error) {
	u := p.URL + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	resp, err := p.client.Get(u)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// Get does a GET of path with params as the query string.
func (p *prometheusProc) Get(t *testing.T, path string, params url.Values) (status int, body []byte) {
	t.Helper()
	status, body, err := p.get(path, params)
	testutil.Ok(t, err, "GET %s%s", p.URL, path)
	return status, body
}

// Post does a POST of path with params as a form body.
func (p *prometheusProc) Post(t *testing.T, path string, params url.Values) (status int, body []byte) {
	t.Helper()
	resp, err := p.client.PostForm(p.URL+path, params)
	testutil.Ok(t, err, "POST %s%s", p.URL, path)
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	testutil.Ok(t, err)
	return resp.StatusCode, body
}

// Query runs an instant query at ts and returns the answer, failing unless it is a success.
func (p *prometheusProc) Query(t *testing.T, query string, ts time.Time) []byte {
	t.Helper()
	return p.apiOK(t, "/api/v1/query", url.Values{"query": {query}, "time": {formatPromTime(ts.UnixMilli())}})
}

// QueryRange runs a range query and returns the answer, failing unless it is a success.
func (p *prometheusProc) QueryRange(t *testing.T, query string, start, end time.Time, step time.Duration) []byte {
	t.Helper()
	return p.apiOK(t, "/api/v1/query_range", url.Values{
		"query": {query},
		"start": {formatPromTime(start.UnixMilli())},
		"end":   {formatPromTime(end.UnixMilli())},
		"step":  {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)},
	})
}

func (p *prometheusProc) apiOK(t *testing.T, path string, params url.Values) []byte {
	t.Helper()
	status, body := p.Get(t, path, params)
	testutil.Equals(t, http.StatusOK, status, "GET %s %v: %s", path, params, body)
	var r struct {
		Status string `json:"status"`
	}
	testutil.Ok(t, json.Unmarshal(body, &r), "GET %s: %s", path, body)
	testutil.Equals(t, "success", r.Status, "GET %s: %s", path, body)
	return body
}

// DeleteSeries calls the admin API's delete_series; nil start or end leaves that bound open.
func (p *prometheusProc) DeleteSeries(t *testing.T, matchers []string, start, end *time.Time) {
	t.Helper()
	params := url.Values{"match[]": matchers}
	if start != nil {
		params.Set("start", start.UTC().Format(time.RFC3339Nano))
	}
	if end != nil {
		params.Set("end", end.UTC().Format(time.RFC3339Nano))
	}
	status, body := p.Post(t, "/api/v1/admin/tsdb/delete_series", params)
	testutil.Equals(t, http.StatusNoContent, status, "delete_series %v: %s", params, body)
}

// CleanTombstones calls the admin API's clean_tombstones, which rewrites the blocks without the
// deleted data.
func (p *prometheusProc) CleanTombstones(t *testing.T) {
	t.Helper()
	status, body := p.Post(t, "/api/v1/admin/tsdb/clean_tombstones", nil)
	testutil.Equals(t, http.StatusNoContent, status, "clean_tombstones: %s", body)
}

// formatPromTime renders milliseconds as the API's decimal seconds, exactly.
func formatPromTime(ms int64) string {
	sign := ""
	if ms < 0 {
		sign, ms = "-", -ms
	}
	return fmt.Sprintf("%s%d.%03d", sign, ms/1000, ms%1000)
}

// normalizeJSON decodes a Prometheus API answer and re-encodes it with a stable order, so two
// answers can be compared as strings: matrix and vector results are sorted by their metric's
// labels, series data by labels, label names and values sorted, warnings and infos sorted.
// Numbers are kept exactly as written (sample values are strings in the API anyway) and object
// keys come out sorted.
func normalizeJSON(t *testing.T, body []byte) string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc map[string]any
	testutil.Ok(t, dec.Decode(&doc), "not a Prometheus API answer: %s", body)

	for _, k := range []string{"warnings", "infos"} {
		if l, ok := doc[k].([]any); ok {
			sortByKey(l, func(v any) string { s, _ := v.(string); return s })
		}
	}
	switch data := doc["data"].(type) {
	case map[string]any: // query, query_range
		if res, ok := data["result"].([]any); ok {
			switch data["resultType"] {
			case "matrix", "vector":
				sortByKey(res, func(v any) string {
					m, _ := v.(map[string]any)
					return canonicalJSON(m["metric"])
				})
			}
		}
	case []any: // series (label sets), labels and label values (strings)
		sortByKey(data, func(v any) string {
			if s, ok := v.(string); ok {
				return s
			}
			return canonicalJSON(v)
		})
	}
	out, err := json.Marshal(doc)
	testutil.Ok(t, err)
	return string(out)
}

func sortByKey(l []any, key func(any) string) {
	keys := make(map[int]string, len(l))
	idx := make([]int, len(l))
	for i, v := range l {
		idx[i], keys[i] = i, key(v)
	}
	sort.SliceStable(idx, func(a, b int) bool { return keys[idx[a]] < keys[idx[b]] })
	sorted := make([]any, len(l))
	for i, j := range idx {
		sorted[i] = l[j]
	}
	copy(l, sorted)
}

// canonicalJSON encodes v with sorted object keys.
func canonicalJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
