package e2e

// Runs the lethe-proxy binary (built by TestMain) as a process, the way an operator runs it.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
)

const (
	proxyReadyTimeout = 60 * time.Second
	proxyStopTimeout  = 10 * time.Second
)

// proxyProc is one running lethe-proxy, stopped when its test ends.
type proxyProc struct{ *server }

// startProxy starts lethe-proxy in bucket mode (no --upstream.url) over a FILESYSTEM bucket at
// bucketDir, on a free 127.0.0.1 port, and waits until /-/ready answers 200. extraFlags are appended
// to the command line (e.g. --tombstones.refresh-interval).
func startProxy(t *testing.T, bucketDir string, extraFlags ...string) *proxyProc {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "bucket.yml")
	testutil.Ok(t, os.WriteFile(conf, []byte("type: FILESYSTEM\nconfig:\n  directory: "+strconv.Quote(bucketDir)+"\n"), 0o644))
	// A free port can be taken by someone else between our probe and the proxy's bind: retry.
	for attempt := 1; ; attempt++ {
		p, bindFailed := launchProxy(t, dir, conf, attempt, extraFlags)
		if p != nil {
			return p
		}
		if !bindFailed || attempt == 3 {
			t.Fatalf("lethe-proxy did not start (attempt %d); see log above", attempt)
		}
	}
}

func launchProxy(t *testing.T, dir, conf string, attempt int, extraFlags []string) (*proxyProc, bool) {
	t.Helper()
	port := freePort(t)
	args := append([]string{
		"--objstore.config-file=" + conf,
		"--web.listen-address=127.0.0.1:" + strconv.Itoa(port),
		"--data-dir=" + filepath.Join(dir, fmt.Sprintf("data-%d", attempt)),
		"--log.level=warn",
	}, extraFlags...)
	p := &proxyProc{}
	var bindFailed bool
	p.server, bindFailed = launchServer(t, serverSpec{
		name: "lethe-proxy", bin: binaries.proxy, dir: dir, port: port, args: args,
		logFile:      filepath.Join(dir, fmt.Sprintf("lethe-proxy-%d.log", attempt)),
		readyTimeout: proxyReadyTimeout, stopTimeout: proxyStopTimeout,
		ready: func(s *server) bool {
			// 401: up, behind the basic auth of a --web.config.file.
			status, _, err := (&proxyProc{server: s}).get("/-/ready")
			return err == nil && (status == http.StatusOK || status == http.StatusUnauthorized)
		},
	})
	if p.server == nil {
		return nil, bindFailed
	}
	return p, false
}

func (p *proxyProc) get(path string) (int, []byte, error) {
	resp, err := p.client.Get(p.URL + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// metric returns the value of an unlabelled metric from /metrics, or false if it is absent.
func (p *proxyProc) metric(t *testing.T, name string) (float64, bool) {
	t.Helper()
	status, body, err := p.get("/metrics")
	testutil.Ok(t, err)
	testutil.Equals(t, http.StatusOK, status, string(body))
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			testutil.Ok(t, err, sc.Text())
			return v, true
		}
	}
	return 0, false
}

// waitMetric polls /metrics until the unlabelled metric has the value, bounded by proxyReadyTimeout.
func (p *proxyProc) waitMetric(t *testing.T, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(proxyReadyTimeout)
	for {
		got, ok := p.metric(t, name)
		if ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lethe-proxy %s: %s is %v (present: %v) after %v, want %v; log tail:\n%s", p.URL, name, got, ok, proxyReadyTimeout, want, p.logTail())
		}
		time.Sleep(promPollEvery)
	}
}
