package e2e

import (
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
)

// server is a process the tests start that serves HTTP on 127.0.0.1: Prometheus or lethe-proxy.
type server struct {
	name string
	// URL is the server's base URL, e.g. http://127.0.0.1:41234.
	URL         string
	logFile     string
	cmd         *exec.Cmd
	done        chan struct{} // closed when the process has exited
	waitErr     error         // valid after done is closed
	client      *http.Client
	stopTimeout time.Duration
}

// serverSpec is what launchServer starts and how it knows the server is up.
type serverSpec struct {
	name, bin, dir, logFile   string
	port                      int
	args                      []string
	readyTimeout, stopTimeout time.Duration
	ready                     func(*server) bool
}

// launchServer starts the process, logging to its log file, stops it when the test ends (with
// the log's tail if the test failed), and waits until ready, bounded by the ready timeout. It
// returns nil and whether the failure was a lost port race when the process exited before it got
// ready.
func launchServer(t *testing.T, spec serverSpec) (*server, bool) {
	t.Helper()
	logf, err := os.Create(spec.logFile)
	testutil.Ok(t, err)
	cmd := exec.Command(spec.bin, spec.args...)
	cmd.Dir = spec.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	s := &server{
		name:        spec.name,
		URL:         "http://127.0.0.1:" + strconv.Itoa(spec.port),
		logFile:     spec.logFile,
		cmd:         cmd,
		done:        make(chan struct{}),
		client:      &http.Client{Timeout: 30 * time.Second},
		stopTimeout: spec.stopTimeout,
	}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", spec.bin, err)
	}
	go func() {
		s.waitErr = cmd.Wait()
		logf.Close()
		close(s.done)
	}()
	// Registered after t.TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("%s %s log (%s):\n%s", s.name, s.URL, s.logFile, s.logTail())
		}
	})
	deadline := began.Add(spec.readyTimeout)
	for {
		select {
		case <-s.done:
			tail := s.logTail()
			t.Logf("%s exited before it was ready (%v); log:\n%s", s.name, s.waitErr, tail)
			return nil, strings.Contains(tail, "address already in use")
		default:
		}
		if spec.ready(s) {
			t.Logf("%s %s (pid %d) ready after %v", s.name, s.URL, cmd.Process.Pid, time.Since(began).Round(time.Millisecond))
			return s, false
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s not ready after %v; log tail:\n%s", s.name, s.URL, spec.readyTimeout, s.logTail())
		}
		time.Sleep(promPollEvery)
	}
}

// stop sends SIGTERM, waits up to the stop timeout, then kills.
func (s *server) stop(t *testing.T) {
	stopProcess(t, s.name+" "+s.URL, s.cmd, s.done, s.stopTimeout)
}

func (s *server) logTail() string { return fileTail(s.logFile) }
