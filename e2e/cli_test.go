package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// blockStart is where the test blocks begin: 2026-11-01T00:00:00Z.
const blockStart = int64(1793491200000)

// cliBucket is a FILESYSTEM bucket holding two real 2h TSDB blocks with external labels.
type cliBucket struct {
	dir  string
	conf string
}

func newCLIBucket(t *testing.T) cliBucket {
	t.Helper()
	dir := t.TempDir()
	bkt, err := filesystem.NewBucket(dir)
	testutil.Ok(t, err)
	var series []labels.Labels
	for u := 0; u < 20; u++ {
		series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", fmt.Sprint(u)))
	}
	series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "token", "s3cr3t-leaked"))
	for i := int64(0); i < 2; i++ {
		_, err := synth.Upload(context.Background(), bkt, t.TempDir(), synth.Block{
			Series:   series,
			MinTime:  blockStart + i*7_200_000,
			MaxTime:  blockStart + (i+1)*7_200_000,
			Step:     60_000,
			External: map[string]string{"cluster": "eu1"},
		})
		testutil.Ok(t, err)
	}
	return cliBucket{dir: dir, conf: "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + dir + "}"}
}

// snapshot returns every object path and its bytes, to prove a failed command wrote nothing.
func (b cliBucket) snapshot(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	testutil.Ok(t, filepath.WalkDir(b.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		c, err := os.ReadFile(p)
		out[strings.TrimPrefix(p, b.dir)] = string(c)
		return err
	}))
	return out
}

type result struct {
	stdout, stderr string
	code           int
}

func (b cliBucket) run(t *testing.T, args ...string) result {
	t.Helper()
	return runLethe(t, append([]string{b.conf}, args...)...)
}

func runLethe(t *testing.T, args ...string) result {
	t.Helper()
	return runBinary(t, binaries.lethe, time.Minute, []string{"USER=tester"}, args...)
}

// runBinary runs a binary (lethe's or a third party's) in a fresh directory, with env added to
// the environment, and returns its output and exit code; one that outlives timeout fails the test.
func runBinary(t *testing.T, bin string, timeout time.Duration, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %s did not finish within %v; stderr:\n%s", filepath.Base(bin), strings.ReplaceAll(strings.Join(args, " "), "\n", " "), timeout, stderr.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		testutil.Ok(t, err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

type listing struct {
	Tombstones []tombstones.View   `json:"tombstones"`
	Broken     []tombstones.Broken `json:"broken"`
}

func TestCLIRoundTrip(t *testing.T) {
	b := newCLIBucket(t)

	add := b.run(t, "tombstone", "add", "--match", `{user_id="7"}`, "--match", `{user_id="8",cluster="eu1"}`,
		"--start", "2026-11-01T00:30:00Z", "--end", fmt.Sprint(blockStart/1000+3*3600),
		"--reason", "GDPR #1", "--author", "alice")
	testutil.Equals(t, 0, add.code, add.stderr)
	id := strings.TrimSpace(add.stdout)
	testutil.Equals(t, 26, len(id), "stdout must hold only the id: %q", add.stdout)
	// Two users in two blocks each, counted once per block.
	testutil.Assert(t, strings.Contains(add.stderr, "matches 4 series"), add.stderr)

	var l listing
	list := b.run(t, "tombstone", "list", "--output", "json")
	testutil.Equals(t, 0, list.code, list.stderr)
	testutil.Ok(t, json.Unmarshal([]byte(list.stdout), &l))
	testutil.Equals(t, 1, len(l.Tombstones))
	v := l.Tombstones[0]
	testutil.Equals(t, id, v.ID)
	testutil.Equals(t, tombstones.StatePending, v.State)
	testutil.Equals(t, []string{`{user_id="7"}`, `{user_id="8", cluster="eu1"}`}, v.Matchers)
	testutil.Equals(t, blockStart+1_800_000, v.StartMillis)
	testutil.Equals(t, blockStart+3*3_600_000, v.EndMillis)
	testutil.Equals(t, "alice", v.Author)
	testutil.Equals(t, 24*time.Hour, v.UndeleteUntil.Sub(v.CreatedAt))
	testutil.Equals(t, 14*24*time.Hour, v.Deadline.Sub(v.CreatedAt))

	table := b.run(t, "tombstone", "list")
	testutil.Equals(t, 0, table.code, table.stderr)
	testutil.Assert(t, strings.HasPrefix(table.stdout, "ID "), table.stdout)
	testutil.Assert(t, strings.Contains(table.stdout, id+"  pending"), table.stdout)

	show := b.run(t, "tombstone", "show", id, "--output", "json")
	testutil.Equals(t, 0, show.code, show.stderr)
	var sv tombstones.View
	testutil.Ok(t, json.Unmarshal([]byte(show.stdout), &sv))
	testutil.Equals(t, v.ID, sv.ID)
	testutil.Equals(t, v.Matchers, sv.Matchers)

	before := b.snapshot(t)
	cancel := b.run(t, "tombstone", "cancel", id, "--reason", "wrong user")
	testutil.Equals(t, 0, cancel.code, cancel.stderr)
	after := b.snapshot(t)
	// Append-only: the tombstone object is unchanged and exactly one object was added.
	testutil.Equals(t, len(before)+1, len(after))
	for k, v := range before {
		testutil.Equals(t, v, after[k], "object %s changed", k)
	}

	show = b.run(t, "tombstone", "show", id)
	testutil.Equals(t, 0, show.code, show.stderr)
	testutil.Assert(t, strings.Contains(show.stdout, "state:           cancelled"), show.stdout)
	testutil.Assert(t, strings.Contains(show.stdout, "wrong user"), show.stdout)

	again := b.run(t, "tombstone", "cancel", id)
	testutil.Equals(t, 1, again.code)
	testutil.Assert(t, strings.Contains(again.stderr, "already cancelled"), again.stderr)
}

func TestCLIDryRunWritesNothing(t *testing.T) {
	b := newCLIBucket(t)
	before := b.snapshot(t)
	r := b.run(t, "tombstone", "add", "--match", `{token="s3cr3t-leaked"}`, "--redact", "--dry-run", "--output", "json")
	testutil.Equals(t, 0, r.code, r.stderr)
	testutil.Equals(t, before, b.snapshot(t))
	var v tombstones.View
	testutil.Ok(t, json.Unmarshal([]byte(r.stdout), &v))
	testutil.Equals(t, []string{"{token=<redacted>}"}, v.Matchers)
	testutil.Assert(t, strings.Contains(r.stderr, "matches 2 series"), r.stderr)
	testutil.Assert(t, !strings.Contains(r.stdout+r.stderr, "s3cr3t"), "dry run printed the secret: %s %s", r.stdout, r.stderr)
}

func TestCLIRedactKeepsSecretOutOfBucket(t *testing.T) {
	b := newCLIBucket(t)
	keyFile := filepath.Join(t.TempDir(), "key")
	testutil.Ok(t, os.WriteFile(keyFile, []byte("0123456789abcdef0123456789abcdef"), 0o600))
	r := b.run(t, "tombstone", "add", "--match", `{__name__="http_requests_total",token="s3cr3t-leaked"}`, "--redact", "--redact.key-file", keyFile)
	testutil.Equals(t, 0, r.code, r.stderr)
	r2 := b.run(t, "tombstone", "add", "--match", `{token="s3cr3t-leaked"}`, "--redact")
	testutil.Equals(t, 0, r2.code, r2.stderr)

	for name, content := range b.snapshot(t) {
		if strings.Contains(name, "tombstones") {
			testutil.Assert(t, !strings.Contains(content, "s3cr3t"), "%s holds the secret", name)
		}
	}
	list := b.run(t, "tombstone", "list", "--output", "json")
	testutil.Equals(t, 0, list.code, list.stderr)
	testutil.Assert(t, !strings.Contains(list.stdout, "s3cr3t"), list.stdout)
	testutil.Assert(t, strings.Contains(list.stdout, `token=\u003credacted\u003e`), list.stdout)
	// The metric name stays readable.
	testutil.Assert(t, strings.Contains(list.stdout, `__name__=\"http_requests_total\"`), list.stdout)
}

func TestCLIBadInputChangesNothing(t *testing.T) {
	b := newCLIBucket(t)
	ok := b.run(t, "tombstone", "add", "--match", `{user_id="1"}`, "--undelete-window", "0s")
	testutil.Equals(t, 0, ok.code, ok.stderr)
	dueID := strings.TrimSpace(ok.stdout)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unparsable selector", []string{"tombstone", "add", "--match", `foo{`}, "parse selector"},
		{"empty selector", []string{"tombstone", "add", "--match", ``}, "empty selector"},
		{"selector matching empty", []string{"tombstone", "add", "--match", `{job=~".*"}`}, "does not match the empty string"},
		{"every series", []string{"tombstone", "add", "--match", `{__name__=~".+"}`}, "matches every series"},
		{"no match", []string{"tombstone", "add", "--match", `{user_id="nobody"}`}, "match no stored series"},
		{"no match in time", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--end", "2020-01-01T00:00:00Z"}, "match no stored series"},
		{"start after end", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--start", "1793500000", "--end", "1793490000"}, "is after end"},
		{"bad time", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--start", "yesterday"}, "cannot parse"},
		{"negative window", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--undelete-window", "-1h"}, "negative"},
		{"max wait below window", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--max-wait", "1h"}, "shorter than the undelete window"},
		{"redact regex", []string{"tombstone", "add", "--match", `{token=~"s3.*"}`, "--redact"}, "only equality matchers"},
		{"short key file", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--redact", "--redact.key-file", "/dev/null"}, "at least 16 bytes"},
		{"no selector", []string{"tombstone", "add"}, "match"},
		{"unknown id", []string{"tombstone", "show", "01M86065CWNBFDYWAT4K034EY4"}, "no tombstone with id"},
		{"not an id", []string{"tombstone", "cancel", "banana"}, "not a tombstone id"},
		{"cancel after window", []string{"tombstone", "cancel", dueID}, "can no longer be cancelled"},
		{"bad output", []string{"tombstone", "list", "--output", "yaml"}, "want table or json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := b.snapshot(t)
			r := b.run(t, tc.args...)
			testutil.Equals(t, 1, r.code, "stdout: %s stderr: %s", r.stdout, r.stderr)
			testutil.Equals(t, "", r.stdout)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			last := lines[len(lines)-1]
			testutil.Assert(t, strings.HasPrefix(last, "lethe: ") || strings.Contains(last, "Required flag"), "stderr: %s", r.stderr)
			testutil.Assert(t, strings.Contains(r.stderr, tc.want), "want %q in stderr: %s", tc.want, r.stderr)
			testutil.Equals(t, before, b.snapshot(t))
		})
	}
}

func TestCLIBadBucket(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no config", []string{"tombstone", "list"}, "no bucket configured"},
		{"unknown type", []string{"--objstore.config=type: NOPE", "tombstone", "list"}, "object-storage configuration"},
		{"bad yaml", []string{"--objstore.config=type: [", "tombstone", "list"}, "object-storage configuration"},
		{"missing file", []string{"--objstore.config-file=/nonexistent/bucket.yml", "tombstone", "list"}, "read object-storage configuration"},
		{"unreachable s3", []string{"--objstore.config=type: S3\nconfig: {bucket: b, endpoint: 127.0.0.1:1, insecure: true, access_key: a, secret_key: b}", "tombstone", "list"}, "unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runLethe(t, tc.args...)
			testutil.Equals(t, 1, r.code, r.stderr)
			testutil.Assert(t, strings.Contains(r.stderr, tc.want), "want %q in stderr: %s", tc.want, r.stderr)
		})
	}
}

func TestCLIConcurrentAddsAllLand(t *testing.T) {
	b := newCLIBucket(t)
	const n = 6
	var wg sync.WaitGroup
	ids := make([]string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := b.run(t, "tombstone", "add", "--match", fmt.Sprintf(`{user_id="%d"}`, i))
			if r.code == 0 {
				ids[i] = strings.TrimSpace(r.stdout)
			}
		}()
	}
	wg.Wait()
	var l listing
	list := b.run(t, "tombstone", "list", "--output", "json")
	testutil.Ok(t, json.Unmarshal([]byte(list.stdout), &l))
	var got []string
	for _, v := range l.Tombstones {
		got = append(got, v.ID)
	}
	sort.Strings(ids)
	testutil.Equals(t, ids, got)
	testutil.Equals(t, n, len(got))
}

func TestCLICountsThroughQueryAPI(t *testing.T) {
	b := newCLIBucket(t)
	var gotMatch []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		testutil.Ok(t, r.ParseForm())
		if r.URL.Path != "/api/v1/series" {
			http.NotFound(w, r)
			return
		}
		gotMatch = r.Form["match[]"]
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"status":"success","data":[{"__name__":"up","job":"edge"},{"__name__":"up","job":"edge","instance":"b"}]}`)
	}))
	defer srv.Close()
	r := b.run(t, "tombstone", "add", "--match", `up{job="edge"}`, "--query.url", srv.URL, "--dry-run")
	testutil.Equals(t, 0, r.code, r.stderr)
	testutil.Equals(t, []string{`{__name__="up", job="edge"}`}, gotMatch)
	testutil.Assert(t, strings.Contains(r.stderr, "matches 2 series"), r.stderr)

	down := b.run(t, "tombstone", "add", "--match", `up{job="edge"}`, "--query.url", "http://127.0.0.1:1")
	testutil.Equals(t, 1, down.code)
	testutil.Assert(t, strings.Contains(down.stderr, "count series through"), down.stderr)
}

func TestCLIHelpExplainsEveryFlag(t *testing.T) {
	r := runLethe(t, "tombstone", "add", "--help")
	testutil.Equals(t, 0, r.code, r.stderr)
	for _, f := range []string{"--match", "--start", "--end", "--undelete-window", "--max-wait", "--reason", "--author", "--redact", "--redact.key-file", "--query.url", "--dry-run", "--force", "--output"} {
		testutil.Assert(t, strings.Contains(r.stdout, f+" "), "help lacks %s: %s", f, r.stdout)
	}
}
