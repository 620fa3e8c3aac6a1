// Package e2e runs lethe's binaries, built once per test run, against real TSDB blocks in real
// buckets.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

var binaries struct {
	lethe    string
	proxy    string
	rewriter string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lethe-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binaries.lethe = filepath.Join(dir, "lethe")
	binaries.proxy = filepath.Join(dir, "lethe-proxy")
	binaries.rewriter = filepath.Join(dir, "lethe-rewriter")
	for _, b := range []struct{ out, pkg string }{
		{binaries.lethe, "github.com/lethe-project/lethe/cmd/lethe"},
		{binaries.proxy, "github.com/lethe-project/lethe/cmd/lethe-proxy"},
		{binaries.rewriter, "github.com/lethe-project/lethe/cmd/lethe-rewriter"},
	} {
		build := exec.Command("go", "build", "-o", b.out, b.pkg)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", filepath.Base(b.out), err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
